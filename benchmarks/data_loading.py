#!/usr/bin/env python
"""Images/s of three ways to feed training the same images, in one run, at the same resolution,
augmentation (random-resized-crop + flip), batch size and CPU count:

  (a) torchvision ImageFolder + DataLoader on the source JPEGs;
  (b) ffcv's Loader on the shard (.beton) file;
  (c) our Ray Data stream (pipelines.ray_data.read_shards) on the same shard set.

Targets (data-plane issue): (c) >= 0.8 x (b) and (c) >= 2.5 x (a) on a 2-core machine at 112 px.
The image set is cut from the bundled photographs (256 px JPEGs) and cached under --workdir.
Each loader runs --epochs epochs; the last epoch is reported (ffcv JIT-compiles in its first).

    python benchmarks/data_loading.py --images 3000 --resolution 112 --batch-size 128 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import machine_info


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="loader processes / Ray CPUs")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ray-cpus", type=int, nargs="+", default=None,
                   help="logical CPUs given to Ray, one stream per value (default: --workers). "
                        "The machine's cores are the same whatever Ray is told; Ray Data runs "
                        "fewer decode tasks at once than it has logical CPUs")
    p.add_argument("--workdir", default="/tmp/arinv-bench-data")
    p.add_argument("--only", nargs="*", choices=["torchvision", "ffcv", "ray"], default=None)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def make_jpegs(root: Path, n: int) -> Path:
    """``n`` 256 px JPEG crops of the bundled photographs in ImageFolder layout (cached)."""
    from arinv.data.sample import PHOTOS, load_photo

    folder = root / f"jpegs-{n}"
    if (folder / ".done").exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = PHOTOS[i % len(PHOTOS)]
        photo = load_photo(cls)
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((256, 256))
        (folder / cls).mkdir(parents=True, exist_ok=True)
        crop.save(folder / cls / f"{i:06d}.jpg", quality=90)
    (folder / ".done").touch()
    return folder


def make_shards(jpegs: Path, root: Path) -> Path:
    from arinv.data.shards import write_shards

    dest = root / (jpegs.name + "-shards")
    if not (dest / "manifest.json").exists():
        write_shards(str(jpegs), dest, source_format="imagefolder", samples_per_shard=10**9,
                     max_resolution=256, compress_probability=1.0, jpeg_quality=90, progress=False)
    return dest


def timed_epochs(make_iter, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        n, t0 = 0, time.perf_counter()
        for images, _labels in make_iter():
            n += len(images)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def bench_torchvision(jpegs, args):
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(args.resolution, antialias=True),
                     v2.RandomHorizontalFlip()])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(jpegs), transform=tf),
                                         batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, persistent_workers=True)
    return timed_epochs(lambda: iter(loader), args.epochs)


def bench_ffcv(shards, args):
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    manifest = json.loads((shards / "manifest.json").read_text())
    loader = Loader(str(shards / manifest["shards"][0]["file"]), batch_size=args.batch_size,
                    num_workers=args.workers, order=OrderOption.RANDOM, drop_last=False,
                    pipelines={"image": [RandomResizedCropRGBImageDecoder((args.resolution,) * 2),
                                         RandomHorizontalFlip(), ToTensor(), ToTorchImage()],
                               "label": [IntDecoder(), ToTensor()]})
    return timed_epochs(lambda: iter(loader), args.epochs)


def bench_ray(shards, args, cpus):
    import ray

    from pipelines.ray_data import read_shards

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = read_shards(str(shards), split_transform="train", resolution=args.resolution,
                         rows_per_task=256)

        def batches():
            for b in ds.iter_torch_batches(batch_size=args.batch_size, prefetch_batches=4):
                yield b["image"], b["label"]
        return timed_epochs(batches, args.epochs)
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    args = parse_args(argv)
    root = Path(args.workdir)
    jpegs = make_jpegs(root, args.images)
    shards = make_shards(jpegs, root)
    import torch

    info = machine_info(torch.device("cpu"))
    print(f"machine: {info['cpu']}, {info['cpu_cores']} cores; {args.images} JPEGs of 256 px -> "
          f"{args.resolution} px random-resized-crop + flip, batch {args.batch_size}, "
          f"{args.workers} workers, {args.epochs} epochs (last reported)")
    benches = {"torchvision": lambda: bench_torchvision(jpegs, args),
               "ffcv": lambda: bench_ffcv(shards, args)}
    for cpus in args.ray_cpus or [args.workers]:
        benches[f"ray ({cpus} cpus)"] = lambda c=cpus: bench_ray(shards, args, c)
    results = {}
    for name, fn in benches.items():
        if args.only and name.split()[0] not in args.only:
            continue
        results[name] = rates = fn()
        print(f"  {name:16s} " + "  ".join(f"epoch {i + 1}: {r:8.1f} img/s"
                                           for i, r in enumerate(rates)))
    last = {k.split()[0]: v[-1] for k, v in results.items()}
    if any(k.startswith("ray") for k in results):
        last["ray"] = max(v[-1] for k, v in results.items() if k.startswith("ray"))
    if {"ray", "ffcv"} <= set(last):
        r = last["ray"] / last["ffcv"]
        print(f"(c)/(b) ray / ffcv        = {r:.2f}  (target >= 0.80)  {'PASS' if r >= 0.8 else 'FAIL'}")
    if {"ray", "torchvision"} <= set(last):
        r = last["ray"] / last["torchvision"]
        print(f"(c)/(a) ray / torchvision = {r:.2f}  (target >= 2.50)  {'PASS' if r >= 2.5 else 'FAIL'}")
    if {"ffcv", "torchvision"} <= set(last):
        print(f"(b)/(a) ffcv / torchvision = {last['ffcv'] / last['torchvision']:.2f}  (reference)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args),
                                               "images_per_s": results}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    raise SystemExit(main())
