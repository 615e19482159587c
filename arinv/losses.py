"""Feature-inversion losses (Sec. A4.1).

Reduction, everywhere: **sum over each image's elements, mean over the batch**. The seed's
weights (generator: lambda_pix 2e-6, lambda_feat 1e-2, lambda_GAN 100; discriminator: lambda_disc
2e-6) were tuned for per-image sums (a 224 px image has 150,528 pixel values, a conv5 map
9,216 activations), so a mean over elements would change what every weight means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_image_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def pixel_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1: ``||G(f) - x||_1`` per image, averaged over the batch."""
    return _per_image_sum((x_hat - x).abs()).mean()


def feature_loss(f_hat: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``||F(G(f)) - F(x)||_2^2`` per image, averaged over the batch."""
    return _per_image_sum((f_hat - f).pow(2)).mean()


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of the discriminator's logits against "real" or "fake" (one value
    per image, so the per-image sum is the value itself), averaged over the batch."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target)
