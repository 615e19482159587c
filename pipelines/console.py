"""What the terminal shows while a pipeline runs: a line per stage and its result, and one
progress bar per training stage; everything else (Ray's and Ray Data's output, forwarded worker
logs, library warnings) goes to a log file unless the user asks for ``--verbose``.

``quiet(log_path)`` points this process's file descriptors 1 and 2 at the log, so child
processes (Ray's raylet, the workers' forwarded output, C++ logs) land there too; ``say``
writes a line to the terminal and the log; ``StageBar`` draws a training run's progress on the
terminal from events its rank-0 worker sends through a Ray queue (so it works the same on a
remote cluster and under ``ray job submit``). Warnings raised by this project's own code still
reach the terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TextIO

# the user's terminal (stdout, stderr) while quiet() points 1 and 2 at the log
_terminal: tuple[TextIO, TextIO] | None = None
_log_path: Path | None = None
_OURS = tuple(str(Path(__file__).resolve().parents[1] / d) for d in ("arinv", "pipelines"))


def say(*parts, sep: str = " ") -> None:
    """A line for the user: on the terminal, and in the log while ``quiet``."""
    text = sep.join(str(p) for p in parts)
    print(text, flush=True)
    if _terminal is not None:
        _terminal[0].write(text + "\n")
        _terminal[0].flush()


def log_file() -> Path | None:
    """The log ``quiet`` writes to (None when not quiet)."""
    return _log_path


def terminal() -> TextIO:
    """Where progress bars and warnings for the user go (the terminal's stderr)."""
    return _terminal[1] if _terminal is not None else sys.stderr


@contextlib.contextmanager
def quiet(log_path: str | os.PathLike, enabled: bool = True):
    """Inside: file descriptors 1 and 2 append to ``log_path`` (and so does ``print``);
    ``say`` and stage bars use the terminal. Restored on exit, also on error (so the CLI's
    error message reaches the user). ``enabled=False`` (--verbose) changes nothing."""
    global _terminal, _log_path
    if not enabled or _terminal is not None:
        yield None
        return
    log_path = Path(log_path).absolute()
    made = [p for p in (log_path.parent, *log_path.parent.parents) if not p.exists()]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    showwarning, streams = warnings.showwarning, (sys.stdout, sys.stderr)
    _terminal = tuple(open(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")
                      for fd in saved)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # sys.stdout may not be fd 1 (a notebook, pytest): Python's own writes follow the fds
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, encoding="utf-8",
                                       errors="replace", closefd=False) for fd in (1, 2))
        warnings.showwarning = _show
        _log_path = log_path.resolve()
        yield log_path
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        warnings.showwarning = showwarning
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        for stream in _terminal:
            stream.close()
        _terminal, _log_path = None, None
        _tidy(log_path, made)


def run_quietly(workdir: str | os.PathLike, verbose: bool, fn):
    """``fn()`` inside ``quiet(WORKDIR/arinv.log)`` (unless ``verbose``), then the log's path
    on the terminal: what a command that starts Ray does around its pipeline."""
    log = Path(workdir) / "arinv.log"
    with quiet(log, enabled=not verbose):
        result = fn()
    if not verbose:
        print(f"log:        {log} (Ray's, Tune's and the workers' output)")
    return result


def _tidy(log_path: Path, made: list[Path]) -> None:
    """A run refused before it printed anything leaves nothing behind: an empty log goes, and
    so do the folders ``quiet`` made for it if they are empty."""
    if log_path.stat().st_size:
        return
    log_path.unlink()
    for folder in made:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    """Every warning to the log; those raised by this project's code to the terminal too."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    sys.stderr.write(text)
    if _terminal is not None and str(filename).startswith(_OURS):
        _terminal[1].write(text)
        _terminal[1].flush()


class StageBar:
    """One progress bar for a training run: images trained over all its epochs (rate and ETA
    from tqdm), the epoch in the description. Rank 0 ``report``s ``(epoch, images this epoch,
    images per epoch)`` through ``queue`` (a ``ray.util.queue.Queue``: make the bar after
    ``ray.init``); inside ``with``, a thread on the driver draws them."""

    def __init__(self, name: str, epochs: int, start_epoch: int):
        from ray.util.queue import Queue

        self.name, self.epochs, self.start_epoch = name, epochs, start_epoch
        # no CPU: the queue must not wait for a slot on a cluster the workers fill
        self.queue = Queue(maxsize=256, actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StageBar:
        self._thread = threading.Thread(target=self._draw, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.queue.shutdown(force=True)

    def _draw(self) -> None:
        from ray.util.queue import Empty
        from tqdm import tqdm

        bar, done = None, 0
        while True:
            try:
                epoch, seen, per_epoch = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    break
                continue
            except Exception:  # the queue is gone (the run ended or Ray shut down)
                break
            if bar is None:
                bar = tqdm(total=(self.epochs - self.start_epoch) * per_epoch, file=terminal(),
                           unit="img", dynamic_ncols=True, mininterval=1.0, smoothing=0.1)
            bar.set_description(f"{self.name} epoch {epoch + 1}/{self.epochs}", refresh=False)
            # between epochs the workers evaluate and checkpoint: say so, not a frozen bar
            bar.set_postfix_str("evaluating, checkpointing" if seen >= per_epoch else "",
                                refresh=False)
            now = (epoch - self.start_epoch) * per_epoch + seen
            bar.update(max(0, now - done))
            done = max(done, now)
        if bar is not None:
            bar.close()


class ProgressReporter:
    """The worker's end of a ``StageBar``: ``wrap(batches, epoch, per_epoch)`` yields the
    batches unchanged and sends a progress event at most every ``interval`` seconds and at the
    epoch's end. Sending never fails the run: a gone queue just stops the reports."""

    def __init__(self, queue, world: int, interval: float = 0.5):
        self.queue, self.world, self.interval = queue, world, interval

    def wrap(self, batches, epoch: int, per_epoch: int):
        seen, last = 0, None  # the first batch always reports (monotonic() may start near 0)
        for xb, yb in batches:
            yield xb, yb
            seen += len(yb) * self.world
            if last is None or time.monotonic() - last >= self.interval:
                self._send(epoch, min(seen, per_epoch), per_epoch)
                last = time.monotonic()
        self._send(epoch, per_epoch, per_epoch)

    def _send(self, *event) -> None:
        if self.queue is None:
            return
        from ray.util.queue import Full

        try:
            self.queue.put_nowait(event)
        except Full:  # the driver is behind: the next event catches up
            pass
        except Exception:  # the queue is gone: no more reports
            self.queue = None
