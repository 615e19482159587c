"""The main job: the whole pipeline at toy size, everything under one folder.

1. writes the bundled sample photographs as train/val shard sets (``DIR/shards``);
2. trains a standard and a robust small AlexNet on Ray Train (``tiny-sample-standard`` /
   ``-robust``), registers them as ``arinv-alexnet_small@standard`` / ``@robust``;
3. trains a conv5 generator for each, its encoder taken from the registry by URI, registers
   each pair as a pyfunc autoencoder (``arinv-alexnet_small-conv5-autoencoder@...``);
4. loads both autoencoders back from the registry, as a consumer would, reconstructs the same
   held-out images, and writes ``DIR/report.md`` with ``robustness.png`` and
   ``reconstructions.png`` beside it (also logged to MLflow).

Ray is local (or ``--address``), MLflow is a sqlite store in ``DIR`` (or ``--tracking-uri``).
Relaunching resumes unfinished runs and reuses finished ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from arinv.config import ConfigError, EncoderTrainConfig, GeneratorTrainConfig, load_config
from arinv.data.reader import write_sample_shards
from pipelines.console import log_file, say
from pipelines.trainer import Launch, own_local_ray

ENCODERS = {"standard": "tiny-gray-standard", "robust": "tiny-gray-robust"}
GENERATOR = "tiny-gray-generator"
EXPERIMENT = "arinv-quickstart"


# an override's prefix that sends it to one stage's presets only (prefix stripped)
STAGES = {"encoders.": EncoderTrainConfig, "generators.": GeneratorTrainConfig}


def configs(overrides: list[str], shards: str | None) -> tuple[dict, dict]:
    """Validated encoder and generator configs per kind. An override goes to every preset
    that has the field (``attack.*`` to the robust encoder only; ``encoders.FIELD`` /
    ``generators.FIELD`` to that stage's presets only); one that none takes is an error."""
    data = [f"data.shards={shards}"] if shards else []
    used: set[str] = set()

    def load(cls, preset, kind, extra):
        mine = []
        for o in overrides:
            stage = next((p for p in STAGES if o.startswith(p)), None)
            if stage and STAGES[stage] is not cls:
                continue
            field = o[len(stage):] if stage else o
            if field.startswith("attack") and kind != "robust":
                continue
            try:
                load_config(cls, preset, [*data, *mine, field])
            except ConfigError as e:
                if "unknown field" in str(e):
                    continue
                raise
            mine.append(field)
            used.add(o)
        return load_config(cls, preset, [*data, *mine, *extra])

    encs = {k: load(EncoderTrainConfig, p, k, []) for k, p in ENCODERS.items()}
    gens = {k: load(GeneratorTrainConfig, GENERATOR, k,
                    [f"name={GENERATOR}-{k}",
                     f"encoder.checkpoint=models:/arinv-{encs[k].encoder.name}@{k}"])
            for k in ENCODERS}
    unused = [o for o in overrides if o not in used]
    if unused:
        raise ConfigError(f"--set {unused[0]}: no quickstart preset has this field "
                          f"({', '.join([*ENCODERS.values(), GENERATOR])})")
    return encs, gens


def train_missing_pair(missing: list[str], run, tracking_uri: str, *, allowed: bool,
                       registers: str, kind: str) -> None:
    """For a downstream command whose models are not in the registry: with ``allowed`` (its
    toy preset's ``train_missing``), train the pair with the quickstart's presets in the run's
    workdir; else stop, saying why each is missing (``missing``), what the quickstart
    ``registers`` and how to name registered ``kind`` models instead."""
    from pipelines.errors import RegistryError

    why = "; ".join(missing)
    if not allowed:
        raise RegistryError(f"{why}. Train the pair first (e.g. 'arinv quickstart --workdir DIR' "
                            f"registers {registers} in DIR/mlflow.db), or name registered "
                            f"{kind}s with --set standard=models:/NAME@ALIAS --set robust=...")
    say(f"== {why}: training the pair with the quickstart's presets first")
    run_quickstart(run.workdir, progress=run.progress, verbose=run.verbose, address=run.address,
                   tracking_uri=tracking_uri)


def run_quickstart(workdir: Path, *, overrides: list[str] = (), progress: bool = True,
                   verbose: bool = False, address: str | None = None,
                   tracking_uri: str | None = None, shards: str | None = None) -> dict:
    """The main job in ``workdir``; ``progress``: a bar per training stage (``verbose``: the
    workers' and Ray Data's own bars instead)."""
    workdir = Path(workdir).expanduser().resolve()
    bundled = shards is None  # the bundled photographs, written as shards by _run
    shards = str(workdir / "shards") if bundled else shards
    from pipelines.tracking import checked_uri

    if tracking_uri:
        checked_uri(tracking_uri)
    encs, gens = configs(list(overrides), shards)  # every config checked before any work
    with own_local_ray():  # a local cluster the pipelines start is shut down at the end
        return _run(workdir, encs, gens, progress, verbose, address, tracking_uri, bundled)


def _run(workdir: Path, encs: dict, gens: dict, progress: bool, verbose: bool,
         address: str | None, tracking_uri: str | None, bundled: bool) -> dict:
    from pipelines.train_encoder import train_encoder
    from pipelines.train_generator import train_generator

    tracking_uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    t0 = time.perf_counter()
    if bundled:
        d = encs["standard"].data
        say(f"== writing the bundled sample set as shards ({d.train_per_class} train and "
            f"{d.val_per_class} held-out crops per class)")
        write_sample_shards(Path(d.shards), d.train_per_class, d.val_per_class,
                            progress=progress and verbose, name=d.source)

    def launch(kind: str, cfg) -> Launch:
        return Launch(workdir=workdir / kind / cfg.name, storage_path=str(workdir / "ray"),
                      tracking_uri=tracking_uri, experiment=EXPERIMENT, address=address,
                      progress=progress, verbose=verbose,
                      model_cache=str(workdir / "model-cache"))

    results: dict = {"encoders": {}, "generators": {}}
    for kind, cfg in encs.items():
        say(f"== training the {kind} encoder ({cfg.name}: {cfg.encoder.name}, "
            f"{cfg.optim.epochs} epochs{f', L2 PGD eps {cfg.attack.eps}' if cfg.attack else ''})")
        start = time.perf_counter()
        r = results["encoders"][kind] = train_encoder(cfg, launch("encoders", cfg))
        rob = r["robustness"]
        say(f"   {kind} encoder: clean accuracy {rob['clean']:.3f}, " + ", ".join(
            f"PGD ε={float(e):g} {a:.3f}" for e, a in rob["pgd"].items())
            + f" ({(time.perf_counter() - start) / 60:.1f} min) -> {r['registered']}")
    for kind, cfg in gens.items():
        say(f"== training a generator that inverts {cfg.encoder.checkpoint} "
            f"({cfg.generator.name}, {cfg.optim.epochs} epochs)")
        start = time.perf_counter()
        r = results["generators"][kind] = train_generator(cfg, launch("generators", cfg))
        q = r["quality"]
        say(f"   {kind} autoencoder: held-out PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.3f} "
            f"({(time.perf_counter() - start) / 60:.1f} min) -> {r['registered']}")
    say("== loading both autoencoders back from the registry")
    grid = reconstruction_grid(workdir / "reconstructions.png", results, gens, tracking_uri)
    report = write_report(workdir, results, time.perf_counter() - t0, grid, bundled)
    log_report(workdir, tracking_uri)
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    say("\n" + report.read_text())
    if log_file():
        say(f"log:     {log_file()} (Ray's and the workers' output; --verbose shows it here)")
    say(f"report:  {report}\ngrid:    {grid}\n"
        f"MLflow:  mlflow ui --backend-store-uri {tracking_uri}  (then open "
        "http://127.0.0.1:5000)")
    return results


GRID_CLASSES, GRID_COLUMNS = 16, 8  # the grid shows one held-out image of each of the first 16


def reconstruction_grid(path: Path, results: dict, gens: dict, tracking_uri: str) -> Path:
    """Rows: held-out input | standard autoencoder | robust autoencoder, both loaded from the
    registry with ``mlflow.pyfunc.load_model`` alone; the first held-out image of each class
    (at most ``GRID_CLASSES``), ``GRID_COLUMNS`` to a block of three rows."""
    import mlflow
    import numpy as np
    import torch

    from arinv.data.reader import ShardBatches
    from arinv.train.run import collect
    from arinv.viz import save_grid
    from pipelines.tracking import use_tracking_uri

    cfg = next(iter(gens.values()))
    val = ShardBatches(f"{cfg.data.shards}/val", 64, resolution=cfg.resolution, train=False)
    x, y = collect(val, cfg.eval.images)
    x = x[first_of_each_class(y)].numpy().astype(np.float32)
    kinds = [torch.from_numpy(x)]
    for kind in gens:
        with use_tracking_uri(tracking_uri):  # models:/ URIs resolve against the global one
            model = mlflow.pyfunc.load_model(results["generators"][kind]["registered"])
        kinds.append(torch.from_numpy(np.asarray(model.predict(x)["reconstruction"])))
    blocks = range(0, len(x), GRID_COLUMNS)
    rows = [k[i:i + GRID_COLUMNS] for i in blocks for k in kinds]
    return save_grid(path, rows, labels=["held-out", *gens] * len(blocks))


def first_of_each_class(labels) -> list[int]:
    """Indices of the first image of each class in ``labels``, in class order, at most
    ``GRID_CLASSES`` (padded with the next images when fewer than ``GRID_COLUMNS`` classes)."""
    first: dict[int, int] = {}
    for i, label in enumerate(labels.tolist()):
        first.setdefault(label, i)
    idx = [first[c] for c in sorted(first)][:GRID_CLASSES]
    rest = [i for i in range(len(labels)) if i not in idx]
    return idx + rest[:max(0, GRID_COLUMNS - len(idx))]


def write_report(workdir: Path, results: dict, seconds: float, grid: Path,
                 bundled: bool = True) -> Path:
    encs, gens = results["encoders"], results["generators"]
    eps = sorted({float(e) for r in encs.values() for e in r["robustness"]["pgd"]})
    rows = ["| encoder | clean | " + " | ".join(f"PGD ε={e:g}" for e in eps) + " | sanity checks |",
            "|" + "---|" * (len(eps) + 3)]
    for kind, r in encs.items():
        rob = r["robustness"]
        accs = " | ".join(f"{rob['pgd'].get(str(e), float('nan')):.3f}" for e in eps)
        ok = all(c["passed"] for c in rob["checks"])
        checks = "all passed" if ok else "; ".join(c["detail"] for c in rob["checks"] if not c["passed"])
        rows.append(f"| {kind} ({r['registered']}) | {rob['clean']:.3f} | {accs} | {checks} |")
    ri_steps = {r["config"].get("eval.ri_steps") for r in gens.values()
                if r["quality"].get("ri_baseline")}
    q_rows = ["| inverted encoder | PSNR (dB) ↑ | SSIM ↑ | LPIPS ↓ | RI baseline² PSNR / SSIM |",
              "|---|---|---|---|---|"]
    for kind, r in gens.items():
        q = r["quality"]
        lp = "n/a¹" if q["lpips"] is None else f"{q['lpips']:.3f}"
        ri = q.get("ri_baseline")
        ri_txt = f"{ri['psnr']:.2f} / {ri['ssim']:.3f}" if ri else "—"
        q_rows.append(f"| {kind} ({r['registered']}) | {q['psnr']:.2f} | {q['ssim']:.3f} | {lp} | "
                      f"{ri_txt} |")
    any_rob = next(iter(encs.values()))["robustness"]
    any_gen = next(iter(gens.values()))  # both kinds share the tap and the held-out crops
    n_q = any_gen["quality"]["n"]
    text = "\n".join([
        "# arinv quickstart report", "", *verdict(encs, gens), "",
        f"Total time {seconds / 60:.1f} min. {task_line(results, bundled)}", "",
        f"## Encoders: accuracy on {any_rob['n']} held-out crops under L2 PGD-{any_rob['steps']}",
        "", *rows, "", "![accuracy against ε](robustness.png)", "",
        f"## Feature inversion ({any_gen['config']['encoder.layer']}) "
        f"on {n_q} held-out crops", "", *q_rows, "",
        "¹ LPIPS needs its AlexNet backbone weights in the torch hub cache "
        "(`alexnet-owt-7be5be79.pth`); without them no LPIPS is reported." if any(
            r["quality"]["lpips"] is None for r in gens.values()) else "", "",
        ri_note(ri_steps), "",
        f"![held-out inputs, standard and robust reconstructions]({grid.name})", "",
        "One held-out crop of each class; in each block of three rows: the input, the standard "
        "and the robust autoencoder's reconstruction (both loaded back from the MLflow registry "
        "with `mlflow.pyfunc.load_model`). " + inverted_map_note(gens), "",
        "Runs: `encoders/<preset>/`, `generators/<preset>/` (final checkpoint, metrics.json); "
        "Ray Train checkpoints: `ray/`; MLflow: `mlflow.db`, `mlartifacts/`.",
    ])
    _plot(workdir / "robustness.png", encs,
          chance=1 / results["encoders"]["standard"]["config"]["encoder.num_classes"])
    path = workdir / "report.md"
    path.write_text(text + "\n")
    return path


def ri_note(steps: set) -> str:
    """The footnote under the inversion table: what the RI column is, so its low numbers read
    as a short optimisation from noise, not as a broken generator."""
    if not steps:
        return "² no RI baseline in this run (eval.ri_steps=0)."
    n = " / ".join(str(s) for s in sorted(steps, key=str))
    few = all(isinstance(s, int) and s < 1000 for s in steps)
    return (f"² RI: the same held-out crops inverted without a generator, by {n} L2-normalised "
            "gradient steps on the pixels from uniform noise towards the encoder's features "
            "(the paper's RI comparison, Sec. A2.4, used RI's official implementation)."
            + (" So few steps leave the result close to the noise it starts from: a floor for "
               "this table, not a competitor." if few else ""))


# what the paper inverts: conv5 (after pool5) of a full AlexNet at 224 px (Tab. A4)
PAPER_MAP = (256, 6, 6)


def inverted_map_note(gens: dict) -> str:
    """How many numbers each reconstruction is drawn from, against the paper's conv5; below
    the paper's 6 x 6 grid, a warning that only a crop's coarse layout can come back."""
    from arinv.models import create_encoder

    cfg = next(iter(gens.values()))["config"]  # flattened; both kinds invert the same tap
    enc = create_encoder(cfg["encoder.name"])
    res = cfg.get("resolution") or enc.input_size
    c, h, w = enc.feature_shape(cfg["encoder.layer"], res)
    pc, ph, pw = PAPER_MAP
    note = (f"Each reconstruction is drawn from {c * h * w:,} numbers ({cfg['encoder.layer']} of "
            f"{cfg['encoder.name']}: {c} x {h} x {w} for a {res} px crop); the "
            f"paper inverts {pc * ph * pw:,} ({pc} x {ph} x {pw}, AlexNet conv5 at 224 px, "
            "trained on ImageNet).")
    if h * w < ph * pw:
        note += (f" On a {h} x {w} map expect each crop's coarse layout, not its texture or "
                 "detail.")
    return note


def task_line(results: dict, bundled: bool = True) -> str:
    """What the encoders classify (the bundled set their config names, or ``--shards``), from
    the standard encoder's training config."""
    cfg = results["encoders"]["standard"]["config"]  # flattened
    n, source = cfg["encoder.num_classes"], cfg["data.source"]
    from arinv.data.sample import TASKS

    what = TASKS.get(source) if bundled else None
    what = what or f"the {n} classes of {cfg['data.shards'] if not bundled else source}"
    return f"Task: {what}; chance {1 / n:.3g}."


def effects(encs: dict, gens: dict) -> dict:
    """The issue's criteria for the paper's two effects, from a run's ``results.json`` parts:
    at the largest ε evaluated, the standard encoder keeps at most half its clean accuracy and
    the robust one is at least 0.15 above it (``robust_shown``); the robust autoencoder's PSNR
    and SSIM are above the standard one's (``reconstruction_shown``). The numbers come with."""
    std, rob = encs["standard"]["robustness"], encs["robust"]["robustness"]
    eps = max(std["pgd"], key=float)
    a_std, a_rob = std["pgd"][eps], rob["pgd"].get(eps, float("nan"))
    q_std, q_rob = gens["standard"]["quality"], gens["robust"]["quality"]
    d_psnr, d_ssim = q_rob["psnr"] - q_std["psnr"], q_rob["ssim"] - q_std["ssim"]
    return {"eps": float(eps), "clean_standard": std["clean"], "clean_robust": rob["clean"],
            "pgd_standard": a_std, "pgd_robust": a_rob, "gap": a_rob - a_std,
            "robust_shown": a_std <= std["clean"] / 2 and a_rob - a_std >= 0.15,
            "psnr_standard": q_std["psnr"], "psnr_robust": q_rob["psnr"], "d_psnr": d_psnr,
            "ssim_standard": q_std["ssim"], "ssim_robust": q_rob["ssim"], "d_ssim": d_ssim,
            "reconstruction_shown": d_psnr > 0 and d_ssim > 0}


def verdict(encs: dict, gens: dict) -> list[str]:
    """The report's first two lines: the robustness gap at the largest ε evaluated and the
    reconstruction gap, each saying whether this run shows the paper's effect (``effects``; a
    PSNR gap under ``CLEAR_DB`` is called within run-to-run variation)."""
    e = effects(encs, gens)
    return [
        f"**Robustness:** under L2 PGD at ε = {e['eps']:g} the robust encoder keeps "
        f"{e['pgd_robust']:.3f} accuracy, the standard one {e['pgd_standard']:.3f} (clean "
        f"{e['clean_robust']:.3f} / {e['clean_standard']:.3f}): a gap of {e['gap']:+.3f}, "
        + ("the paper's effect." if e["robust_shown"] else "so this run does NOT show the "
           "paper's effect (wanted: standard at most half its clean accuracy, robust 0.15 above "
           "it)."),
        f"**Reconstruction:** the robust autoencoder reaches PSNR {e['psnr_robust']:.2f} dB / "
        f"SSIM {e['ssim_robust']:.3f} on held-out images, the standard one "
        f"{e['psnr_standard']:.2f} dB / {e['ssim_standard']:.3f} ({e['d_psnr']:+.2f} dB, "
        f"{e['d_ssim']:+.3f}), "
        + ("so this run does NOT show the paper's effect." if not e["reconstruction_shown"] else
           "as in the paper." if e["d_psnr"] >= CLEAR_DB else
           f"the paper's direction, but under {CLEAR_DB:g} dB apart: within run-to-run "
           "variation."),
    ]


# the standard autoencoder's held-out PSNR moved 0.6 dB between two seeds of the main job
# (docs/benchmarks.md): a smaller gap between the two autoencoders is not evidence of an effect
CLEAR_DB = 0.5


def log_report(workdir: Path, tracking_uri: str) -> None:
    from pipelines.tracking import RunLogger, find_or_create_run

    run_id = find_or_create_run(tracking_uri, EXPERIMENT, f"{workdir}/report", run_name="report",
                                tags={"arinv.kind": "report"})
    log = RunLogger(tracking_uri, run_id)
    for name in ("report.md", "robustness.png", "reconstructions.png"):
        log.log_artifact(workdir / name)
    log.close(status="FINISHED")


def _plot(path: Path, encs: dict, chance: float) -> None:
    import matplotlib.pyplot as plt

    fig = robustness_figure(encs, chance)
    fig.savefig(path)
    plt.close(fig)


def robustness_figure(encs: dict, chance: float):
    """Accuracy against the attack radius, one line per encoder (clean at ε = 0), and a dashed
    line at chance accuracy, where a collapsed encoder ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for kind, r in encs.items():
        rob = r["robustness"]
        xs = [0.0] + [float(e) for e in rob["pgd"]]
        ys = [rob["clean"]] + list(rob["pgd"].values())
        ax.plot(xs, ys, marker="o", label=f"{kind} encoder")
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
    ax.set_xlabel("L2 attack radius ε")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Accuracy under PGD")
    fig.tight_layout()
    return fig
