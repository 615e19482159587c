"""Finding the processes a test started, to signal them (never by name alone)."""

from __future__ import annotations


def own_processes(marker: str) -> list:
    """Processes this test session started (descendants of this process: the local Ray
    clusters' raylets and their workers) whose command line contains ``marker``. Tests signal
    only these, never processes found by name alone: the machine may be shared."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if any(marker in part for part in p.cmdline()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found
