"""pipelines.console: what reaches the terminal and what goes to the log."""

import os
import subprocess
import sys
import warnings

import pytest

from pipelines import console


def test_quiet_sends_fds_to_the_log_and_say_to_both(tmp_path, capfd):
    log = tmp_path / "run" / "arinv.log"
    with console.quiet(log):
        assert console.log_file() == log.resolve()
        print("library chatter")
        os.write(2, b"raw fd 2 output\n")
        subprocess.run([sys.executable, "-c", "print('child process output')"], check=True)
        console.say("== a stage line")
    print("after")
    out, err = capfd.readouterr()
    text = log.read_text()
    for line in ("library chatter", "raw fd 2 output", "child process output",
                 "== a stage line"):
        assert line in text
    assert out == "== a stage line\nafter\n" and err == ""
    assert console.log_file() is None


def test_quiet_restores_the_terminal_on_error_and_shows_our_warnings(tmp_path, capfd):
    log = tmp_path / "arinv.log"
    with pytest.raises(RuntimeError):
        with console.quiet(log):
            warnings.warn_explicit("ours", UserWarning, console.__file__, 1)
            warnings.warn_explicit("theirs", UserWarning, "/site-packages/x.py", 1)
            raise RuntimeError("boom")
    print("visible")
    out, err = capfd.readouterr()
    assert "ours" in err and "theirs" not in err
    assert "theirs" in log.read_text() and "ours" in log.read_text()
    assert out == "visible\n"


def test_a_run_that_printed_nothing_leaves_nothing(tmp_path, capfd):
    with pytest.raises(ValueError):
        with console.quiet(tmp_path / "runs" / "name" / "arinv.log"):
            raise ValueError("refused before any work")
    assert not list(tmp_path.iterdir())


def test_verbose_changes_nothing(tmp_path, capfd):
    with console.quiet(tmp_path / "arinv.log", enabled=False):
        print("shown")
        console.say("said")
    out, _ = capfd.readouterr()
    assert out == "shown\nsaid\n" and not (tmp_path / "arinv.log").exists()


def test_reporter_passes_batches_and_sends_throttled_events():
    class Queue:
        def __init__(self):
            self.events = []

        def put_nowait(self, e):
            self.events.append(e)

    q = Queue()
    rep = console.ProgressReporter(q, world=2, interval=3600)
    batches = [(None, [0] * 4)] * 3
    assert list(rep.wrap(batches, epoch=1, per_epoch=24)) == batches
    # the first batch reports (2 workers x 4 images), then only the epoch's end
    assert q.events == [(1, 8, 24), (1, 24, 24)]
