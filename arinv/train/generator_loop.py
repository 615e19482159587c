"""Single-process feature-inversion training (no Ray): ``gan_step`` over local batches, with
per-epoch checkpoints that an interrupted run resumes from, then PSNR / SSIM (/ LPIPS when its
weights are present) on held-out images and an image grid."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from arinv.config import GeneratorTrainConfig, flatten, to_dict
from arinv.data.local import local_loaders
from arinv.inversion import invert_by_optimisation
from arinv.metrics.image import lpips, lpips_available, psnr, ssim
from arinv.models import create_discriminator, create_encoder, create_generator
from arinv.viz import save_grid

from .gan import build_gan_optimizers, freeze, gan_step
from .loop import collect, load_encoder
from .runtime import EpochMeter, autocast_for, prepare_batch, prepare_model, resolve_device, seed_everything
from .state import CheckpointError, load_checkpoint, read_checkpoint, resume, save_checkpoint


def frozen_encoder(cfg: GeneratorTrainConfig, device, log=print,
                   checkpoint: str | Path | None = None) -> torch.nn.Module:
    """The encoder to invert, frozen; ``checkpoint`` overrides ``cfg.encoder.checkpoint`` (a
    pipeline passes the local file it fetched for a registry URI)."""
    ref = cfg.encoder
    path = checkpoint or ref.checkpoint
    if path:
        enc, _ = load_encoder(path)
        if enc.arch["name"] != ref.name:
            raise CheckpointError(f"{ref.checkpoint}: holds a {enc.arch['name']} encoder, the "
                                  f"config's encoder.name is {ref.name}")
    else:
        log(f"warning: encoder.checkpoint is null: inverting a randomly initialised {ref.name}")
        enc = create_encoder(ref.name)
    return freeze(prepare_model(enc, device, cfg.runtime.channels_last))


def fit_generator(cfg: GeneratorTrainConfig, workdir: str | Path, *, progress: bool = True,
                  log=print) -> dict:
    """Train (resuming from ``workdir/checkpoints/last.pt``), evaluate, write
    ``workdir/metrics.json`` and ``workdir/reconstructions.png``; returns the metrics."""
    workdir = Path(workdir)
    device = resolve_device(cfg.runtime.device)
    seed_everything(cfg.runtime.seed)
    enc = frozen_encoder(cfg, device, log)
    resolution = cfg.resolution or enc.input_size
    train, val, _ = local_loaders(cfg.data, resolution, cfg.optim.batch_size, cfg.runtime.seed,
                                  augment=cfg.augment)
    g, d, arch = build_inverter(cfg, enc, device)
    o = cfg.optim
    opt_g, opt_d, scheds, modules = build_training_state(cfg, g, d)
    ckpt, flat = workdir / "checkpoints" / "last.pt", flatten(cfg)
    start, history = resume(ckpt, kind="generator", arch=arch, modules=modules, config=flat,
                            map_location=device)
    if start:
        log(f"resuming {cfg.name} from {ckpt} at epoch {start}/{o.epochs}")
    for epoch in range(start, o.epochs):
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch)
        metrics = train_generator_epoch(g, enc, train, cfg, device, opt_g=opt_g,
                                        discriminator=d, opt_d=opt_d, progress=progress,
                                        desc=f"{cfg.name} epoch {epoch + 1}/{o.epochs}")
        for s in scheds:
            s.step()
        history.append({"epoch": epoch + 1, **metrics})
        save_checkpoint(ckpt, kind="generator", arch=arch, modules=modules, config=to_dict(cfg),
                        progress={"epoch": epoch + 1, "history": history})
    quality = evaluate_generator(g, enc, val, cfg, device, workdir / "reconstructions.png")
    result = {"name": cfg.name, "config": flat, "history": history, "quality": quality,
              "checkpoint": str(ckpt), "grid": str(workdir / "reconstructions.png")}
    (workdir / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def build_inverter(cfg: GeneratorTrainConfig, encoder, device=None):
    """(generator, discriminator or None, arch) for inverting ``encoder``; ``arch`` identifies
    the run's architecture in its checkpoints."""
    sn = cfg.generator.spectral_norm
    g = create_generator(cfg.generator.name, spectral_norm=sn)
    d = create_discriminator(cfg.generator.discriminator, spectral_norm=sn) if cfg.loss.gan > 0 else None
    arch = {"generator": g.arch, "discriminator": d.arch if d else None, "encoder": encoder.arch}
    if device is not None:
        g = prepare_model(g, device, cfg.runtime.channels_last)
        d = prepare_model(d, device, cfg.runtime.channels_last) if d is not None else None
    return g, d, arch


def build_training_state(cfg: GeneratorTrainConfig, g, d):
    """Adam for G (and D), their step schedules, and the checkpointed modules by name."""
    o = cfg.optim
    opt_g, opt_d = build_gan_optimizers(g, d, lr_g=o.lr_g, lr_d=o.lr_d, betas=(o.beta1, o.beta2))
    scheds = [torch.optim.lr_scheduler.StepLR(opt, o.lr_step_epochs, o.lr_gamma)
              for opt in (opt_g, opt_d) if opt is not None]
    modules = {"generator": g, "opt_g": opt_g, "sched_g": scheds[0]}
    if d is not None:
        modules.update(discriminator=d, opt_d=opt_d, sched_d=scheds[1])
    return opt_g, opt_d, scheds, modules


def train_generator_epoch(g, enc, batches, cfg: GeneratorTrainConfig, device, *, opt_g,
                          discriminator=None, opt_d=None, progress: bool = True,
                          desc: str = "train") -> dict[str, float]:
    """One pass of ``gan_step`` over ``batches``; per-image means plus ``n``, ``seconds``,
    ``data_wait_s`` and ``images_per_s`` (as ``arinv.train.loop.train_epoch``)."""
    amp = autocast_for(device, cfg.runtime.amp)
    meter = EpochMeter(batches)
    bar = tqdm(meter, desc=desc, leave=False, disable=not progress, unit="batch")
    for xb, yb in bar:
        x, _ = prepare_batch(xb, yb, device, cfg.runtime.channels_last)
        out = gan_step(g, enc, x, layer=cfg.encoder.layer, opt_g=opt_g, weights=cfg.loss,
                       discriminator=discriminator, opt_d=opt_d, autocast=amp)
        means = meter.add(out, len(x))
        bar.set_postfix(pix=f"{means['pix']:.4g}", feat=f"{means['feat']:.4g}")
    return meter.summary()


@torch.no_grad()
def reconstruct(generator, encoder, x: torch.Tensor, layer: str, batch_size: int = 64):
    generator.eval()
    device = next(generator.parameters()).device
    outs = [generator(encoder.features(x[i:i + batch_size].to(device), layer)).float().cpu()
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs).clamp(0, 1)


def evaluate_generator(generator, encoder, batches, cfg: GeneratorTrainConfig, device,
                       grid_path: Path | None = None) -> dict:
    """PSNR / SSIM (and LPIPS when its backbone weights are present) on held-out images, for
    the generator and, with ``cfg.ri_steps``, the optimisation-based RI baseline. The grid's
    rows: input, generator reconstruction[, RI reconstruction]."""
    x, _ = collect(batches, cfg.eval_images)
    recons = {"generator": reconstruct(generator, encoder, x, cfg.encoder.layer,
                                       cfg.optim.batch_size)}
    if cfg.ri_steps:
        with torch.no_grad():
            target = encoder.features(x.to(device), cfg.encoder.layer)
        recons["ri_baseline"] = invert_by_optimisation(
            encoder, target, cfg.encoder.layer, size=x.shape[-1], steps=cfg.ri_steps,
            generator=torch.Generator().manual_seed(cfg.runtime.seed)).cpu()
    q = {"n": len(x), **_quality(recons["generator"], x)}
    if "ri_baseline" in recons:
        q["ri_baseline"] = _quality(recons["ri_baseline"], x)
    if grid_path is not None:  # eight images spread over the (class-ordered) held-out set
        idx = torch.linspace(0, len(x) - 1, min(8, len(x))).long()
        save_grid(grid_path, [x[idx]] + [r[idx] for r in recons.values()])
    return q


def _quality(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    p = psnr(x_hat, x)
    return {"psnr": float(p[torch.isfinite(p)].mean()), "ssim": float(ssim(x_hat, x).mean()),
            "lpips": float(lpips(x_hat, x).mean()) if lpips_available() else None}


def load_generator(path: str | Path, device="cpu") -> tuple[torch.nn.Module, GeneratorTrainConfig]:
    """Rebuild the generator saved by a generator run (weights only; eval mode) and its config."""
    from arinv.config import build

    payload = read_checkpoint(path, "generator")
    arch = dict(payload["arch"])
    g_arch = dict(arch["generator"])
    g = create_generator(g_arch.pop("name"), **g_arch)
    load_checkpoint(path, kind="generator", arch={**arch, "generator": g.arch},
                    modules={"generator": g}, restore_rng=False)
    return g.to(device).eval(), build(GeneratorTrainConfig, payload["config"])
