import os
import re
import subprocess
import sys

WRITER = """
import sys
from tuner.search.workers import log
for j in range(2000):
    log(f"[worker {sys.argv[1]}] line {j} " + "x" * 200)
"""


def test_log_lines_of_workers_sharing_one_stderr_never_interleave():
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], stderr=write) for i in range(4)]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read().decode()
    assert all(p.wait() == 0 for p in procs)
    lines = out.splitlines()
    pattern = re.compile(r"\d\d:\d\d:\d\d \[worker [0-3]\] line \d+ x{200}")
    bad = [line for line in lines if not pattern.fullmatch(line)]
    assert not bad and len(lines) == 8000, bad[:3]
