"""Many workers on one PostgreSQL: the driver's workers plus a `tuner worker` from elsewhere."""

import os
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from conftest import assert_user_error, tuner, url_from_env, write_study
from tuner.search.storage import open_storage, study_lock


@pytest.fixture
def pg_study(postgres_url):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    yield postgres_url, name
    try:
        optuna.delete_study(study_name=name, storage=postgres_url)
    except KeyError:
        pass


def test_driver_and_separate_worker_finish_a_study(pg_study, tmp_path):
    from tuner.learn.data import load_data
    from tuner.search.config import load_config
    from tuner.search.study import create_or_resume

    url, name = pg_study
    sets = ["data.n_samples=800", "data.image_size=24"]
    study_file = write_study(tmp_path, n_trials=12, epochs=4)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TUNER_STORAGE": ""}
    # The study exists before any process joins, as a first start-study leaves it; the worker from
    # elsewhere claims a trial before the driver starts, so all three workers run trials however
    # loaded the machine is (a race to join before the end would not say so every time).
    cfg = load_config(study_file, sets)
    data = load_data(cfg.data, seed=cfg.study.seed)
    create_or_resume(cfg.resolved(data.num_classes, data.positive_class, min(data.pool_counts())), url, name, None,
                     data.classes, data.class_counts(), data.fingerprints)
    elsewhere = tmp_path / "other-host"
    elsewhere.mkdir()  # no study file here: the worker reads the settings from the storage
    worker = subprocess.Popen([sys.executable, "-m", "tuner", "worker", "--storage", url, "--study-name", name,
                               "--max-trials", "3"], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    study = optuna.load_study(study_name=name, storage=url)
    for _ in range(240):
        if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            break
        time.sleep(0.5)
    driver = subprocess.Popen([sys.executable, "-m", "tuner", "start-study", str(study_file), "--workers", "2",
                               "--storage", url, "--study-name", name, *(f"--set={s}" for s in sets)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = driver.communicate(timeout=300)
    worker_out, _ = worker.communicate(timeout=300)
    assert driver.returncode == 0, out
    assert worker.returncode == 0, worker_out
    trials = optuna.load_study(study_name=name, storage=url).trials
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 12
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    params = [(t.params["gamma"], t.params["alpha"]) for t in trials]
    assert len(params) == len(set(params))
    assert len({t.user_attrs["worker"] for t in trials}) == 3


def test_unreachable_postgres_is_one_line_and_hides_the_password(tmp_path):
    study_file = write_study(tmp_path)
    proc = tuner("start-study", str(study_file), "--storage", "postgresql+psycopg://bob:hunter2@127.0.0.1:9/db",
                 cwd=tmp_path)
    assert_user_error(proc, "cannot open storage", "bob:***@127.0.0.1:9")
    assert "hunter2" not in proc.stdout + proc.stderr


@pytest.fixture
def auth_url():
    return url_from_env("TUNER_TEST_POSTGRES_AUTH_URL", "password-protected PostgreSQL role (.ci/run sets one up)")


def test_wrong_password_is_one_line_and_never_printed(auth_url, tmp_path):
    wrong = auth_url.replace(make_url(auth_url).password, "not-the-Passw0rd")
    proc = tuner("start-study", str(write_study(tmp_path)), "--storage", wrong, cwd=tmp_path)
    assert_user_error(proc, "cannot open storage", "password authentication failed", ":***@")
    assert "not-the-Passw0rd" not in proc.stdout + proc.stderr


def test_right_password_runs_a_study_without_printing_it(auth_url, tmp_path):
    name = f"pw-{uuid.uuid4().hex[:8]}"
    try:
        proc = tuner("start-study", str(write_study(tmp_path, n_trials=2, epochs=1)), "--storage", auth_url,
                     "--study-name", name, "--workers", "1", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert make_url(auth_url).password not in proc.stdout + proc.stderr
        assert len(optuna.load_study(study_name=name, storage=auth_url).trials) >= 2
    finally:
        optuna.delete_study(study_name=name, storage=auth_url)


def test_unknown_database_is_one_line(postgres_url, tmp_path, cli):
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_db_here"
    proc = cli("status", "--storage", url, cwd=tmp_path)
    assert_user_error(proc, "no_such_db_here")


def test_postgres_restart_mid_study_loses_nothing(pg_study, tmp_path):
    url, name = pg_study
    version = sorted(os.listdir("/etc/postgresql"))[-1] if os.path.isdir("/etc/postgresql") else None
    if version is None or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root and pg_ctlcluster (Debian's postgresql-common)")
    # No pruner: with one, trials could end at their first report faster than the poll below looks,
    # and the restart would come after the study instead of in the middle of a trial.
    study_file = write_study(tmp_path, n_trials=8, epochs=4, pruner="none")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TUNER_STORAGE": ""}
    driver = subprocess.Popen([sys.executable, "-m", "tuner", "start-study", str(study_file), "--workers", "2",
                               "--storage", url, "--study-name", name, "--set", "data.n_samples=1200",
                               "--set", "data.image_size=32"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, trials = time.time() + 180, []
    while time.time() < deadline:
        time.sleep(0.2)
        if name in optuna.get_all_study_names(url):
            trials = optuna.load_study(study_name=name, storage=url).trials
            training = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and training:
                break
    else:
        driver.kill()
        pytest.fail(f"no trial was mid-training after 2 had finished: {[t.state.name for t in trials]}")
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True, timeout=60)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out
    trials = optuna.load_study(study_name=name, storage=url).trials
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 8
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    completed = [(t.params["gamma"], t.params["alpha"]) for t in trials if t.state == TrialState.COMPLETE]
    assert len(completed) == len(set(completed))


def test_database_away_past_the_bound_stops_workers_with_a_clear_error(pg_study, tmp_path):
    url, name = pg_study
    version = sorted(os.listdir("/etc/postgresql"))[-1] if os.path.isdir("/etc/postgresql") else None
    if version is None or os.geteuid() != 0:
        pytest.skip("stopping PostgreSQL needs root and pg_ctlcluster (Debian's postgresql-common)")
    study_file = write_study(tmp_path, n_trials=4, epochs=6, pruner="none")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TUNER_STORAGE": ""}
    driver = subprocess.Popen([sys.executable, "-m", "tuner", "start-study", str(study_file), "--storage", url,
                               "--study-name", name, "--set", "study.db_retry_s=3", "--set", "data.n_samples=800",
                               "--set", "data.image_size=24"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.2)
            if name in optuna.get_all_study_names(url):
                running = optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.RUNNING,))
                if running and running[0].intermediate_values:
                    break
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop"], check=True, timeout=60)
        out, _ = driver.communicate(timeout=120)
    finally:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True, timeout=60)
        driver.kill()
    assert driver.returncode == 2, out
    assert "error: the study database stayed unreachable for " in out
    assert "Traceback" not in out


def server_sessions(url: str, application_name: str) -> int:
    with sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"),
                            {"a": application_name}).scalar()


@pytest.mark.parametrize("pool, held", [("on", True), ("off", False)])
def test_tuner_pool_off_holds_no_connection_between_calls(pg_study, pool, held):
    # For a pooler in front of the server (README, "Scaling out"): with tuner_pool=off a process
    # gives its connection back after each storage call, so the pooler can lend it to another.
    url, name = pg_study
    app = f"tuner-pool-{uuid.uuid4().hex[:8]}"
    storage = open_storage(f"{url}?application_name={app}&tuner_pool={pool}")
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    with study_lock(storage, name):
        trial = study.ask({"gamma": optuna.distributions.FloatDistribution(0, 5)})
    trial.report(0.5, 1)
    study.tell(trial, 0.5)
    assert study.best_value == 0.5
    assert (server_sessions(url, app) > 0) == held
    storage.engine.dispose()


def test_tuner_pool_other_than_on_or_off_is_one_line(cli, tmp_path):
    proc = cli("status", "--storage", "postgresql+psycopg://bob:hunter2@127.0.0.1:5432/db?tuner_pool=maybe",
               cwd=tmp_path)
    assert_user_error(proc, "tuner_pool must be on or off", "bob:***@")
    assert "hunter2" not in proc.stdout + proc.stderr


def test_study_lock_without_a_pool_waits_holding_no_connection(pg_study):
    # Behind a pooler with fewer server connections than waiting workers, a waiter that sat on a
    # connection could starve the holder; without a pool the waiter tries, gives back, tries again.
    url, name = pg_study
    app = f"tuner-lock-{uuid.uuid4().hex[:8]}"
    storage = open_storage(f"{url}?application_name={app}&tuner_pool=off")
    entered = []

    def second():
        with study_lock(storage, name):
            entered.append(time.time())

    with study_lock(storage, name):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)
        sessions = []
        for _ in range(10):
            sessions.append(server_sessions(url, app))
            time.sleep(0.05)
        assert not entered  # the lock excludes
        released = time.time()
    waiter.join(timeout=10)
    assert entered and entered[0] >= released
    assert min(sessions) == 1, sessions  # the holder's; the waiter holds none between its tries
