"""Session-wide test isolation: the machine's torch hub cache is not the tests' business (LPIPS
backbone weights found there would change what reports contain). Tests that need hub files
write them into their own TORCH_HOME."""

import atexit
import os
import shutil
import tempfile

_TORCH_HOME = tempfile.mkdtemp(prefix="arinv-test-torch-home-")
os.environ["TORCH_HOME"] = _TORCH_HOME  # inherited by subprocesses and Ray workers
atexit.register(shutil.rmtree, _TORCH_HOME, ignore_errors=True)


# The slowest test files (minutes each: the durations every run prints), run first, so that a
# run split over test processes starts them at once instead of ending on one of them alone.
# Within a file the order holds.
SLOW_FIRST = ("test_sweep.py", "test_pipelines.py", "test_cluster.py", "test_anomaly.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
