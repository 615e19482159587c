"""Device, mixed precision and memory-format choices, in one place."""

from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible; "
                           "use runtime.device=auto or cpu")
    return torch.device(name)


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on GPU when ``amp``; a no-op context elsewhere (CPU runs stay fp32)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool):
    """``model`` on ``device``; with ``channels_last`` its 4-d weights in NHWC, which oneDNN's
    CPU convolutions and cuDNN's tensor-core kernels both run faster (docs/benchmarks.md)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_batch(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    """uint8 NCHW (or float in [0, 1]) -> float32 in [0, 1] on ``device``."""
    x = x.to(device, non_blocking=True)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True).long()


def use_deterministic_algorithms() -> None:
    """torch's deterministic kernels (an error where an operation has none) and no cuDNN
    autotuning; cuBLAS needs its workspace setting before CUDA starts."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochMeter:
    """Wraps an epoch's batches: per-image sums of step metrics and the time spent waiting for
    data; ``summary()`` gives per-image means plus ``n``, ``seconds``, ``data_wait_s`` and
    ``images_per_s``."""

    def __init__(self, batches):
        self.batches, self.sums, self.n, self.wait = batches, {}, 0, 0.0
        self.t0 = time.perf_counter()

    def __iter__(self):
        it = iter(self.batches)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t
            yield batch

    def add(self, out: dict, count: int) -> dict[str, float]:
        for k, v in out.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * count
        self.n += count
        return {k: v / self.n for k, v in self.sums.items()}

    def summary(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.t0
        return {**{k: v / max(1, self.n) for k, v in self.sums.items()}, "n": self.n,
                "seconds": seconds, "data_wait_s": self.wait, "images_per_s": self.n / seconds}
