"""Image denoising with the wavelet-pooling autoencoder (Sec. A3.2, A4.3).

``add_noise`` makes the paper's corruption: white Gaussian noise of standard deviation
``sigma`` (on the [0, 1] scale; the paper's is 50/255), seeded per image, clipped to [0, 1]
by default (Fig. A7's "clipped white Gaussian noise") or left unclipped.

``denoise`` runs a trained ``arinv.models.denoiser.WaveletAutoencoder`` on images of any size:
the model itself is fully convolutional from 63 px a side, smaller images are
replicate-padded at the bottom and right up to 63 px and cropped back, and the work goes in
chunks of at most ``max_pixels`` pixels so a batch of large photographs does not need their
activations all at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_SIGMA = 50 / 255
MIN_SIDE = 63                      # the wavelet autoencoder's smallest input side
DEFAULT_MAX_PIXELS = 1024 * 1024   # input pixels per forward pass


def add_noise(images: torch.Tensor, sigma: float = PAPER_SIGMA, *, clip: bool = True,
              seeds: Sequence[int] | None = None) -> torch.Tensor:
    """``images`` (N x C x H x W in [0, 1]) plus N(0, sigma^2) noise; image i's noise comes
    from its own generator seeded ``seeds[i]`` (default: i), so it does not depend on batching."""
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"sigma: must be a number >= 0 (on the [0, 1] scale), got {sigma!r}")
    seeds = list(range(images.shape[0])) if seeds is None else list(seeds)
    if len(seeds) != images.shape[0]:
        raise ValueError(f"seeds: need one per image ({images.shape[0]}), got {len(seeds)}")
    noise = torch.stack([
        torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(int(s)))
        for s in seeds]).to(images.device, images.dtype)
    out = images + sigma * noise
    return out.clamp(0, 1) if clip else out


@torch.no_grad()
def denoise(images: torch.Tensor, autoencoder: nn.Module, *,
            max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """The autoencoder's reconstruction of N x 3 x H x W ``images`` (noisy, any H and W),
    float32 in [0, 1], on ``images``' device."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(getattr(images, "shape", ()))
        hint = "; a grayscale image: convert it to RGB first" if len(shape) == 4 and \
            shape[1] == 1 else ""
        raise ValueError(f"images: must be an N x 3 x H x W tensor, got {shape}{hint}")
    if not images.is_floating_point():
        raise ValueError(f"images: must be float in [0, 1], got {images.dtype} (divide by 255)")
    device = next(autoencoder.parameters()).device
    h, w = images.shape[-2:]
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    per = max(1, max_pixels // ((h + ph) * (w + pw)))
    was = autoencoder.training
    autoencoder.eval()
    try:
        out = []
        for s in range(0, images.shape[0], per):
            x = images[s:s + per].to(device, torch.float32)
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            y = autoencoder(x)[..., :h, :w].float().clamp(0, 1)
            out.append(y.to(images.device))
    finally:
        autoencoder.train(was)
    return torch.cat(out)
