"""The loss ablation (Sec. A2.1, Fig. A2) as one command (``arinv ablation``) on Ray Tune.

A trial per (criterion, encoder): the pixel, pixel + feature and pixel + feature + GAN trials
each train a generator against the frozen encoder through the one training loop on Ray Train
(tracked in MLflow like any generator run; not registered: they are the experiment's
by-products); the RI trials optimise images from noise (``arinv.inversion``). Every trial then
reconstructs the same held-out images (the first ``images`` of the val split) and measures
PSNR / SSIM (/ LPIPS where its weights are installed). The driver writes

  WORKDIR/table_fig_a2.md, .csv   a row per criterion, PSNR / SSIM / LPIPS per encoder
  WORKDIR/fig_a2.png              ground truth, then each criterion's standard and AR rows
  WORKDIR/results.json

logged to a parent MLflow run (kind ``ablation``) with a child run per trial. Both encoders are
fetched and checked (their kind and robustness, the architecture the generator preset inverts)
before Ray starts. Relaunching resumes: finished trials are not rerun, an interrupted one
resumes its generator run from its last checkpoint.

    ray job submit -- python -m pipelines.ablation --config ablation-alexnet-conv5 \\
        --set standard=models:/arinv-alexnet@standard --set robust=models:/arinv-alexnet@robust \\
        --set shards=s3://bucket/imagenet --storage-path s3://bucket/runs
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from arinv.config import AblationConfig, ConfigError, build, flatten, to_dict, validate
from arinv.data import storage
from arinv.experiments import fig_a2
from pipelines.autoencoders import load_pair, local_file
from pipelines.console import say
from pipelines.errors import ModelNotFound, RegistryError
from pipelines.trainer import Launch

PURPOSE = "arinv ablation"
CELLS = "cells"  # a trial's result under STORAGE/NAME/cells/TRIAL.json and .npy (examples)
ROW_KEYS = ("criterion", "column", "psnr", "ssim", "lpips", "n", "seconds", "trial_run",
            "generator_run", "encoder")


def held_out(shards: str, n: int, resolution: int):
    """The first ``n`` images of ``shards``/val as float [0, 1] at ``resolution`` (every trial
    and the figure use the same ones)."""
    from arinv.data.reader import ShardBatches
    from arinv.train.run import collect

    x, _ = collect(ShardBatches(f"{shards}/val", 64, resolution=resolution, train=False), n)
    return x


# ----------------------------------------------------------------------------- the trial


def trial(config: dict) -> None:
    """One Tune trial: a criterion's reconstructions of the held-out images from one encoder's
    features, measured; its examples stored for the figure."""
    import ray.tune

    from pipelines import tracking

    ctx, criterion, column = config["ctx"], config["cell"]["criterion"], config["cell"]["column"]
    ab = build(AblationConfig, ctx["ablation"])
    name = fig_a2.trial_name(criterion, column)
    uri, exp = ctx["tracking_uri"], ctx["experiment"]
    run_id = tracking.find_or_create_run(
        uri, exp, f"{ctx['key']}/{name}", run_name=name,
        tags={tracking.PARENT_TAG: ctx["parent"], "arinv.kind": "ablation-trial",
              "arinv.ablation": ab.name, "arinv.criterion": criterion, "arinv.column": column})
    out = cell_uri(ctx["storage"], ab.name, name)
    if storage.exists(f"{out}.json"):  # measured before an interruption: the result stands
        row = json.loads(storage.read_bytes(f"{out}.json"))
    else:
        row = _measure(ab, ctx, criterion, column, run_id)
        storage.write_bytes(f"{out}.npy", row.pop("examples"))
        storage.write_bytes(f"{out}.json", json.dumps(row, default=str).encode())
    log = tracking.RunLogger(uri, run_id)
    log.log_params({"criterion": criterion, "column": column, "encoder": row["encoder"]})
    log.log_metrics({k: row[k] for k in ("psnr", "ssim", "lpips", "seconds")
                     if row.get(k) is not None}, step=0)
    log.close(status="FINISHED")
    ray.tune.report({**{k: v for k, v in row.items() if v is not None}, "trial_complete": 1})


def _measure(ab: AblationConfig, ctx: dict, criterion: str, column: str, run_id: str) -> dict:
    import torch

    from arinv.train.tasks import quality, reconstruct
    from pipelines import tracking

    uri, cache, ref = ctx["tracking_uri"], ctx["model_cache"], ctx["encoders"][column]
    enc_file = local_file(ref, "encoder", uri, cache)
    t0 = time.perf_counter()
    row = {"criterion": criterion, "column": column, "encoder": ref, "trial_run": run_id}
    x = held_out(ctx["shards"], ab.images, ctx["resolution"])
    if criterion == "ri":
        from arinv.inversion import invert_by_optimisation
        from arinv.models.load import load_encoder
        from arinv.train.gan import freeze
        from arinv.train.runtime import resolve_device

        encoder, _ = load_encoder(enc_file, resolve_device("auto"))
        encoder = freeze(encoder)
        p = next(encoder.parameters())
        with torch.no_grad():
            target = encoder.features(x.to(p.device), ctx["layer"])
        recon = invert_by_optimisation(
            encoder, target, ctx["layer"], size=ctx["resolution"], steps=ab.ri_steps,
            step_size=ab.ri_step_size, generator=torch.Generator().manual_seed(ctx["seed"])).cpu()
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        from pipelines.train_generator import train_generator

        cfg = fig_a2.generator_config(ab, criterion, column, ref)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, shards=ctx["shards"]))
        launch = Launch(workdir=Path(ctx["workdir"]) / "trials" / fig_a2.trial_name(
                            criterion, column), run_name=cfg.name, storage_path=ctx["storage"],
                        tracking_uri=uri, experiment=ctx["experiment"], register=False,
                        model_cache=cache, progress=False,
                        extra_tags={tracking.PARENT_TAG: run_id, "arinv.ablation": ab.name},
                        callbacks=[TuneReportCallback()])
        gen = train_generator(cfg, launch)
        gen_file = local_file(gen["stored_checkpoint"], "generator", uri, cache)
        encoder, generator, tap, _, _ = load_pair(enc_file, gen_file)
        recon = reconstruct(generator, encoder, x, tap)
        row["generator_run"] = gen["run_id"]
    row.update(quality(recon, x), n=len(x), seconds=time.perf_counter() - t0,
               examples=_npy(recon[:ab.examples]))
    return row


def cell_uri(storage_path: str, name: str, trial_name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}/{CELLS}/{trial_name}"


def _npy(images) -> bytes:
    """Images in [0, 1] as a uint8 .npy (read back with allow_pickle=False)."""
    buf = io.BytesIO()
    np.save(buf, (images.clamp(0, 1) * 255).round().byte().numpy(), allow_pickle=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the driver


def fetch_encoders(ab: AblationConfig, tracking_uri: str, cache: str | None
                   ) -> tuple[dict, list[str]]:
    """({column: (reference, encoder, its stored config)}, [why each missing one is
    missing]); a reference of another kind is refused here, naming it."""
    from arinv.models.load import load_encoder

    found, missing = {}, []
    for column in fig_a2.COLUMNS:
        ref = getattr(ab, column)
        if ref is None:
            continue
        try:
            found[column] = (ref, *load_encoder(local_file(ref, "encoder", tracking_uri,
                                                           cache)))
        except ModelNotFound as e:
            missing.append(str(e).split("; ")[0])
        except RegistryError as e:
            raise RegistryError(f"{column}: {e}; {PURPOSE} needs an encoder (a registered "
                                "encoder or autoencoder, a checkpoint file)") from None
    return found, missing


def plan(ab: AblationConfig, run: Launch, encoders: dict) -> dict:
    """Everything checked before Ray starts: each encoder's robustness matches its column and
    its architecture is the one the generator preset inverts; every trial's config; the data
    and the resolution."""
    from arinv.experiments.table_a1 import check_robustness
    from pipelines.trainer import shard_sets

    full = fig_a2.full_config(ab)
    want = (full.encoder.name, full.encoder.layer)
    resolution = full.resolution
    for column, (ref, model, cfg) in encoders.items():
        check_robustness(column, cfg.attack, ref)
        if model.arch["name"] != want[0]:
            raise ConfigError(f"{column}: {ref} holds a {model.arch['name']} encoder; the "
                              f"generator preset {ab.generator!r} inverts {want[0]}.{want[1]} "
                              f"(give a {want[0]} encoder, or a preset for "
                              f"{model.arch['name']})")
        resolution = resolution or model.input_size
    cells = fig_a2.cells(ab)  # each trained criterion's config: the preset must be the full one
    cfgs = [fig_a2.generator_config(ab, c["criterion"], c["column"], None) for c in cells
            if c["criterion"] in fig_a2.TRAINED] or [full]
    shards = ab.shards or shard_sets(full, run)
    return {"cells": cells, "cfgs": cfgs, "shards": shards, "resolution": resolution,
            "layer": full.encoder.layer, "seed": full.runtime.seed, "full": full,
            "encoders": {c: v[0] for c, v in encoders.items()}}


def run_ablation(ab: AblationConfig, run: Launch) -> dict:
    """Run (or resume) the ablation; write its table and figure under ``run.workdir`` and log
    them to the experiment's MLflow run. Returns rows and paths."""
    from pipelines.quickstart import train_missing_pair
    from pipelines.sweep import _check_relaunch
    from pipelines.trainer import init_ray, own_local_ray

    validate(ab)
    run = dataclasses.replace(run, model_cache=run.model_cache or str(run.workdir / "model-cache"))
    if storage.is_s3(run.storage_path):
        storage.check_access(run.storage_path, write=True)
    uri = run.tracking()
    encoders, missing = fetch_encoders(ab, uri, run.model_cache)
    if missing:
        train_missing_pair(missing, run, uri, allowed=ab.train_missing, kind="encoder",
                           registers="arinv-alexnet_small@standard and @robust")
        encoders, _ = fetch_encoders(ab, uri, run.model_cache)
    p = plan(ab, run, encoders)
    _check_relaunch(ab, run)
    with own_local_ray():
        init_ray(run.address, p["cfgs"][0].scaling, runs=ab.max_concurrent or 1)
        return _fit(ab, run, p)


def _fit(ab: AblationConfig, run: Launch, p: dict) -> dict:
    import ray
    import torch

    from arinv.metrics.image import lpips_available
    from arinv.viz import save_grid
    from pipelines import tracking
    from pipelines.sweep import trial_concurrency, trial_resources

    uri = run.tracking()
    parent = tracking.find_or_create_run(uri, run.experiment, run.run_key(ab.name),
                                         run_name=ab.name, tags={"arinv.kind": "ablation"})
    log = tracking.RunLogger(uri, parent)
    log.log_params({**flatten(ab), "resolution": p["resolution"], "shards": p["shards"],
                    "lpips": "on" if lpips_available() else "n/a (weights not installed)"})
    need = trial_resources(p["cfgs"])
    concurrency = ab.max_concurrent or trial_concurrency(ray.cluster_resources(), need)
    say(f"== ablation {ab.name}: {len(p['cells'])} trials (criteria "
          f"{[k for k in fig_a2.CRITERIA if k in ab.criteria]} x encoders "
          f"{list(p['encoders'])}), {concurrency} at a time; MLflow run {parent}")
    ctx = {"ablation": to_dict(ab), "key": run.run_key(ab.name), "parent": parent,
           "workdir": str(run.workdir), "storage": run.storage_path, "tracking_uri": uri,
           "experiment": run.experiment, "model_cache": run.model_cache,
           "encoders": p["encoders"], "shards": p["shards"], "resolution": p["resolution"],
           "layer": p["layer"], "seed": p["seed"]}
    t0 = time.perf_counter()
    try:
        grid = _tuner(ab, run, ctx, p, concurrency).fit()
    except BaseException as e:
        log.close(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", timeout=30)
        raise
    rows, recons = {}, {}
    for r in grid:
        m, cell = dict(r.metrics or {}), (r.config or {}).get("cell", {})
        if m.get("trial_complete"):
            key = (m["criterion"], m["column"])
            rows[key] = {k: m.get(k) for k in ROW_KEYS}
            cell_file = cell_uri(run.storage_path, ab.name, fig_a2.trial_name(*key))
            data = storage.read_bytes(f"{cell_file}.npy")
            recons[key] = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False)) / 255
        elif cell:
            err = "" if r.error is None else str(r.error).strip().splitlines()[-1][:200]
            say(f"   trial {fig_a2.trial_name(cell['criterion'], cell['column'])} did not "
                  f"finish: {err}")
    truth = held_out(p["shards"], ab.examples, p["resolution"])
    run.workdir.mkdir(parents=True, exist_ok=True)
    md, csv_text = fig_a2.table(rows)
    files = [run.workdir / "table_fig_a2.md", run.workdir / "table_fig_a2.csv",
             run.workdir / "fig_a2.png", run.workdir / "results.json"]
    files[0].write_text(f"# Loss ablation ({ab.name}, Fig. A2)\n\n{ab.images} held-out images "
                        f"of {p['shards']}/val at {p['resolution']} px, inverted from "
                        f"{p['layer']} of {', '.join(f'{c} {u}' for c, u in p['encoders'].items())}"
                        f".\n\n{md}")
    files[1].write_text(csv_text)
    grid_rows, labels = fig_a2.figure(truth, recons)
    save_grid(files[2], grid_rows, labels=labels)
    complete = len(rows) == len(p["cells"])
    out = {"name": ab.name, "run_id": parent, "tracking_uri": uri, "complete": complete,
           "rows": [rows[k] for k in sorted(rows, key=_order)], "encoders": p["encoders"],
           "resolution": p["resolution"], "seconds": time.perf_counter() - t0,
           "config": to_dict(ab), "workdir": str(run.workdir), "files": [str(f) for f in files]}
    files[3].write_text(json.dumps(out, indent=2, default=str))
    for f in files:
        log.log_artifact(f)
    log.close(status="FINISHED" if complete else "FAILED")
    return out


def _order(key: tuple) -> tuple:
    return fig_a2.CRITERIA.index(key[0]), fig_a2.COLUMNS.index(key[1])


def _tuner(ab: AblationConfig, run: Launch, ctx: dict, p: dict, concurrency: int):
    from ray import tune

    from pipelines.sweep import TRIAL_MEMORY, resumable_tuner

    # generator trials drive Ray Train (no CPU of their own); an RI trial computes itself
    ri = {"CPU": 1, "GPU": 1 if p["full"].scaling.use_gpu else 0}
    trained = {"CPU": 0, "memory": TRIAL_MEMORY}

    def resources(config: dict):
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        return resource_dict_to_pg_factory(ri if config["cell"]["criterion"] == "ri"
                                           else trained)

    return resumable_tuner(trial, ab.name, run, max_failures=ab.max_failures,
                           space={"cell": tune.grid_search(p["cells"]), "ctx": ctx},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           what=f"ablation {ab.name}", total=len(p["cells"]),
                           label=("criterion", "column"), show=("psnr", "ssim", "lpips"),
                           resources=resources)


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["ablation", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
