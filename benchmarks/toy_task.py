#!/usr/bin/env python
"""Which bundled toy task lets the main job show the paper's robustness effect: accuracy of
a standard (and optionally an adversarially trained) small AlexNet under L2 PGD, per task.

Tasks (no download; all ship inside scikit-image / scikit-learn):
  colour    the 8 bundled colour photographs (``sample``): label = source photograph
  gray16    the 16 grayscale photographs and textures, each crop standardised to one grey
            level and contrast (``sample-gray``, the main job's task)
  gray8     the first 8 classes of gray16
  digits    scikit-learn's 8 x 8 handwritten digits (1,797), upsampled to 160 px, 80/20 split

A lightweight in-process proxy of the pipeline (no Ray, no shards): the quickstart encoder's
recipe (``alexnet_small`` at 128 px, SGD momentum 0.9, weight decay 5e-4, batch 32, lr / 10
after 75% of the epochs, random resized crops of 35-100% area and flips) on ``--per-class``
training crops (digits: all), then clean and L2 PGD-10 accuracy (step 2.5 eps / 10) on 128
held-out images. With ``--eps-train`` the encoder trains on L2 PGD examples (``--steps`` of
``--step-size``), ``--eps-warmup`` epochs ramping eps up as ``attack.warmup_epochs`` does.
Prints one line per run; ``--json`` appends it to a file.

    python benchmarks/toy_task.py --task colour gray16 gray8 digits --lr 0.02
    python benchmarks/toy_task.py --task gray16 --lr 0.02 --eps-train 1 --steps 2 --step-size 0.75
    python benchmarks/toy_task.py --task gray16 --eps-train 1 --steps 2 --step-size 0.75 \
        --eps-warmup 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from arinv.attacks.pgd import pgd  # noqa: E402
from arinv.config import AttackConfig  # noqa: E402
from arinv.models.alexnet import alexnet_small  # noqa: E402

EVAL_EPS = (0.5, 1.0, 2.0, 4.0)


def task(name: str, per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 N x 160 x 160 x 3 train / held-out images and labels."""
    if name == "digits":
        return _digits()
    from arinv.data.sample import sample_set

    bundled = "sample" if name == "colour" else "sample-gray"
    tr, va = (sample_set(s, per_class=p, name=bundled) for s, p in (("train", per_class),
                                                                       ("val", 16)))
    keep_tr, keep_va = (np.ones(len(s.labels), bool) for s in (tr, va))
    if name == "gray8":
        keep_tr, keep_va = tr.labels < 8, va.labels < 8
    return tr.images[keep_tr], tr.labels[keep_tr], va.images[keep_va], va.labels[keep_va]


def _digits():
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    held = np.arange(len(d.target)) % 5 == 0
    images = np.stack([np.repeat(np.asarray(Image.fromarray((im / 16 * 255).astype(np.uint8))
                                            .resize((160, 160), Image.BICUBIC))[..., None], 3, -1)
                       for im in d.images])
    return images[~held], d.target[~held], images[held], d.target[held]


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    out = []
    for im in x:
        side = int(im.shape[1] * np.sqrt(rng.uniform(0.35, 1.0)))
        top, left = rng.integers(0, im.shape[1] - side + 1, 2)
        c = F.interpolate(im[None, :, top:top + side, left:left + side], size=128,
                          mode="bilinear", align_corners=False)[0]
        out.append(c.flip(-1) if rng.random() < 0.5 else c)
    return torch.stack(out)


def run(args, name: str) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 100)
    xtr, ytr, xva, yva = task(name, args.per_class)
    xt = torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(ytr).long()
    pick = torch.randperm(len(yva), generator=torch.Generator().manual_seed(0))[:128]
    xv = F.interpolate(torch.from_numpy(xva[pick.numpy()]).permute(0, 3, 1, 2).float() / 255,
                       size=128, mode="bilinear", antialias=True, align_corners=False)
    yv = torch.from_numpy(yva[pick.numpy()]).long()
    model = alexnet_small(num_classes=int(yt.max()) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, max(1, int(args.epochs * 0.75)), 0.1)
    t0 = time.perf_counter()
    attack = AttackConfig(eps=args.eps_train, steps=args.steps,
                          step_size=args.step_size or 2.5 * args.eps_train / args.steps,
                          warmup_epochs=args.eps_warmup)
    for epoch in range(args.epochs):
        at = attack.at_epoch(epoch)
        model.train()
        perm = torch.randperm(len(yt))
        for i in range(0, len(yt), 32):
            b = perm[i:i + 32]
            x, y = augment(xt[b], rng), yt[b]
            if args.eps_train:
                x = pgd(model, x, y, eps=at.eps, steps=at.steps, step_size=at.effective_step_size)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = {"clean": (model(xv).argmax(1) == yv).float().mean().item()}
    for e in EVAL_EPS:
        xa = pgd(model, xv, yv, eps=e, step_size=2.5 * e / 10, steps=10)
        with torch.no_grad():
            acc[f"pgd_{e:g}"] = (model(xa).argmax(1) == yv).float().mean().item()
    return {"task": name, "seed": args.seed, "eps_train": args.eps_train,
            "eps_warmup": args.eps_warmup, "lr": args.lr,
            "epochs": args.epochs, "per_class": args.per_class, "train_images": len(yt),
            "train_s": round(train_s, 1), **{k: round(v, 3) for k, v in acc.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", nargs="+", default=["colour", "gray16", "gray8", "digits"],
                   choices=["colour", "gray16", "gray8", "digits"])
    p.add_argument("--per-class", type=int, default=96)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps-train", type=float, default=0.0, help="0: standard training")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--eps-warmup", type=int, default=0,
                   help="epochs over which eps grows linearly to --eps-train (0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="append each result as a JSON line")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'task':8s} {'train':>6s} {'clean':>6s} " + " ".join(f"{'ε=' + format(e, 'g'):>6s}"
                                                              for e in EVAL_EPS) + "  time")
    for name in args.task:
        r = run(args, name)
        print(f"{name:8s} {'PGD' if args.eps_train else 'std':>6s} {r['clean']:6.3f} "
              + " ".join(f"{r[f'pgd_{e:g}']:6.3f}" for e in EVAL_EPS)
              + f"  {r['train_s']:.0f} s", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
