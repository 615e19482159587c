"""Full-reference image-quality metrics: PSNR, SSIM and LPIPS.

Every metric takes two float tensors ``x`` and ``y`` of shape N x 3 x H x W with values in
[0, 1] (a tolerance of 1e-3 is allowed; anything further out, NaN, an integer dtype, a wrong rank,
channel count, shape or device raises ``ValueError``) and returns a 1-D float32 tensor of N values
on the inputs' device, one per image pair. Nothing is averaged over the batch: reduce it yourself.

* ``psnr``: ``10 * log10(data_range**2 / MSE)``, the MSE over all C*H*W values of one image,
  computed in float64. Identical images have MSE 0 and give ``+inf`` (not an error, not a cap),
  so take care when averaging.
* ``ssim``: Wang et al. (2004) with an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, population (not sample) covariances, float64. The local statistics use a 'valid'
  convolution (no padding), the SSIM map is averaged over its (H-10) x (W-10) valid positions and
  over the three channels. This equals scikit-image's ``structural_similarity(a, b,
  channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``, which filters with reflect padding and then crops those borders
  away. H and W must be at least 11.
* ``lpips``: the ``lpips`` package (v0.1 linear heads on an ImageNet AlexNet/VGG/SqueezeNet
  trunk), in eval mode (dropout off), without gradients, inputs mapped to [-1, 1]. Lower is more
  similar; identical images give 0. The model is built once per (net, device) and cached. The
  linear heads ship with the package, but the trunk comes from torchvision via the torch hub cache
  (``torch.hub.get_dir()/checkpoints/<file>``); since this library never downloads anything, a
  missing trunk file raises ``LPIPSWeightsMissing`` instead of a download attempt, and random
  trunk weights are never used. Note that torch hub loads an already-present file without
  checking its hash, so put only the genuine torchvision file there.
"""

from __future__ import annotations

import os
import warnings
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

__all__ = ["LPIPSWeightsMissing", "lpips", "lpips_available", "psnr", "ssim"]

_TOL = 1e-3
_SSIM_SIZE, _SSIM_SIGMA, _K1, _K2 = 11, 1.5, 0.01, 0.03
# lpips net name -> (torchvision weights enum, the enum member `pretrained=True` resolves to)
_TRUNKS = {"alex": ("AlexNet_Weights", "AlexNet"), "vgg": ("VGG16_Weights", "VGG16"),
           "squeeze": ("SqueezeNet1_1_Weights", "SqueezeNet 1.1")}
_LPIPS_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


class LPIPSWeightsMissing(RuntimeError):
    """The torchvision ImageNet trunk weights LPIPS needs are not in the torch hub cache."""


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor with values in [0, 1], "
                             f"got {type(t).__name__} {getattr(t, 'dtype', '')}")
        if t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape N x 3 x H x W, got {tuple(t.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y are on different devices: {x.device} and {y.device}")
    for name, t in (("x", x), ("y", y)):
        if not bool(((t >= -_TOL) & (t <= 1 + _TOL)).all()):  # also catches NaN
            raise ValueError(f"{name} has values outside [0, 1] (min {t.min().item():.4g}, "
                             f"max {t.max().item():.4g}); pass images scaled to [0, 1]")


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (N values); ``+inf`` where the two images are identical."""
    _check_pair(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (N values), averaged over channels; 1.0 for identical images."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < _SSIM_SIZE:
        raise ValueError(f"ssim needs H and W >= {_SSIM_SIZE}, got {tuple(x.shape[-2:])}")
    # float32: much faster than float64 on CPU (depthwise conv; docs/benchmarks.md), within
    # 1e-5 of skimage's float64
    x, y = x.float(), y.float()
    r = torch.arange(_SSIM_SIZE, dtype=torch.float32, device=x.device) - (_SSIM_SIZE - 1) / 2
    g = torch.exp(-r ** 2 / (2 * _SSIM_SIGMA ** 2))
    g = g / g.sum()
    # Local means of x, y, x^2, y^2, xy in one separable, depthwise, 'valid' Gaussian filtering.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)               # N x 15 x H x W
    c = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(c, 1, 1, _SSIM_SIZE), groups=c)
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(c, 1, _SSIM_SIZE, 1), groups=c)
    ux, uy, uxx, uyy, uxy = maps.chunk(5, dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def _trunk_weights(net: str) -> tuple[str, str, str]:
    """(absolute cache path, download URL, description) of the trunk file LPIPS(net) loads."""
    if net not in _TRUNKS:
        raise ValueError(f"net must be one of {sorted(_TRUNKS)}, got {net!r}")
    import torchvision.models as tvm

    enum_name, arch = _TRUNKS[net]
    # lpips calls tv.<arch>(pretrained=True), which torchvision maps to IMAGENET1K_V1 and fetches
    # with torch.hub.load_state_dict_from_url: <get_dir()>/checkpoints/<basename of the URL>.
    url = getattr(tvm, enum_name).IMAGENET1K_V1.url
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    return os.path.abspath(path), url, f"torchvision's ImageNet {arch} weights"


def lpips_available(net: str = "alex") -> bool:
    """True when the lpips package is installed and the trunk weights for ``net`` are present."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False
    return os.path.isfile(_trunk_weights(net)[0])


def _lpips_model(net: str, device: torch.device) -> torch.nn.Module:
    key = (net, str(device))
    if key not in _LPIPS_MODELS:
        path, url, what = _trunk_weights(net)
        if not os.path.isfile(path):
            raise LPIPSWeightsMissing(
                f"LPIPS(net={net!r}) needs {what}, expected at {path} (torch hub cache), and "
                f"arinv never downloads them. On a machine with internet, download {url} and copy "
                f"the file to {path}, or set TORCH_HOME to a directory whose hub/checkpoints/ "
                f"holds {os.path.basename(path)}.")
        try:
            import lpips as lpips_pkg
        except ImportError as e:
            raise ImportError("lpips() needs the lpips package: pip install 'arinv[metrics]'") from e
        with warnings.catch_warnings():  # torchvision's "'pretrained' is deprecated" warnings
            warnings.simplefilter("ignore", UserWarning)
            # Keep use_dropout at its default True: the shipped linear-head keys are
            # lin*.model.1.weight (index 0 is the Dropout) and lpips loads them with strict=False,
            # so use_dropout=False would silently leave the heads random. eval() disables dropout.
            model = lpips_pkg.LPIPS(net=net, verbose=False)
        _LPIPS_MODELS[key] = model.eval().requires_grad_(False).to(device)
    return _LPIPS_MODELS[key]


def lpips(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """Per-image LPIPS distance (N values, >= 0; 0 for identical images). Not differentiable."""
    _check_pair(x, y)
    model = _lpips_model(net, x.device)
    with torch.no_grad():
        d = model(x.float() * 2 - 1, y.float() * 2 - 1)               # N x 1 x 1 x 1
    return d.flatten().float()
