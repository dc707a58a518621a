"""Bad input: one 'error:' line, exit 2, no traceback, stored trials untouched.

Most cases run the command line in this process (the ``cli`` fixture); the ones that start worker
processes, and one sample of the rest, run it as a separate process."""

import os

import optuna
import pytest

from conftest import assert_user_error, tuner, write_study


@pytest.fixture
def study_file(tmp_path):
    return write_study(tmp_path, n_trials=2, epochs=1)


def test_missing_study_file_as_a_separate_process(tmp_path):
    assert_user_error(tuner("start-study", "nope.toml", cwd=tmp_path), "nope.toml", "does not exist")


def test_invalid_toml(tmp_path, cli):
    (tmp_path / "bad.toml").write_text("[study\n")
    assert_user_error(cli("start-study", "bad.toml", cwd=tmp_path), "bad.toml", "not valid TOML")


def test_unreadable_study_file(tmp_path, cli):
    (tmp_path / "dir.toml").mkdir()
    assert_user_error(cli("start-study", "dir.toml", cwd=tmp_path), "dir.toml")


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["train.epoch", "unknown key"]),
    ("search.gamma=[-1.0, 2.0]", ["search.gamma"]),
    ("search.gamma=[3.0, 1.0]", ["search.gamma"]),
    ("search.alpha=[0.2, 1.2]", ["search.alpha"]),
    ("data.kind=imagefolder", ["data", "root"]),
])
def test_bad_values(study_file, override, words, cli):
    proc = cli("start-study", str(study_file), "--set", override, cwd=study_file.parent)
    assert_user_error(proc, *words)
    assert not (study_file.parent / "tuner.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{study_file.parent / 'tuner.db'}")


def test_missing_data_root(study_file, cli):
    proc = cli("start-study", str(study_file), "--set", "data.kind=imagefolder", "--set", "data.root=/no/such/dir",
                 cwd=study_file.parent)
    assert_user_error(proc, "/no/such/dir")


@pytest.mark.parametrize("workers", ["-1", "-2"])
def test_workers_must_not_be_negative(study_file, workers, cli):
    assert_user_error(cli("start-study", str(study_file), "--workers", workers, cwd=study_file.parent), "--workers")


def test_non_integer_workers_is_a_one_line_error(study_file, cli):
    assert_user_error(cli("start-study", str(study_file), "--workers", "two", cwd=study_file.parent), "--workers", "integer")


@pytest.mark.parametrize("url, words", [
    ("sqlite:////no/such/folder/x.db", ["/no/such/folder"]),
    ("postgresql+psycopg://tuner:s3cret@127.0.0.1:1/db", ["cannot open storage", "***"]),
    ("not a url", ["not a database URL"]),
])
def test_unreachable_storage(study_file, url, words, cli):
    proc = cli("start-study", str(study_file), "--storage", url, cwd=study_file.parent)
    assert_user_error(proc, *words)
    assert "s3cret" not in proc.stderr + proc.stdout


def test_unknown_study_name(tmp_path, cli):
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="other")
    for cmd in (["best", "--json"], ["status"], ["worker"]):
        proc = cli(*cmd, "--study-name", "missing", cwd=tmp_path)
        assert_user_error(proc, "missing", "other")


def test_study_clash_keeps_stored_trials(study_file):
    folder = study_file.parent
    first = tuner("start-study", str(study_file), cwd=folder)
    assert first.returncode == 0, first.stderr
    url = f"sqlite:///{folder / 'tuner.db'}"
    before = [(t.number, t.state, t.value) for t in optuna.load_study(study_name="smoke", storage=url).trials]
    proc = tuner("start-study", str(study_file), "--set", "search.gamma=[1.0, 2.0]", cwd=folder)
    assert_user_error(proc, "smoke", "another search space")
    after = [(t.number, t.state, t.value) for t in optuna.load_study(study_name="smoke", storage=url).trials]
    assert before == after and len(after) == 2


def test_help_lists_the_commands(tmp_path, cli):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for cmd in ("start-study", "worker", "status", "best", "dashboard"):
        assert cmd in proc.stdout


def _spawned_workers_in(folder):
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            if b"spawned-worker" in cmd and os.readlink(f"/proc/{pid}/cwd") == str(folder):
                found.append(pid)
        except (OSError, ValueError):
            pass
    return found


def test_bad_input_leaves_no_spawned_worker_behind(study_file):
    # Workers start before the study file is read (to overlap their start-up); a bad file stops them.
    proc = tuner("start-study", str(study_file), "--workers", "2", "--set", "data.kind=imagefolder",
                 "--set", "data.root=/nowhere", cwd=study_file.parent)
    assert_user_error(proc, "/nowhere")
    assert _spawned_workers_in(study_file.parent) == []


def test_spawned_worker_exits_quietly_when_the_driver_goes_away(tmp_path):
    from tuner.search import launch

    (p,) = launch.spawn("sqlite:///unused.db", 1, None, "lines")
    p.stdin.close()  # what a driver killed before its study existed leaves behind
    assert p.wait(timeout=120) == 0
