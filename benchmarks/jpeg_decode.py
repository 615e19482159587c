#!/usr/bin/env python
"""One core, the shard reader's per-sample work, each figure beside its baseline:

  JPEG decode at full size: TurboJPEG (arinv.data.jpeg) vs OpenCV's bundled decoder;
  resize of random-resized crops to --resolution: torch's antialiased bilinear (what the reader
  uses) vs OpenCV's INTER_AREA (what it used before, and what ffcv uses);
  the whole decode + crop + flip of a batch (arinv.data.transforms.decode_crops).

Samples: the first --samples records of data_loading.py's shard set (written if missing).

    python benchmarks/jpeg_decode.py --source imagenet --samples 512
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as in a Ray decode task

import numpy as np  # noqa: E402


def best_ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--source", choices=["imagenet", "256"], default="imagenet")
    p.add_argument("--images", type=int, default=12000, help="data_loading.py's image set")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (best reported)")
    p.add_argument("--workdir", default="/tmp/arinv-bench-data")
    args = p.parse_args(argv)

    import json
    from pathlib import Path

    import cv2
    import torch

    from arinv.data import jpeg
    from arinv.data.beton import BetonReader
    from arinv.data.transforms import _resize, crop_box, decode_crops
    from data_loading import make_jpegs, make_shards

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    shards = make_shards(make_jpegs(Path(args.workdir), args.images, args.source), 256)
    first = json.loads((shards / "manifest.json").read_text())["shards"][0]["file"]
    with BetonReader.from_path(shards / first) as reader:
        recs = reader.records(0, min(args.samples, len(reader)))
    n, lib = len(recs), jpeg._library()
    if lib is None:
        raise SystemExit("libturbojpeg not found: nothing to compare OpenCV with")
    rng = np.random.default_rng(0)
    crops = []
    for r in recs:
        left, top, cw, ch = crop_box(r.width, r.height, rng)
        crops.append(jpeg.decode_jpeg(r.payload)[top:top + ch, left:left + cw])
    R = args.resolution

    def per_image(label, ms):
        print(f"  {label:44s} {ms:7.1f} ms / {n}  = {n / ms * 1e3:7.0f} img/s")

    print(f"{n} samples of {shards.name}, one core")
    def each(fn, items):  # results dropped as the reader drops them (memory is reused)
        return lambda: all(fn(x) is not None for x in items)

    turbo = best_ms(each(lambda r: jpeg._turbo_decode(lib, r.payload, 1), recs), args.reps)
    ocv = best_ms(each(lambda r: jpeg._opencv_decode(r.payload, 1), recs), args.reps)
    per_image("full decode, TurboJPEG", turbo)
    per_image("full decode, OpenCV (baseline)", ocv)
    print(f"  -> OpenCV / TurboJPEG = {ocv / turbo:.2f}")
    aa = best_ms(each(lambda c: _resize(c, R, R), crops), args.reps)
    area = best_ms(each(lambda c: cv2.resize(c, (R, R), interpolation=cv2.INTER_AREA), crops),
                   args.reps)
    per_image(f"resize crops to {R}, torch bilinear antialiased", aa)
    per_image(f"resize crops to {R}, OpenCV INTER_AREA (baseline)", area)
    print(f"  -> INTER_AREA / torch = {area / aa:.2f}")
    cols = ([r.payload for r in recs], [r.mode for r in recs], [r.width for r in recs],
            [r.height for r in recs])
    whole = best_ms(lambda: decode_crops(*cols, split_transform="train", resolution=R), args.reps)
    per_image("decode_crops (decode + crop + resize + flip)", whole)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
