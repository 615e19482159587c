"""Typed, nested run configs: built from YAML presets, validated before any work starts.

Every component owns a small dataclass. ``load_config(preset_or_path, overrides)`` reads a YAML
file (which may ``extends:`` another preset), applies ``a.b=value`` overrides, checks every field's
type and range, and raises ``ConfigError`` naming the offending field. ``flatten(cfg)`` gives the
flat ``{"attack.eps": 3.0, ...}`` dict that is logged once as run parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config value is wrong; the message names the field (and file) and what to do."""


# ----------------------------------------------------------------------------- components


Norm = Literal["l2", "linf"]


@dataclass
class EncoderConfig:
    """The encoder an encoder run trains (``encoder.name`` is the same field in generator
    configs, where it names the encoder being inverted)."""

    name: str = "alexnet"             # a registered encoder (arinv.models.list_encoders())
    num_classes: int = 1000           # must match the shard set's class count
    resolution: Optional[int] = None  # training / eval crop size; default: the model's input_size

    def check(self) -> list[str]:
        from arinv.models import list_encoders

        errs = []
        if self.name not in list_encoders():
            errs.append(f"name: unknown encoder {self.name!r}; registered: {list_encoders()}")
        if self.num_classes < 2:
            errs.append(f"num_classes: must be >= 2, got {self.num_classes}")
        if self.resolution is not None and not 16 <= self.resolution <= 4096:
            errs.append(f"resolution: must be in [16, 4096] pixels, got {self.resolution}")
        return errs


@dataclass
class AttackConfig:
    """The PGD threat model of adversarial training (Madry et al.; Sec. A4.1)."""

    norm: Norm = "l2"                  # the perturbation's norm
    eps: float = 3.0                   # radius, in [0, 1] pixel units
    steps: int = 7                     # PGD iterations per training batch
    step_size: Optional[float] = None  # default: eps / 5 (the CIFAR recipe)
    random_start: bool = False         # start from a random point of the ball
    use_best: bool = False             # keep each sample's highest-loss iterate
    warmup_epochs: int = 0             # eps (and step size) grow linearly over these epochs

    def check(self) -> list[str]:
        errs = []
        if self.warmup_epochs < 0:
            errs.append(f"warmup_epochs: must be >= 0 (0: the full eps from the first epoch), "
                        f"got {self.warmup_epochs}")
        if self.eps < 0:
            errs.append(f"eps: must be >= 0, got {self.eps}")
        if self.norm == "linf" and self.eps > 1:
            errs.append(f"eps: an Linf radius above 1 covers the whole [0, 1] box, got {self.eps}")
        if self.steps < 1:
            errs.append(f"steps: must be >= 1, got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            errs.append(f"step_size: must be > 0 (or null for eps / 5), got {self.step_size}")
        return errs

    @property
    def effective_step_size(self) -> float:
        return self.eps / 5 if self.step_size is None else self.step_size

    def at_epoch(self, epoch: int) -> "AttackConfig":
        """The attack of 0-based ``epoch``: during the warm-up, eps and the step size scaled by
        ``(epoch + 1) / warmup_epochs`` (the full attack from epoch ``warmup_epochs - 1`` on).
        A robust encoder that meets the full attack from its first batch can sit near chance
        for many epochs; ramping eps lets it learn the clean task first."""
        if self.warmup_epochs <= 1 or epoch + 1 >= self.warmup_epochs:
            return self
        f = (epoch + 1) / self.warmup_epochs
        return replace(self, eps=self.eps * f, step_size=self.effective_step_size * f,
                       warmup_epochs=0)


@dataclass
class OptimConfig:
    """SGD with a step schedule, for encoders."""

    lr: float = 0.1            # initial learning rate
    momentum: float = 0.9      # SGD momentum
    weight_decay: float = 1e-4  # L2 weight decay
    epochs: int = 90           # training epochs
    lr_step_epochs: int = 30   # lr is multiplied by lr_gamma every lr_step_epochs
    lr_gamma: float = 0.1
    batch_size: int = 256      # the global batch; gradient accumulation keeps it on fewer devices

    def check(self) -> list[str]:
        errs = []
        if not 0 < self.lr < 10:
            errs.append(f"lr: must be in (0, 10), got {self.lr}")
        if not 0 <= self.momentum < 1:
            errs.append(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            errs.append(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if self.epochs < 1:
            errs.append(f"epochs: must be >= 1, got {self.epochs}")
        if self.lr_step_epochs < 1:
            errs.append(f"lr_step_epochs: must be >= 1, got {self.lr_step_epochs}")
        if not 0 < self.lr_gamma <= 1:
            errs.append(f"lr_gamma: must be in (0, 1], got {self.lr_gamma}")
        if self.batch_size < 1:
            errs.append(f"batch_size: must be >= 1, got {self.batch_size}")
        return errs


@dataclass
class DataConfig:
    """Where a run's images come from. Every run (Ray or --local) reads shard sets: ``shards``,
    or the ``source`` written as shards under the run's workdir first."""

    # a bundled set ("sample": 8 colour photographs, "sample-gray": 16 grayscale photographs and
    # textures, see arinv.data.sample) or an ImageFolder root with train/ and val/
    source: str = "sample"
    train_per_class: int = 48  # bundled sets only: crops per class
    val_per_class: int = 16    # bundled sets only: held-out crops per class
    # a local folder or s3:// prefix holding train/ and val/ shard sets written by
    # 'arinv data write'; null = write ``source`` as shards under the run's workdir
    shards: Optional[str] = None
    loader: Literal["ray", "ffcv"] = "ray"  # Ray Data stream, or ffcv.Loader (local shards)
    crop_min_scale: float = 0.08  # RandomResizedCrop's smallest area fraction
    # a stored sample that does not decode: skip it (a warning naming shard and index, counted
    # in the corrupt_samples metric) or fail the run
    on_corrupt: Literal["skip", "fail"] = "skip"
    # train on these labels only (a generator for one-vs-all anomaly detection learns its
    # positive class); null = every class. Held-out data keeps every class.
    classes: Optional[list[int]] = None

    def check(self) -> list[str]:
        errs = []
        if self.classes is not None:
            if not self.classes or any(c < 0 for c in self.classes):
                errs.append(f"classes: a non-empty list of class indices >= 0 (or null), got "
                            f"{self.classes}")
            if self.loader == "ffcv":
                errs.append("classes: the ffcv loader reads every class; use loader=ray to "
                            "train on a subset of classes")
        if self.loader == "ffcv" and self.shards and "://" in self.shards:
            errs.append(f"loader: ffcv reads shards on local disk only, data.shards is "
                        f"{self.shards!r}; use loader=ray for S3")
        if not 0 < self.crop_min_scale <= 1:
            errs.append(f"crop_min_scale: must be in (0, 1], got {self.crop_min_scale}")
        from arinv.data.sample import SETS

        if self.source not in SETS and not self.shards:
            root = Path(self.source).expanduser()
            missing = [s for s in ("train", "val") if not (root / s).is_dir()]
            if missing:
                errs.append(f"source: {self.source!r} is neither a bundled set "
                            f"({', '.join(map(repr, SETS))}) nor a folder with "
                            f"train/ and val/ ImageFolder trees (missing: {', '.join(missing)}); "
                            "or set data.shards to a shard set written by 'arinv data write'")
        if self.train_per_class < 1 or self.val_per_class < 1:
            errs.append("train_per_class / val_per_class: must be >= 1")
        return errs


@dataclass
class EvalConfig:
    """Held-out robustness evaluation of an encoder: every ``every`` epochs on
    ``epoch_images`` images, and the full report on ``images`` images after the last."""

    pgd_eps: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # PGD radii
    pgd_steps: int = 20   # PGD iterations of the evaluation attack
    norm: Norm = "l2"     # the evaluation attack's norm
    images: int = 1000    # held-out images of the final report
    every: int = 1        # epochs between per-epoch checks (clean + PGD); 0: final report only
    epoch_images: int = 256  # held-out images of each per-epoch check

    def check(self) -> list[str]:
        errs = _eval_errors(self, every_min=0)
        if any(e < 0 for e in self.pgd_eps):
            errs.append(f"pgd_eps: every radius must be >= 0, got {self.pgd_eps}")
        if self.pgd_steps < 1:
            errs.append(f"pgd_steps: must be >= 1, got {self.pgd_steps}")
        return errs


@dataclass
class InversionEvalConfig:
    """Held-out reconstruction quality of a generator (PSNR / SSIM / LPIPS and an image grid):
    every ``every`` epochs on ``epoch_images`` images, and on ``images`` after the last."""

    images: int = 64        # held-out images of the final evaluation
    every: int = 1          # epochs between per-epoch checks (and the last epoch)
    epoch_images: int = 64  # held-out images of each per-epoch check
    ri_steps: int = 0       # > 0: the final evaluation adds the RI baseline (Sec. A2.4)

    def check(self) -> list[str]:
        errs = _eval_errors(self, every_min=1)
        if self.ri_steps < 0:
            errs.append(f"ri_steps: must be >= 0, got {self.ri_steps}")
        return errs


def _eval_errors(ev, every_min: int) -> list[str]:
    errs = []
    if ev.every < every_min:
        errs.append(f"every: must be >= {every_min}, got {ev.every}")
    if ev.images < 1 or ev.epoch_images < 1:
        errs.append(f"images / epoch_images: must be >= 1, got {ev.images} / {ev.epoch_images}")
    return errs


@dataclass
class RuntimeConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    amp: bool = True            # bf16 autocast, GPU only
    channels_last: bool = True  # NHWC models and batches (faster on CPU and GPU)
    seed: int = 0               # seeds weights, data order, crops and attacks
    # identical runs from the same config: the Ray Data stream keeps its order, its shuffles
    # and crops are seeded, torch uses deterministic kernels (costs: docs/benchmarks.md; with
    # several Ray Train workers, which worker gets which block still depends on timing)
    deterministic: bool = False


@dataclass
class ScalingConfig:
    """How a Ray pipeline spreads one run over workers. ``optim.batch_size`` stays the global
    batch: each optimiser step accumulates batch_size / (num_workers * micro_batch_size)
    micro-batches per worker."""

    num_workers: int = 1                   # Ray Train workers (DDP ranks); --local: 1
    use_gpu: bool = False                  # one GPU share per worker
    cpus_per_worker: float = 1.0           # logical CPUs (and torch threads) per worker
    gpus_per_worker: float = 1.0           # used only with use_gpu
    micro_batch_size: Optional[int] = None  # per worker; null = batch_size / num_workers
    max_failures: int = 3                  # worker-group restarts from the last checkpoint
    keep_checkpoints: int = 2

    def check(self) -> list[str]:
        errs = []
        if self.num_workers < 1:
            errs.append(f"num_workers: must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker <= 0:
            errs.append("cpus_per_worker / gpus_per_worker: must be > 0")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            errs.append(f"micro_batch_size: must be >= 1, got {self.micro_batch_size}")
        if self.max_failures < 0 or self.keep_checkpoints < 1:
            errs.append("max_failures / keep_checkpoints: must be >= 0 / >= 1")
        return errs

    def accumulation(self, batch_size: int, workers: int | None = None) -> tuple[int, int]:
        """(micro-batch size per worker, micro-batches per optimiser step) over ``workers``
        (default ``num_workers``; a single-process run passes 1)."""
        workers = workers or self.num_workers
        micro = self.micro_batch_size or max(1, batch_size // workers)
        per_step = micro * workers
        if batch_size % per_step:
            raise ConfigError(
                f"scaling: the global batch optim.batch_size={batch_size} is not a multiple of "
                f"num_workers x micro_batch_size = {workers} x {micro}; change "
                "scaling.micro_batch_size or scaling.num_workers")
        return micro, batch_size // per_step


@dataclass
class EncoderTrainConfig:
    """One encoder training run: standard when ``attack`` is null, adversarial otherwise."""

    name: str = "encoder"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    attack: Optional[AttackConfig] = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def check(self) -> list[str]:
        if not self.name or "/" in self.name:
            return [f"name: must be a non-empty run name without '/', got {self.name!r}"]
        errs = _batch_errors(self.scaling, self.optim.batch_size)
        if self.data.classes is not None:
            errs.append("data.classes: an encoder is trained on every class of its data "
                        "(encoder.num_classes); class subsets are for generator runs")
        return errs


@dataclass
class EncoderRef:
    """The frozen encoder whose ``layer`` a generator inverts."""

    name: str = "alexnet"   # a registered encoder, as ``encoder.name`` of encoder configs
    layer: str = "conv5"    # the tap whose features are inverted
    # an arinv encoder checkpoint file, or a registry URI (models:/arinv-alexnet@robust);
    # null = random weights (tests)
    checkpoint: Optional[str] = None

    def check(self) -> list[str]:
        from arinv.models import create_encoder, list_encoders

        if self.name not in list_encoders():
            return [f"name: unknown encoder {self.name!r}; registered: {list_encoders()}"]
        errs = []
        taps = create_encoder(self.name, num_classes=2).taps
        if self.layer not in taps:
            errs.append(f"layer: {self.name} has no tap {self.layer!r}; taps: {list(taps)}")
        if self.checkpoint and ":/" not in self.checkpoint and not Path(self.checkpoint).is_file():
            errs.append(f"checkpoint: no file at {self.checkpoint!r}; train one with "
                        "'arinv train-encoder' or point to an existing checkpoint")
        return errs


@dataclass
class GeneratorConfig:
    name: str = "alexnet_conv5"     # a registered generator (its table's layer specs)
    spectral_norm: bool = True      # on every generator and discriminator convolution
    discriminator: Optional[str] = "alexnet_conv5"  # null for the pixel / pixel + feature criteria
    gray: bool = False              # output one grey image (its 3 channels tied) for gray data

    def check(self) -> list[str]:
        from arinv.models import list_discriminators, list_generators

        errs = []
        if self.name not in list_generators():
            errs.append(f"name: unknown generator {self.name!r}; registered: {list_generators()}")
        if self.discriminator is not None and self.discriminator not in list_discriminators():
            errs.append(f"discriminator: unknown {self.discriminator!r}; registered: "
                        f"{list_discriminators()}")
        return errs


@dataclass
class LossConfig:
    """Weights of per-image-sum losses (arinv.losses); defaults: Sec. A4.1."""

    pix: float = 2e-6
    feat: float = 1e-2
    gan: float = 100.0
    disc: float = 2e-6

    def check(self) -> list[str]:
        errs = [f"{k}: must be >= 0, got {v}" for k, v in
                (("pix", self.pix), ("feat", self.feat), ("gan", self.gan), ("disc", self.disc))
                if v < 0]
        if self.pix == self.feat == self.gan == 0:
            errs.append("pix, feat, gan: at least one generator loss weight must be > 0")
        return errs


@dataclass
class AdamConfig:
    """Adam for the generator and discriminator (Sec. A4.1)."""

    lr_g: float = 3e-4         # generator learning rate
    lr_d: float = 1.2e-3       # discriminator learning rate
    beta1: float = 0.0
    beta2: float = 0.9
    epochs: int = 90
    lr_step_epochs: int = 30   # both learning rates are multiplied by lr_gamma this often
    lr_gamma: float = 0.1
    batch_size: int = 128      # the global batch

    def check(self) -> list[str]:
        errs = [f"{k}: must be in (0, 1), got {v}" for k, v in
                (("lr_g", self.lr_g), ("lr_d", self.lr_d)) if not 0 < v < 1]
        errs += [f"{k}: must be in [0, 1), got {v}" for k, v in
                 (("beta1", self.beta1), ("beta2", self.beta2)) if not 0 <= v < 1]
        if self.epochs < 1 or self.lr_step_epochs < 1 or self.batch_size < 1:
            errs.append("epochs, lr_step_epochs, batch_size: must be >= 1")
        if not 0 < self.lr_gamma <= 1:
            errs.append(f"lr_gamma: must be in (0, 1], got {self.lr_gamma}")
        return errs


@dataclass
class GeneratorTrainConfig:
    """One feature-inversion run: a generator (and discriminator, when ``loss.gan`` > 0)
    trained against a frozen encoder's tap."""

    name: str = "generator"
    encoder: EncoderRef = field(default_factory=EncoderRef)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: AdamConfig = field(default_factory=AdamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    resolution: Optional[int] = None  # default: the encoder's input_size
    augment: bool = False             # the paper trains generators without augmentation
    eval: InversionEvalConfig = field(default_factory=InversionEvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def check(self) -> list[str]:
        from arinv.models import GENERATOR_TAPS

        errs = _batch_errors(self.scaling, self.optim.batch_size)
        errs += _name_errors(self.name)
        pair = GENERATOR_TAPS.get(self.generator.name)
        if pair and pair != (self.encoder.name, self.encoder.layer):
            errs.append(f"generator.name: {self.generator.name} inverts {pair[0]}.{pair[1]}, but "
                        f"the encoder is {self.encoder.name}.{self.encoder.layer}")
        if self.loss.gan > 0 and self.generator.discriminator is None:
            errs.append("generator.discriminator: loss.gan > 0 needs a discriminator "
                        "(or set loss.gan=0)")
        return errs + _no_accumulation_errors(self.scaling, self.optim.batch_size, "a generator")


@dataclass
class NoiseConfig:
    """The corruption a denoiser learns to remove: white Gaussian noise (Sec. A3.2)."""

    sigma: float = 50.0   # standard deviation on the 0-255 scale (the paper's 50/255)
    clip: bool = True     # clip the noisy image to [0, 1] (the paper's "clipped" noise)

    def check(self) -> list[str]:
        if not (isinstance(self.sigma, (int, float)) and math.isfinite(self.sigma)
                and 0 < self.sigma <= 255):
            return [f"sigma: must be in (0, 255] (0-255 scale), got {self.sigma!r}"]
        return []


@dataclass
class DenoiserTrainConfig:
    """The wavelet-pooling denoising autoencoder (Sec. A4.3): Table A8's encoder (a trained
    AlexNet's convolutions, frozen) and Table A9's decoder, trained on noisy images to return
    the clean ones with pixel + feature losses (the feature loss at ``encoder.layer``)."""

    name: str = "denoiser"
    encoder: EncoderRef = field(default_factory=EncoderRef)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(pix=2e-6, feat=1e-2, gan=0.0))
    optim: AdamConfig = field(default_factory=AdamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    resolution: Optional[int] = None  # default: the encoder's input_size
    augment: bool = False
    eval: InversionEvalConfig = field(default_factory=InversionEvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def check(self) -> list[str]:
        errs = _batch_errors(self.scaling, self.optim.batch_size)
        errs += _name_errors(self.name)
        if not self.encoder.name.startswith("alexnet"):
            errs.append(f"encoder.name: the wavelet denoiser copies an AlexNet's convolutions "
                        f"(Table A8); got {self.encoder.name}")
        if self.loss.gan > 0:
            errs.append("loss.gan: the denoiser trains with pixel + feature losses only "
                        "(Sec. A4.3): set it to 0")
        if self.eval.ri_steps:
            errs.append("eval.ri_steps: the RI baseline inverts features, not noisy images: 0")
        return errs + _no_accumulation_errors(self.scaling, self.optim.batch_size, "a denoiser")


SWEEP_METRICS = {"psnr": "max", "ssim": "max", "lpips": "min"}


@dataclass
class WeightSearchConfig:
    """Loss-weight search: ``pix`` / ``feat`` / ``gan`` drawn log-uniformly from [low, high]
    (null keeps the generator preset's weight), ASHA stopping on a held-out metric."""

    encoder: Optional[str] = None  # the encoder to invert: a checkpoint or models:/ URI
    pix: Optional[list[float]] = None
    feat: Optional[list[float]] = None
    gan: Optional[list[float]] = None
    samples: int = 8
    metric: str = "psnr"           # psnr / ssim (maximised) or lpips (minimised)
    grace_period: int = 1          # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 2      # ASHA keeps the best 1/reduction_factor at each rung
    seed: int = 0                  # the sampler's seed
    preset_out: Optional[str] = None  # where the best weights go; default WORKDIR/<name>-best.yaml

    def check(self) -> list[str]:
        errs = []
        if not self.encoder:
            errs.append("encoder: set the encoder whose features the search inverts (a "
                        "checkpoint file or a registry URI such as models:/arinv-resnet18_cifar"
                        "@robust, e.g. the best pair of an eps sweep)")
        elif ":/" not in self.encoder and not Path(self.encoder).is_file():
            errs.append(f"encoder: no file at {self.encoder!r}")
        ranges = {k: getattr(self, k) for k in ("pix", "feat", "gan")}
        for k, r in ranges.items():
            if r is not None and (len(r) != 2 or not 0 < r[0] <= r[1]):
                errs.append(f"{k}: a log-uniform range is [low, high] with 0 < low <= high, "
                            f"got {r}")
        if all(r is None for r in ranges.values()):
            errs.append("pix, feat, gan: give at least one range to search")
        if self.samples < 1 or self.grace_period < 1 or self.reduction_factor < 2:
            errs.append("samples, grace_period: must be >= 1; reduction_factor: must be >= 2")
        if self.metric not in SWEEP_METRICS:
            errs.append(f"metric: one of {list(SWEEP_METRICS)}, got {self.metric!r}")
        return errs


@dataclass
class SweepConfig:
    """A Ray Tune sweep. Without ``search``: Table A3, one trial per ``eps`` (train the
    encoder with L2 PGD at eps, evaluate it, train its generator, evaluate the inversion).
    With ``search``: a loss-weight search for one encoder's generator."""

    name: str = "sweep"
    encoder: str = "resnet18-cifar10-robust"    # encoder preset (its attack.eps set per trial)
    generator: str = "resnet18-cifar10-layer4"  # generator preset (pixel + feature losses)
    encoder_set: list[str] = field(default_factory=list)    # overrides for every encoder
    generator_set: list[str] = field(default_factory=list)  # overrides for every generator
    shards: Optional[str] = None       # data.shards of every run (default: the presets')
    eps: list[float] = field(default_factory=lambda: list(_table_a3().EPS))
    standard_attack_eps: float = 0.25  # Table A3 attacks the eps = 0 encoder at this radius
    select: str = "psnr"               # the metric that picks the pair registered as the best
    max_concurrent: Optional[int] = None  # default: as many trials as the cluster's resources fit
    max_failures: int = 2              # retries of a failed trial (it resumes from checkpoints)
    search: Optional[WeightSearchConfig] = None

    def check(self) -> list[str]:
        errs = []
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            errs.append(f"name: letters, digits, '-', '_' and '.' only, got {self.name!r}")
        if not self.eps or any(e < 0 for e in self.eps) or len(set(self.eps)) != len(self.eps):
            errs.append(f"eps: distinct radii >= 0, got {self.eps}")
        if self.standard_attack_eps <= 0:
            errs.append(f"standard_attack_eps: must be > 0, got {self.standard_attack_eps}")
        if self.select not in SWEEP_METRICS:
            errs.append(f"select: one of {list(SWEEP_METRICS)}, got {self.select!r}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            errs.append(f"max_concurrent: must be >= 1 (or null), got {self.max_concurrent}")
        if self.max_failures < 0:
            errs.append(f"max_failures: must be >= 0, got {self.max_failures}")
        return errs



@dataclass
class ScoringConfig:
    """Eq. 8 anomaly scores (Sec. A1): a latent of the tap's shape, white Gaussian noise seeded
    by the image's dataset index, optimised ``iters`` times with a learning rate decaying
    linearly from ``lr[0]`` to ``lr[1]``; the score is the final objective."""

    iters: int = 100
    lr: list[float] = field(default_factory=lambda: [0.1, 0.001])  # first, last iteration
    optimizer: Literal["adam", "sgd"] = "adam"
    # alpha_pix / alpha_feat: null = the generator's training weights (loss.pix / loss.feat),
    # as the paper does
    alpha_pix: Optional[float] = None
    alpha_feat: Optional[float] = None
    batch_size: int = 64               # images optimised together by one actor
    actors: Optional[int] = None       # Ray Data actors; null = one per GPU, else per 2 CPUs
    use_gpu: bool = False              # one GPU per actor

    def check(self) -> list[str]:
        errs = []
        if self.iters < 1 or self.batch_size < 1:
            errs.append(f"iters, batch_size: must be >= 1, got {self.iters}, {self.batch_size}")
        if len(self.lr) != 2 or any(v <= 0 for v in self.lr):
            errs.append(f"lr: [first, last] learning rates > 0, got {self.lr}")
        errs += [f"{k}: must be > 0 (or null), got {v}" for k, v in
                 (("alpha_pix", self.alpha_pix), ("alpha_feat", self.alpha_feat))
                 if v is not None and v <= 0]
        if self.actors is not None and self.actors < 1:
            errs.append(f"actors: must be >= 1 (or null), got {self.actors}")
        return errs


@dataclass
class AnomalyConfig:
    """One-vs-all anomaly detection (Sec. A1, Table A1): for each encoder column (standard,
    robust) and each positive class, a generator trained on that class's training images only,
    then Eq. 8 scores of the whole test set and their AUROC (negatives = every other class)."""

    name: str = "anomaly"
    # which of Table A1's datasets this is, for the paper's columns printed beside ours
    dataset: Literal["cifar10", "catsdogs", "other"] = "other"
    # the encoders of the two columns: a registry URI (models:/arinv-alexnet@robust), an
    # encoder checkpoint file, or an encoder preset trained (and registered) first; null
    # leaves the column out
    standard: Optional[str] = "models:/arinv-alexnet@standard"
    robust: Optional[str] = "models:/arinv-alexnet@robust"
    encoder_set: list[str] = field(default_factory=list)  # overrides for encoders given as presets
    generator: str = "anomaly-alexnet-conv5"  # the generator preset every class starts from
    generator_set: list[str] = field(default_factory=list)  # overrides for every generator
    # (lambda_pix, lambda_feat) of each column's generators and Eq. 8 (Sec. A1's values)
    standard_weights: list[float] = field(default_factory=lambda: [2e-3, 1e-2])
    robust_weights: list[float] = field(default_factory=lambda: [2e-6, 1e-2])
    shards: Optional[str] = None        # train/ and val/ (the test set); default: the preset's
    classes: Optional[list[int]] = None  # positive classes; null = every class of the data
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    max_concurrent: Optional[int] = None  # trials at once; default: what the cluster fits
    max_failures: int = 1               # retries of a failed trial (it resumes its runs)

    def check(self) -> list[str]:
        errs = _experiment_errors(self, "encoder")
        if self.dataset != "other" and not self.shards:
            errs.append(f"shards: dataset is {self.dataset}; set shards to its train/ and val/ "
                        "shard sets (arinv data write SOURCE DEST --split train|test)")
        for k in ("standard_weights", "robust_weights"):
            w = getattr(self, k)
            if len(w) != 2 or any(v <= 0 for v in w):
                errs.append(f"{k}: [lambda_pix, lambda_feat] > 0, got {w}")
        if self.classes is not None and (not self.classes or any(c < 0 for c in self.classes)
                                         or len(set(self.classes)) != len(self.classes)):
            errs.append(f"classes: distinct class indices >= 0 (or null), got {self.classes}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            errs.append(f"max_concurrent: must be >= 1 (or null), got {self.max_concurrent}")
        if self.max_failures < 0:
            errs.append(f"max_failures: must be >= 0, got {self.max_failures}")
        return errs


@dataclass
class ScaleConfig:
    """Robustness to scale changes (Sec. A2.2, Table A2, Fig. A3): held-out images resized to
    the encoder's resolution, upscaled by each factor L (bicubic), encoded at full size and
    reconstructed by a standard and a robust autoencoder from the registry."""

    name: str = "scale"
    # the autoencoders of the two columns: registry URIs of registered autoencoders (an
    # encoder and the generator inverting it); null leaves the column out
    standard: Optional[str] = "models:/arinv-alexnet-conv5-autoencoder@standard"
    robust: Optional[str] = "models:/arinv-alexnet-conv5-autoencoder@robust"
    # the evaluation images: a shard set (its val/ split, or a split folder), or a folder of
    # image files; null = held-out crops of the bundled grayscale set (the quickstart's task)
    data: Optional[str] = None
    images: int = 16                    # the first N images of data
    factors: list[int] = field(default_factory=lambda: list(range(1, 11)))  # L (paper: 1..10)
    # target pixels per forward pass: L = 10 of a 224 px encoder (2240 px) runs one image at a
    # time, so memory does not grow with L or the number of images
    max_pixels: int = 2240 * 2240
    examples: int = 2                   # images shown in the Fig. A3 figure
    tile: int = 128                     # px of each tile of the figure
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # when a column's model is not in the registry: train both with the quickstart's presets
    # in the workdir first (the toy preset), instead of stopping with an error
    train_missing: bool = False

    def check(self) -> list[str]:
        errs = _experiment_errors(self, "autoencoder")
        for k in ("standard", "robust"):
            v = getattr(self, k)
            if v is not None and not v.startswith(("models:/", "runs:/")):
                errs.append(f"{k}: a registry URI (models:/NAME@ALIAS), got {v!r}")
        if not self.factors or any(f < 1 for f in self.factors) or \
                len(set(self.factors)) != len(self.factors):
            errs.append(f"factors: distinct integers >= 1, got {self.factors}")
        for k in ("images", "max_pixels", "examples"):
            if getattr(self, k) < 1:
                errs.append(f"{k}: must be >= 1, got {getattr(self, k)}")
        if self.tile < 16:
            errs.append(f"tile: must be >= 16 px, got {self.tile}")
        if self.examples > self.images:
            errs.append(f"examples: at most images ({self.images}), got {self.examples}")
        return errs


def _experiment_errors(cfg, model: str) -> list[str]:
    """An experiment's name (a folder and run key) and its two columns (standard, robust)."""
    errs = []
    if not cfg.name or not all(c.isalnum() or c in "-_." for c in cfg.name):
        errs.append(f"name: letters, digits, '-', '_' and '.' only, got {cfg.name!r}")
    if cfg.standard is None and cfg.robust is None:
        errs.append(f"standard, robust: give at least one {model}")
    return errs


Criterion = Literal["pixel", "pixel_feat", "pixel_feat_gan", "ri"]


@dataclass
class AblationConfig:
    """The loss ablation (Sec. A2.1, Fig. A2): for one encoder pair (standard, robust), a
    generator trained per criterion (pixel; pixel + feature; pixel + feature + GAN) and the
    optimisation-based RI inversion, all reconstructing the same held-out images.
    ``arinv.experiments.fig_a2`` says what each criterion trains."""

    name: str = "ablation"
    # the encoders of the two rows: a registry URI (models:/arinv-alexnet@robust), a stored
    # checkpoint (s3://) or a checkpoint file; null leaves the row out
    standard: Optional[str] = "models:/arinv-alexnet@standard"
    robust: Optional[str] = "models:/arinv-alexnet@robust"
    # the full criterion's generator preset: its loss weights (pix, feat, gan, disc) and its
    # discriminator; the other criteria drop terms from it (weights of the kept terms unchanged)
    generator: str = "alexnet-conv5-gan"
    generator_set: list[str] = field(default_factory=list)  # overrides for every generator
    criteria: list[Criterion] = field(
        default_factory=lambda: ["pixel", "pixel_feat", "pixel_feat_gan", "ri"])
    ri_steps: int = 1000               # RI: L2-normalised gradient steps from noise
    ri_step_size: float = 1.0
    shards: Optional[str] = None       # train/ and val/; default: the generator preset's data
    images: int = 64                   # held-out images every criterion is measured on
    examples: int = 4                  # of them, shown in the figure
    # when an encoder is not in the registry: train the quickstart's pair in the workdir first
    # (the toy preset), instead of stopping with an error
    train_missing: bool = False
    max_concurrent: Optional[int] = None  # trials at once; default: what the cluster fits
    max_failures: int = 1                 # retries of a failed trial (it resumes its run)

    def check(self) -> list[str]:
        errs = _experiment_errors(self, "encoder")
        known = typing.get_args(Criterion)
        if not self.criteria or len(set(self.criteria)) != len(self.criteria) or \
                any(k not in known for k in self.criteria):
            errs.append(f"criteria: distinct criteria of {list(known)}, got {self.criteria}")
        if "ri" in self.criteria and self.ri_steps < 1:
            errs.append(f"ri_steps: must be >= 1 with the ri criterion, got {self.ri_steps}")
        if not self.ri_step_size > 0:
            errs.append(f"ri_step_size: must be > 0, got {self.ri_step_size}")
        for k in ("images", "examples"):
            if getattr(self, k) < 1:
                errs.append(f"{k}: must be >= 1, got {getattr(self, k)}")
        if self.examples > self.images:
            errs.append(f"examples: at most images ({self.images}), got {self.examples}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            errs.append(f"max_concurrent: must be >= 1 (or null), got {self.max_concurrent}")
        if self.max_failures < 0:
            errs.append(f"max_failures: must be >= 0, got {self.max_failures}")
        return errs


def _table_a3():
    from arinv.experiments import table_a3

    return table_a3


def _name_errors(name: str) -> list[str]:
    return [] if name and "/" not in name else [
        f"name: must be a non-empty run name without '/', got {name!r}"]


def _no_accumulation_errors(scaling: ScalingConfig, batch_size: int, what: str) -> list[str]:
    if (scaling.num_workers >= 1 and not _batch_errors(scaling, batch_size)
            and scaling.accumulation(batch_size)[1] > 1):
        return [f"scaling.micro_batch_size: gradient accumulation is implemented for encoder "
                f"training only; for {what} set it to optim.batch_size / "
                "scaling.num_workers (or null)"]
    return []


def _batch_errors(scaling: ScalingConfig, batch_size: int) -> list[str]:
    if scaling.num_workers < 1 or (scaling.micro_batch_size or 1) < 1:
        return []  # reported by ScalingConfig.check
    try:
        scaling.accumulation(batch_size)
    except ConfigError as e:
        return [str(e)]
    return []


# ----------------------------------------------------------------------------- machinery

_CONFIG_ROOTS = [Path(__file__).resolve().parent / "configs"]  # shipped as package data


def preset_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("ARINV_CONFIG_PATH", "").split(os.pathsep) if p]
    return extra + [Path.cwd() / "configs"] + _CONFIG_ROOTS


def list_presets() -> list[str]:
    return sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def resolve_preset(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    for d in preset_dirs():
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    hint = difflib.get_close_matches(name_or_path, list_presets(), n=1)
    raise ConfigError(
        f"no preset named {name_or_path!r}"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + f" Presets: {', '.join(list_presets())}"
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle through {[str(s) for s in seen]}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml(resolve_preset(str(parent)), seen + (path,))
    return _merge(base, data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(data: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: write it as field.path=value, e.g. attack.eps=1.0")
    key, raw = item.split("=", 1)
    try:
        # Numbers YAML 1.1 reads as text (2e-6, 1E3) stay strings here; _coerce makes them
        # floats where the field is a float, so a str field keeps "1e3" as written.
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {e}") from None
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _unwrap_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        return _to_finite_float(value, where)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _to_finite_float(value: Any, where: str) -> float:
    """A float field's value: a number, or a string in exponent notation (YAML 1.1, which
    PyYAML follows, reads 2e-6, 1E3 and 1.5e3 as text); nan and +-inf in any spelling
    (.nan, -.inf, 'inf', 'Infinity') are refused."""
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+", text):
            value = float(text)
        elif re.fullmatch(r"[-+]?\.?(?:nan|inf|infinity)", text, re.IGNORECASE):
            value = float(text.replace(".", "", 1))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ConfigError(f"{where}: must be a finite number, got {value}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: must be a finite number, got {number}")
    return number


# Field paths renamed or removed since earlier releases, per config class: old -> new (None:
# removed, with the reason). A user's YAML with an old name gets an error naming the new one;
# configs stored in checkpoints are migrated (``migrate``).
RENAMED: dict[str, dict[str, str | None]] = {
    "EncoderTrainConfig": {"model": "encoder", "eval.max_images": "eval.images",
                           "data.num_workers": None},
    "GeneratorTrainConfig": {"eval_images": "eval.images", "eval_every": "eval.every",
                             "ri_steps": "eval.ri_steps", "data.num_workers": None},
}
_REMOVED_WHY = {"data.num_workers": "every run reads shard sets; Ray runs decode with the "
                                    "cluster's CPUs, --local runs in the training process"}


def _renamed_paths(cls, data: dict) -> list[tuple[str, str | None]]:
    found = []
    for old, new in RENAMED.get(cls.__name__, {}).items():
        node, parts = data, old.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            found.append((old, new))
    return found


def migrate(cls, data: dict) -> dict:
    """A config dict written under old field names (e.g. one stored in an old checkpoint),
    with its values moved to the current names; removed fields are dropped."""
    import copy

    data = copy.deepcopy(data)
    for old, new in _renamed_paths(cls, data):
        *head, last = old.split(".")
        node = data
        for part in head:
            node = node[part]
        value = node.pop(last)
        if new is not None:
            *head, last = new.split(".")
            node = data
            for part in head:
                node = node.setdefault(part, {})
            node[last] = value
    return data


def stored(cls, data: dict):
    """A config stored earlier (in a checkpoint) as a ``cls``: old field names migrated, fields
    added since then at their defaults."""
    return build(cls, migrate(cls, data))


def build(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown fields and wrong types."""
    if not where:
        for old, new in _renamed_paths(cls, data):
            raise ConfigError(f"{old}: renamed to {new}; rename it in your config" if new else
                              f"{old}: removed ({_REMOVED_WHY.get(old, 'no longer used')}); "
                              "delete it from your config")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(
                f"{path}: unknown field" + (f"; did you mean {hint[0]!r}?" if hint else "")
                + f" ({cls.__name__} has: {', '.join(names)})"
            )
        choices = _literal_choices(hints[key])
        if choices is not None and value not in choices:
            if value is None and _unwrap_optional(hints[key])[1]:
                kwargs[key] = None
                continue
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, choices))}, "
                              f"got {value!r}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _literal_choices(tp) -> tuple | None:
    tp, _ = _unwrap_optional(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def validate(cfg, where: str = "") -> None:
    """Run every component's ``check`` and raise one ConfigError listing all problems."""
    errs = _collect(cfg, where)
    if errs:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errs))


def _collect(cfg, where: str) -> list[str]:
    errs = []
    if hasattr(cfg, "check"):
        errs += [f"{where}.{e}" if where else e for e in cfg.check()]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            errs += _collect(v, f"{where}.{f.name}" if where else f.name)
    return errs


def load_config(cls, preset_or_path: str | None = None, overrides: list[str] | None = None):
    """Preset/file + overrides -> a validated ``cls`` instance."""
    source = "defaults"
    data: dict = {}
    if preset_or_path:
        path = resolve_preset(preset_or_path)
        source = str(path)
        data = _read_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    try:
        cfg = build(cls, data)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def config_class(preset_or_path: str):
    """EncoderTrainConfig, GeneratorTrainConfig, DenoiserTrainConfig, SweepConfig,
    AnomalyConfig, ScaleConfig or AblationConfig, from the preset's fields."""
    data = _read_yaml(resolve_preset(preset_or_path))
    if "criteria" in data:
        return AblationConfig  # Fig. A2: names its encoders, a generator preset and criteria
    if "factors" in data:
        return ScaleConfig  # Table A2: names two autoencoders and the scale factors
    if {"standard", "robust", "scoring"} & set(data):
        return AnomalyConfig  # Table A1: names its encoders and a generator preset
    if isinstance(data.get("encoder"), str) or isinstance(data.get("generator"), str):
        return SweepConfig  # a sweep names its encoder and generator presets
    if "noise" in data:
        return DenoiserTrainConfig  # the wavelet denoiser: names its noise
    return GeneratorTrainConfig if "generator" in data else EncoderTrainConfig


def flatten(cfg, prefix: str = "") -> dict[str, Any]:
    """``{"attack.eps": 3.0, ...}`` from a config or its nested dict; a null sub-config
    appears as ``{"attack": None}``."""
    items = cfg.items() if isinstance(cfg, dict) else (
        (f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))
    out: dict[str, Any] = {}
    for name, v in items:
        if dataclasses.is_dataclass(v) or isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = v
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
