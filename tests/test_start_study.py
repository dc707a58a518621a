"""Whole studies through the real command line: worker processes, SQLite, torch."""

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import tuner, write_study
from tuner import keys


def load(folder, name="smoke"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'tuner.db'}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One full study with 2 worker processes and an aggressive median pruner."""
    folder = tmp_path_factory.mktemp("study")
    study_file = write_study(folder, n_trials=8, epochs=3)
    proc = tuner("start-study", str(study_file), "--workers", "2", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, proc


def test_a_worker_joining_a_finished_study_says_why_it_ran_nothing(finished):
    folder, _ = finished
    proc = tuner("worker", "--study-name", "smoke", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\] done after 0 trials; the study has its 8 finished trials$", proc.stderr, re.M), proc.stderr


def test_study_ends_with_exactly_n_trials_finished(finished):
    folder, _ = finished
    states = [t.state for t in load(folder).trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 8
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states


def test_both_workers_ran_trials(finished):
    folder, _ = finished
    workers = {t.user_attrs.get("worker") for t in load(folder).trials}
    assert len(workers) == 2


def test_reference_trials_are_present(finished):
    folder, _ = finished
    refs = {(t.params["gamma"], t.params["alpha"]) for t in load(folder).trials if "reference" in t.user_attrs}
    assert refs == {(0.0, 0.5), (2.0, 0.25)}


def test_every_epoch_is_reported(finished):
    folder, _ = finished
    for t in load(folder).trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs"] + 1))
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["epochs"] == 3 and t.value == t.intermediate_values[3]
        for key in ("balanced_accuracy", "macro_f1", "loss", "seed", "duration_s"):
            assert key in t.user_attrs


def test_aggressive_pruner_prunes_hopeless_trials(finished):
    folder, _ = finished
    pruned = [t for t in load(folder).trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.user_attrs["prune_reason"].startswith(("pruner", "diverged")) for t in pruned)


def test_parallel_workers_do_not_propose_duplicates(finished):
    folder, _ = finished
    params = [(t.params["gamma"], t.params["alpha"]) for t in load(folder).trials]
    assert len(params) == len(set(params))


def test_driver_prints_best_trial_with_test_metrics_on_stdout_and_its_progress_on_stderr(finished):
    folder, proc = finished
    assert "best trial" in proc.stdout and "test set" in proc.stdout and "balanced accuracy" in proc.stdout
    complete = [t for t in load(folder).trials if t.state == TrialState.COMPLETE]
    final = re.search(r"  the final model \(the mean of trials \d+(, \d+)+\): AP of 'rare' [0-9.]+, balanced accuracy", proc.stdout)
    assert final and len(complete) >= 2  # the pruner never stops a reference trial, so there is always a mean
    assert re.search(r"positive class 'rare': \d+ of \d+ training images \(train and val\); operating point: balanced_accuracy", proc.stderr)
    assert "finished (" not in proc.stdout and "[worker" not in proc.stdout and "positive class" not in proc.stdout
    assert re.match(r"\d+ complete, \d+ pruned, \d+ failed$", proc.stdout.splitlines()[0])
    best = load(folder).best_trial
    threshold = best.user_attrs["threshold"]
    assert f"threshold {threshold:.4f} on the calibrated probability of 'rare'" in proc.stdout
    assert re.search(rf"best trial {best.number}: AP of 'rare' [0-9.]+, balanced accuracy [0-9.]+, recall of 'rare' [0-9.]+, "
                     rf"precision [0-9.]+ at threshold {threshold:.4f}", proc.stdout)
    assert re.search(r"confusion \[\[\d+, \d+\], \[\d+, \d+\]\] \(rows true, columns predicted: 'background', 'rare'\)$", proc.stdout, re.M)


def test_best_json(finished, cli):
    folder, _ = finished
    proc = cli("best", "--json", "--study-name", "smoke", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    best = json.loads(proc.stdout)
    study = load(folder)
    assert best["trial"] == study.best_trial.number and best["value"] == study.best_value
    assert best["metric"] == "average_precision" and set(best["params"]) == {"gamma", "alpha"}
    assert best["test"]["trial"] == best["trial"] and 0 <= best["test"]["balanced_accuracy"] <= 1
    assert len(best["references"]) == 2
    assert best["positive_class"] == "rare" and best["operating_point"] == "balanced_accuracy"
    assert best["threshold"] == best["test"]["threshold"] == study.best_trial.user_attrs["threshold"]
    assert best["alpha_per_class"] == {"background": pytest.approx(1 - best["params"]["alpha"]), "rare": best["params"]["alpha"]}
    assert all(r["state"] == "COMPLETE" and r["test"] is not None for r in best["references"])  # never pruned
    others = [r for r in best["references"] if r["trial"] != best["trial"]]
    final = best["final"]  # the mean of the best trials and the references: what --save-model writes
    assert final["trials"][0] == best["trial"] and {r["trial"] for r in others} <= set(final["trials"])
    for r in others:  # each reference against the final model, image by image, with the test split's noise
        gap = r["test"]["against_final"]
        assert gap["average_precision"] == pytest.approx(r["test"]["average_precision"] - final["average_precision"])
        assert gap["balanced_accuracy"] == pytest.approx(r["test"]["balanced_accuracy"] - final["balanced_accuracy"])
        assert gap["average_precision_std"] >= 0 and gap["balanced_accuracy_std"] >= 0
    assert len(best["test_notes"]) == len(others)  # one sentence per reference: higher, not told apart, or beaten


def test_best_model_file_reloads_with_weights_only(finished):
    folder, _ = finished
    best = load(folder).best_trial
    payload = torch.load(folder / "tuner-artifacts" / "smoke" / f"trial-{best.number}.pt", weights_only=True)
    assert payload["params"] == best.params and payload["trial"] == best.number
    kept = {int(p.stem.split("-")[1]) for p in (folder / "tuner-artifacts" / "smoke").glob("*.pt")}
    references = {t.number for t in load(folder).trials if "reference" in t.user_attrs}
    assert len(kept - references) <= 3  # the best 3, and the reference trials' models for the test check


def test_status_table(finished, cli):
    folder, _ = finished
    proc = cli("status", cwd=folder)  # the storage holds one study: no name needed
    assert proc.returncode == 0, proc.stderr
    assert "PRUNED" in proc.stdout and "COMPLETE" in proc.stdout and "cross-entropy" in proc.stdout
    assert "threshold: on the calibrated probability of 'rare'" in proc.stdout  # the rare class by name


def test_dashboard_serves_the_study(finished):
    folder, _ = finished
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{folder / 'tuner.db'}"}
    server = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--port", str(port)], cwd=folder, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = None
        for _ in range(60):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "dashboard did not answer"
        names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
        assert names == ["smoke"]
    finally:
        server.terminate()
        server.wait(10)


def slow_driver(tmp_path, ready):
    """A start-study with 2 workers on trials of a second or more, once ``ready(trials)`` holds;
    with the smoke study's 0.3 s trials the whole study could end between two looks."""
    study_file = write_study(tmp_path, n_trials=6, epochs=6, pruner="none")
    env = {**os.environ, "TUNER_STORAGE": "", "PYTHONWARNINGS": "ignore"}
    driver = subprocess.Popen([sys.executable, "-m", "tuner", "start-study", str(study_file), "--workers", "2",
                               "--set", "data.n_samples=1200"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        if "smoke" in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}") and ready(load(tmp_path).trials):
            return driver
    driver.kill()
    pytest.fail(f"the study never reached the state to stop it in ({ready.__doc__})")


def early(trials) -> bool:
    """a trial running early in its epochs: one seen in its last may finish before the signal reaches its worker"""
    return any(t.state == TrialState.RUNNING and len(t.intermediate_values) <= 2 for t in trials)


def test_resume_after_the_driver_is_stopped(tmp_path, cli):
    # stopped once a trial has finished and another is early in its epochs
    driver = slow_driver(tmp_path, lambda trials: early(trials) and any(t.state == TrialState.COMPLETE for t in trials))
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, out
    stopped = load(tmp_path).trials
    assert TrialState.RUNNING not in [t.state for t in stopped]  # interrupted trials are queued again
    finished_before = sum(t.state == TrialState.COMPLETE for t in stopped)
    assert finished_before < 6

    proc = tuner("start-study", "smoke.toml", "--workers", "2", "--set", "data.n_samples=1200", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = load(tmp_path).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
    interrupted = [t for t in trials if t.user_attrs.get("stop_reason") == "interrupted"]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    retried = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")
               and t.state == TrialState.COMPLETE}
    assert {t.number for t in interrupted} <= retried
    # nothing was lost: the interrupted trials are not counted as failed, wherever counts are shown
    assert proc.stdout.splitlines()[0] == f"6 complete, 0 pruned, 0 failed, {len(interrupted)} queued again to resume"
    status = json.loads(cli("status", "--json", cwd=tmp_path).stdout)
    assert status["counts"]["QUEUED_AGAIN"] == status["counts"]["FAIL"] == len(interrupted)
    assert json.loads(cli("list", "--json", cwd=tmp_path).stdout)[0]["queued_again"] == len(interrupted)
    rows = {r["trial"]: r for r in json.loads(cli("export", "-f", "json", cwd=tmp_path).stdout)}
    for t in interrupted:  # the export links each stopped trial and the one that carried it on
        row = rows[t.number]
        assert row["stop_reason"] == "interrupted" and rows[row["queued_again_as"]]["retry_of"] == t.number
    # The second run's workers are 2 and 3 (new sampler seeds and names), so its log lines say so.
    host = socket.gethostname()
    assert {t.user_attrs.get("worker") for t in trials if t.number not in {s.number for s in stopped}} <= {f"{host}:2", f"{host}:3"}
    assert re.search(r"^\d\d:\d\d:\d\d \[worker [23]\] trial \d+ .*-> complete", proc.stderr, flags=re.M)


def test_progress_lines_in_logs(finished):
    folder, proc = finished
    lines = [line for line in proc.stderr.splitlines() if "finished (" in line]
    assert lines and lines[-1].split()[1] == "8/8"  # "HH:MM:SS 8/8 finished (...)"
    assert re.search(r"; elapsed \d:\d\d:\d\d, [0-9.]+ trials/min, ETA 0:00:00$", lines[-1])
    ended = [t for t in load(folder).trials if t.state != TrialState.WAITING]
    for t in ended:  # one line per trial when it ended: its worker's, or the driver's for a failed one
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}[t.state.name]
        by_worker = re.findall(rf"^\d\d:\d\d:\d\d \[worker \d\] trial {t.number} .*-> {state}\b", proc.stderr, flags=re.M)
        by_driver = re.findall(rf"^\d\d:\d\d:\d\d trial {t.number} {t.state.name.lower()}\b", proc.stderr, flags=re.M)
        assert (len(by_worker), len(by_driver)) == ((0, 1) if t.state == TrialState.FAIL else (1, 0)), t.number
    assert re.search(r"\[worker \d\] trial \d+ .* -> pruned \((pruner at epoch \d|diverged)\)", proc.stderr)
    assert re.search(r"\[worker \d\] trial \d+ gamma=0.000 alpha=0.500 \(cross-entropy, gamma=0\) -> complete", proc.stderr)


def test_quiet_sends_worker_output_to_log_files(tmp_path):
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    proc = tuner("start-study", str(study_file), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "finished (" not in proc.stdout + proc.stderr and "[worker" not in proc.stdout + proc.stderr
    assert "best trial" in proc.stdout
    assert "[worker 0] done" in (tmp_path / "tuner-artifacts" / "smoke" / "logs" / "worker-0.log").read_text()


def test_fused_workers_report_each_trial_on_its_own(tmp_path):
    study_file = write_study(tmp_path, n_trials=7, epochs=2)
    proc = tuner("start-study", str(study_file), "--workers", "2", "--set", "train.fuse=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trains 3 trials at once" in proc.stderr
    trials = load(tmp_path).trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 7
    assert len({(t.params["gamma"], t.params["alpha"]) for t in trials}) == 7
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs"] + 1))
    values = [t.intermediate_values[1] for t in trials]
    assert len(set(values)) > 1  # members are trained apart, not copies of one model


def test_a_finished_study_run_again_starts_no_trial(finished, cli):
    folder, _ = finished
    before = len(load(folder).trials)
    proc = cli("start-study", "smoke.toml", "--workers", "2", cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the study has its 8 finished trials; raise --n-trials to run more" in proc.stderr
    assert "[worker" not in proc.stderr and "no workers here" in proc.stderr and "best trial" in proc.stdout
    assert len(load(folder).trials) == before
    lower = cli("start-study", "smoke.toml", "--workers", "2", "--n-trials", "3", cwd=folder)
    assert "already has 8 finished trials, past the target of 3: no more trials run; raise --n-trials to run more" in lower.stderr
    assert cli("start-study", "smoke.toml", "--workers", "0", "--n-trials", "8", cwd=folder).returncode == 0  # as it was


def test_a_run_on_a_study_with_trials_running_says_so(finished, cli, tmp_path):
    folder, _ = finished
    shutil.copy(folder / "tuner.db", tmp_path / "tuner.db")  # the other tests' study stays as it is
    shutil.copy(folder / "smoke.toml", tmp_path / "smoke.toml")
    optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'tuner.db'}").ask()  # another run's trial
    proc = cli("start-study", "smoke.toml", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: 1 trial is running already, by another run or machine (tuner status names the workers)" in proc.stderr
    assert "note: 1 trial" not in cli("start-study", "smoke.toml", "--workers", "1", cwd=folder).stderr


@pytest.mark.parametrize("cmd", [["best", "--json"], ["best"], ["status", "--json"], ["list"], ["export", "-f", "csv"]],
                         ids=" ".join)
def test_the_read_commands_answer_without_loading_torch(finished, cmd):
    folder, _ = finished
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tuner", *cmd], cwd=folder, capture_output=True,
                          text=True, env={**os.environ, "TUNER_STORAGE": "", "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "tuner.show.summary" in loaded and not {m for m in loaded if m.split(".")[0] == "torch"}
    assert proc.stdout.strip()


def test_a_resnet_study_runs_on_one_split_and_says_why(tmp_path):
    proc = tuner("start-study", str(write_study(tmp_path, n_trials=2, epochs=1, pruner="none", folds="\"auto\"")),
                 "--set", "model.kind=resnet", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model.kind = 'resnet' has no fused form for k folds, so its trials are scored on one validation split" in proc.stderr
    assert re.search(r"validation split holding \d+ images of 'rare', too few", proc.stderr)
    assert " train / " in proc.stderr and " val images" in proc.stderr and "2 complete" in proc.stdout


def test_a_run_with_its_own_artifacts_folder_keeps_its_checkpoints_there_and_stores_nothing_new(tmp_path):
    study_file = write_study(tmp_path, n_trials=2, epochs=1, pruner="none")
    assert tuner("start-study", str(study_file), "--workers", "1", cwd=tmp_path).returncode == 0
    own = tmp_path / "host-b"  # a host that cannot reach the stored folder
    proc = tuner("start-study", str(study_file), "--n-trials", "3", "--workers", "1", "--artifacts", str(own), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoints in {own / 'smoke'}" in proc.stderr
    assert [p.name for p in (own / "smoke").glob("trial-2.pt")] == ["trial-2.pt"]
    assert not (tmp_path / "tuner-artifacts" / "smoke" / "trial-2.pt").exists()
    # its test check reads this folder too: the trials of the first run are trained again here, and it says so
    # with the clock, as the log lines around it
    assert re.search(rf"\d\d:\d\d:\d\d note: trial 0 has no model file at {re.escape(str(own / 'smoke' / 'trial-0.pt'))}; "
                     "training it again", proc.stderr), proc.stderr
    stored = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'tuner.db'}").user_attrs["tuner_config"]
    assert stored["study"]["artifacts"] == str(tmp_path / "tuner-artifacts")


def test_a_study_deleted_while_it_runs_stops_its_driver_and_workers_with_one_line_each(tmp_path):
    study_file = write_study(tmp_path, n_trials=60, epochs=3)
    env = {**os.environ, "TUNER_STORAGE": "", "PYTHONWARNINGS": "ignore"}
    driver = subprocess.Popen([sys.executable, "-m", "tuner", "start-study", str(study_file), "--workers", "1"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            "smoke" in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}")
            and any(t.state == TrialState.COMPLETE for t in load(tmp_path).trials)):
        time.sleep(0.2)
    assert tuner("delete", "smoke", "--yes", "--force", cwd=tmp_path).returncode == 0
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 2 and "Traceback" not in out, out
    assert "error: study 'smoke' is no longer in the storage: it was deleted while this command ran" in out


def test_a_closed_terminal_stops_the_workers_as_ctrl_c_does(tmp_path):
    # SIGHUP (the terminal closed) reaches only the driver, as the workers run detached from the terminal:
    # the driver must stop them too, not die and leave them training with no one to see or stop them.
    driver = slow_driver(tmp_path, early)
    driver.send_signal(signal.SIGHUP)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 128 + signal.SIGHUP, out
    assert out.splitlines()[-1].endswith(" stopped; run the same command again to resume"), out
    assert "Traceback" not in out
    stopped = load(tmp_path).trials
    time.sleep(5)  # a worker left running would go on claiming and training trials
    later = load(tmp_path).trials
    assert [(t.number, t.state) for t in later] == [(t.number, t.state) for t in stopped]
    assert TrialState.RUNNING not in [t.state for t in later]
    assert any(t.user_attrs.get("stop_reason") == "interrupted" for t in later)


def test_a_study_stored_before_folds_and_final_model_reads_and_resumes_as_it_ran(tmp_path, cli):
    study_file = write_study(tmp_path, n_trials=2, epochs=1)
    assert tuner("start-study", str(study_file), "--set", "study.final_model=best_trial", cwd=tmp_path).returncode == 0
    study = load(tmp_path)
    stored = study.user_attrs[keys.CONFIG]
    del stored["data"]["folds"], stored["study"]["final_model"], stored["study"]["max_retries"]
    study.set_user_attr(keys.CONFIG, stored)  # as stored before those keys existed
    before = cli("best", "--json", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    best = json.loads(before.stdout)
    assert best["final_model"].startswith("the best trial's model") and best["folds"] == 1
    for cmd in ("status", "export", "report"):
        proc = cli(cmd, cwd=tmp_path)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (cmd, proc.stderr)
    proc = tuner("start-study", str(study_file), "--n-trials", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ignoring changed study.final_model: stored 'best_trial', asked 'ensemble'" in proc.stderr
    assert len(load(tmp_path).trials) == 3 and "one model trained on" in proc.stdout
