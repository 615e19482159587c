"""Table A2's upscaling and comparison (arinv.downstream.scale), checked with stand-in
autoencoders whose output is known: one returns its input, one applies a fixed blur whose PSNR
is computed independently (scipy's filter, scikit-image's PSNR and SSIM)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from arinv.downstream.scale import (
    batches_by_pixels,
    common_region,
    figure,
    reconstruct,
    scale_table,
    upscaled,
)
from arinv.experiments import table_a2

R = 24  # the stand-ins' "encoder resolution"


class Tap(nn.Module):
    """An encoder whose only tap returns the image itself."""
    input_size = R

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls: list[tuple] = []

    def features(self, x, layer):
        assert layer == "pixels"
        self.calls.append(tuple(x.shape))
        return x


class Identity(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, f):
        return f


class Blur(Identity):
    """A fixed 3 x 3 box blur, edges replicated."""

    def forward(self, f):
        k = torch.full((3, 1, 3, 3), 1 / 9)
        return F.conv2d(F.pad(f, (1, 1, 1, 1), mode="replicate"), k, groups=3)


class Shrink(Identity):
    """Returns two pixels fewer than it was given (as a strided generator might)."""

    def forward(self, f):
        return f[..., 1:-1, 1:-1]


def images(n=3, size=R, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images: a few low-frequency components, in [0, 1]
    low = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_upscaled_is_the_bicubic_target_of_the_encoder_resolution(L):
    x = images(size=40)  # not the encoder resolution: resized to R first
    t = upscaled(x, L, R)
    assert t.shape == (3, 3, L * R, L * R) and t.dtype == torch.float32
    assert 0 <= t.min() and t.max() <= 1
    base = upscaled(x, 1, R)
    assert base.shape[-1] == R
    # averaging L x L blocks of the upscaled image gives back the R px image closely
    back = F.avg_pool2d(t, L)
    assert (back - base).abs().max() < 0.03
    assert torch.equal(upscaled(base, 1, R), base)  # already at R: untouched


def test_identity_autoencoder_is_perfect_at_every_L():
    enc, gen = Tap(), Identity()
    r = scale_table({"standard": (enc, gen, "pixels")}, images(), R, factors=[1, 2, 4])
    for L in (1, 2, 4):
        m = r["metrics"]["standard"][L]
        assert torch.isinf(m["psnr"]).all() and torch.allclose(m["ssim"], torch.ones(3))
    # the encoder saw the full-size targets
    assert [c[-1] for c in enc.calls] == [R, 2 * R, 4 * R]


@pytest.mark.parametrize("L", [1, 3, 6])
def test_blur_autoencoder_matches_an_independent_psnr(L):
    from scipy.ndimage import uniform_filter
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = images(seed=L)
    r = scale_table({"robust": (Tap(), Blur(), "pixels")}, x, R, factors=[L])
    m = r["metrics"]["robust"][L]
    target = upscaled(x, L, R).double().numpy()
    for i in range(3):
        blurred = uniform_filter(target[i], size=(1, 3, 3), mode="nearest")
        ref = peak_signal_noise_ratio(target[i], blurred, data_range=1.0)
        assert math.isclose(m["psnr"][i].item(), ref, rel_tol=1e-4), (i, ref)
        s = structural_similarity(target[i], blurred, channel_axis=0, data_range=1.0,
                                  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(m["ssim"][i].item() - s) < 1e-3
    # a blur loses more at L = 1 (detail at every pixel) than on a smooth upscaled image
    if L > 1:
        m1 = scale_table({"robust": (Tap(), Blur(), "pixels")}, x, R, factors=[1])
        assert m["psnr"].mean() > m1["metrics"]["robust"][1]["psnr"].mean()


def test_a_generator_of_another_size_is_compared_on_the_common_centre():
    x = images()
    r = scale_table({"standard": (Tap(), Shrink(), "pixels")}, x, R, factors=[2])
    # the shrunk output is the target's centre: identical there
    assert torch.isinf(r["metrics"]["standard"][2]["psnr"]).all()
    a, b = common_region(torch.zeros(1, 3, 10, 12), torch.zeros(1, 3, 8, 12))
    assert a.shape == b.shape == (1, 3, 8, 12)


def test_reconstruct_batches_by_pixel_budget():
    enc = Tap()
    x = upscaled(images(n=5), 2, R)  # 48 px
    out = reconstruct(enc, Identity(), x, "pixels", max_pixels=2 * 48 * 48)
    assert torch.equal(out, x)
    assert [c[0] for c in enc.calls] == [2, 2, 1]
    reconstruct(enc, Identity(), x, "pixels", max_pixels=10)  # below one image: one at a time
    assert [c[0] for c in enc.calls[3:]] == [1] * 5
    assert batches_by_pixels(4, 100, 250) == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ValueError, match="max_pixels"):
        batches_by_pixels(4, 100, 0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="factor"):
        upscaled(images(), 0, R)
    with pytest.raises(ValueError, match="uint8"):
        upscaled(torch.zeros(1, 3, R, R, dtype=torch.uint8), 1, R)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        upscaled(torch.zeros(3, R, R), 1, R)
    with pytest.raises(ValueError, match="factors"):
        scale_table({"standard": (Tap(), Identity(), "pixels")}, images(), R, factors=[0])


def test_table_and_figure_layout():
    x = images(n=2)
    pairs = {"standard": (Tap(), Blur(), "pixels"), "robust": (Tap(), Identity(), "pixels")}
    seen = []
    r = scale_table(pairs, x, R, factors=[1, 2], examples=1, tile=16,
                    on_factor=lambda L, m: seen.append((L, sorted(m))))
    assert seen == [(1, ["robust", "standard"]), (2, ["robust", "standard"])]
    rows = table_a2.means(r["metrics"])
    assert math.isnan(rows["standard"][1]["lpips"])  # not measured: n/a, never a number
    md, csv_text = table_a2.table(rows, R)
    assert f"| 2 ({2 * R} × {2 * R}) |" in md and "(16.2777)" in md and "n/a" in md
    assert csv_text.splitlines()[0].startswith("L,size,standard_psnr,standard_ssim")
    grid = figure(r["examples"], ["standard", "robust"])
    assert len(grid) == 3 and all(t.shape == (2, 3, 16, 16) for t in grid)
    assert torch.equal(grid[2], grid[0])  # the identity column reproduces the inputs
    assert np.isfinite(table_a2.paper_value(10, "robust", "psnr"))
    assert table_a2.paper_value(10, "robust", "psnr") == 23.9566


def test_scale_table_works_chunk_by_chunk_with_the_same_result():
    x = images(n=5)
    enc = Tap()
    small = scale_table({"c": (enc, Blur(), "pixels")}, x, R, factors=[2],
                        max_pixels=2 * (2 * R) ** 2, examples=3, tile=16)
    assert [c[0] for c in enc.calls] == [2, 2, 1]  # never more than 2 targets at once
    big = scale_table({"c": (Tap(), Blur(), "pixels")}, x, R, factors=[2], max_pixels=10 ** 9,
                      examples=3, tile=16)
    for k in ("psnr", "ssim"):
        torch.testing.assert_close(small["metrics"]["c"][2][k], big["metrics"]["c"][2][k])
    for key in ("target", "c"):
        assert small["examples"][2][key].shape == (3, 3, 16, 16)
        torch.testing.assert_close(small["examples"][2][key], big["examples"][2][key])
