"""One-vs-all anomaly detection (Sec. A1, Table A1) on Ray (``arinv anomaly``).

- ``train``: a generator per positive class, trained on that class's images only against a
  frozen encoder from the registry, through the one training loop on Ray Train (tracked and
  registered like any generator, as an autoencoder whose alias is the encoder's column).
- ``score``: Eq. 8 scores of a whole shard set (or image folder) as Ray Data batch inference:
  ``map_batches`` with ``Eq8Scorer`` on an actor pool (the frozen models loaded once per
  actor, one GPU per actor when asked for), per-image scores written as Parquet, locally or
  to ``s3://``.
- ``eval``: the protocol. A Ray Tune trial per (encoder column, positive class) trains the
  class's generator, scores the full test set and reports its AUROC; the driver writes Table
  A1 (the paper's ADGAN / standard / AR beside ours) and a ROC plot per class, logged to a
  parent MLflow run with a child run per trial. Relaunching resumes: finished trials are not
  rerun, an interrupted one resumes its generator run and rescores only when its scores are
  missing.

    ray job submit -- python -m pipelines.anomaly --config anomaly-cifar10 \\
        --set standard=models:/arinv-alexnet@standard --set robust=models:/arinv-alexnet@robust \\
        --set shards=s3://bucket/cifar10 --storage-path s3://bucket/runs
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from arinv.config import (
    AnomalyConfig,
    ConfigError,
    EncoderTrainConfig,
    ScoringConfig,
    build,
    flatten,
    load_config,
    to_dict,
)
from arinv.data import storage
from arinv.data.reader import image_folder_shards
from arinv.experiments import table_a1
from pipelines.autoencoders import autoencoder_files, encoder_column, load_pair, local_file
from pipelines.console import say
from pipelines.trainer import Launch

SCORES, DONE = "scores", "scores.json"  # a trial's Parquet folder and its completion record
SUMMARY = "summary.json"
ROW_KEYS = {"column", "positive", "class_name", "auroc", "n_positive", "n_negative", "trial",
            "trial_run", "generator_run", "registered", "scores", "scoring_images_per_s",
            "skipped", "mean_score_positive", "mean_score_negative"}


class Eq8Scorer:
    """Ray Data callable class: one per actor, holding the frozen pair; each call scores a
    batch of ``decode_batch`` rows (``image`` uint8, ``label``, ``index``, ``ok``) with Eq. 8,
    each image's latent seeded by its dataset ``index``. Rows that did not decode are dropped
    (the caller counts them against the set's size). Model references are resolved on the
    actor's node (registry URIs and S3 checkpoints are fetched into its cache)."""

    def __init__(self, encoder_ref: str, generator_ref: str, *, layer: str, alpha_pix: float,
                 alpha_feat: float, iters: int, lr: tuple, optimizer: str, use_gpu: bool,
                 threads: int, tracking_uri: str | None = None, cache: str | None = None):
        import torch

        device = "cuda" if use_gpu else "cpu"
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.encoder, self.generator, self.layer, _, _ = load_pair(
            local_file(encoder_ref, "encoder", tracking_uri, cache),
            local_file(generator_ref, "generator", tracking_uri, cache), layer, device)
        self.kw = {"alpha_pix": alpha_pix, "alpha_feat": alpha_feat, "iters": iters,
                   "lr": tuple(lr), "optimizer": optimizer}

    def __call__(self, batch: dict) -> dict:
        import torch

        from arinv.downstream.anomaly import eq8_scores

        ok = np.asarray(batch["ok"], bool)
        images = torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))
        index = np.asarray(batch["index"])[ok]
        out = {"index": index.astype(np.int64), "label": np.asarray(batch["label"])[ok]}
        if len(index) == 0:
            return {**out, **{k: np.zeros(0, np.float64) for k in ("score", "pixel", "feature")}}
        scores = eq8_scores(self.encoder, self.generator, images, self.layer,
                            seeds=index.tolist(), **self.kw)
        return {**out, **{k: scores[k].double().numpy() for k in ("score", "pixel", "feature")}}


# ----------------------------------------------------------------------------- scoring


def _parquet_target(uri: str):
    """(pyarrow filesystem or None, path) for a local folder or an ``s3://`` prefix."""
    if storage.is_s3(uri):
        return storage.pyarrow_s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return None, str(Path(uri).expanduser().resolve())


def score_shards(data_uri: str, out_uri: str, *, encoder_ref: str, generator_ref: str,
                 layer: str, resolution: int, scoring: ScoringConfig, alpha_pix: float,
                 alpha_feat: float, tracking_uri: str | None = None, cache: str | None = None,
                 progress: bool = True) -> dict:
    """Score every image of the shard set at ``data_uri`` with Eq. 8 on the Ray cluster
    ``ray.init`` connected to, writing Parquet (index, label, score, pixel, feature) to
    ``out_uri`` (replaced). Returns counts, wall time and throughput."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext, SaveMode

    from arinv.data.reader import load_manifest
    from pipelines.ray_data import read_shards

    DataContext.get_current().enable_progress_bars = progress
    total = load_manifest(data_uri)["num_samples"]
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if scoring.use_gpu and not gpus:
        raise ConfigError("scoring.use_gpu: the Ray cluster has no GPU; set it to false")
    cpus = os.cpu_count() or 1
    actors = scoring.actors or (gpus if scoring.use_gpu else max(1, cpus // 2))
    ds = read_shards(data_uri, split_transform="eval", resolution=resolution, shuffle=False)
    scored = ds.map_batches(
        Eq8Scorer, batch_size=scoring.batch_size, batch_format="numpy",
        compute=ActorPoolStrategy(size=actors), num_cpus=1,
        num_gpus=1 if scoring.use_gpu else 0,
        fn_constructor_kwargs=dict(
            encoder_ref=str(encoder_ref), generator_ref=str(generator_ref), layer=layer,
            alpha_pix=alpha_pix, alpha_feat=alpha_feat, iters=scoring.iters,
            lr=tuple(scoring.lr), optimizer=scoring.optimizer, use_gpu=scoring.use_gpu,
            threads=max(1, cpus // actors), tracking_uri=tracking_uri, cache=cache))
    fs, path = _parquet_target(out_uri)
    t0 = time.perf_counter()
    scored.write_parquet(path, filesystem=fs, mode=SaveMode.OVERWRITE)
    seconds = time.perf_counter() - t0
    n = len(read_scores(out_uri)["index"])
    return {"images": n, "skipped": total - n, "seconds": seconds,
            "images_per_s": n / max(seconds, 1e-9), "actors": actors, "out": out_uri}


def read_scores(uri: str) -> dict[str, np.ndarray]:
    """The Parquet scores at ``uri`` as numpy columns, ordered by dataset index."""
    import pyarrow.parquet as pq

    fs, path = _parquet_target(uri)
    table = pq.read_table(path, filesystem=fs)
    order = np.argsort(table.column("index").to_numpy())
    return {name: table.column(name).to_numpy()[order] for name in table.column_names}


def score_command(model_uri: str, data: str, out: str, *, scoring: ScoringConfig,
                  layer: str | None = None, tracking_uri: str | None = None,
                  address: str | None = None, workdir: str | Path = "anomaly-score",
                  positive: list[int] | None = None, progress: bool = True) -> dict:
    """``arinv anomaly score``: every check (the model's kind and tap, the data) before the
    cluster starts, then :func:`score_shards`; with ``positive`` classes also the AUROC."""
    from arinv.data.reader import join, load_manifest
    from arinv.data.shards import MANIFEST
    from pipelines.tracking import checked_uri, default_tracking_uri
    from pipelines.trainer import init_ray, model_cache_dir, own_local_ray

    uri = checked_uri(tracking_uri) if tracking_uri else default_tracking_uri()
    workdir = Path(workdir).expanduser().resolve()
    cache = str(model_cache_dir())
    enc_file, gen_file = autoencoder_files(model_uri, uri, cache)
    _, generator, tap, resolution, gcfg = load_pair(enc_file, gen_file, layer)
    paths = None
    if storage.is_s3(data) or (Path(data) / MANIFEST).is_file():
        shards = data
        manifest = load_manifest(shards)
    else:
        shards, paths = image_folder_shards(data, workdir, progress=progress)
        manifest = load_manifest(shards)
    classes = manifest["classes"]
    missing = [p for p in positive or () if p >= len(classes)]
    if missing:
        raise ConfigError(f"--positive {missing}: {data} has {len(classes)} classes "
                          f"({', '.join(f'{i} {n}' for i, n in enumerate(classes))})")
    a_pix = scoring.alpha_pix if scoring.alpha_pix is not None else gcfg.loss.pix
    a_feat = scoring.alpha_feat if scoring.alpha_feat is not None else gcfg.loss.feat
    if not a_pix > 0 or not a_feat > 0:
        raise ConfigError(f"alpha_pix / alpha_feat: the generator was trained with loss.pix="
                          f"{gcfg.loss.pix:g}, loss.feat={gcfg.loss.feat:g}; give both alphas "
                          "(> 0) explicitly")
    with own_local_ray():
        init_ray(address, _NO_WORKERS)
        result = score_shards(shards, out, encoder_ref=str(enc_file), generator_ref=str(gen_file),
                              layer=tap, resolution=resolution, scoring=scoring,
                              alpha_pix=a_pix, alpha_feat=a_feat, tracking_uri=uri,
                              cache=cache, progress=progress)
    result.update(model=model_uri, layer=tap, alpha_pix=a_pix, alpha_feat=a_feat,
                  classes=classes)
    if paths is not None:  # an image folder: say which file each index is
        result["paths"] = join(str(workdir), "paths.json")
        Path(result["paths"]).write_text(json.dumps(paths))
    if positive:
        from arinv.downstream.anomaly import auroc

        s = read_scores(out)
        result["auroc"] = auroc(s["score"], ~np.isin(s["label"], positive))
    return result


@dataclasses.dataclass
class _Scaling:  # what init_ray needs of a config's scaling section when nothing trains
    num_workers: int = 0
    cpus_per_worker: float = 0.0


_NO_WORKERS = _Scaling()


# ----------------------------------------------------------------------------- training


def train_positive(gen_cfg, run: Launch, *, column: str, model_name: str) -> dict:
    """One class's generator on Ray Train (``train_generator``), registered as ``model_name``
    with the column ("standard" / "robust") as its alias."""
    from pipelines.train_generator import train_generator

    run = dataclasses.replace(run, alias=run.alias or column)
    return train_generator(gen_cfg, run, model_name=model_name)


def model_name(an_name: str, positive: int) -> str:
    return f"arinv-anomaly-{an_name}-class{positive}"


# ----------------------------------------------------------------------------- the protocol


def trial(config: dict) -> None:
    """One Tune trial: a positive class's generator, the test set's scores, the AUROC."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from arinv.downstream.anomaly import auroc, roc_curve, roc_plot
    from pipelines import tracking

    ctx, column, positive = config["ctx"], config["cell"]["column"], config["cell"]["positive"]
    an = build(AnomalyConfig, ctx["anomaly"])
    name = table_a1.trial_name(column, positive)
    uri, exp = ctx["tracking_uri"], ctx["experiment"]
    run_id = tracking.find_or_create_run(
        uri, exp, f"{ctx['key']}/{name}", run_name=name,
        tags={tracking.PARENT_TAG: ctx["parent"], "arinv.kind": "anomaly-trial",
              "arinv.anomaly": an.name})
    workdir = Path(ctx["workdir"]) / "trials" / name
    encoder_ref = ctx["encoders"][column]
    gen_cfg = table_a1.generator_config(an, column, positive, encoder_ref)
    # the shard set the plan resolved (the bundled sample written once for every trial)
    gen_cfg = dataclasses.replace(gen_cfg, data=dataclasses.replace(gen_cfg.data,
                                                                    shards=ctx["shards"]))
    launch = Launch(workdir=workdir, run_name=gen_cfg.name, storage_path=ctx["storage"],
                    tracking_uri=uri, experiment=exp, register=True, alias=column,
                    model_cache=ctx["model_cache"], progress=False,
                    extra_tags={tracking.PARENT_TAG: run_id, "arinv.anomaly": an.name},
                    callbacks=[TuneReportCallback()])
    gen = train_positive(gen_cfg, launch, column=column,
                         model_name=model_name(an.name, positive))
    out = f"{ctx['storage'].rstrip('/')}/{an.name}/{SCORES}/{name}"
    done = f"{out}.json"
    if storage.exists(done):  # scored before an interruption: the scores stand
        info = json.loads(storage.read_bytes(done))
    else:
        a_pix, a_feat = table_a1.alphas(an, column)
        info = score_shards(f"{ctx['shards']}/val", out, encoder_ref=encoder_ref,
                            generator_ref=gen["stored_checkpoint"], layer=gen_cfg.encoder.layer,
                            resolution=ctx["resolution"], scoring=an.scoring, alpha_pix=a_pix,
                            alpha_feat=a_feat, tracking_uri=uri, cache=ctx["model_cache"],
                            progress=False)
        storage.write_bytes(done, json.dumps(info).encode())
    s = read_scores(out)
    anomalous = s["label"] != positive
    auc = auroc(s["score"], anomalous)
    fpr, tpr = roc_curve(s["score"], anomalous)
    row = table_a1.row(column, positive, ctx["classes"][positive], auc,
                       int((~anomalous).sum()), int(anomalous.sum()))
    row.update(trial=name, trial_run=run_id, generator_run=gen["run_id"],
               registered=gen.get("registered"), scores=out,
               scoring_images_per_s=info["images_per_s"], skipped=info["skipped"],
               mean_score_positive=float(s["score"][~anomalous].mean()),
               mean_score_negative=float(s["score"][anomalous].mean()))
    log = tracking.RunLogger(uri, run_id)
    log.log_params({"column": column, "positive": positive,
                    "class_name": ctx["classes"][positive]})
    log.log_metrics({k: row[k] for k in ("auroc", "scoring_images_per_s", "mean_score_positive",
                                         "mean_score_negative")}, step=0)
    workdir.mkdir(parents=True, exist_ok=True)
    plot = workdir / f"roc_{name}.png"
    plot.write_bytes(roc_plot({column: (fpr, tpr, auc)},
                              f"positive class {positive} ({ctx['classes'][positive]})"))
    log.log_artifact(plot)
    log.close(status="FINISHED")
    (workdir / SUMMARY).write_text(json.dumps({**row, "fpr": fpr.tolist(), "tpr": tpr.tolist()},
                                              indent=2, default=str))
    ray.tune.report({**{k: v for k, v in row.items() if v is not None},
                     "fpr": fpr.tolist(), "tpr": tpr.tolist(), "trial_complete": 1})


def plan(an: AnomalyConfig, run: Launch) -> dict:
    """Everything checked before any cluster resource is taken: the encoders (fetched, their
    robustness matching their column), the data and its classes, every trial's config."""
    from arinv.data.reader import ShardBatches, load_manifest
    from pipelines.trainer import shard_sets

    uri = run.tracking()
    cols = table_a1.columns(an)
    encoders, resolution = {}, None
    for col in cols:
        ref = getattr(an, col)
        if not ref.startswith(("models:/", "runs:/", "s3://")) and not Path(ref).is_file():
            continue  # an encoder preset: checked below, trained by the driver
        path, enc_cfg = encoder_column(ref, uri, run.model_cache)
        table_a1.check_robustness(col, enc_cfg.attack, ref)
        encoders[col] = ref
    probe = table_a1.generator_config(an, cols[0], 0, None)
    for col in cols:
        ref = getattr(an, col)
        if col not in encoders:
            try:
                enc_cfg = load_config(EncoderTrainConfig, ref, an.encoder_set)
            except ConfigError as e:
                raise ConfigError(f"{col}: {ref!r} is not a registry URI, a checkpoint file or "
                                  f"an encoder preset ({e})") from None
            table_a1.check_robustness(col, enc_cfg.attack, f"preset {ref!r}")
            if enc_cfg.encoder.name != probe.encoder.name:
                raise ConfigError(f"{col}: preset {ref!r} trains a {enc_cfg.encoder.name}, the "
                                  f"generator preset {an.generator!r} inverts a "
                                  f"{probe.encoder.name}")
    shards = an.shards or shard_sets(probe, run)
    manifest = load_manifest(f"{shards}/train")
    classes = manifest["classes"]
    positives = an.classes if an.classes is not None else list(range(len(classes)))
    missing = [p for p in positives if p >= len(classes)]
    if missing:
        raise ConfigError(f"classes: positive class {missing} not in {shards}/train, which has "
                          f"{len(classes)} classes "
                          f"({', '.join(f'{i} {n}' for i, n in enumerate(classes))})")
    resolution = probe.resolution or 0
    labels = ShardBatches(f"{shards}/train", 1, resolution=max(resolution, 1),
                          train=False).labels()  # read once for every positive class
    counts = np.bincount(labels, minlength=len(classes))
    for p in positives:
        if counts[p] == 0:
            raise ConfigError(f"classes: positive class {p} ({classes[p]}) has no training "
                              f"images in {shards}/train")
    cells = [{"column": c, "positive": p} for c in cols for p in positives]
    cfgs = [table_a1.generator_config(an, c["column"], c["positive"], None) for c in cells]
    return {"encoders": encoders, "shards": shards, "classes": classes, "cells": cells,
            "cfgs": cfgs, "positives": positives}


def run_anomaly(an: AnomalyConfig, run: Launch) -> dict:
    """Run (or resume) the Table A1 protocol; write its table and ROC plots under
    ``run.workdir``, log them to the experiment's MLflow run. Returns rows and paths."""
    from pipelines.sweep import _check_relaunch
    from pipelines.trainer import init_ray, own_local_ray

    run = dataclasses.replace(run, model_cache=run.model_cache or str(run.workdir / "model-cache"))
    if storage.is_s3(run.storage_path):
        storage.check_access(run.storage_path, write=True)
    p = plan(an, run)
    _check_relaunch(an, run)
    with own_local_ray():
        init_ray(run.address, p["cfgs"][0].scaling, runs=an.max_concurrent or 1)
        p["encoders"].update(_train_encoders(an, run, p["encoders"], p["shards"]))
        return _fit(an, run, p)


def _train_encoders(an: AnomalyConfig, run: Launch, known: dict, shards: str) -> dict:
    """Columns given as encoder presets: trained (or reused when finished) on Ray Train and
    registered, as the quickstart does; returns column -> stored checkpoint."""
    from pipelines.train_encoder import train_encoder

    out = {}
    for col in table_a1.columns(an):
        if col in known:
            continue
        cfg = load_config(EncoderTrainConfig, getattr(an, col),
                          [f"data.shards={shards}", *an.encoder_set])
        cfg = dataclasses.replace(cfg, name=f"{an.name}-{col}-encoder")
        res = train_encoder(cfg, dataclasses.replace(
            run, workdir=run.workdir / "encoders" / col, run_name=cfg.name, alias=col))
        out[col] = res["stored_checkpoint"]
    return out


def _fit(an: AnomalyConfig, run: Launch, p: dict) -> dict:
    import ray

    from pipelines import tracking
    from pipelines.sweep import trial_concurrency, trial_resources

    uri = run.tracking()
    parent = tracking.find_or_create_run(uri, run.experiment, run.run_key(an.name),
                                         run_name=an.name, tags={"arinv.kind": "anomaly"})
    log = tracking.RunLogger(uri, parent)
    log.log_params(flatten(an))
    need = trial_resources(p["cfgs"])
    concurrency = an.max_concurrent or trial_concurrency(ray.cluster_resources(), need)
    say(f"== anomaly {an.name}: {len(p['cells'])} trials (columns "
          f"{table_a1.columns(an)} x positive classes {p['positives']}), {concurrency} at a "
          f"time; MLflow run {parent}")
    probe = p["cfgs"][0]
    ctx = {"anomaly": to_dict(an), "key": run.run_key(an.name), "parent": parent,
           "workdir": str(run.workdir), "storage": run.storage_path, "tracking_uri": uri,
           "experiment": run.experiment, "model_cache": run.model_cache,
           "encoders": p["encoders"], "shards": p["shards"], "classes": p["classes"],
           "resolution": probe.resolution or _encoder_resolution(p["encoders"], uri, run)}
    try:
        grid = _tuner(an, run, ctx, p["cells"], concurrency).fit()
    except BaseException as e:
        log.close(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", timeout=30)
        raise
    rows, curves = [], {}
    for r in grid:
        m, cell = dict(r.metrics or {}), (r.config or {}).get("cell", {})
        if m.get("trial_complete"):
            rows.append({k: v for k, v in m.items() if k in ROW_KEYS})
            curves[(m["column"], m["positive"])] = (np.array(m["fpr"]), np.array(m["tpr"]),
                                                    m["auroc"])
        elif cell:
            err = "" if r.error is None else str(r.error).strip().splitlines()[-1][:200]
            say(f"   trial {table_a1.trial_name(cell['column'], cell['positive'])} did not "
                  f"finish: {err}")
    files = _report(an, run.workdir, rows, curves, p["classes"])
    for path in files:
        log.log_artifact(path)
    means = {}
    for col in table_a1.columns(an):
        vals = [r["auroc"] for r in rows if r["column"] == col]
        if vals:
            means[f"mean_auroc_{col}"] = float(np.mean(vals))
    log.log_metrics(means, step=0)
    complete = len(rows) == len(p["cells"])
    log.close(status="FINISHED" if complete else "FAILED")
    result = {"name": an.name, "run_id": parent, "tracking_uri": uri, "rows": rows,
              "files": [str(f) for f in files], "workdir": str(run.workdir), **means,
              "complete": complete}
    (run.workdir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _encoder_resolution(encoders: dict, uri: str, run: Launch) -> int:
    path, cfg = encoder_column(next(iter(encoders.values())), uri, run.model_cache)
    from arinv.models.load import load_encoder

    model, _ = load_encoder(path)
    return cfg.encoder.resolution or model.input_size


def _report(an: AnomalyConfig, workdir: Path, rows: list, curves: dict, classes: list) -> list:
    from arinv.downstream.anomaly import roc_plot

    workdir.mkdir(parents=True, exist_ok=True)
    md, csv_text = table_a1.table(rows, an.dataset, classes)
    files = [workdir / "table_a1.md", workdir / "table_a1.csv"]
    files[0].write_text(md)
    files[1].write_text(csv_text)
    for positive in sorted({k[1] for k in curves}):
        per = {("AR" if c == "robust" else "standard"): curves[(c, positive)]
               for c in table_a1.COLUMNS if (c, positive) in curves}
        path = workdir / f"roc_class{positive}.png"
        path.write_bytes(roc_plot(per, f"positive class {positive} ({classes[positive]})"))
        files.append(path)
    return files


def _tuner(an: AnomalyConfig, run: Launch, ctx: dict, cells: list, concurrency: int):
    from ray import tune

    from pipelines.sweep import resumable_tuner

    return resumable_tuner(trial, an.name, run, max_failures=an.max_failures,
                           space={"cell": tune.grid_search(cells), "ctx": ctx},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           what=f"anomaly {an.name}", total=len(cells),
                           label=("column", "class_name"), show=("auroc",))


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["anomaly", "eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
