"""Ray Tune sweeps over Ray Train runs (``arinv sweep``).

Table A3 (the default): one trial per robustness level eps. A trial trains the encoder with L2
PGD at eps (eps = 0: standard training), measures its clean accuracy and its PGD accuracy at the
table's radius (eps, or ``standard_attack_eps`` for eps = 0), trains a generator inverting its
layer with pixel + feature losses, and measures PSNR / SSIM / LPIPS on held-out images.

Loss-weight search (``search:``): one trial per sampled (pix, feat, gan) weights for a fixed
encoder; ASHA stops the weak trials on the held-out metric; the best weights become a preset.

A trial is a Tune function trainable that fits Ray Train runs (``train_encoder`` /
``train_generator``, Tune's report callback attached). It holds no CPU or GPU itself (its runs'
workers request theirs), and Tune runs as many trials at once as the cluster fits. A trial's runs
are named by sweep and trial, so a retried trial resumes them from their checkpoints; relaunching
the sweep restores the Tune experiment, so finished trials are not run again.

MLflow: a parent run for the sweep (tables, plot, reconstructions), a child run per trial (its
row of the table) with the trial's training runs nested below it; the best pair is registered.

    ray job submit -- python -m pipelines.sweep --config sweep-resnet18-cifar10-eps \\
        --set shards=s3://bucket/cifar10 --storage-path s3://bucket/runs
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path

from ray.tune import Callback

from arinv.config import (
    SWEEP_METRICS,
    ConfigError,
    GeneratorTrainConfig,
    SweepConfig,
    build,
    flatten,
    to_dict,
)
from arinv.data import storage
from arinv.experiments import table_a3
from arinv.experiments.table_a3 import checked, load_preset, run_name, trial_name
from pipelines.console import say, terminal
from pipelines.trainer import Launch

TRIAL_MEMORY = 256 * 2**20  # a trial's own process only calls MLflow; its runs train
SUMMARY = "summary.json"
ROW_KEYS = {"trial", "trial_run", "eps", "attack_eps", "standard_acc", "pgd_acc", "encoder_run",
            "encoder_checkpoint", "psnr", "ssim", "lpips", "epochs", "generator_run",
            "generator_checkpoint"}  # and lambda_<weight> in a search
RELAUNCH_FREE = ("max_concurrent", "max_failures", "select")  # may change on a relaunch


# ----------------------------------------------------------------------------- trial configs


def weights_config(sw: SweepConfig, weights: dict, trial: str = "search") -> GeneratorTrainConfig:
    """A loss-weight trial's generator config: the preset with ``weights`` (pix / feat / gan)
    and a held-out evaluation every epoch (ASHA compares trials at every rung)."""
    shards = [f"data.shards={sw.shards}"] if sw.shards else []
    gen = load_preset(GeneratorTrainConfig, sw.generator, [*shards, *sw.generator_set],
                      "generator_set")
    gen = dataclasses.replace(
        gen, name=run_name(sw.name, trial, "generator"),
        eval=dataclasses.replace(gen.eval, every=1),
        encoder=dataclasses.replace(gen.encoder, checkpoint=sw.search.encoder),
        loss=dataclasses.replace(gen.loss, **{k: float(v) for k, v in weights.items()}))
    return checked(gen, f"search ({', '.join(f'{k}={v:g}' for k, v in weights.items())})")


def search_space(sw: SweepConfig) -> dict:
    """Tune's space over the searched weights (a [w, w] range is fixed at w)."""
    from ray import tune

    s = sw.search
    return {k: (r[0] if r[0] == r[1] else tune.loguniform(r[0], r[1]))
            for k in ("pix", "feat", "gan") if (r := getattr(s, k)) is not None}


def plan(sw: SweepConfig) -> list:
    """Every trial's configs, validated, before any cluster resource is taken."""
    if sw.search is None:
        return [table_a3.trial_configs(sw, e) for e in sw.eps]
    s = sw.search
    corners = [{k: getattr(s, k)[i] for k in ("pix", "feat", "gan") if getattr(s, k)}
               for i in (0, 1)]
    cfgs = [weights_config(sw, c) for c in corners]
    if s.metric == "lpips":
        from arinv.metrics.image import lpips_available

        if not lpips_available():
            raise ConfigError("sweep search.metric: lpips needs LPIPS's AlexNet backbone "
                              "weights in the torch hub cache (alexnet-owt-7be5be79.pth); "
                              "install them or search on psnr / ssim")
    if cfgs[0].optim.epochs <= s.grace_period:
        raise ConfigError(f"sweep search.grace_period: {s.grace_period} >= the generator's "
                          f"optim.epochs ({cfgs[0].optim.epochs}); ASHA could stop nothing")
    return cfgs


def trial_resources(cfgs) -> dict:
    """Resources one trial's largest run takes: its workers, plus one CPU for its data
    stream (the trial's own process takes none)."""
    need = {"CPU": 0.0, "GPU": 0.0}
    for cfg in (c for group in cfgs for c in (group if isinstance(group, tuple) else (group,))):
        sc = cfg.scaling
        need["CPU"] = max(need["CPU"], sc.num_workers * sc.cpus_per_worker + 1)
        if sc.use_gpu:
            need["GPU"] = max(need["GPU"], sc.num_workers * sc.gpus_per_worker)
    return {k: v for k, v in need.items() if v > 0}


def trial_concurrency(available: dict, need: dict) -> int:
    """How many trials the cluster's resources fit at once (at least one)."""
    fits = [int(available.get(k, 0.0) // v) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


def alias_for(sw: SweepConfig, alias: str | None) -> str:
    alias = alias or re.sub(r"[^\w-]", "_", f"{sw.name}-best")
    if not re.fullmatch(r"[\w-]+", alias) or alias.lower() == "latest" or re.fullmatch(
            r"[vV]\d+", alias):
        raise ConfigError(f"--alias {alias!r}: letters, digits, '_' and '-' only, not 'latest' "
                          "or v<number>")
    return alias


# ----------------------------------------------------------------------------- the trial


def trial(config: dict) -> None:
    """One Tune trial: its Ray Train runs, its MLflow child run, then its row to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines import tracking
    from pipelines.train_encoder import train_encoder
    from pipelines.train_generator import train_generator

    ctx = config["ctx"]
    sw = build(SweepConfig, ctx["sweep"])
    name = trial_name(config["eps"]) if sw.search is None else \
        ray.tune.get_context().get_trial_id()
    uri, exp = ctx["tracking_uri"], ctx["experiment"]
    run_id = tracking.find_or_create_run(
        uri, exp, f"{ctx['key']}/{name}", run_name=name,
        tags={tracking.PARENT_TAG: ctx["parent"], "arinv.kind": "sweep-trial",
              "arinv.sweep": sw.name})
    workdir = Path(ctx["workdir"]) / "trials" / name

    def launch(kind: str) -> Launch:
        return Launch(workdir=workdir / kind, run_name=run_name(sw.name, name, kind),
                      storage_path=ctx["storage"], tracking_uri=uri, experiment=exp,
                      register=False, model_cache=ctx["model_cache"], progress=False,
                      extra_tags={tracking.PARENT_TAG: run_id, "arinv.sweep": sw.name},
                      callbacks=[TuneReportCallback()])

    row: dict = {"trial": name, "trial_run": run_id}
    if sw.search is None:
        eps = float(config["eps"])
        enc_cfg, gen_cfg = table_a3.trial_configs(sw, eps)
        enc = train_encoder(enc_cfg, launch("encoder"))
        gen_cfg = dataclasses.replace(gen_cfg, encoder=dataclasses.replace(
            gen_cfg.encoder, checkpoint=enc["stored_checkpoint"]))
        params = {"eps": eps,
                  "attack_eps": table_a3.attack_radius(eps, sw.standard_attack_eps)}
        row.update(encoder_run=enc["run_id"], encoder_checkpoint=enc["stored_checkpoint"])
    else:
        weights = {k: float(v) for k, v in config["weights"].items()}
        gen_cfg = weights_config(sw, weights, name)
        params = {f"loss.{k}": v for k, v in weights.items()}
        row.update({f"lambda_{k}": v for k, v in weights.items()},
                   encoder_checkpoint=sw.search.encoder)
    gen = train_generator(gen_cfg, launch("generator"))
    q = gen["quality"]
    if sw.search is None:
        row.update(table_a3.row(eps, sw.standard_attack_eps, enc["robustness"], q))
    row.update(psnr=q["psnr"], ssim=q["ssim"], lpips=_nan(q["lpips"]),
               epochs=gen_cfg.optim.epochs, generator_run=gen["run_id"],
               generator_checkpoint=gen["stored_checkpoint"])
    log = tracking.RunLogger(uri, run_id)
    log.log_params(params)
    log.log_metrics({k: v for k, v in row.items() if isinstance(v, float) and k not in params
                     and not math.isnan(v)}, step=0)
    log.log_artifact(gen["grid"])
    log.close(status="FINISHED")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SUMMARY).write_text(json.dumps(row, indent=2))
    ray.tune.report({**row, **{f"val_{k}": row[k] for k in SWEEP_METRICS}, "trial_complete": 1})


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


# ----------------------------------------------------------------------------- the driver


def run_sweep(sw: SweepConfig, run: Launch) -> dict:
    """Run (or resume) the sweep; write its tables and plots under ``run.workdir``, log them to
    the sweep's MLflow run and register the best pair. Returns rows, best row and paths."""
    from pipelines.trainer import init_ray, own_local_ray, shard_sets

    cfgs = plan(sw)  # every trial's config checked before any work
    run = dataclasses.replace(run, model_cache=run.model_cache or str(run.workdir / "model-cache"))
    alias = alias_for(sw, run.alias) if run.register else None
    if storage.is_s3(run.storage_path):
        storage.check_access(run.storage_path, write=True)
    _check_relaunch(sw, run)
    uri = run.tracking()  # the server answers our credentials: before Ray starts
    if sw.search is not None:  # an unknown registry URI or missing file fails here
        from pipelines.registry import encoder_file

        encoder_file(cfgs[0], uri, run.model_cache)
    first = cfgs[0][0] if isinstance(cfgs[0], tuple) else cfgs[0]
    if sw.shards is None:  # the bundled sample set (written before Ray starts)
        sw = dataclasses.replace(sw, shards=shard_sets(first, run))
    with own_local_ray():
        init_ray(run.address, first.scaling, runs=sw.max_concurrent or 1)
        return _fit(sw, run, cfgs, alias)


def _fit(sw: SweepConfig, run: Launch, cfgs: list, alias: str | None) -> dict:
    import ray

    from pipelines import sweep_report, tracking

    uri = run.tracking()
    parent = tracking.find_or_create_run(uri, run.experiment, run.run_key(sw.name),
                                         run_name=sw.name, tags={"arinv.kind": "sweep"})
    log = tracking.RunLogger(uri, parent)
    log.log_params(flatten(sw))
    need = trial_resources(cfgs)
    concurrency = sw.max_concurrent or trial_concurrency(ray.cluster_resources(), need)
    say(f"== sweep {sw.name}: {len(cfgs) if sw.search is None else sw.search.samples} "
          f"trials, {concurrency} at a time (each needs {need}); MLflow run {parent}")
    ctx = {"sweep": to_dict(sw), "key": run.run_key(sw.name), "parent": parent,
           "workdir": str(run.workdir), "storage": run.storage_path, "tracking_uri": uri,
           "experiment": run.experiment, "model_cache": run.model_cache}
    try:
        grid = _tuner(sw, run, ctx, concurrency).fit()
    except BaseException as e:
        log.close(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", timeout=30)
        raise
    rows = [_row(sw, r) for r in grid]
    _close_unfinished(uri, run, sw, rows)
    out = sweep_report.write(run.workdir, sw, rows, uri)
    for path in out["files"]:
        log.log_artifact(path)
    best = sweep_report.best(sw, rows)
    result = {"name": sw.name, "run_id": parent, "tracking_uri": uri, "rows": rows,
              "best": best, **out}
    if best is not None:
        log.log_metrics({f"best_{k}": v for k, v in best.items() if isinstance(v, float)
                         and not math.isnan(v)}, step=0)
        log.set_tags({"arinv.best_trial": best["trial"]})
        if sw.search is not None:
            result["preset"] = str(sweep_report.write_preset(sw, best, run.workdir))
            log.log_artifact(result["preset"])
        if alias:
            result["registered"] = _register(sw, best, uri, alias, ctx["model_cache"])
    log.close(status="FINISHED" if best is not None else "FAILED")
    (run.workdir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    return result


class TrialProgress(Callback):
    """The terminal's view of a Tune experiment of ``total`` trials: one bar of finished trials
    (rate and ETA from tqdm) and a line per finished or failed trial, named by its last
    result's ``label`` keys (else its parameters) with the ``show`` metrics. Tune's own status
    tables go to the log under ``quiet``. Pickled into the experiment, so a relaunch's restored
    Tuner brings it back; the bar is not pickled and restarts at the trials already done.
    ``bar=False`` (``--no-progress``) keeps the lines and leaves the bar out."""

    def __init__(self, what: str, total: int, label: tuple[str, ...], show: tuple[str, ...],
                 bar: bool = True):
        self.what, self.total, self.label, self.show = what, total, tuple(label), tuple(show)
        self.bar, self._bar = bar, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None}

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._bar is None and getattr(self, "bar", True):  # experiments pickled before it
            from tqdm import tqdm

            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self._bar = tqdm(total=self.total, initial=done, desc=self.what, unit="trial",
                             file=terminal(), dynamic_ncols=True, mininterval=1.0)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finished(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trial, "FAILED (its error: the log and the trial's folder)")

    def on_experiment_end(self, trials, **info) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _finished(self, trial, verb: str) -> None:
        from tqdm import tqdm

        result = trial.last_result or {}
        name = " ".join(str(result[k]) for k in self.label if k in result) or _params(
            trial.config or {})
        metrics = ", ".join(f"{k} {result[k]:.4g}" for k in self.show
                            if isinstance(result.get(k), (int, float)) and math.isfinite(result[k]))
        with tqdm.external_write_mode(file=terminal()):
            say(f"   {self.what}: trial {name} {verb}" + (f" ({metrics})" if metrics else ""))
        if self._bar is not None and self._bar.n < self.total:
            self._bar.update(1)


def _params(config: dict) -> str:
    """A trial's parameters in a line (its shared ``ctx`` left out, dicts opened a level)."""
    items = []
    for k, v in config.items():
        if k != "ctx":
            items += [f"{a}={b:g}" if isinstance(b, float) else f"{a}={b}"
                      for a, b in (v.items() if isinstance(v, dict) else [(k, v)])]
    return " ".join(items)


def resumable_tuner(fn, name: str, run: Launch, *, max_failures: int, space: dict,
                    tune_config, what: str, total: int, label: tuple[str, ...] = ("trial",),
                    show: tuple[str, ...] = (), resources=None):
    """A Tune experiment NAME under run.storage_path whose trials run ``fn`` (by default their
    own process only drives MLflow and Ray Train: no CPU of theirs; ``resources``, a dict or a
    function of the trial's config, says otherwise); restored with its unfinished and errored
    trials when the folder already holds one (a relaunch resumes), else a new one over
    ``space``. The terminal shows a ``TrialProgress`` of ``total`` trials (``label``,
    ``show``: its arguments), its bar only with ``run.progress``; a relaunch keeps the first
    launch's choice (Tune restores the experiment's run config)."""
    from ray import tune

    from pipelines.trainer import ray_storage_path, storage_filesystem

    trainable = tune.with_resources(fn, resources or {"CPU": 0, "memory": TRIAL_MEMORY})
    fs = storage_filesystem(run.storage_path)
    path = f"{ray_storage_path(run.storage_path).rstrip('/')}/{name}"
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        say(f"== resuming {what} from {run.storage_path}/{name}")
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=fs)
    rc = tune.RunConfig(name=name, storage_path=ray_storage_path(run.storage_path),
                        storage_filesystem=fs, verbose=1 if run.progress else 0,
                        failure_config=tune.FailureConfig(max_failures=max_failures),
                        callbacks=[TrialProgress(what, total, label, show, bar=run.progress)])
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=rc)


def asha(s, epochs: int):
    """ASHA over a search's trials of ``epochs`` epochs. Its rungs are grace_period *
    reduction_factor^k up to max_t; max_t is the second-to-last epoch, so no rung falls on the
    last one: a trial that has run all its epochs is never stopped before its final evaluation
    (a rung there did stop one). stop_last_trials=False: reaching max_t does not stop a trial
    either."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=max(epochs - 1, s.grace_period),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         stop_last_trials=False)


def _tuner(sw: SweepConfig, run: Launch, ctx: dict, concurrency: int):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    if sw.search is None:
        space = {"eps": tune.grid_search(list(sw.eps)), "ctx": ctx}
        tc = tune.TuneConfig(max_concurrent_trials=concurrency)
    else:
        s = sw.search
        epochs = weights_config(sw, {}).optim.epochs
        scheduler = asha(s, epochs)
        space = {"weights": search_space(sw), "ctx": ctx}
        # a SearchGenerator ignores TuneConfig.max_concurrent_trials: it takes its own limit
        tc = tune.TuneConfig(num_samples=s.samples, metric=f"val_{s.metric}",
                             mode=SWEEP_METRICS[s.metric], scheduler=scheduler,
                             search_alg=BasicVariantGenerator(random_state=s.seed,
                                                              max_concurrent=concurrency))
    return resumable_tuner(trial, sw.name, run, max_failures=sw.max_failures, space=space,
                           tune_config=tc, what=f"sweep {sw.name}",
                           total=len(sw.eps) if sw.search is None else sw.search.samples,
                           label=("trial",) if sw.search is None else (),
                           show=("standard_acc", "pgd_acc", "psnr", "ssim") if sw.search is None
                           else ("epoch", f"val_{sw.search.metric}"))


def _row(sw: SweepConfig, result) -> dict:
    """A table row from a Tune result: complete, stopped early (ASHA) or failed."""
    m = dict(result.metrics or {})
    cfg = result.config or {}
    if m.get("trial_complete"):  # the trial's own row, without Tune's bookkeeping
        return {**{k: v for k, v in m.items() if k in ROW_KEYS or k.startswith("lambda_")},
                "status": "complete"}
    row = {"trial": trial_name(cfg["eps"]) if sw.search is None else m.get("trial_id"),
           "psnr": _nan(m.get("val_psnr")), "ssim": _nan(m.get("val_ssim")),
           "lpips": _nan(m.get("val_lpips")), "epochs": int(m.get("epoch", 0))}
    if sw.search is None:
        eps = float(cfg["eps"])
        row.update(eps=eps, attack_eps=table_a3.attack_radius(eps, sw.standard_attack_eps),
                   standard_acc=math.nan, pgd_acc=math.nan)
    else:
        row.update({f"lambda_{k}": float(v) for k, v in cfg.get("weights", {}).items()})
    if result.error is not None:
        row["status"] = "failed: " + str(result.error).strip().splitlines()[-1][:200]
    else:
        row["status"] = f"stopped by ASHA after epoch {row['epochs']}"
    return row


def _close_unfinished(uri: str, run: Launch, sw: SweepConfig, rows: list) -> None:
    """A stopped or failed trial's process died mid-run: mark its MLflow runs KILLED / FAILED."""
    from pipelines import tracking

    for row in rows:
        if row["status"] == "complete" or not row.get("trial"):
            continue
        status = "FAILED" if row["status"].startswith("failed") else "KILLED"
        keys = [f"{run.run_key(sw.name)}/{row['trial']}"] + [
            run.run_key(run_name(sw.name, row["trial"], kind)) for kind in ("encoder", "generator")]
        for key in keys:
            run_id = tracking.find_run(uri, run.experiment, key)
            if run_id:
                log = tracking.RunLogger(uri, run_id)
                log.set_tags({"arinv.trial_status": row["status"]})
                log.close(status=status, timeout=30)


def _register(sw: SweepConfig, best: dict, uri: str, alias: str, cache: str) -> dict:
    """Register the best trial's encoder (eps sweeps) and its autoencoder under ``alias``."""
    from pipelines import registry
    from pipelines.registry import encoder_file
    from pipelines.trainer import stored_file

    out = {}
    if sw.search is None:
        enc_cfg, gen_cfg = table_a3.trial_configs(sw, best["eps"])
        enc_file = stored_file(best["encoder_checkpoint"], cache)
        name = f"arinv-{enc_cfg.encoder.name}"
        registry.register_encoder(uri, best["encoder_run"], enc_file, name=name, alias=alias)
        out["encoder"] = f"models:/{name}@{alias}"
    else:
        gen_cfg = weights_config(sw, {})
        enc_file = encoder_file(gen_cfg, uri, cache)
    name = f"arinv-{gen_cfg.encoder.name}-{gen_cfg.encoder.layer}-autoencoder"
    registry.register_autoencoder(  # both keep a version this run registered already
        uri, best["generator_run"], encoder_checkpoint=enc_file,
        generator_checkpoint=stored_file(best["generator_checkpoint"], cache), name=name,
        alias=alias)
    out["autoencoder"] = f"models:/{name}@{alias}"
    return out


def _check_relaunch(sw: SweepConfig, run: Launch) -> None:
    """A relaunch must describe the same trials: refuse a changed config before any work."""
    uri = f"{run.storage_path.rstrip('/')}/{sw.name}.sweep.json"
    mine = {k: v for k, v in flatten(sw).items() if k not in RELAUNCH_FREE}
    if storage.exists(uri):
        theirs = json.loads(storage.read_bytes(uri))
        diff = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
        if diff:
            k = diff[0]
            raise ConfigError(f"{uri}: sweep {sw.name!r} was started with {k}="
                              f"{theirs.get(k)!r}, this launch has {mine.get(k)!r}; relaunch "
                              "with the same config to resume it, or give the sweep another "
                              "name (--set name=...)")
        return
    storage.write_bytes(uri, json.dumps(mine, indent=2, default=str).encode())


def main(argv: list[str] | None = None) -> int:
    from pipelines.cli import main as cli_main

    return cli_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
