import pytest
import torch

from pipelines.cli import main
from arinv.config import GeneratorTrainConfig, load_config
from arinv.checkpoint import CheckpointError
from arinv.train.local import fit_local as fit_generator

TINY = ["data.train_per_class=2", "data.val_per_class=1", "optim.batch_size=8",
        "eval.images=8", "eval.epoch_images=8", "runtime.device=cpu", "eval.ri_steps=0"]


@pytest.fixture(scope="module")
def encoder_ckpt(tmp_path_factory):
    wd = tmp_path_factory.mktemp("enc")
    assert main(["train-encoder", "--config", "tiny-sample-standard", "--workdir", str(wd),
                 "--local", "--no-progress", "--set", "optim.epochs=1", "--set", "data.train_per_class=2",
                 "--set", "data.val_per_class=1", "--set", "eval.pgd_eps=[0.5]",
                 "--set", "eval.pgd_steps=1"]) == 0
    return wd / "checkpoint" / "state.pt"


def _cfg(ckpt, epochs, *extra):
    return load_config(GeneratorTrainConfig, "tiny-sample-generator",
                       [f"encoder.checkpoint={ckpt}", f"optim.epochs={epochs}", *TINY, *extra])


def test_fit_generator_writes_metrics_and_grid_and_resumes(tmp_path, encoder_ckpt):
    first = fit_generator(_cfg(encoder_ckpt, 1), tmp_path, progress=False)
    q = first["quality"]
    assert q["n"] == 8 and 0 < q["psnr"] < 60 and -1 <= q["ssim"] <= 1
    assert (tmp_path / "checkpoint" / "reconstructions.png").stat().st_size > 1000
    assert (tmp_path / "grids" / "epoch_0001" / "reconstructions.png").is_file()
    logs = []
    second = fit_generator(_cfg(encoder_ckpt, 2), tmp_path, progress=False, log=logs.append)
    assert any("checkpoint of epoch 1 found: resuming at epoch 2/2" in m for m in logs)
    assert [h["epoch"] for h in second["history"]] == [1, 2]


def test_gan_variant_trains_a_discriminator(tmp_path, encoder_ckpt):
    cfg = _cfg(encoder_ckpt, 1, "loss.gan=1.0", "generator.discriminator=alexnet_small_conv5")
    out = fit_generator(cfg, tmp_path, progress=False)
    assert {"loss_d", "d_real", "d_fake"} <= set(out["history"][0])
    state = torch.load(out["checkpoint"], weights_only=True)["state"]
    assert {"generator", "discriminator", "opt_d"} <= set(state)


def test_resume_with_another_generator_architecture_is_refused(tmp_path, encoder_ckpt):
    fit_generator(_cfg(encoder_ckpt, 1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different architecture"):
        fit_generator(_cfg(encoder_ckpt, 2, "generator.spectral_norm=false"), tmp_path,
                      progress=False)


def test_encoder_checkpoint_of_another_architecture_is_refused(tmp_path):
    wd = tmp_path / "resnet"
    assert main(["train-encoder", "--config", "tiny-sample-standard", "--workdir", str(wd),
                 "--local", "--no-progress", "--set", "encoder.name=resnet18_cifar_small", "--set",
                 "encoder.resolution=32", "--set", "optim.epochs=1", "--set",
                 "data.train_per_class=1", "--set", "data.val_per_class=1",
                 "--set", "eval.pgd_eps=[0.5]", "--set", "eval.pgd_steps=1"]) == 0
    with pytest.raises(CheckpointError, match="holds a resnet18_cifar_small encoder"):
        fit_generator(_cfg(wd / "checkpoint" / "state.pt", 1), tmp_path / "g", progress=False)


def test_train_generator_cli(tmp_path, encoder_ckpt, capsys):
    args = ["train-generator", "--config", "tiny-sample-generator", "--workdir", str(tmp_path),
            "--local", "--no-progress", "--set", f"encoder.checkpoint={encoder_ckpt}", "--set", "optim.epochs=1"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "SSIM" in out and "LPIPS" in out


def test_ri_baseline_is_reported_beside_the_generator(tmp_path, encoder_ckpt):
    from PIL import Image

    out = fit_generator(_cfg(encoder_ckpt, 1, "eval.ri_steps=5"), tmp_path, progress=False)
    ri = out["quality"]["ri_baseline"]
    assert ri["psnr"] > 0 and -1 <= ri["ssim"] <= 1
    w, h = Image.open(tmp_path / "checkpoint" / "reconstructions.png").size
    assert h > 3 * 128 and w > 8 * 128  # three rows: input, generator, RI
