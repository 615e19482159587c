"""'arinv stylize' end to end on a local sqlite MLflow registry holding untrained small AlexNet
autoencoders for conv5, conv2 and conv1 (the command's plumbing, not the paper's pictures):
folders and files of real photographs of any size in, stylized PNGs of the same sizes out; bad
images, a model of the wrong tap or kind, and bad arguments refused before any work."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from toy_models import toy_pair

from pipelines.cli import main

LEVELS = ("conv5", "conv2", "conv1")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from skimage import data

    from pipelines.registry import register_autoencoder, register_encoder

    d = tmp_path_factory.mktemp("stylize")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(
        "models", artifact_location=str(d / "artifacts"))).info.run_id
    for lv in LEVELS:
        e, g = toy_pair(d, 1, lv)
        register_autoencoder(uri, run, encoder_checkpoint=e, generator_checkpoint=g,
                             name=f"arinv-alexnet_small-{lv}-autoencoder", alias="robust")
    e, g = toy_pair(d, 2, "conv5")  # a conv5 pair under the conv2 name: the wrong tap
    register_autoencoder(uri, run, encoder_checkpoint=e, generator_checkpoint=g,
                         name="arinv-alexnet_small-conv2-autoencoder", alias="wrongtap")
    register_encoder(uri, run, e, name="toy-encoder", alias="robust")
    client.set_terminated(run)

    photos = d / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()[::4, ::5]).save(photos / "astronaut.png")  # 128 x 103
    Image.fromarray(data.coffee()[100:230, 50:300:2]).save(photos / "coffee.jpg")  # 130 x 125
    Image.fromarray(data.chelsea()[::3, ::3]).save(d / "style.png")             # 100 x 151
    Image.fromarray(data.camera()[::4, ::4]).save(d / "gray.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return {"dir": d, "uri": uri, "photos": photos}


def _run(store, *args):
    return main(["stylize", "--encoder", "alexnet_small", "--tracking-uri", store["uri"], *args])


def test_stylize_a_folder_and_a_file_keeping_their_sizes(store, capsys):
    d = store["dir"]
    assert _run(store, "--content", str(store["photos"]), "--style", str(d / "style.png"),
                "--out", str(d / "out"), "--alpha", "1,0.5,1") == 0
    printed = capsys.readouterr().out
    assert "stylized 2 image(s)" in printed
    assert "models:/arinv-alexnet_small-conv1-autoencoder@robust" in printed
    for name in ("astronaut", "coffee"):
        src = next(store["photos"].glob(f"{name}.*"))
        out = np.asarray(Image.open(d / "out" / f"{name}_style.png"))
        assert out.shape == np.asarray(Image.open(src)).shape  # size and aspect kept, RGB
    # one file in, one file out, with explicit URIs for two levels
    assert _run(store, "--content", str(store["photos"] / "coffee.jpg"), "--style",
                str(d / "style.png"), "--out", str(d / "one.png"), "--levels", "conv5,conv1",
                "--models", "models:/arinv-alexnet_small-conv5-autoencoder@robust,"
                "models:/arinv-alexnet_small-conv1-autoencoder@robust") == 0
    assert Image.open(d / "one.png").size == Image.open(store["photos"] / "coffee.jpg").size


@pytest.mark.parametrize("case, message", [
    ("gray", "gray.png: a grayscale image (mode L); give a colour image, or pass --gray-to-rgb"),
    ("broken", "broken.png: cannot read the image"),
    ("small_style", "too small for conv5"),
    ("wrong_tap", "models:/arinv-alexnet_small-conv2-autoencoder@wrongtap: not an autoencoder "
                  "of tap conv2"),
    ("encoder_only", "models:/toy-encoder@robust"),
    ("alpha", "--alpha: one value in [0, 1], or one per level (3)"),
    ("missing", "no such file or folder"),
])
def test_bad_input_is_refused_naming_it(store, capsys, case, message):
    d = store["dir"]
    content, style, extra = str(store["photos"] / "coffee.jpg"), str(d / "style.png"), []
    if case == "gray":
        content = str(d / "gray.png")
    elif case == "broken":
        style = str(d / "broken.png")
    elif case == "small_style":
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(d / "tiny.png")
        style = str(d / "tiny.png")
    elif case == "wrong_tap":
        extra = ["--models", "wrongtap", "--levels", "conv2"]
    elif case == "encoder_only":
        extra = ["--models", "models:/toy-encoder@robust", "--levels", "conv5"]
    elif case == "alpha":
        extra = ["--alpha", "1,2"]
    elif case == "missing":
        content = str(d / "nothing-here")
    assert _run(store, "--content", content, "--style", style, "--out", str(d / "x.png"),
                *extra) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (d / "x.png").exists()
