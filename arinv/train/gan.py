"""One GAN feature-inversion step (Sec. A4.1): a discriminator update, then a generator update.

The encoder ``F`` is frozen: eval mode, no parameter gradients, and it sees generated images
exactly as it saw training images (both in [0, 1]; its normalisation lives inside it).
With ``weights.gan == 0`` no discriminator is needed and none is updated (the pixel and
pixel + feature criteria of Fig. A2).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from arinv.config import LossConfig
from arinv.losses import feature_loss, gan_loss, pixel_loss


def freeze(encoder: nn.Module) -> nn.Module:
    """Eval mode and no gradients for the encoder's parameters, for good."""
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def gan_step(
    generator: nn.Module,
    encoder: nn.Module,
    x: torch.Tensor,
    *,
    layer: str,
    opt_g: torch.optim.Optimizer,
    weights: LossConfig,
    discriminator: nn.Module | None = None,
    opt_d: torch.optim.Optimizer | None = None,
    autocast=None,
) -> dict[str, torch.Tensor]:
    """Images ``x`` in [0, 1] -> one D update (if ``weights.gan``) and one G update.

    Returns 0-d tensors: ``loss_g``, ``pix``, ``feat``, ``gan`` and, with a discriminator,
    ``loss_d``, ``d_real`` and ``d_fake`` (mean probabilities).
    """
    use_gan = weights.gan > 0
    if use_gan and (discriminator is None or opt_d is None):
        raise ValueError("weights.gan > 0 needs a discriminator and its optimiser")
    amp = autocast or contextlib.nullcontext()
    if encoder.training:
        raise ValueError("the encoder must be frozen (arinv.train.gan.freeze) before gan_step")
    generator.train()
    with torch.no_grad(), amp:
        f = encoder.features(x, layer)
    out: dict[str, torch.Tensor] = {}

    with amp:
        x_hat = generator(f)
    if use_gan:
        discriminator.train()
        with amp:  # one forward over real + fake: DDP allows one forward per backward
            d_real, d_fake = discriminator(torch.cat([x, x_hat.detach()]),
                                           torch.cat([f, f])).chunk(2)
            loss_d = weights.disc * (gan_loss(d_real, True) + gan_loss(d_fake, False))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        out.update(loss_d=loss_d.detach(), d_real=torch.sigmoid(d_real.detach().float()).mean(),
                   d_fake=torch.sigmoid(d_fake.detach().float()).mean())

    with amp:
        pix = pixel_loss(x_hat.float(), x)
        feat = feature_loss(encoder.features(x_hat, layer).float(), f.float())
        adv = gan_loss(discriminator(x_hat, f), True) if use_gan else pix.new_zeros(())
        loss_g = weights.pix * pix + weights.feat * feat + weights.gan * adv
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    if use_gan:
        opt_d.zero_grad(set_to_none=True)  # drop the D gradients the G loss left behind
    out.update(loss_g=loss_g.detach(), pix=pix.detach(), feat=feat.detach(), gan=adv.detach())
    return out


def denoise_step(model: nn.Module, encoder: nn.Module, x: torch.Tensor, noisy: torch.Tensor, *,
                 layer: str, opt: torch.optim.Optimizer, weights: LossConfig,
                 autocast=None) -> dict[str, torch.Tensor]:
    """One update of a denoising autoencoder (Sec. A4.3): ``model(noisy)`` against the clean
    ``x`` with the pixel and feature losses (features of the frozen ``encoder`` at ``layer``).
    Returns 0-d tensors ``loss_g``, ``pix``, ``feat`` and ``gan`` (0: no GAN term)."""
    if encoder.training:
        raise ValueError("the encoder must be frozen (arinv.train.gan.freeze) before denoise_step")
    amp = autocast or contextlib.nullcontext()
    model.train()
    with torch.no_grad(), amp:
        f = encoder.features(x, layer)
    with amp:
        x_hat = model(noisy)
        pix = pixel_loss(x_hat.float(), x)
        feat = feature_loss(encoder.features(x_hat, layer).float(), f.float())
        loss = weights.pix * pix + weights.feat * feat
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss_g": loss.detach(), "pix": pix.detach(), "feat": feat.detach(),
            "gan": pix.new_zeros(())}


def build_gan_optimizers(generator: nn.Module, discriminator: nn.Module | None, *,
                         lr_g: float = 3e-4, lr_d: float = 1.2e-3,
                         betas: tuple[float, float] = (0.0, 0.9)):
    """Adam with betas (0, 0.9): lr 3e-4 for G and 1.2e-3 for D (Sec. A4.1)."""
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=betas)
    opt_d = (torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=betas)
             if discriminator is not None else None)
    return opt_g, opt_d
