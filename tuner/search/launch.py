"""The driver's side of ``tuner start-study --workers N``: start N worker processes on this machine,
supervise them with a progress display, and forward Ctrl-C / SIGTERM to them.

Workers are spawned first thing, before the driver reads the study file, so that their seconds of
importing torch overlap the driver's own start-up, data check and study creation; each then waits
for one line on its stdin (``go``: the study's name and its log file) or exits quietly at EOF.
This module imports neither torch nor optuna, so spawning costs the driver nothing.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tuner.errors import Terminated
from tuner.machine import usable_cpus


def spawn(url: str, workers: int, device: str | None, mode: str) -> list[subprocess.Popen]:
    """Start ``workers`` waiting worker processes, each with an equal share of this machine's cores."""
    threads = max(1, usable_cpus() // workers)
    env = {**os.environ, "TUNER_STORAGE": url, "OMP_NUM_THREADS": str(threads)}  # URL not on argv: ps shows argv
    # A live table or silence: worker lines go to a file (given with go); until then, nowhere.
    output = None if mode == "lines" else subprocess.DEVNULL
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "tuner", "spawned-worker", "--threads", str(threads)]
        # Own session: a terminal's Ctrl-C reaches only us, and we forward exactly one signal.
        procs.append(subprocess.Popen(cmd + (["--device", device] if device else []), env=env, text=True,
                                      stdin=subprocess.PIPE, stdout=output, stderr=output, start_new_session=True))
    return procs


def discard(procs: list[subprocess.Popen]) -> None:
    """The study could not be made: stop the waiting workers (they have touched nothing yet)."""
    for p in procs:
        p.kill()
        p.wait()


def go(procs: list[subprocess.Popen], study_name: str, logs: Path | None, first: int = 0, data_root: str = "",
       artifacts: str = "") -> None:
    """Let the waiting workers join study ``study_name`` as workers ``first``, ``first + 1``, ...;
    with ``logs``, each writes worker-INDEX.log there; ``data_root``: where this run found the images,
    ``artifacts``: the folder this run keeps checkpoints in."""
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    for index, p in enumerate(procs, start=first):
        log = None if logs is None else str((logs / f"worker-{index}.log").resolve())
        try:
            p.stdin.write(json.dumps({"study_name": study_name, "index": index, "log": log, "data_root": data_root,
                                      "artifacts": artifacts}) + "\n")
            p.stdin.close()
        except OSError:  # it died already; supervise() reports its exit code
            pass


def ended(code: int) -> str:
    return f"was killed ({signal_name(-code)})" if code < 0 else f"exited with status {code}"


def failure(procs: list[subprocess.Popen], first: int, logs: Path | None) -> str:
    """Why a run failed, for its error line: the first worker that ended badly, and where its output is."""
    index, p = next((i, p) for i, p in enumerate(procs, start=first) if p.returncode != 0)
    if logs is not None:
        where = f"its output is in {(logs / f'worker-{index}.log').resolve()}"
    elif p.returncode < 0:
        where = "killed from outside, it said nothing (an out-of-memory kill, say)"
    else:
        where = "see its output above"
    return f"worker {index} {ended(p.returncode)}; {where}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def supervise(procs: list[subprocess.Popen], update, poll_s: float = 1.0, say=None, first: int = 0) -> int:
    """Wait for the workers, calling ``update()`` about every ``poll_s`` (and once at the end);
    returns the worst exit code. The first signal (SIGINT, SIGTERM, or SIGHUP when the terminal closes:
    the workers are detached from the terminal, so only this process hears it) is forwarded as SIGTERM (the
    workers queue their trials again and exit), the second as SIGKILL; then KeyboardInterrupt (after
    SIGINT) or Terminated is raised here. ``say``
    hears of a worker (numbered from ``first``) that ends badly while the others run on."""
    signals, told = [], set()

    def tell_ended():
        if say is None or signals:  # stopped by us: each worker says so itself
            return
        alive = sum(p.poll() is None for p in procs)
        for index, p in enumerate(procs, start=first):
            if p.poll() in (None, 0) or index in told:
                continue
            told.add(index)
            rest = (f"the other {'worker goes' if alive == 1 else 'workers go'} on, and a trial it ran is queued again once "
                    "its heartbeat lapses" if alive else
                    "a trial it ran resumes from its last finished epoch when the study runs again, once its heartbeat lapses")
            say(f"worker {index} {ended(p.returncode)}; {rest}")

    def forward(signum, frame):
        signals.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if len(signals) > 1 else signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            running = any(p.poll() is None for p in procs)
            tell_ended()
            update()
            if not running:
                break
            deadline = time.monotonic() + poll_s
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.05)  # notice the last worker's exit at once, not a poll later
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if signals:
        raise KeyboardInterrupt if signals[0] == signal.SIGINT else Terminated(signals[0])
    return max(p.returncode for p in procs)
