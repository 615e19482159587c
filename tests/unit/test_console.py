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


def test_tune_experiments_show_a_bar_of_trials_and_a_line_per_trial(tmp_path, capfd):
    """TrialProgress (the Tune callback of sweep / ablation / anomaly): the bar starts at the
    trials a relaunch finds done, a line per finished or failed trial names it and its metrics
    on the terminal (and the log), and it pickles into the experiment without its bar."""
    import pickle
    from types import SimpleNamespace as Trial

    from pipelines.sweep import TrialProgress

    done = Trial(status="TERMINATED", config={}, last_result={})
    fresh = Trial(status="RUNNING", config={"eps": 1.0, "ctx": {"big": "shared"}},
                  last_result={"trial": "eps1", "psnr": 16.4312, "ssim": float("nan"),
                               "pgd_acc": 0.25})
    failed = Trial(status="PENDING", config={"weights": {"pix": 2e-4, "feat": 0.01}, "ctx": {}},
                   last_result=None)
    cb = TrialProgress("sweep toy", 3, label=("trial",), show=("pgd_acc", "psnr", "ssim"))
    with console.quiet(tmp_path / "arinv.log"):
        cb.on_step_begin(0, [done, fresh, failed])
        cb.on_trial_complete(1, [], fresh)
        cb.on_trial_error(2, [], failed)
        assert cb._bar.n == 3
        restored = pickle.loads(pickle.dumps(cb))
        cb.on_experiment_end([])
    out, err = capfd.readouterr()
    assert "   sweep toy: trial eps1 done (pgd_acc 0.25, psnr 16.43)\n" in out  # no NaN ssim
    assert "   sweep toy: trial pix=0.0002 feat=0.01 FAILED" in out  # no result: its params
    assert "shared" not in out
    assert "3/3" in err and "sweep toy" in err  # the bar, on the terminal's stderr
    assert "trial eps1 done" in (tmp_path / "arinv.log").read_text()
    assert restored._bar is None and restored.total == 3 and restored.show == cb.show

    # --no-progress: the trial lines still show, the bar does not
    quiet = TrialProgress("sweep toy", 3, label=("trial",), show=("psnr",), bar=False)
    with console.quiet(tmp_path / "arinv.log"):
        quiet.on_step_begin(0, [done, fresh])
        quiet.on_trial_complete(1, [], fresh)
        quiet.on_experiment_end([])
    out, err = capfd.readouterr()
    assert out == "   sweep toy: trial eps1 done (psnr 16.43)\n" and "sweep toy" not in err  # no bar
