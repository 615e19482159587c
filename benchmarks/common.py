"""Shared by the benchmark scripts: a description of the machine they ran on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def cpu_busy(seconds: float = 0.5) -> float | None:
    """Fraction of all cores' time spent busy over ``seconds`` (None where /proc/stat is not)."""
    def snap():
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        (t0, i0), _, (t1, i1) = snap(), time.sleep(seconds), snap()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    info["cpu_busy_before_start"] = cpu_busy()
    return info


def emit(result: dict, json_path: str | None) -> None:
    """Print ``result`` (all but its ``machine``) as one JSON line, and write all of it to
    ``json_path`` when given: the machine-readable tail every benchmark prints."""
    import json

    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
