"""The loss ablation's criteria (Fig. A2): each maps to the right loss weights and
discriminator use; its table and figure layout; its config's checks."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from arinv.config import AblationConfig, ConfigError, build, config_class, load_config, validate
from arinv.experiments import fig_a2
from arinv.train.tasks import GeneratorTask
from arinv.viz import image_grid

PAPER = "ablation-alexnet-conv5"
SAMPLE = "generator_set=[data.source=sample]"  # the paper preset reads /data/imagenet


@pytest.mark.parametrize("criterion, weights, disc", [
    ("pixel", (2e-6, 0.0, 0.0), None),
    ("pixel_feat", (2e-6, 1e-2, 0.0), None),
    ("pixel_feat_gan", (2e-6, 1e-2, 100.0), "alexnet_conv5"),
])
def test_criteria_map_to_the_papers_weights_and_discriminator(criterion, weights, disc):
    ab = load_config(AblationConfig, PAPER, [SAMPLE])
    g = fig_a2.generator_config(ab, criterion, "robust", "models:/arinv-alexnet@robust")
    assert (g.loss.pix, g.loss.feat, g.loss.gan) == weights
    assert g.generator.discriminator == disc
    assert g.encoder.checkpoint == "models:/arinv-alexnet@robust"
    assert g.name == f"{PAPER}-{criterion}-robust-generator"
    # the single-run presets of the same criteria agree with the ablation's mapping
    from arinv.config import GeneratorTrainConfig

    preset = {"pixel": "alexnet-conv5-pixel", "pixel_feat": "alexnet-conv5-pixel-feat",
              "pixel_feat_gan": "alexnet-conv5-gan"}[criterion]
    p = load_config(GeneratorTrainConfig, preset, ["data.source=sample"])
    assert (p.loss.pix, p.loss.feat, p.loss.gan, p.generator.discriminator) == (*weights, disc)


def test_only_the_gan_criterion_trains_a_discriminator():
    ab = load_config(AblationConfig, "tiny-sample-ablation")
    built = {}
    for k in fig_a2.TRAINED:
        task = GeneratorTask(fig_a2.generator_config(ab, k, "standard", None), log=lambda m: None)
        built[k] = task.arch["discriminator"] is not None
    assert built == {"pixel": False, "pixel_feat": False, "pixel_feat_gan": True}


def test_a_preset_that_is_not_the_full_criterion_is_refused():
    ab = load_config(AblationConfig, PAPER, ["generator=alexnet-conv5-pixel-feat", SAMPLE])
    with pytest.raises(ConfigError, match=r"full criterion.*loss.gan=0"):
        fig_a2.generator_config(ab, "pixel", "standard", None)
    ab = load_config(AblationConfig, "tiny-sample-ablation",
                     ["generator_set=[loss.gan=100.0]"])  # no discriminator named
    with pytest.raises(ConfigError, match=r"generator.discriminator: loss.gan > 0 needs a"):
        fig_a2.generator_config(ab, "pixel_feat", "standard", None)
    with pytest.raises(ValueError, match="trains no generator"):
        fig_a2.criterion_config(fig_a2.full_config(load_config(AblationConfig, PAPER, [SAMPLE])),
                                "ri")


def test_cells_follow_the_figure_order_and_skip_a_null_column():
    ab = load_config(AblationConfig, PAPER, ["standard=null", "criteria=[ri, pixel]"])
    assert fig_a2.cells(ab) == [{"criterion": "pixel", "column": "robust"},
                                {"criterion": "ri", "column": "robust"}]


@pytest.mark.parametrize("sets, expected", [
    (["criteria=[pixel, pix]"], r"criteria: distinct criteria of"),
    (["criteria=[pixel, pixel]"], r"criteria: distinct criteria of"),
    (["criteria=[]"], r"criteria: distinct criteria of"),
    (["standard=null", "robust=null"], r"give at least one encoder"),
    (["examples=9", "images=4"], r"examples: at most images \(4\)"),
    (["ri_steps=0"], r"ri_steps: must be >= 1"),
    (["ri_step_size=nan"], r"ri_step_size"),
    (["name=a/b"], r"name: letters"),
])
def test_bad_config_values_are_named(sets, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(AblationConfig, "tiny-sample-ablation", sets)


def test_presets_are_ablation_configs():
    assert config_class("tiny-sample-ablation") is AblationConfig
    assert config_class(PAPER) is AblationConfig
    validate(build(AblationConfig, {}))


def test_table_has_a_row_per_criterion_and_na_for_missing_values():
    rows = {("pixel", "standard"): {"psnr": 12.0, "ssim": 0.3, "lpips": None},
            ("pixel", "robust"): {"psnr": 14.0, "ssim": 0.4, "lpips": None},
            ("ri", "robust"): {"psnr": 10.5, "ssim": 0.1, "lpips": 0.7}}
    md, text = fig_a2.table(rows)
    lines = md.splitlines()
    assert lines[0] == ("| Criterion | Standard PSNR (dB) ↑ | Standard SSIM ↑ | Standard LPIPS ↓ "
                        "| AR PSNR (dB) ↑ | AR SSIM ↑ | AR LPIPS ↓ |")
    assert lines[2] == "| Pixel | 12.0000 | 0.3000 | n/a | 14.0000 | 0.4000 | n/a |"
    assert lines[3] == "| RI (optimisation) | n/a | n/a | n/a | 10.5000 | 0.1000 | 0.7000 |"
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["criterion"] for r in table] == ["pixel", "ri"]
    assert table[1]["standard_psnr"] == "" and float(table[1]["robust_lpips"]) == 0.7


def test_figure_rows_ground_truth_then_standard_and_ar_per_criterion():
    truth = torch.zeros(3, 3, 8, 8)
    recons = {(k, c): torch.full((3, 3, 8, 8), i / 10) for i, (k, c) in enumerate(
        [("ri", "robust"), ("pixel", "robust"), ("pixel", "standard")])}
    rows, labels = fig_a2.figure(truth, recons)
    assert labels == ["ground truth", "Pixel, standard", "Pixel, AR", "RI (optimisation), AR"]
    assert [float(r.mean()) for r in rows] == pytest.approx([0.0, 0.2, 0.1, 0.0])
    grid = image_grid(rows, labels=labels)
    plain = image_grid(rows)
    assert grid.shape[0] == plain.shape[0] and grid.shape[1] > plain.shape[1] + 40
    # the labels are drawn in the margin: dark pixels left of the images, none over them
    margin = grid.shape[1] - plain.shape[1]
    assert (grid[:, :margin] < 128).any()
    np.testing.assert_array_equal(grid[:, margin:], plain)
    with pytest.raises(ValueError, match="one per row"):
        image_grid(rows, labels=labels[:2])
