"""Bad input: one 'error:' line, exit 2, no traceback, stored trials untouched.

Most cases run the command line in this process (the ``cli`` fixture); the ones that start worker
processes, and one sample of the rest, run it as a separate process."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import assert_user_error, tuner, write_study
from tuner.errors import UserError
from tuner.search.config import from_dict


@pytest.fixture
def study_file(tmp_path):
    return write_study(tmp_path, n_trials=2, epochs=1)


def test_missing_study_file_as_a_separate_process(tmp_path):
    assert_user_error(tuner("start-study", "nope.toml", cwd=tmp_path), "nope.toml", "does not exist")


def test_invalid_toml(tmp_path, cli):
    (tmp_path / "bad.toml").write_text("[study\n")
    assert_user_error(cli("start-study", "bad.toml", cwd=tmp_path), "bad.toml", "not valid TOML")


@pytest.mark.parametrize("text", ["", "# to fill in\n\n", "\ufeff# saved by an editor that starts with a BOM\n"])
def test_a_study_file_without_settings_is_refused_before_any_study_exists(tmp_path, cli, text):
    (tmp_path / "empty.toml").write_text(text, encoding="utf-8")
    assert_user_error(cli("start-study", "empty.toml", cwd=tmp_path), "empty.toml holds no settings", "studies/digits-rare.toml")
    assert not (tmp_path / "tuner.db").exists()


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
    assert not (study_file.parent / "tuner.db").exists()  # no empty database for a later command to find


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
    ("not a url", ["'not a url' is not a database URL: it has no scheme"]),
    ("postgresql+psycopg://tuner:s3cret@127.0.0.1:port/db", ["'postgresql+psycopg://tuner:***@127.0.0.1:port/db'",
                                                            "port that is not a number"]),
    ("postgres://tuner:s3cret@127.0.0.1/db", ["does not know ('postgres'); write postgresql+psycopg:// for PostgreSQL"]),
    ("mysql://tuner:s3cret@127.0.0.1/db", ["driver for storage mysql://tuner:***@127.0.0.1/db is not installed",
                                          "use e.g. sqlite:///tuner.db or postgresql+psycopg://"]),
    ("tuner:s3cret@host/db", ["'tuner:***@host/db' is not a database URL: it has no scheme"]),
])
def test_unreachable_storage(study_file, url, words, cli):
    proc = cli("start-study", str(study_file), "--storage", url, cwd=study_file.parent)
    assert_user_error(proc, *words)
    assert "s3cret" not in proc.stderr + proc.stdout


def test_a_storage_url_naming_a_folder_says_so(tmp_path, cli):
    for cmd in (["status"], ["list"]):
        assert_user_error(cli(*cmd, "--storage", f"sqlite:///{tmp_path}", cwd=tmp_path),
                          f"names the folder {tmp_path}, not a database file", f"sqlite:///{tmp_path / 'tuner.db'}")


def test_sqlite_url_arguments_the_driver_would_ignore_are_refused(tmp_path, cli):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    optuna.create_study(storage=url, study_name="only")
    assert_user_error(cli("status", "--storage", f"{url}?mode=ro", cwd=tmp_path), "has mode in its query", f"write {url}")
    assert_user_error(cli("status", "--storage", f"sqlite:///file:{tmp_path / 'tuner.db'}?mode=ro&uri=true", cwd=tmp_path),
                      "has mode, uri in its query", f"write {url}")
    assert cli("status", "--storage", f"{url}?timeout=5", cwd=tmp_path).returncode == 0  # one the driver takes


def test_unknown_study_name(tmp_path, cli):
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="other")
    for cmd in (["best", "--json"], ["status"], ["worker"]):
        proc = cli(*cmd, "--study-name", "missing", cwd=tmp_path)
        assert_user_error(proc, "missing", "other")


def test_study_clash_keeps_stored_trials(study_file, cli):
    folder = study_file.parent
    first = tuner("start-study", str(study_file), cwd=folder)
    assert first.returncode == 0, first.stderr
    url = f"sqlite:///{folder / 'tuner.db'}"
    before = [(t.number, t.state, t.value) for t in optuna.load_study(study_name="smoke", storage=url).trials]
    proc = cli("start-study", str(study_file), "--set", "search.gamma=[1.0, 2.0]", cwd=folder)
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


def test_short_help_and_version(tmp_path, cli):
    import tuner

    top = cli("-h", cwd=tmp_path)
    assert top.returncode == 0 and "start-study" in top.stdout and "--version" in top.stdout
    commands = top.stdout.split("Commands:")[1]
    assert "..." not in commands and "list         The studies in the storage" in commands  # no sentence cut short
    for cmd in ("list", "delete", "status", "export", "worker", "start-study"):
        sub = cli(cmd, "-h", cwd=tmp_path)
        assert sub.returncode == 0 and f"Usage: tuner {cmd}" in sub.stdout, cmd
    version = cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout == f"tuner {tuner.__version__}\n"


@pytest.mark.parametrize("cmd", ["start-study", "worker", "status", "best", "export", "report", "list", "delete", "dashboard"])
def test_help_shows_plain_placeholders_and_every_default(tmp_path, cli, cmd):
    text = cli(cmd, "--help", cwd=tmp_path).stdout
    options = [line for line in text.splitlines() if line.lstrip().startswith("-")]
    assert options and not any(re.search(r"<(str|bool|int|path|list\[str\])>", line) for line in options), text
    if "--storage" in text:
        assert "--storage URL" in text and "$TUNER_STORAGE" in text and "sqlite:///tuner.db" in " ".join(text.split())
    if cmd == "start-study":
        flat = " ".join(text.split())
        assert "--set KEY=VALUE" in flat and "[default: the study file's study.name]" in flat
        assert "in all, this run's and earlier ones" in flat


def test_shell_completion_of_commands_and_study_names(tmp_path):
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="xray")
    env = {"_TUNER_COMPLETE": "complete_bash", "COMP_WORDS": "tuner st", "COMP_CWORD": "1"}
    assert tuner(cwd=tmp_path, env=env).stdout.split() == ["start-study", "status"]
    env.update(COMP_WORDS="tuner status --study-name ", COMP_CWORD="3")
    assert tuner(cwd=tmp_path, env=env).stdout.split() == ["xray"]
    # --show-completion finds the shell it runs under among its parent processes.
    # "; exit": bash stays the parent instead of exec'ing a lone command.
    script = subprocess.run(["bash", "-c", f"{sys.executable} -m tuner --show-completion; exit $?"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert script.returncode == 0 and "_TUNER_COMPLETE=complete_bash" in script.stdout, script.stderr


def two_studies(folder):
    """Two plain Optuna studies: 'a' with values 0.2 and 0.7 and one pruned trial, 'b' with one running trial."""
    url = f"sqlite:///{folder / 'tuner.db'}"
    a = optuna.create_study(storage=url, study_name="a", direction="maximize")
    for v in (0.2, 0.7):
        a.add_trial(optuna.trial.create_trial(params={"gamma": v}, distributions={"gamma": optuna.distributions.FloatDistribution(0, 5)}, value=v))
    a.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    b = optuna.create_study(storage=url, study_name="b")
    b.ask()
    return url


def test_list_studies_with_counts_and_best(tmp_path, cli):
    two_studies(tmp_path)
    rows = {r["study"]: r for r in json.loads(cli("list", "--json", cwd=tmp_path).stdout)}
    assert rows["a"]["complete"] == 2 and rows["a"]["pruned"] == 1 and rows["a"]["best_value"] == 0.7 and rows["a"]["best_trial"] == 1
    assert rows["b"]["running"] == 1 and rows["b"]["best_value"] is None
    long = "medical-focal-loss-study-with-a-rather-long-name-v2"
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name=long)
    table = cli("list", cwd=tmp_path)
    assert table.returncode == 0 and "0.7000 (trial 1)" in table.stdout and table.stderr == ""
    assert long in table.stdout  # whole: it is what --study-name takes


def test_status_json_and_export_short_format(tmp_path, cli):
    two_studies(tmp_path)
    status = json.loads(cli("status", "--study-name", "a", "--json", cwd=tmp_path).stdout)
    assert status["study"] == "a" and status["counts"]["COMPLETE"] == 2
    assert [r["trial"] for r in status["trials"]] == [0, 1, 2] and status["trials"][1]["value"] == 0.7
    rows = json.loads(cli("export", "--study-name", "a", "-f", "json", cwd=tmp_path).stdout)
    assert [r["trial"] for r in rows] == [0, 1, 2] and rows[1]["gamma"] == 0.7
    # a study tuner did not make has no classes, so nothing is said of its thresholds
    assert status["classes"] is None and status["positive_class"] is None
    assert status["threshold_of"] is None and "threshold:" not in cli("status", "--study-name", "a", cwd=tmp_path).stdout
    # a queued trial shows the parameters it will run with
    optuna.load_study(study_name="a", storage=f"sqlite:///{tmp_path / 'tuner.db'}").enqueue_trial({"gamma": 2.0, "alpha": 0.25})
    queued = json.loads(cli("status", "--study-name", "a", "--json", cwd=tmp_path).stdout)["trials"][-1]
    assert (queued["state"], queued["gamma"], queued["alpha"], queued["beta"]) == ("WAITING", 2.0, 0.25, None)


def test_delete_asks_first(tmp_path, cli, monkeypatch):
    import io

    two_studies(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    kept = cli("delete", "a", cwd=tmp_path)
    assert kept.returncode == 1 and "delete study 'a' and its 3 trials" in kept.stderr and "nothing deleted" in kept.stderr
    assert "a" in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no one to answer, as in a script
    unanswered = cli("delete", "a", cwd=tmp_path)
    assert unanswered.returncode == 2
    assert unanswered.stderr.splitlines()[-1] == "error: no answer on stdin, so study 'a' was not deleted; pass --yes where no one can answer"
    assert "a" in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}")
    kept_files = tmp_path / "tuner-artifacts" / "a"
    kept_files.mkdir(parents=True)
    (kept_files / "trial-1.pt").write_bytes(b"model")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    gone = cli("delete", "a", cwd=tmp_path)
    assert gone.returncode == 0 and "deleted study 'a' (3 trials)" in gone.stderr
    assert f"model files and checkpoints in {Path('tuner-artifacts') / 'a'} were kept" in gone.stderr
    assert (kept_files / "trial-1.pt").read_bytes() == b"model"
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tuner.db'}") == ["b"]
    assert "were kept" not in cli("delete", "b", "--yes", "--force", cwd=tmp_path).stderr  # no folder: nothing to say


def test_delete_refuses_while_trials_run_unless_forced(tmp_path, cli):
    url = two_studies(tmp_path)
    assert_user_error(cli("delete", "b", "--yes", cwd=tmp_path), "'b' has 1 running trial", "--force")
    assert "b" in optuna.get_all_study_names(url)
    assert cli("delete", "b", "--yes", "--force", cwd=tmp_path).returncode == 0
    assert optuna.get_all_study_names(url) == ["a"]
    assert_user_error(cli("delete", "nope", "--yes", cwd=tmp_path), "no study named 'nope'", "studies there: a")


def test_an_empty_study_name_is_an_error_not_the_only_study(tmp_path, cli):
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="only")
    for command in ("status", "best", "report", "export"):
        assert_user_error(cli(command, "--study-name", "", cwd=tmp_path), "--study-name '' is empty")
    assert_user_error(cli("status", "--study-name", " ", cwd=tmp_path), "--study-name ' ' is empty")
    assert cli("status", cwd=tmp_path).returncode == 0  # left out, the only study is read


def test_worker_infers_the_study_name_and_says_n_trials_is_the_study_total(tmp_path, cli):
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="foreign")
    # it found the only study, and got as far as reading its settings
    assert_user_error(cli("worker", cwd=tmp_path), "study 'foreign' was not created by tuner")
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="other")
    assert_user_error(cli("worker", cwd=tmp_path), "pass --study-name", "foreign, other")
    assert_user_error(cli("worker", "--n-trials", "3", cwd=tmp_path), "--max-trials", "study's total")
    assert_user_error(cli("worker", "--max-trials", "0", cwd=tmp_path), "--max-trials must be from 1 to 100000")


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
    assert not (study_file.parent / "tuner.db").exists()  # no empty database for a later command to find


def test_n_trials_below_the_reference_trials_on_a_stored_study_keeps_it(study_file, cli):
    url = f"sqlite:///{study_file.parent / 'tuner.db'}"
    from tuner.search.config import load_config
    from tuner.search.study import create_or_resume

    create_or_resume(load_config(study_file).resolved(2, "rare", 100), url, "smoke")
    assert_user_error(cli("start-study", str(study_file), "--n-trials", "1", cwd=study_file.parent), "reference trials")
    study = optuna.load_study(study_name="smoke", storage=url)
    assert study.user_attrs["n_trials"] == 2 and len(study.trials) == 2  # the queued reference trials are still there


def test_one_trial_without_reference_trials_runs_exactly_one(study_file):
    proc = tuner("start-study", str(study_file), "--n-trials", "1", "--set", "study.reference_trials=false",
                 "--set", "pruner.n_warmup_steps=9", "--set", "train.optimizer=sgd", cwd=study_file.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("note: pruner.n_warmup_steps = 9 is not below train.epochs = 1: the median pruner never stops a trial early"
            in proc.stderr)
    assert 'note: train.optimizer = "sgd" with train.lr = 0.001, a learning rate for Adam' in proc.stderr
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{study_file.parent / 'tuner.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    took = re.search(r"-> complete \S+ after 1 epoch \(([\d.]+) s\)", proc.stderr)  # the worker's line: the stored duration
    assert took and took[1] == f"{study.trials[0].user_attrs['duration_s']:.1f}", proc.stderr


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


def test_a_study_whose_every_trial_was_pruned_is_not_told_to_run_more(tmp_path, cli):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'tuner.db'}", study_name="a", direction="maximize")
    study.set_user_attr("n_trials", 2)  # its target of finished trials
    study.set_user_attr("tuner_config", from_dict({"data": {"kind": "synthetic"}}).to_dict())
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    assert_user_error(cli("best", cwd=tmp_path), "study 'a' has no completed trial (0 running", "none complete",
                      "tuner status says why")
    study.set_user_attr("n_trials", 3)
    assert_user_error(cli("best", cwd=tmp_path), "has no completed trial yet", "run tuner start-study or tuner worker")
    study.enqueue_trial({})
    study.ask()  # a worker's trial under way: the answer is to wait, not to start one more
    assert_user_error(cli("best", cwd=tmp_path), "has no completed trial yet (1 running",
                      "wait for the running trials to end (tuner status shows them)")


def test_a_wrong_command_line_names_the_help_to_read(tmp_path, cli):
    assert_user_error(cli("export", "-f", cwd=tmp_path), "Option '-f' requires an argument", "(see tuner export --help)")
    assert_user_error(cli("export", "--bogus", cwd=tmp_path), "--bogus", "(see tuner export --help)")
    assert_user_error(cli("nosuch", cwd=tmp_path), "No such command 'nosuch'", "(see tuner --help)")
