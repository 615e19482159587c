"""The ``arinv`` command. Thin: parses arguments, then calls the library or a pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """examples:
  arinv quickstart                          # the embedded demo (CPU, bundled photographs)
  arinv presets                             # list the config presets
  arinv config alexnet-imagenet-robust      # show a preset, fully resolved
  arinv train-encoder --config tiny-sample-robust --workdir runs/robust
  arinv train-encoder --config resnet18-cifar10-robust --set attack.eps=1.5 --set data.source=/data/cifar10
  arinv eval-robustness --checkpoint runs/robust/checkpoints/last.pt --eps 0.25 0.5 1 --autoattack-eps 0.5
  arinv train-generator --config tiny-sample-generator --set encoder.checkpoint=runs/robust/checkpoints/last.pt
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arinv", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train adversarially robust encoders and invert their features.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quickstart", help="train a standard and a robust small encoder on the "
                       "bundled photographs and compare their robustness (CPU, a few minutes)")
    q.add_argument("--workdir", default="arinv-quickstart",
                   help="everything the run writes goes here (default: ./arinv-quickstart)")
    q.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a field of both presets, e.g. --set optim.epochs=2 "
                   "(attack.* fields apply to the robust one only)")
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sub.add_parser("presets", help="list config presets")
    c = sub.add_parser("config", help="print a preset or config file, resolved and validated")
    c.add_argument("preset")
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")

    t = sub.add_parser("train-encoder", help="train an encoder (standard, or adversarial when "
                       "the config has an attack) in this process, resuming from the workdir's "
                       "last checkpoint")
    t.add_argument("--config", required=True, help="preset name (see 'arinv presets') or YAML path")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field, e.g. --set attack.eps=1.5 (repeatable)")
    t.add_argument("--workdir", default=None, help="default: runs/<config name>")
    t.add_argument("--no-progress", action="store_true")

    g = sub.add_parser("train-generator", help="train a generator that inverts a frozen "
                       "encoder's features (pixel / feature / GAN losses) in this process")
    g.add_argument("--config", required=True, help="preset name or YAML path")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="e.g. --set encoder.checkpoint=runs/robust/checkpoints/last.pt")
    g.add_argument("--workdir", default=None, help="default: runs/<config name>")
    g.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("eval-robustness", help="clean, PGD, FGSM and AutoAttack accuracy of a "
                       "trained encoder, with the gradient-masking sanity checks")
    e.add_argument("--checkpoint", required=True, help="an encoder checkpoint (train-encoder)")
    e.add_argument("--data", default=None, help="evaluation data: 'sample' or an ImageFolder root "
                   "with val/ (default: the data the encoder was trained on)")
    e.add_argument("--eps", type=float, nargs="+", default=None, help="PGD radii")
    e.add_argument("--norm", choices=["l2", "linf"], default=None)
    e.add_argument("--steps", type=int, default=None, help="PGD steps (also runs 2x steps)")
    e.add_argument("--autoattack-eps", type=float, nargs="*", default=[],
                   help="also run AutoAttack (reference implementation) at these radii")
    e.add_argument("--autoattack-version", default="standard", choices=["standard", "custom"])
    e.add_argument("--autoattack-attacks", nargs="*", default=None,
                   help="with --autoattack-version custom: e.g. apgd-ce apgd-t")
    e.add_argument("--max-images", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--json", default=None, help="also write the report to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from arinv.config import ConfigError
    from arinv.train.state import CheckpointError

    try:
        return _COMMANDS[args.command](args) or 0
    except (ConfigError, CheckpointError) as e:
        print(f"arinv {args.command}: error: {e}", file=sys.stderr)
        return 2


def _quickstart(args) -> int:
    from pipelines.quickstart import run_quickstart

    run_quickstart(Path(args.workdir), overrides=args.set, progress=not args.no_progress)
    return 0


def _presets(args) -> int:
    from arinv.config import list_presets, resolve_preset

    for name in list_presets():
        print(f"{name:32s} {resolve_preset(name)}")
    return 0


def _config(args) -> int:
    import yaml

    from arinv.config import config_class, load_config, to_dict

    cfg = load_config(config_class(args.preset), args.preset, args.set)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def _train_encoder(args) -> int:
    from arinv.config import EncoderTrainConfig, load_config
    from arinv.train.loop import fit_encoder

    cfg = load_config(EncoderTrainConfig, args.config, args.set)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    result = fit_encoder(cfg, workdir, progress=not args.no_progress)
    print(_report_text(result["robustness"]))
    print(f"checkpoint: {result['checkpoint']}\nmetrics:    {workdir / 'metrics.json'}")
    return 0


def _train_generator(args) -> int:
    from arinv.config import GeneratorTrainConfig, load_config
    from arinv.train.generator_loop import fit_generator

    cfg = load_config(GeneratorTrainConfig, args.config, args.set)
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    q = fit_generator(cfg, workdir, progress=not args.no_progress)["quality"]
    lp = "n/a (LPIPS weights not installed)" if q["lpips"] is None else f"{q['lpips']:.4f}"
    print(f"held-out reconstruction on {q['n']} images: PSNR {q['psnr']:.2f} dB, "
          f"SSIM {q['ssim']:.4f}, LPIPS {lp}")
    if "ri_baseline" in q:
        r = q["ri_baseline"]
        print(f"RI baseline (optimisation, {cfg.ri_steps} steps): PSNR {r['psnr']:.2f} dB, "
              f"SSIM {r['ssim']:.4f}")
    print(f"grid:       {workdir / 'reconstructions.png'}\nmetrics:    {workdir / 'metrics.json'}")
    return 0


def _eval_robustness(args) -> int:
    from arinv.config import validate
    from arinv.data.local import local_loaders
    from arinv.train.loop import collect, load_encoder
    from arinv.metrics.robustness import robustness_report
    from arinv.train.runtime import autocast_for, resolve_device

    device = resolve_device(args.device)
    model, cfg = load_encoder(args.checkpoint, device)
    if args.data:
        cfg.data.source = args.data
    ev = cfg.eval
    ev.pgd_eps = args.eps if args.eps is not None else ev.pgd_eps
    ev.norm, ev.pgd_steps = args.norm or ev.norm, args.steps or ev.pgd_steps
    ev.max_images = args.max_images or ev.max_images
    validate(cfg)
    resolution = cfg.model.resolution or model.input_size
    _, val, _ = local_loaders(cfg.data, resolution, cfg.optim.batch_size, cfg.runtime.seed)
    x, y = collect(val, ev.max_images)
    rep = robustness_report(
        model, x, y, eps_list=ev.pgd_eps, norm=ev.norm, steps=ev.pgd_steps,
        batch_size=cfg.optim.batch_size, autocast=autocast_for(device, cfg.runtime.amp),
        autoattack_eps=args.autoattack_eps, autoattack_version=args.autoattack_version,
        autoattack_attacks=args.autoattack_attacks)
    print(f"{args.checkpoint}: {rep.n} images, {ev.norm} attacks")
    print(rep.table())
    if args.json:
        Path(args.json).write_text(json.dumps(rep.as_dict(), indent=2))
    return 0 if all(c["passed"] for c in rep.checks) else 1


def _report_text(rob: dict) -> str:
    lines = [f"clean accuracy {rob['clean']:.3f} on {rob['n']} held-out images"]
    for eps, acc in rob["pgd"].items():
        lines.append(f"  {rob['norm']} PGD-{rob['steps']} eps {eps:>5}: {acc:.3f}")
    return "\n".join(lines)


_COMMANDS = {"quickstart": _quickstart, "presets": _presets, "config": _config,
             "train-encoder": _train_encoder, "train-generator": _train_generator,
             "eval-robustness": _eval_robustness}

if __name__ == "__main__":
    sys.exit(main())
