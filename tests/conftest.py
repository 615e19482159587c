"""Session-wide test isolation: the machine's torch hub cache is not the tests' business (LPIPS
backbone weights found there would change what reports contain). Tests that need hub files
write them into their own TORCH_HOME. A session started with SIGINT ignored (a background job
of a non-interactive shell) passes that on to every Ray worker it starts, where ``ray.cancel``
then does nothing: the default disposition is restored for the session's children."""

import atexit
import os
import shutil
import signal
import tempfile

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # children exec with SIG_DFL

_TORCH_HOME = tempfile.mkdtemp(prefix="arinv-test-torch-home-")
os.environ["TORCH_HOME"] = _TORCH_HOME  # inherited by subprocesses and Ray workers
atexit.register(shutil.rmtree, _TORCH_HOME, ignore_errors=True)
