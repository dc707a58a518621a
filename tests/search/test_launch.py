"""The driver's supervision of its worker processes (real processes, no torch)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tuner.errors import Terminated
from tuner.search.launch import failure, supervise


def sleeper(seconds):
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_a_worker_killed_while_others_run_is_named_and_the_others_are_waited_for():
    procs = [sleeper(4), sleeper(60), subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])]
    heard, start = [], time.monotonic()

    def update():
        if procs[1].poll() is None and time.monotonic() - start > 1:
            procs[1].send_signal(signal.SIGKILL)

    code = supervise(procs, update, poll_s=0.1, say=heard.append, first=2)
    assert code == 3 and procs[0].returncode == 0  # waited for the last one
    assert sorted(heard) == [
        "worker 3 was killed (SIGKILL); the other worker goes on, and a trial it ran is queued again once its heartbeat lapses",
        "worker 4 exited with status 3; the other workers go on, and a trial it ran is queued again once its heartbeat lapses",
    ]


def test_a_last_worker_killed_says_the_trial_waits_for_the_next_run():
    procs = [sleeper(60)]
    heard = []
    supervise(procs, lambda: procs[0].poll() is None and procs[0].kill(), poll_s=0.1, say=heard.append)
    assert heard == ["worker 0 was killed (SIGKILL); a trial it ran resumes from its last finished epoch when the study "
                     "runs again, once its heartbeat lapses"]
    # the run's error line: a killed worker printed nothing to point at
    assert failure(procs, 0, None) == ("worker 0 was killed (SIGKILL); killed from outside, it said nothing (an "
                                       "out-of-memory kill, say)")


def test_a_failed_worker_is_named_with_where_its_output_went(tmp_path):
    procs = [sleeper(0), subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])]
    supervise(procs, lambda: None, poll_s=0.1)
    assert failure(procs, 4, None) == "worker 5 exited with status 1; see its output above"
    assert failure(procs, 4, tmp_path) == f"worker 5 exited with status 1; its output is in {tmp_path / 'worker-5.log'}"


def test_sigterm_stops_the_workers_and_ends_as_terminated_not_as_ctrl_c():
    procs, sent = [sleeper(60)], []

    def update():
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))

    with pytest.raises(Terminated):
        supervise(procs, update, poll_s=0.1)
    assert procs[0].returncode == -signal.SIGTERM  # forwarded to the worker


def test_sighup_of_a_closed_terminal_stops_the_workers_and_ends_with_its_own_code():
    # The workers are detached from the terminal, so a closed terminal's SIGHUP reaches only the driver:
    # it must stop them as Ctrl-C does, not die and leave them running unwatched.
    procs, sent = [sleeper(60)], []

    def update():
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGHUP))

    with pytest.raises(Terminated) as stopped:
        supervise(procs, update, poll_s=0.1)
    assert procs[0].returncode == -signal.SIGTERM  # forwarded as the stop the workers understand
    assert stopped.value.code == 128 + signal.SIGHUP
