"""The README's Python examples run as written (its placeholders, the images ``x`` and labels
``y``, given toy values). Blocks that need a cluster or a registry run in the integration
tests (``test_ray_data.py``: the data-plane block; ``test_cluster.py``: the registry block
after the quickstart)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.S | re.M)


def test_the_readme_has_the_blocks_these_tests_run():
    blocks = python_blocks()
    assert len(blocks) == 5
    assert "create_encoder" in blocks[0] and "gan_step" in blocks[1]
    assert "read_shards" in blocks[2] and "mlflow.pyfunc.load_model" in blocks[3]
    assert "eq8_scores" in blocks[4]


def test_anomaly_scoring_example_runs():
    ns: dict = {}
    exec(compile(python_blocks()[4], str(README), "exec"), ns)
    assert ns["s"]["score"].shape == (4,) and set(ns["s"]) >= {"score", "pixel", "feature"}


def test_model_and_inversion_examples_run():
    torch.manual_seed(0)
    ns = {"x": torch.rand(2, 3, 224, 224), "y": torch.tensor([3, 7])}
    for block in python_blocks()[:2]:  # the second uses what the first defined, as a reader would
        exec(compile(block, str(README), "exec"), ns)
    assert ns["logits"].shape == (2, 1000) and ns["conv5"].shape == (2, 256, 6, 6)
    assert (ns["x_adv"] - ns["x"]).flatten(1).norm(dim=1).max() <= 3.0 + 1e-4
    assert ns["x_hat"].shape == ns["x"].shape and set(ns["metrics"]) >= {"pix", "feat", "gan"}
