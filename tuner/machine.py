"""What this machine offers a run."""

import os


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity on Linux, else (macOS has no affinity
    call) every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
