"""Workers that die or are stopped: nothing is lost, nothing hangs, retried trials resume."""

import os
import re
import signal
import subprocess
import sys
import time

import optuna
import torch
from optuna.trial import TrialState

from conftest import fill, tuner, write_study

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TUNER_STORAGE": ""}
SLOWER = ["--set", "data.n_samples=800", "--set", "data.image_size=24", "--set", "study.heartbeat_interval=1",
          "--set", "study.grace_period=3"]


def popen(folder, *args):
    return subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=folder, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def study_of(folder):
    url = f"sqlite:///{folder / 'tuner.db'}"
    for _ in range(240):
        if "smoke" in optuna.get_all_study_names(url):
            return optuna.load_study(study_name="smoke", storage=url)
        time.sleep(0.25)
    raise AssertionError("the study was not created")


def running_trial_after(study, epochs, timeout=120):
    """The number of a RUNNING trial that has reported at least ``epochs`` epochs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if t.intermediate_values and max(t.intermediate_values) >= epochs:
                return t.number
        time.sleep(0.1)
    raise AssertionError(f"no trial reached epoch {epochs}")


def retry_of(trials, number):
    return [t for t in trials if t.system_attrs.get("failed_trial") == number]


def watched_study_with_a_worker(folder, epochs_before, *settings):
    """A watching driver, one worker, and the number of its trial once it ran ``epochs_before``."""
    study_file = write_study(folder, n_trials=2, epochs=4, pruner="none")
    watcher = popen(folder, "start-study", str(study_file), "--workers", "0", *SLOWER, *settings)
    study = study_of(folder)
    worker = popen(folder, "worker", "--study-name", "smoke")
    return watcher, study, worker, running_trial_after(study, epochs=epochs_before)


def test_killed_worker_trial_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    watcher, study, doomed, number = watched_study_with_a_worker(tmp_path, epochs_before=2)
    doomed.send_signal(signal.SIGKILL)  # mid-epoch: no chance to clean up
    doomed.communicate(timeout=30)
    killed_at = max(study.trials[number].intermediate_values)

    rescuer = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, out

    trials = study.trials
    assert trials[number].state == TrialState.FAIL
    (retry,) = retry_of(trials, number)
    assert retry.state == TrialState.COMPLETE
    assert re.search(rf"trial {number} stopped, queued again as trial {retry.number}: .*its worker went silent: killed", out), out
    assert retry.user_attrs["resumed_from_epoch"] >= killed_at >= 2
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]  # no gap, no repeat
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_sigterm_stops_a_worker_within_seconds_and_its_trial_resumes(tmp_path):
    watcher, study, worker, number = watched_study_with_a_worker(tmp_path, epochs_before=1)
    sent = time.time()
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    assert time.time() - sent < 5, out
    assert study.trials[number].state == TrialState.FAIL
    assert study.trials[number].user_attrs["stop_reason"] == "interrupted"
    assert re.search(r"done after (\d+) trials?: \1 queued again to resume \(stopped by signal\)", out), out

    rescuer = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    watcher.communicate(timeout=120)
    (retry,) = retry_of(study.trials, number)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]


def test_killed_fused_worker_trials_resume_fused_from_their_checkpoints(tmp_path):
    watcher, study, doomed, number = watched_study_with_a_worker(tmp_path, 2, "--set", "train.fuse=2")
    fused = [t.number for t in study.trials if t.state == TrialState.RUNNING]
    # Members report one after another: kill only once both have epoch 2 stored (and so saved), or
    # the second would resume from epoch 1, alone, and this test would race the worker.
    deadline = time.time() + 60
    while time.time() < deadline and not all(max(study.trials[n].intermediate_values, default=0) >= 2 for n in fused):
        time.sleep(0.05)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    assert number in fused and len(fused) == 2  # the worker trained two trials as one model

    rescuer = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, out
    trials = study.trials
    for n in fused:
        (retry,) = retry_of(trials, n)
        assert retry.state == TrialState.COMPLETE
        assert retry.user_attrs["resumed_from_epoch"] >= 2, rescuer.stdout
        assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_killed_k_fold_trial_resumes_with_all_its_folds(tmp_path):
    watcher, study, doomed, number = watched_study_with_a_worker(tmp_path, 2, "--set", "data.folds=3",
                                                                 "--set", "data.n_samples=300", "--set", "data.image_size=16")
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    rescuer = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, out
    (retry,) = retry_of(study.trials, number)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 2, rescuer.stdout
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4] and retry.user_attrs["fold_spread"] >= 0


def test_a_corrupt_checkpoint_of_a_killed_worker_restarts_its_retry_from_epoch_1(tmp_path):
    watcher, study, doomed, number = watched_study_with_a_worker(tmp_path, epochs_before=2)
    ckpt = tmp_path / "tuner-artifacts" / "smoke" / "running" / f"trial-{number}.pt"
    doomed.send_signal(signal.SIGSTOP)  # no epoch may rewrite the file between the damage and the kill
    ckpt.write_bytes(os.urandom(4096))
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)

    rescuer = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    assert "Traceback" not in rescuer.stdout + rescuer.stderr
    out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, out

    trials = study.trials
    (retry,) = retry_of(trials, number)
    assert retry.state == TrialState.COMPLETE and "resumed_from_epoch" not in retry.user_attrs
    assert retry.user_attrs["checkpoint_discarded"]
    assert f"the checkpoint of trial {number} cannot be read" in rescuer.stderr  # worker log lines go to stderr
    assert ckpt.with_name(ckpt.name + ".bad").exists() and not ckpt.exists()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_worker_on_a_full_artifacts_filesystem_stops_with_one_error_and_burns_no_trial(tmp_path, small_filesystem):
    from tuner.search.config import load_config
    from tuner.search.study import create_or_resume

    cfg = load_config(write_study(tmp_path, n_trials=3, epochs=2, pruner="none"), [f"study.artifacts={str(small_filesystem)!r}"])
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    create_or_resume(cfg.resolved(2, "rare", 100), url, "smoke")
    filler = fill(small_filesystem)

    stopped = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    # The worker's log lines share stderr with the error line: that line comes last, once, no traceback.
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1
    assert f"cannot write to {small_filesystem / 'smoke' / 'running'}: ENOSPC (No space left on device)" in lines[-1]
    assert "tuner worker --artifacts PATH" in lines[-1]
    study = optuna.load_study(study_name="smoke", storage=url)
    (failed,) = [t for t in study.trials if t.state == TrialState.FAIL]  # one trial, not one after another
    assert failed.user_attrs["stop_reason"].startswith("artifacts not writable")
    assert retry_of(study.trials, failed.number)[0].state == TrialState.WAITING
    assert not list(small_filesystem.rglob("*.tmp*"))

    filler.unlink()
    rescuer = tuner("worker", "--study-name", "smoke", cwd=tmp_path)
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    trials = study.trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert retry_of(trials, failed.number)[0].state == TrialState.COMPLETE


def test_a_new_study_of_a_deleted_ones_name_uses_none_of_its_files(tmp_path, cli):
    # The old study's reference trials had the same number, seed and parameters as the new one's. Its
    # heartbeats may lag on a loaded machine: a trial failed as silent would leave no worker to run it.
    watcher, study, doomed, _ = watched_study_with_a_worker(tmp_path, 1, "--set", "study.grace_period=60")
    deadline = time.time() + 120  # one trial finished (its model file kept), the next two epochs in
    while time.time() < deadline and not any(t.state == TrialState.COMPLETE for t in study.trials):
        time.sleep(0.1)
    number = running_trial_after(study, epochs=2)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate(timeout=30)
    watcher.send_signal(signal.SIGINT)
    watcher.communicate(timeout=60)
    folder = tmp_path / "tuner-artifacts" / "smoke"
    assert (folder / "running" / f"trial-{number}.pt").exists()
    old_models = {p.name: p.read_bytes() for p in folder.glob("trial-*.pt")}
    assert tuner("delete", "smoke", "--yes", "--force", cwd=tmp_path).returncode == 0

    proc = tuner("start-study", "smoke.toml", "--workers", "1", "--n-trials", "2", *SLOWER, "--set", "data.rare_fraction=0.3",
                 "--set", "data.n_samples=400", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumes" not in proc.stderr
    # the old files were moved aside, untouched, where --artifacts finds them
    (aside,) = (tmp_path / "tuner-artifacts").glob("earlier-*/smoke")
    assert f"{folder} held the files of an earlier study named 'smoke'" in proc.stderr and f"--artifacts {aside.parent}" in proc.stderr
    assert {p.name: p.read_bytes() for p in aside.glob("trial-*.pt")} == old_models
    assert (aside / "running" / f"trial-{number}.pt").exists()
    trials = study_of(tmp_path).trials
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] and "resumed_from_epoch" not in t.user_attrs for t in trials)

    # A model file the old study left where the new one's trial has none (its worker wrote elsewhere).
    name, old = next(iter(old_models.items()))
    (folder / name).write_bytes(old)
    got = cli("best", "--save-model", "best.pt", cwd=tmp_path)
    assert got.returncode == 2 and "a model file of another study named 'smoke' (one deleted, or in another storage)" in got.stderr
    assert "Traceback" not in got.stderr
    payload = torch.load(folder / name, weights_only=True)
    del payload["study_key"]  # as a tuner from before study keys wrote it (an older worker of this very study, say)
    torch.save(payload, folder / name)
    got = cli("best", "--save-model", "best.pt", cwd=tmp_path)
    assert got.returncode == 2 and "a model file with no study key (a tuner older than 2026-11-30 wrote it" in got.stderr


def test_a_watching_driver_stopped_by_sigterm_says_so_and_the_study_stays(tmp_path):
    watcher = popen(tmp_path, "start-study", str(write_study(tmp_path, n_trials=3, epochs=2)), "--workers", "0")
    study = study_of(tmp_path)
    out = ""
    for line in watcher.stdout:  # the first progress line: it watches
        out += line
        if "ETA" in line:
            break
    watcher.send_signal(signal.SIGTERM)
    rest, _ = watcher.communicate(timeout=30)
    out += rest
    assert watcher.returncode == 143, out  # 128 + SIGTERM, as a process killed by it
    assert "stopped watching; the workers go on (tuner status shows them); run the same command again to watch" in out
    assert "ETA - (no worker running)" in out
    assert len(study.trials) == 2 and "Traceback" not in out  # the queued reference trials, untouched
