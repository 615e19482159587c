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
