"""A non-editable install (a built wheel, as `pip install .` makes) carries the presets and
the `arinv` command's package: run from another folder, it resolves a preset by name."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_install_finds_the_presets(tmp_path):
    import shutil

    src, target = tmp_path / "src", tmp_path / "site"  # a copy: the build leaves build/ behind
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("arinv", "pipelines"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--disable-pip-version-check", "--target",
                    str(target), str(src)], check=True, capture_output=True, timeout=300)
    assert not list(target.glob("__editable__*")) and (target / "arinv" / "configs").is_dir()
    code = ("import arinv, pipelines.cli; from arinv.config import EncoderTrainConfig, "
            "load_config, resolve_preset; print(arinv.__file__); "
            "print(resolve_preset('tiny-sample-robust')); "
            "print(load_config(EncoderTrainConfig, 'tiny-sample-robust').attack.eps)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("ARINV_CONFIG_PATH", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1].startswith(str(target)) and out[2] == "0.5"
