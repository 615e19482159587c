"""What the one training loop (``arinv.train.run.fit``) trains: a task per model kind.

A task builds its models and optimisers, trains one epoch over the batches a backend gives it,
steps its schedules and evaluates on held-out images. It knows nothing of Ray, MLflow or where
checkpoints go. Contract (``fit`` relies on it):

- ``cls``, ``kind``: the config class and checkpoint kind; ``cfg``, ``name``, ``epochs``,
  ``batch_size`` (global), ``resolution``, ``augment``, ``arch`` (what a checkpoint must match);
- ``build(device) -> modules``: creates the models (after ``fit`` seeded the RNGs; the
  constructor builds them on the meta device only, for ``arch``) and optimisers; returns the
  checkpointed objects by name (models, optimisers, schedules);
- ``wrap(ddp) -> trainables``: wraps the trained modules for data parallelism and returns them;
- ``train_epoch(batches, *, accumulate, progress, desc) -> summary`` (``EpochMeter.summary``);
- ``reduce_keys``: the per-image metrics of that summary to average over workers;
- ``end_epoch() -> metrics``: steps the schedules;
- ``eval_every``, ``eval_images``: the evaluation cadence and how many held-out images it needs;
- ``evaluate(x, y, *, periodic, final, batch_size) -> (metrics, files)``: the per-epoch check
  (``periodic``) and / or the final evaluation; ``files`` (name -> bytes) are logged, and kept
  in the last checkpoint when ``final``; ``final_files`` name the files a finished run has.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Iterable

import torch
from tqdm.auto import tqdm

from arinv.checkpoint import CheckpointError
from arinv.config import (
    ConfigError,
    DenoiserTrainConfig,
    EncoderTrainConfig,
    GeneratorTrainConfig,
)
from arinv.inversion import invert_by_optimisation
from arinv.metrics.image import lpips, lpips_available, psnr, ssim
from arinv.metrics.robustness import epoch_accuracies, robustness_report
from arinv.models import create_discriminator, create_encoder, create_generator
from arinv.models.load import load_encoder
from arinv.viz import image_grid

from .gan import build_gan_optimizers, denoise_step, freeze, gan_step
from .runtime import EpochMeter, autocast_for, prepare_batch, prepare_model
from .steps import adversarial_step, build_optimizer, standard_step

REPORT, QUALITY, GRID = "report.json", "quality.json", "reconstructions.png"


class EncoderTask:
    """Standard (``attack: null``) or adversarial training of an encoder; evaluated by clean
    and PGD accuracy on held-out images (per epoch on ``eval.epoch_images``, the full report
    on ``eval.images`` after the last epoch)."""

    cls, kind, final_files = EncoderTrainConfig, "encoder", (REPORT,)
    augment = True

    def __init__(self, cfg: EncoderTrainConfig, *, log=print):
        self.cfg, self.name, self.epochs = cfg, cfg.name, cfg.optim.epochs
        self.batch_size = cfg.optim.batch_size
        with torch.device("meta"):
            model = self._create()
        self.arch, self.resolution = model.arch, cfg.encoder.resolution or model.input_size
        self.eval_every = cfg.eval.every
        self.eval_images = max(cfg.eval.images, cfg.eval.epoch_images)
        self.reduce_keys = ("adv_loss", "adv_acc") if cfg.attack else ("loss", "acc")

    def check_classes(self, classes: list, where: str) -> None:
        if len(classes) != self.cfg.encoder.num_classes:
            raise ConfigError(f"encoder.num_classes: is {self.cfg.encoder.num_classes} but "
                              f"{where} has {len(classes)} classes; set encoder.num_classes="
                              f"{len(classes)}")

    def _create(self):
        return create_encoder(self.cfg.encoder.name, num_classes=self.cfg.encoder.num_classes)

    def build(self, device) -> dict:
        rt = self.cfg.runtime
        self.amp = autocast_for(device, rt.amp)
        self.model = prepare_model(self._create(), device, rt.channels_last)
        self.optimizer, self.scheduler = build_optimizer(self.model, self.cfg.optim)
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def wrap(self, ddp) -> tuple:
        self.net = ddp(self.model)
        return (self.net,)

    def train_epoch(self, batches: Iterable, *, accumulate: int = 1, progress: bool = True,
                    desc: str = "train") -> dict:
        """One pass of ``standard_step`` / ``adversarial_step``. ``accumulate`` micro-batches
        make one optimiser step (a DDP model syncs gradients on the last one only; a trailing
        partial group is dropped, like drop_last)."""
        cfg, device = self.cfg, next(self.model.parameters()).device
        no_sync = getattr(self.net, "no_sync", contextlib.nullcontext)
        meter = EpochMeter(batches)
        # the scheduler steps once per finished epoch (and is checkpointed): the epoch's index
        attack = cfg.attack and cfg.attack.at_epoch(self.scheduler.last_epoch)
        bar = tqdm(meter, desc=desc, leave=False, disable=not progress, unit="batch")
        for i, (xb, yb) in enumerate(bar, 1):
            x, y = prepare_batch(xb, yb, device, cfg.runtime.channels_last)
            update = i % accumulate == 0
            kw = dict(autocast=self.amp, loss_scale=1.0 / accumulate, update=update)
            with contextlib.nullcontext() if update else no_sync():
                if attack is None:
                    out = standard_step(self.net, self.optimizer, x, y, **kw)
                else:
                    out = adversarial_step(self.net, self.optimizer, x, y, attack,
                                           attack_model=self.model, **kw)
            bar.set_postfix({k: f"{v:.3f}" for k, v in meter.add(out, len(y)).items()})
        self.optimizer.zero_grad(set_to_none=True)  # a trailing partial accumulation group
        return meter.summary()

    def end_epoch(self) -> dict:
        """The epoch's learning rate (the next one's, once stepped) and, during an attack
        warm-up, the eps the epoch trained at."""
        attack = self.cfg.attack
        ramp = {"attack_eps": attack.at_epoch(self.scheduler.last_epoch).eps} \
            if attack is not None and attack.warmup_epochs > 1 else {}
        self.scheduler.step()
        return {"lr": self.optimizer.param_groups[0]["lr"], **ramp}

    def evaluate(self, x, y, *, periodic: bool, final: bool, batch_size: int):
        ev, out, files = self.cfg.eval, {}, {}
        if periodic:
            out.update(epoch_accuracies(self.model, x[:ev.epoch_images], y[:ev.epoch_images],
                                        eps_list=ev.pgd_eps, norm=ev.norm, steps=ev.pgd_steps,
                                        batch_size=batch_size, autocast=self.amp))
        if final:
            rep = robustness_report(self.model, x[:ev.images], y[:ev.images], eps_list=ev.pgd_eps,
                                    norm=ev.norm, steps=ev.pgd_steps, batch_size=batch_size,
                                    autocast=self.amp).as_dict()
            files[REPORT] = json.dumps(rep, indent=2).encode()
            out.update(final_clean_acc=rep["clean"],
                       **{f"final_pgd_acc_eps{float(e):g}": a for e, a in rep["pgd"].items()})
        return out, files

    @staticmethod
    def results(files: dict) -> dict:
        return {"robustness": json.loads(files[REPORT])}


class GeneratorTask:
    """A generator (and a discriminator when ``loss.gan`` > 0) inverting a frozen encoder's tap
    with ``gan_step``; evaluated by PSNR / SSIM (/ LPIPS when its weights are installed) of
    held-out reconstructions and an image grid (rows: input, generator[, RI baseline])."""

    cls, kind, final_files = GeneratorTrainConfig, "generator", (QUALITY, GRID)
    reduce_keys = ("loss_g", "pix", "feat", "gan")

    def __init__(self, cfg: GeneratorTrainConfig, *, encoder_checkpoint=None, log=print):
        """``encoder_checkpoint`` overrides ``cfg.encoder.checkpoint`` (a pipeline passes the
        local file it fetched for a registry URI)."""
        self.cfg, self.name, self.epochs = cfg, cfg.name, cfg.optim.epochs
        self.batch_size, self.augment = cfg.optim.batch_size, cfg.augment
        self.encoder = frozen_encoder(cfg, encoder_checkpoint, log)
        self.resolution = cfg.resolution or self.encoder.input_size
        with torch.device("meta"):
            g, d = self._create()
        self.arch = {"generator": g.arch, "discriminator": d.arch if d else None,
                     "encoder": self.encoder.arch}
        if d is not None:
            self.reduce_keys = self.reduce_keys + ("loss_d", "d_real", "d_fake")
        self.eval_every = cfg.eval.every
        self.eval_images = max(cfg.eval.images, cfg.eval.epoch_images)

    def check_classes(self, classes: list, where: str) -> None:
        """Inversion ignores labels, but ``data.classes`` (the training subset) must exist."""
        missing = [c for c in self.cfg.data.classes or () if c >= len(classes)]
        if missing:
            named = ", ".join(f"{i} {n}" for i, n in enumerate(classes))
            raise ConfigError(f"data.classes: {missing} not in {where}, which has "
                              f"{len(classes)} classes ({named}); name a class index from it")

    def _create(self):
        cfg, sn = self.cfg, self.cfg.generator.spectral_norm
        return (create_generator(cfg.generator.name, spectral_norm=sn, gray=cfg.generator.gray),
                create_discriminator(cfg.generator.discriminator, spectral_norm=sn)
                if cfg.loss.gan > 0 else None)

    def build(self, device) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        self.amp = autocast_for(device, cfg.runtime.amp)
        self.encoder = freeze(prepare_model(self.encoder, device, cfg.runtime.channels_last))
        g, d = self._create()
        self.generator = prepare_model(g, device, cfg.runtime.channels_last)
        self.discriminator = d
        if d is not None:
            self.discriminator = d = prepare_model(d, device, cfg.runtime.channels_last)
        self.opt_g, self.opt_d = build_gan_optimizers(self.generator, d, lr_g=o.lr_g,
                                                      lr_d=o.lr_d, betas=(o.beta1, o.beta2))
        self.schedules = [torch.optim.lr_scheduler.StepLR(opt, o.lr_step_epochs, o.lr_gamma)
                          for opt in (self.opt_g, self.opt_d) if opt is not None]
        modules = {"generator": self.generator, "opt_g": self.opt_g,
                   "sched_g": self.schedules[0]}
        if d is not None:
            modules.update(discriminator=d, opt_d=self.opt_d, sched_d=self.schedules[1])
        return modules

    def wrap(self, ddp) -> tuple:
        self.g_net = ddp(self.generator)
        self.d_net = ddp(self.discriminator) if self.discriminator is not None else None
        return tuple(m for m in (self.g_net, self.d_net) if m is not None)

    def train_epoch(self, batches: Iterable, *, accumulate: int = 1, progress: bool = True,
                    desc: str = "train") -> dict:
        """One pass of ``gan_step`` (no gradient accumulation: the config refuses it)."""
        cfg, device = self.cfg, next(self.generator.parameters()).device
        meter = EpochMeter(batches)
        bar = tqdm(meter, desc=desc, leave=False, disable=not progress, unit="batch")
        for xb, yb in bar:
            x, _ = prepare_batch(xb, yb, device, cfg.runtime.channels_last)
            means = meter.add(self.step(x), len(x))
            bar.set_postfix(pix=f"{means['pix']:.4g}", feat=f"{means['feat']:.4g}")
        return meter.summary()

    def step(self, x: torch.Tensor) -> dict:
        cfg = self.cfg
        return gan_step(self.g_net, self.encoder, x, layer=cfg.encoder.layer, opt_g=self.opt_g,
                        weights=cfg.loss, discriminator=self.d_net, opt_d=self.opt_d,
                        autocast=self.amp)

    def end_epoch(self) -> dict:
        for s in self.schedules:
            s.step()
        return {"lr_g": self.opt_g.param_groups[0]["lr"]}

    def evaluate(self, x, y, *, periodic: bool, final: bool, batch_size: int):
        ev = self.cfg.eval
        n = ev.images if final else ev.epoch_images
        q, grid = evaluate_inversion(self.generator, self.encoder, x[:n], self.cfg.encoder.layer,
                                     batch_size=batch_size, ri_steps=ev.ri_steps if final else 0,
                                     seed=self.cfg.runtime.seed)
        metrics = {f"val_{k}": v for k, v in q.items() if isinstance(v, float)}
        files = {GRID: grid}
        if final:
            files[QUALITY] = json.dumps(q, indent=2).encode()
            metrics.update({f"ri_{k}": v for k, v in q.get("ri_baseline", {}).items()
                            if isinstance(v, float)})
        return metrics, files

    @staticmethod
    def results(files: dict) -> dict:
        return {"quality": json.loads(files[QUALITY])}


class DenoiserTask(GeneratorTask):
    """The wavelet-pooling denoising autoencoder (``arinv.models.denoiser``): its encoder a
    frozen copy of the trained AlexNet's convolutions, its decoder trained with ``denoise_step``
    on images with white Gaussian noise (``cfg.noise``, fresh noise every batch); evaluated by
    PSNR / SSIM of the denoised held-out images (noise seeded by image index, so every
    evaluation sees the same noisy images) beside the noisy input's, and a grid (rows: clean,
    noisy, denoised). The checkpoint's ``generator`` is the whole autoencoder (the frozen
    encoder too), so it rebuilds without the encoder's file."""

    cls, kind = DenoiserTrainConfig, "denoiser"
    reduce_keys = ("loss_g", "pix", "feat")

    def __init__(self, cfg: DenoiserTrainConfig, *, encoder_checkpoint=None, log=print):
        self.cfg, self.name, self.epochs = cfg, cfg.name, cfg.optim.epochs
        self.batch_size, self.augment = cfg.optim.batch_size, cfg.augment
        self.encoder = frozen_encoder(cfg, encoder_checkpoint, log)
        self.resolution = cfg.resolution or self.encoder.input_size
        self.arch = {"denoiser": denoiser_arch(self.encoder), "encoder": self.encoder.arch}
        self.eval_every = cfg.eval.every
        self.eval_images = max(cfg.eval.images, cfg.eval.epoch_images)
        self.sigma = cfg.noise.sigma / 255

    def build(self, device) -> dict:
        from arinv.models.denoiser import WaveletAutoencoder

        cfg, o = self.cfg, self.cfg.optim
        self.amp = autocast_for(device, cfg.runtime.amp)
        self.encoder = freeze(prepare_model(self.encoder, device, cfg.runtime.channels_last))
        model = WaveletAutoencoder.from_alexnet(self.encoder)
        self.generator = prepare_model(model, device, cfg.runtime.channels_last)
        self.discriminator = self.opt_d = None
        self.opt_g = torch.optim.Adam(model.decoder.parameters(), lr=o.lr_g,
                                      betas=(o.beta1, o.beta2))
        self.schedules = [torch.optim.lr_scheduler.StepLR(self.opt_g, o.lr_step_epochs,
                                                          o.lr_gamma)]
        return {"generator": self.generator, "opt_g": self.opt_g, "sched_g": self.schedules[0]}

    def step(self, x: torch.Tensor) -> dict:
        from arinv.downstream.denoise import add_noise

        cfg = self.cfg
        seeds = torch.randint(0, 2**31 - 1, (len(x),)).tolist()  # drawn from the loop's seed
        noisy = add_noise(x, self.sigma, clip=cfg.noise.clip, seeds=seeds)
        return denoise_step(self.g_net, self.encoder, x, noisy, layer=cfg.encoder.layer,
                            opt=self.opt_g, weights=cfg.loss, autocast=self.amp)

    def evaluate(self, x, y, *, periodic: bool, final: bool, batch_size: int):
        from arinv.downstream.denoise import add_noise, denoise

        n = self.cfg.eval.images if final else self.cfg.eval.epoch_images
        clean = x[:n].float() / 255 if x.dtype == torch.uint8 else x[:n].float()
        noisy = add_noise(clean, self.sigma, clip=self.cfg.noise.clip, seeds=range(len(clean)))
        denoised = denoise(noisy, self.generator, max_pixels=batch_size * clean[0, 0].numel())
        q = {"n": len(clean), "sigma": self.cfg.noise.sigma, "clip": self.cfg.noise.clip,
             **quality(denoised, clean), "noisy": quality(noisy.clamp(0, 1), clean)}
        idx = torch.linspace(0, len(clean) - 1, min(8, len(clean))).long()
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image_grid([clean[idx], noisy[idx].clamp(0, 1), denoised[idx]])).save(
            buf, "PNG")
        metrics = {f"val_{k}": v for k, v in q.items() if isinstance(v, float) and k != "sigma"}
        metrics.update({f"val_noisy_{k}": v for k, v in q["noisy"].items()
                        if isinstance(v, float)})
        files = {GRID: buf.getvalue()}
        if final:
            files[QUALITY] = json.dumps(q, indent=2).encode()
        return metrics, files


def denoiser_arch(encoder) -> dict:
    """What a denoiser checkpoint must match: the wavelet autoencoder's width."""
    return {"name": "wavelet_autoencoder", "width": encoder.arch.get("width", 1.0)}


TASKS = {t.kind: t for t in (EncoderTask, GeneratorTask, DenoiserTask)}  # a new kind: a task here


def make_task(cfg, *, log=print, **inputs):
    """The task that trains ``cfg``; ``inputs``: files the caller resolved for it (a
    generator's ``encoder_checkpoint``)."""
    task = next(t for t in TASKS.values() if isinstance(cfg, t.cls))
    return task(cfg, log=log, **inputs)


def config_class(kind: str):
    """The config class of a checkpoint / task kind."""
    return TASKS[kind].cls


def frozen_encoder(cfg: GeneratorTrainConfig | DenoiserTrainConfig, checkpoint=None,
                   log=print) -> torch.nn.Module:
    """The encoder to invert, frozen, on the CPU: ``checkpoint`` or ``cfg.encoder.checkpoint``;
    random weights (with a warning) when both are null."""
    ref = cfg.encoder
    path = checkpoint or ref.checkpoint
    if path:
        enc, _ = load_encoder(path)
        if enc.arch["name"] != ref.name:
            raise CheckpointError(f"{ref.checkpoint or path}: holds a {enc.arch['name']} "
                                  f"encoder, the config's encoder.name is {ref.name}")
    else:
        log(f"warning: encoder.checkpoint is null: inverting a randomly initialised {ref.name}")
        enc = create_encoder(ref.name)
    return freeze(enc)


@torch.no_grad()
def reconstruct(generator, encoder, x: torch.Tensor, layer: str, batch_size: int = 64):
    generator.eval()
    device = next(generator.parameters()).device
    outs = [generator(encoder.features(x[i:i + batch_size].to(device), layer)).float().cpu()
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs).clamp(0, 1)


def evaluate_inversion(generator, encoder, x: torch.Tensor, layer: str, *, batch_size: int,
                       ri_steps: int = 0, seed: int = 0) -> tuple[dict, bytes]:
    """(quality, PNG grid) of inverting ``encoder``'s ``layer`` on images ``x``: PSNR / SSIM
    (LPIPS when its backbone weights are present) of the generator's reconstructions and, with
    ``ri_steps``, of the optimisation-based RI baseline. Grid rows: input, generator[, RI],
    eight images spread over ``x``."""
    recons = {"generator": reconstruct(generator, encoder, x, layer, batch_size)}
    if ri_steps:
        device = next(generator.parameters()).device
        with torch.no_grad():
            target = encoder.features(x.to(device), layer)
        recons["ri_baseline"] = invert_by_optimisation(
            encoder, target, layer, size=x.shape[-1], steps=ri_steps,
            generator=torch.Generator().manual_seed(seed)).cpu()
    q = {"n": len(x), **quality(recons["generator"], x)}
    if "ri_baseline" in recons:
        q["ri_baseline"] = quality(recons["ri_baseline"], x)
    idx = torch.linspace(0, len(x) - 1, min(8, len(x))).long()
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_grid([x[idx]] + [r[idx] for r in recons.values()])).save(buf, "PNG")
    return q, buf.getvalue()


def quality(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    p = psnr(x_hat, x)
    return {"psnr": float(p[torch.isfinite(p)].mean()), "ssim": float(ssim(x_hat, x).mean()),
            "lpips": float(lpips(x_hat, x).mean()) if lpips_available() else None}
