"""Bad input: one 'error:' line, exit 2, no traceback, stored trials untouched.

Most cases run the command line in this process (the ``cli`` fixture); the ones that start worker
processes, and one sample of the rest, run it as a separate process."""

import os

import optuna
import pytest

from conftest import assert_user_error, tuner, write_study
from tuner.errors import UserError


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


def files_under(folder):
    return sorted(p for p in folder.rglob("*"))


HOSTILE_NAMES = ["../../../../tmp/tuner-escape", "../escape", "..", ".", "a/b", "/tmp/tuner-abs", "a\\b", "x\ny", "tab\tname",
                 "", "-rf", ".hidden", "a..b", "n" * 101, "é"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_study_names_are_refused_and_nothing_is_written(tmp_path, name, cli):
    work = tmp_path / "work"
    work.mkdir()
    study_file = write_study(work, n_trials=2, epochs=1)
    before = files_under(tmp_path)
    assert_user_error(cli("start-study", str(study_file), "--study-name", name, cwd=work), "not a valid study name")
    assert_user_error(cli("start-study", str(study_file), "--set", f"study.name={name!r}".replace("'", '"'), cwd=work),
                      "study.name")
    assert_user_error(cli("worker", "--study-name", name, cwd=work), "not a valid study name")
    assert files_under(tmp_path) == before
    assert not os.path.exists("/tmp/tuner-escape") and not os.path.exists("/tmp/tuner-abs")


def test_a_hostile_name_already_in_the_database_cannot_name_a_folder(tmp_path, cli):
    from tuner.learn import checkpoints
    from tuner.search.config import StudyConfig

    optuna.create_study(study_name="../../escape", storage=f"sqlite:///{tmp_path / 'tuner.db'}")  # made without tuner
    assert_user_error(cli("worker", "--study-name", "../../escape", cwd=tmp_path), "not a valid study name")
    with pytest.raises(UserError, match="cannot name a folder"):
        checkpoints.trial_path(StudyConfig(), "../../escape", 0)


@pytest.mark.parametrize("args, words", [
    (["--n-trials", "99999999999999999999"], ["--n-trials must be from 1 to 100000"]),
    (["--n-trials", "100001"], ["--n-trials must be from 1 to 100000"]),
    (["--n-trials", "0"], ["--n-trials must be from 1 to 100000"]),
    (["--set", "study.n_trials=99999999999999999999"], ["study.n_trials must be from 1 to 100000"]),
    (["--n-trials", "1"], ["n_trials = 1 is fewer than the 2 reference trials", "study.reference_trials=false"]),
])
def test_n_trials_bounds_and_the_reference_trials(study_file, args, words, cli):
    assert_user_error(cli("start-study", str(study_file), *args, cwd=study_file.parent), *words)
    assert not (study_file.parent / "tuner.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{study_file.parent / 'tuner.db'}")


def test_n_trials_below_the_reference_trials_on_a_stored_study_keeps_it(study_file, cli):
    url = f"sqlite:///{study_file.parent / 'tuner.db'}"
    from tuner.search.config import load_config
    from tuner.search.study import create_or_resume

    create_or_resume(load_config(study_file).resolved(2, "rare"), url, "smoke")
    assert_user_error(cli("start-study", str(study_file), "--n-trials", "1", cwd=study_file.parent), "reference trials")
    study = optuna.load_study(study_name="smoke", storage=url)
    assert study.user_attrs["n_trials"] == 2 and len(study.trials) == 2  # the queued reference trials are still there


def test_one_trial_without_reference_trials_runs_exactly_one(study_file):
    proc = tuner("start-study", str(study_file), "--n-trials", "1", "--set", "study.reference_trials=false", cwd=study_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{study_file.parent / 'tuner.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def absent_cuda_devices():
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ([] if count else ["cuda"]) + [f"cuda:{count}"]


@pytest.mark.parametrize("device", absent_cuda_devices())
def test_a_cuda_device_that_is_not_here_is_one_error_before_any_study(study_file, device, cli):
    folder = study_file.parent
    assert_user_error(cli("start-study", str(study_file), "--device", device, cwd=folder), device, "pass --device cpu")
    assert_user_error(cli("start-study", str(study_file), "--set", f"train.device={device}", cwd=folder), device)
    assert not (folder / "tuner.db").exists()
    assert_user_error(cli("worker", "--study-name", "smoke", "--device", device, cwd=folder), device)
