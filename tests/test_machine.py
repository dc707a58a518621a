import os

from tuner.machine import usable_cpus


def test_usable_cpus_is_the_affinity_where_there_is_one_else_every_core(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    assert usable_cpus() == os.cpu_count()
