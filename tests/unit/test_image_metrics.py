import io
import os
import socket
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import arinv.metrics.image as im
from arinv.data.sample import load_photo

ALEX_FILE = "alexnet-owt-7be5be79.pth"


def _crop(name, top, left, h=96, w=96):
    return load_photo(name)[top:top + h, left:left + w].astype(np.float64) / 255


def _jpeg(a, quality):
    buf = io.BytesIO()
    Image.fromarray(np.round(a * 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float64) / 255


def _batch(arrays):
    """H x W x 3 float arrays -> N x 3 x H x W float32 tensor."""
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()


def _numpy(t):
    """Back to float64 H x W x 3 arrays holding exactly the tensor's float32 values."""
    return [a.transpose(1, 2, 0).astype(np.float64) for a in t.numpy()]


@pytest.fixture(scope="module")
def pairs():
    """Natural-image crops paired with noisy, blurred, JPEG-compressed and re-toned versions."""
    rng = np.random.default_rng(0)
    refs = [_crop("astronaut", 100, 150), _crop("coffee", 150, 250),
            _crop("chelsea", 80, 200), _crop("rocket", 200, 100, h=96, w=80)]
    dists = [np.clip(refs[0] + rng.normal(0, 0.05, refs[0].shape), 0, 1),
             gaussian_filter(refs[1], sigma=(1.2, 1.2, 0)),
             _jpeg(refs[2], quality=15),
             np.clip(0.8 * refs[3] + 0.1, 0, 1)]
    return refs, dists


def test_psnr_ssim_match_skimage_per_image(pairs):
    refs, dists = pairs
    same = [r.shape == refs[0].shape for r in refs]
    for group in ([i for i, s in enumerate(same) if s], [i for i, s in enumerate(same) if not s]):
        x, y = _batch([refs[i] for i in group]), _batch([dists[i] for i in group])
        got_p, got_s = im.psnr(x, y), im.ssim(x, y)
        assert got_p.shape == got_s.shape == (len(group),)
        want_p, want_s = [], []
        for a, b in zip(_numpy(x), _numpy(y)):
            want_p.append(peak_signal_noise_ratio(a, b, data_range=1.0))
            want_s.append(structural_similarity(a, b, channel_axis=-1, data_range=1.0,
                                                gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False))
        np.testing.assert_allclose(got_p.numpy(), want_p, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_s.numpy(), want_s, rtol=0, atol=1e-4)
    # the degradations are real ones, not near-identity: per-image values differ widely
    s = im.ssim(_batch(refs[:3]), _batch(dists[:3]))
    assert float(s.max() - s.min()) > 0.05 and float(s.max()) < 0.99


def test_identical_images(pairs):
    x = _batch(pairs[0][:3])
    assert torch.isinf(im.psnr(x, x)).all() and (im.psnr(x, x) > 0).all()
    torch.testing.assert_close(im.ssim(x, x), torch.ones(3), rtol=0, atol=1e-12)
    torch.testing.assert_close(im.ssim(x, x.clone()), torch.ones(3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", [im.psnr, im.ssim, im.lpips])
def test_bad_inputs_raise_value_error(fn):
    x = torch.rand(2, 3, 32, 32)
    bad = {"shape mismatch": (x, torch.rand(2, 3, 32, 31)),
           "batch mismatch": (x, torch.rand(1, 3, 32, 32)),
           "rank": (x[0], x[1]),
           "channels": (x[:, :1], x[:, :1]),
           "range": (x, x + 0.01),
           "negative": (x - 0.01, x),
           "nan": (x, torch.where(x > 0.5, torch.nan, x)),
           "integer": ((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))}
    for what, (a, b) in bad.items():
        try:
            fn(a, b)
        except ValueError:
            continue
        pytest.fail(f"{fn.__name__}: no ValueError for {what}")
    if fn is not im.lpips:  # slightly outside [0, 1], within the 1e-3 tolerance: accepted
        assert fn(x + 5e-4, x - 5e-4).shape == (2,)


def test_ssim_needs_window_sized_images():
    with pytest.raises(ValueError, match="H and W"):
        im.ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))


# ---------------------------------------------------------------------------------- LPIPS


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, an empty model cache, and a network that fails loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any torch.hub.set_dir()
    assert torch.hub.get_dir() == os.path.join(str(tmp_path), "hub")
    monkeypatch.setattr(im, "_LPIPS_MODELS", {})

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return tmp_path


def test_lpips_missing_weights_raise(torch_home, monkeypatch):
    import lpips as lpips_pkg

    def no_build(*args, **kwargs):
        raise AssertionError("LPIPS must not be constructed without trunk weights")

    monkeypatch.setattr(lpips_pkg, "LPIPS", no_build)
    path = os.path.join(str(torch_home), "hub", "checkpoints", ALEX_FILE)
    assert not im.lpips_available()
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(im.LPIPSWeightsMissing) as e:
        im.lpips(x, x)
    assert isinstance(e.value, RuntimeError)
    assert path in str(e.value)
    assert f"https://download.pytorch.org/models/{ALEX_FILE}" in str(e.value)
    assert im._LPIPS_MODELS == {}


def test_lpips_loads_trunk_from_hub_cache(torch_home, pairs):
    # RANDOM AlexNet weights of the right shapes, only to exercise the real loading path
    # (lpips -> torchvision alexnet(pretrained=True) -> torch.hub cache) offline. The distances
    # computed below are NOT real LPIPS values.
    torch.manual_seed(1234)
    state = torchvision.models.alexnet(weights=None).state_dict()
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / ALEX_FILE)
    assert im.lpips_available()

    refs, dists = pairs
    x, y = _batch(refs[:3])[..., :64, :64], _batch(dists[:3])[..., :64, :64]
    d = im.lpips(x, y)
    assert d.shape == (3,) and torch.isfinite(d).all() and (d >= 0).all()
    assert im.lpips(x, x).abs().max() < 1e-6

    model = im._lpips_model("alex", torch.device("cpu"))
    assert list(im._LPIPS_MODELS) == [("alex", "cpu")]  # built once, then reused
    # the trunk is the file's weights...
    torch.testing.assert_close(model.net.slice1.get_submodule("0").weight, state["features.0.weight"],
                               rtol=0, atol=0)
    torch.testing.assert_close(model.net.slice5.get_submodule("10").weight, state["features.10.weight"],
                               rtol=0, atol=0)
    # ...and the linear heads are the ones shipped with lpips (not left random by strict=False)
    import lpips as lpips_pkg

    heads = torch.load(os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1",
                                    "alex.pth"), map_location="cpu")
    torch.testing.assert_close(model.lin0.model[1].weight, heads["lin0.model.1.weight"])
    # eval mode everywhere, so dropout is off and repeated calls agree exactly
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(im.lpips(x, y), d, rtol=0, atol=0)
    assert not d.requires_grad
