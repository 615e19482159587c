"""The Ray Train backend of the one training loop (``arinv.train.run.fit``).

Driver side: ``Launch`` (where a run lives: Ray storage, MLflow, the local result folder),
``launch()`` (validates, finds or creates the run's MLflow run, builds the datasets and the
``TorchTrainer``, fits, copies the final checkpoint home). Worker side: ``worker_loop`` builds
the run's task and feeds it to ``fit`` through a ``RayBackend`` (rank, device, this worker's
part of the Ray Data stream, checkpoints through ``ray.train.report``, MLflow on rank 0).

A run is identified by (storage path, run name): relaunching the same pair resumes from the
latest checkpoint and logs into the same MLflow run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arinv.checkpoint import STATE, CheckpointError, check_arch, read_payload
from arinv.config import build, flatten, stored, to_dict
from arinv.data import storage
from arinv.data.reader import load_manifest, run_shards
from arinv.train.runtime import resolve_device
from arinv.train.state import check_resumable
from pipelines.console import ProgressReporter, StageBar, say


@dataclass
class Launch:
    """Where a run lives; not part of the science config (not logged as params)."""

    workdir: Path                      # local: final checkpoint, report, default storage, MLflow
    run_name: str | None = None        # default: the config's name
    storage_path: str | None = None    # Ray Train storage (local folder or s3://); default workdir/ray
    tracking_uri: str | None = None    # default: $MLFLOW_TRACKING_URI or ./mlflow.db (sqlite)
    experiment: str = "arinv"
    register: bool = True
    alias: str | None = None           # registry alias; default "robust" / "standard"
    address: str | None = None         # Ray address; default $RAY_ADDRESS or a local cluster
    model_cache: str | None = None     # registry downloads; default $ARINV_MODEL_CACHE or ~/.cache
    progress: bool = True              # one bar per training stage, drawn by this driver
    verbose: bool = False              # instead: the workers' own bars and Ray Data's
    extra_tags: dict = field(default_factory=dict)  # e.g. mlflow.parentRunId for sweep trials
    callbacks: list = field(default_factory=list)   # Ray Train callbacks (a Tune trial's reporter)

    def __post_init__(self):
        self.workdir = Path(self.workdir).expanduser().resolve()
        if self.storage_path is None:
            self.storage_path = str(self.workdir / "ray")
        elif not storage.is_s3(self.storage_path):
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())

    def tracking(self) -> str:
        """The tracking URI, checked: no password in it, the server answering this process's
        credentials (``tracking.check_access``: call it before Ray starts)."""
        from pipelines.tracking import check_access, checked_uri, default_tracking_uri

        return check_access(checked_uri(self.tracking_uri) if self.tracking_uri
                            else default_tracking_uri())

    def run_key(self, name: str) -> str:
        return f"{self.storage_path.rstrip('/')}/{name}"


# ----------------------------------------------------------------------------- driver


def warn_if_short_of_cpus(address: str, scaling, runs: int = 1) -> None:
    """On a connected cluster: a RuntimeWarning when ``runs`` training runs' workers would take
    every CPU it has now, leaving none for the data stream's read tasks (which then wait for
    ever unless an autoscaler adds nodes)."""
    import ray

    need = runs * scaling.num_workers * scaling.cpus_per_worker
    have = ray.cluster_resources().get("CPU", 0)
    if need and have < need + 1:
        warnings.warn(
            f"the Ray cluster at {address} has {have:g} CPUs now; {runs} run(s) of "
            f"scaling.num_workers={scaling.num_workers} x scaling.cpus_per_worker="
            f"{scaling.cpus_per_worker} take {need:g} and the data stream needs at least one "
            "more. Unless the autoscaler adds nodes, training waits for ever: lower "
            "scaling.cpus_per_worker / num_workers or give the cluster more CPUs",
            RuntimeWarning, stacklevel=3)


def init_ray(address: str | None, scaling, runs: int = 1) -> None:
    """Connect to ``address`` / $RAY_ADDRESS, or start a local cluster whose logical CPUs leave
    the machine's cores to the data stream after ``runs`` concurrent runs' training workers
    took theirs. The local dashboard (127.0.0.1, token auth) serves Ray's state API, which Ray
    Train needs to free the resources of a run whose controller died (a stopped Tune trial)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        warn_if_short_of_cpus(address, scaling, runs)
        return
    need = runs * scaling.num_workers * scaling.cpus_per_worker
    # "local": a new cluster even when a `ray start` one (or ray.cluster_utils') is running here
    ray.init(address="local", num_cpus=int((os.cpu_count() or 1) + need + 0.999),
             include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=True)


def shard_sets(cfg, launch: Launch) -> str:
    """The shard-set prefix (with ``train/`` and ``val/``) the run streams: ``data.shards``, or
    the source written as shards under the workdir (``run_shards``, as for --local runs),
    uploaded under the run's storage when that is S3 (multi-node workers cannot see the
    driver's disk)."""
    local = run_shards(cfg.data, launch.workdir, progress=launch.progress)
    if cfg.data.shards or not storage.is_s3(launch.storage_path):
        return local
    remote = f"{launch.storage_path.rstrip('/')}/datasets/{Path(local).name}"
    for split in ("train", "val"):
        if not storage.exists(f"{remote}/{split}/manifest.json"):
            storage.upload_dir(Path(local) / split, f"{remote}/{split}")
    return remote


def datasets(cfg, root: str, resolution: int, *, augment: bool, progress: bool) -> dict:
    """The Ray datasets the workers read: "val" always, "train" unless ``data.loader`` is ffcv
    (its workers read the local shards themselves)."""
    from ray.data import DataContext

    from pipelines.ray_data import read_shards

    DataContext.get_current().enable_progress_bars = progress
    # a missing or incomplete set fails here, not in a worker
    manifests = {split: load_manifest(f"{root}/{split}") for split in ("train", "val")}
    seed = cfg.runtime.seed if cfg.runtime.deterministic else None
    val = read_shards(f"{root}/val", split_transform="eval", resolution=resolution,
                      on_corrupt=cfg.data.on_corrupt, seed=seed)
    if cfg.data.loader == "ffcv":
        from pipelines.ffcv_loader import local_shards

        local_shards(f"{root}/train")  # checked on the driver's node; each worker checks its own
        return {"val": val}
    # Ray splits the stream between workers by blocks (one per read task): small sets get
    # small tasks, so that every worker gets some (ImageNet-sized ones keep 512-row tasks).
    n = manifests["train"]["num_samples"]
    rows = max(1, min(512, n // (4 * cfg.scaling.num_workers)))
    train = read_shards(f"{root}/train", split_transform="train" if augment else "eval",
                        resolution=resolution, crop_scale=(cfg.data.crop_min_scale, 1.0),
                        rows_per_task=rows, on_corrupt=cfg.data.on_corrupt, seed=seed,
                        classes=cfg.data.classes)
    return {"train": train, "val": val}


def data_config(preserve_order: bool = False):
    """Ray Train's DataConfig, except that the training set is split with ``equal=False``: the
    default (``equal=True``) drops rows so that workers get equal counts; we keep every sample
    once per epoch and let DDP's ``join`` absorb the uneven ends. ``preserve_order``: blocks
    reach the workers in the order they were planned (``runtime.deterministic``)."""
    import ray.train

    class ExactlyOnce(ray.train.DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            hints = worker_node_ids if self._enable_shard_locality else None
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                ds.context.execution_options.preserve_order = preserve_order
                if name == "train":
                    for i, split in enumerate(ds.streaming_split(world_size, equal=False,
                                                                 locality_hints=hints)):
                        out[i][name] = split
                else:
                    for i in range(world_size):
                        out[i][name] = ds.iterator()
            return out

    return ExactlyOnce(datasets_to_split=["train"])


def model_cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """Where fetched models and stored checkpoints are kept: ``cache``, else
    $ARINV_MODEL_CACHE, else ~/.cache/arinv/models."""
    return Path(cache or os.environ.get("ARINV_MODEL_CACHE")
                or Path.home() / ".cache" / "arinv" / "models")


@contextlib.contextmanager
def own_local_ray():
    """Shut down, on exit, a Ray that was not running on entry (the local cluster a pipeline
    started); a cluster the caller connected to stays up."""
    import ray

    ours = not ray.is_initialized()
    try:
        yield
    finally:
        if ours and ray.is_initialized():
            ray.shutdown()


def stored_file(uri: str, cache: str | None = None) -> Path:
    """A local path for a file in run storage: itself if local, else a copy under
    :func:`model_cache_dir`, made once (stored checkpoints never change)."""
    import hashlib

    if not storage.is_s3(uri):
        return storage.local_path(uri)
    local = (model_cache_dir(cache) / "stored" / hashlib.sha1(uri.encode()).hexdigest()[:16]
             / Path(uri).name)
    if not local.is_file():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_suffix(f".{os.getpid()}.part")
        tmp.write_bytes(storage.read_bytes(uri))
        tmp.replace(local)
    return local


def storage_filesystem(path: str):
    return storage.pyarrow_s3_filesystem() if storage.is_s3(path) else None


def ray_storage_path(path: str) -> str:
    """With an explicit pyarrow filesystem Ray Train wants ``bucket/key``, not ``s3://...``."""
    return path[len("s3://"):] if storage.is_s3(path) else path


def _state_files(storage_path: str, name: str) -> list[str]:
    """Locations of every ``state.pt`` under the run's Ray storage, oldest first (Ray names
    checkpoint folders by time, so sorted order is age order)."""
    run = f"{storage_path.rstrip('/')}/{name}"
    if storage.is_s3(run):
        names = sorted({k[len(run) + 1:].split("/")[0] for k in storage.list_prefix(run + "/")
                        if k.endswith("/" + STATE)})
        return [f"{run}/{n}/{STATE}" for n in names if n.startswith("checkpoint_")]
    return [str(f) for f in sorted(Path(run).glob(f"checkpoint_*/{STATE}"))]


def latest_state(storage_path: str, name: str) -> tuple[str, bytes] | None:
    """(location, bytes) of the newest ``state.pt`` under the run's Ray storage, if any."""
    found = _state_files(storage_path, name)
    return (found[-1], storage.read_bytes(found[-1])) if found else None


def check_resume(storage_path: str, name: str, *, task) -> tuple[str, int, bool] | None:
    """Refuse, before any worker starts, a run whose storage holds a checkpoint of another
    kind, architecture or incompatible config (a worker would fail on it max_failures times).
    Returns None for a new run, else ``(checkpoint directory, its epoch, finished)``; finished:
    its last epoch and result files are there, nothing to train. A newest ``state.pt`` that does
    not read back (the run was killed while persisting it) is passed over, with a line saying
    so, for the whole one before it; refused only when none reads back."""
    import io

    found = _state_files(storage_path, name)
    if not found:
        return None
    for i, where in enumerate(reversed(found)):
        try:
            payload = read_payload(where, io.BytesIO(storage.read_bytes(where)))
            break
        except CheckpointError as e:
            if i == len(found) - 1:
                raise CheckpointError(f"{e} (remove the run folder {storage_path}/{name} or use "
                                      "another --run-name)") from None
            say(f"{name}: passing over {where}: it does not read back whole (a run killed while "
                "it was written?); resuming from the checkpoint before it")
    if payload.get("kind") != task.kind:
        raise CheckpointError(f"{where}: holds a {payload.get('kind')} checkpoint, this run is "
                              f"a {task.kind} run; use another --run-name")
    check_arch(where, payload["arch"], task.arch)
    check_resumable(where, flatten(stored(task.cls, payload["config"])), flatten(task.cfg))
    folder = where.rsplit("/", 1)[0]
    epoch = int(payload["progress"]["epoch"])
    done = epoch >= task.epochs and all(storage.exists(f"{folder}/{f}") for f in task.final_files)
    return folder, epoch, done


def stored_after(storage_path: str | None, name: str | None, recorded: str | None) -> str | None:
    """The newest checkpoint folder in the run's storage when it is newer than ``recorded``
    (the folder Ray Train recorded, or None) and its ``state.pt`` reads back whole; else None.
    Ray names checkpoint folders by time, so newer sorts later."""
    if not storage_path or not name:
        return None
    found = latest_state(storage_path, name)
    if found is None:
        return None
    where, data = found
    folder = where.rsplit("/", 1)[0]
    last = None if recorded is None else str(recorded).rstrip("/").rsplit("/", 1)[-1]
    if last is not None and folder.rsplit("/", 1)[1] <= last:
        return None
    import io

    try:
        read_payload(where, io.BytesIO(data))
    except CheckpointError:
        return None  # cut short while it was written: Ray's recorded one is the newest whole one
    return folder


def copy_checkpoint(folder: str, dest: Path) -> None:
    """A checkpoint directory in run storage (local or S3) copied to local ``dest``."""
    shutil.rmtree(dest, ignore_errors=True)
    if not storage.is_s3(folder):
        shutil.copytree(folder, dest)
        return
    dest.mkdir(parents=True)
    for uri in storage.list_prefix(folder.rstrip("/") + "/"):
        (dest / uri.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(uri))


def launch(task, launch: Launch) -> dict:
    """Fit ``task`` (``arinv.train.tasks``) under Ray Train and return ``{"run_id",
    "tracking_uri", "checkpoint_dir", "stored_checkpoint", "metrics", "result"}``; the final
    checkpoint directory is copied to ``launch.workdir / "final"`` (``stored_checkpoint``: its
    ``state.pt`` in the run's storage, readable from every node). A generator's registry URI
    was resolved by the driver to build ``task``; each worker resolves it again on its node."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines import tracking

    cfg, sc = task.cfg, task.cfg.scaling
    micro, _ = sc.accumulation(cfg.optim.batch_size)  # raises ConfigError before any work
    name = launch.run_name or cfg.name
    if storage.is_s3(launch.storage_path):
        storage.check_access(launch.storage_path, write=True)
    found = check_resume(launch.storage_path, name, task=task)
    if found is not None and found[2]:
        return _reuse(found[0], task, launch, name)
    if found is not None:  # said by the driver: the workers' own line stays in their logs
        say(f"{name}: resuming after epoch {found[1]}/{task.epochs} from {found[0]}")
    root = shard_sets(cfg, launch).rstrip("/")  # may fork shard writers: before Ray starts
    train_manifest = load_manifest(f"{root}/train")
    task.check_classes(train_manifest["classes"], f"shard set {root}/train")
    uri = launch.tracking()
    init_ray(launch.address, sc)
    run_id = tracking.find_or_create_run(
        uri, launch.experiment, launch.run_key(name), run_name=name,
        tags={"arinv.kind": task.kind, "arinv.preset": cfg.name, **launch.extra_tags})
    driver_log = tracking.RunLogger(uri, run_id)
    driver_log.log_params(flatten(cfg))
    driver_log.set_tags({"arinv.storage": launch.run_key(name), "arinv.micro_batch": micro})
    driver_log.close(timeout=60)
    own_bars = launch.progress and launch.verbose  # else the driver draws the stage's bar
    ds = datasets(cfg, root, task.resolution, augment=task.augment, progress=own_bars)
    bar = StageBar(name, task.epochs, found[1] if found else 0) \
        if launch.progress and not launch.verbose else None  # after init_ray: a Ray queue
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"cfg": to_dict(cfg), "kind": task.kind, "tracking_uri": uri,
                           "run_id": run_id, "progress": own_bars,
                           "progress_queue": bar.queue if bar else None,
                           "train_images": train_manifest["num_samples"],
                           "model_cache": launch.model_cache, "shards": root,
                           "storage": launch.storage_path, "name": name},
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker,
                                  **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=ray_storage_path(launch.storage_path),
            storage_filesystem=storage_filesystem(launch.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=sc.keep_checkpoints),
            callbacks=list(launch.callbacks)),
        datasets=ds, dataset_config=data_config(cfg.runtime.deterministic))
    try:
        with bar or contextlib.nullcontext():
            result = trainer.fit()
    except BaseException as e:  # the MLflow run says so; a relaunch sets it RUNNING again
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        tracking.RunLogger(uri, run_id).close(status=status, timeout=30)
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"run {name}: training ended without a checkpoint")
    final = launch.workdir / "final"
    shutil.rmtree(final, ignore_errors=True)
    result.checkpoint.to_directory(str(final))
    stored = result.checkpoint.path  # "bucket/key/..." on S3 (explicit filesystem)
    stored = f"s3://{stored}" if storage.is_s3(launch.storage_path) else stored
    return {"run_id": run_id, "tracking_uri": uri, "checkpoint_dir": final,
            "stored_checkpoint": f"{stored}/{STATE}", "metrics": dict(result.metrics or {}),
            "result": result}


def _reuse(folder: str, task, launch: Launch, name: str) -> dict:
    """A finished run relaunched: no Ray Train, no training; its last checkpoint is the result
    and its MLflow run the run."""
    from pipelines import tracking

    say(f"{name}: finished earlier ({folder}); nothing to train (raise optim.epochs to "
        "train on)")
    final = launch.workdir / "final"
    copy_checkpoint(folder, final)
    uri = launch.tracking()
    run_id = tracking.find_or_create_run(
        uri, launch.experiment, launch.run_key(name), run_name=name,
        tags={"arinv.kind": task.kind, "arinv.preset": task.cfg.name, **launch.extra_tags})
    history = read_payload(final / STATE)["progress"]["history"]
    return {"run_id": run_id, "tracking_uri": uri, "checkpoint_dir": final,
            "stored_checkpoint": f"{folder}/{STATE}", "metrics": history[-1],
            "result": None}


# ----------------------------------------------------------------------------- worker


def worker_loop(config: dict) -> None:
    """Every Ray Train worker's function: the run's task through the one training loop."""
    from arinv.train.run import fit
    from arinv.train.tasks import config_class, make_task
    from pipelines.registry import task_inputs

    cfg = build(config_class(config["kind"]), config["cfg"])
    inputs = task_inputs(cfg, config["tracking_uri"], config["model_cache"])
    backend = RayBackend(make_task(cfg, **inputs), config)
    try:
        fit(backend.task, backend)
    finally:
        backend.close()


class RayBackend:
    """One Ray Train worker: its rank and device, its split of the Ray Data stream (or of the
    node-local shards through ffcv's Loader), checkpoints reported through Ray Train (rank 0
    attaches the directory; every rank reports every epoch), MLflow logging on rank 0."""

    def __init__(self, task, config: dict):
        import ray.train

        cfg = task.cfg
        ctx = ray.train.get_context()
        self.task, self.config = task, config
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if cfg.scaling.use_gpu:
            import ray.train.torch

            self.device = ray.train.torch.get_device()
        else:
            self.device = resolve_device("cpu")
        threads = max(1, int(cfg.scaling.cpus_per_worker))
        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 only if cpus_per_worker is 1
        self.progress, self.skipped = config["progress"], 0
        from ray.data import DataContext

        # the loop's own epoch bar is the one bar of this stage: Ray Data's bars, re-printed by
        # the driver's log stream at every refresh, would bury it (and a submitted job's output)
        DataContext.get_current().enable_progress_bars = False
        # mlflow 3.17's sqlite store trips a sqlalchemy deprecation warning in every process
        warnings.filterwarnings("ignore", message=".*noload.*")
        self.log, self.reporter = None, None
        if self.rank == 0 and config.get("progress_queue") is not None:
            self.reporter = ProgressReporter(config["progress_queue"], self.world)
        if self.rank == 0:
            from pipelines.tracking import RunLogger

            self.log = RunLogger(config["tracking_uri"], config["run_id"])

    def train_batches(self, epoch: int, batch_size: int):
        """This worker's part of one training epoch, from the Ray Data stream or, with
        ``data.loader: ffcv``, from ffcv's Loader over the node-local shards (rank 0 reports
        its progress to the driver's stage bar when there is one)."""
        cfg = self.task.cfg
        if cfg.data.loader != "ffcv":
            batches = self._batches("train", batch_size, shuffle=True, epoch=epoch)
        else:
            from pipelines.ffcv_loader import ffcv_batches

            batches = ffcv_batches(
                f"{self.config['shards']}/train", rank=self.rank, world=self.world,
                batch_size=batch_size, resolution=self.task.resolution, train=self.task.augment,
                epoch=epoch, seed=cfg.runtime.seed, crop_scale=(cfg.data.crop_min_scale, 1.0),
                num_workers=max(1, int(cfg.scaling.cpus_per_worker)))
        if self.reporter is None:
            return batches
        return self.reporter.wrap(batches, epoch, self.config["train_images"])

    def eval_batches(self, batch_size: int):
        return self._batches("val", batch_size)

    def _batches(self, name: str, batch_size: int, *, shuffle: bool = False, epoch: int = 0):
        """(uint8 images, labels) over this worker's split of dataset ``name``; ``shuffle``
        mixes rows in a buffer of a few batches. Samples the stream flagged as corrupt are
        dropped and counted in ``skipped``."""
        import ray.train

        it = ray.train.get_dataset_shard(name)
        buffer = {"local_shuffle_buffer_size": 4 * batch_size} if shuffle else {}
        rt = self.task.cfg.runtime
        if shuffle and rt.deterministic:
            buffer["local_shuffle_seed"] = rt.seed * 100003 + epoch
        for b in it.iter_torch_batches(batch_size=batch_size, prefetch_batches=2, **buffer):
            ok = b["ok"]
            if bool(ok.all()):
                yield b["image"], b["label"]
                continue
            self.skipped += int((~ok).sum())
            if bool(ok.any()):
                yield b["image"][ok], b["label"][ok]

    @contextlib.contextmanager
    def latest(self):
        """The newest checkpoint directory of this run: the one Ray Train recorded or, when the
        run's storage already holds a newer complete one (the process died after persisting it
        but before the controller recorded it), that one, so no finished epoch is trained and
        logged twice."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        newer = stored_after(self.config.get("storage"), self.config.get("name"),
                             None if ckpt is None else ckpt.path)
        if newer is not None:
            with tempfile.TemporaryDirectory(prefix="arinv-resume-") as d:
                copy_checkpoint(newer, Path(d) / "c")
                yield str(Path(d) / "c")
            return
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield d

    def save(self, epoch: int, write, metrics: dict) -> None:
        """Every rank calls this once per epoch (``ray.train.report`` is a barrier); rank 0
        attaches the checkpoint directory."""
        import ray.train

        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="arinv-ckpt-") as d:
            write(d)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.log.log_metrics(metrics, step=step)

    def logged_steps(self, key: str) -> set[int] | None:
        import mlflow

        try:
            client = mlflow.MlflowClient(self.config["tracking_uri"])
            return {m.step for m in client.get_metric_history(self.config["run_id"], key)}
        except Exception as e:  # noqa: BLE001 - an unreachable store: nothing to compare with
            warnings.warn(f"cannot read metric {key!r} of run {self.config['run_id']} from "
                          f"the tracking store ({e}); epochs it lost are not logged again")
            return None

    def log_files(self, files: dict[str, bytes], folder: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            for name, data in files.items():
                (Path(d) / name).write_bytes(data)
                self.log.log_artifact(Path(d) / name, folder)  # copied now, uploaded later

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
