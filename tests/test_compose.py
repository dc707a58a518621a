"""Dockerfile, .dockerignore and docker-compose.yml: no Docker engine runs here, so check the files
and run their commands for real."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid

import optuna
import pytest
import typer
import yaml
from optuna.trial import TrialState

from conftest import ROOT, Dashboard, assert_user_error, tuner
from tuner.cli import app
from tuner.search.storage import default_url

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
TUNER_SERVICES = ["study", "worker", "dashboard"]
DOCKERFILE = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
DOCKERIGNORE = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]


def instructions(name: str) -> list[str]:
    """The arguments of each ``name`` instruction of the Dockerfile, in order."""
    return [line.split(None, 1)[1] for line in DOCKERFILE if line.split(None, 1)[0].upper() == name]


def _regex(pattern: str) -> str:
    out, i, pattern = "", 0, pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out, i = out + {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i])), i + 1
    return out


def ignored(path: str) -> bool:
    """Docker's .dockerignore rule for the patterns used here (no '!' exceptions): a pattern matches
    the path from the context's root, or a folder above it; ** spans folders."""
    parts = path.split("/")
    return any(re.fullmatch(_regex(p), "/".join(parts[:i])) for p in DOCKERIGNORE for i in range(1, len(parts) + 1))


def tuner_args(command: list[str]) -> list[str]:
    """The tuner arguments of a health check's ["CMD", "tuner", ...]."""
    assert command[:2] == ["CMD", "tuner"], command
    return command[2:]


def test_services_are_there():
    assert {"postgres", "study", "worker", "dashboard"} <= set(SERVICES)


def test_base_images_are_pinned_to_a_patch_release():
    (base,) = instructions("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim", base), base  # pyproject: requires-python 3.11
    assert re.fullmatch(r"postgres:\d+\.\d+", SERVICES["postgres"]["image"]), SERVICES["postgres"]["image"]
    for name, service in SERVICES.items():
        assert "build" in service or not service["image"].endswith(":latest"), name


def test_image_runs_as_an_unprivileged_user():
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:")), users
    assert any("useradd" in run and users[-1].split(":")[0] in run for run in instructions("RUN"))
    last_user = max(i for i, line in enumerate(DOCKERFILE) if line.upper().startswith("USER "))
    assert not any(line.upper().startswith(("RUN ", "COPY ", "ADD ")) for line in DOCKERFILE[last_user:]), "the services must not run as root"
    assert all("user" not in SERVICES[s] for s in TUNER_SERVICES)  # nothing puts root back
    # The volume's folder belongs to that user, so a fresh named volume is writable.
    assert any("chown" in run and "tuner-artifacts" in run for run in instructions("RUN"))


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build_context():
    assert not any(p.startswith("!") for p in DOCKERIGNORE)  # ignored() does not model exceptions
    for path in (".venv/bin/python", ".git/HEAD", "tuner.db", "deep/in/a/folder/tuner.db", "tuner.db-wal", ".env",
                 "tuner-artifacts/digits-rare/0/last.pt", "tuner-report/index.html", "tuner/__pycache__/cli.cpython-311.pyc",
                 "tests/__pycache__/x.pyc", ".pytest_cache/v/cache", "secrets/postgres_password", "tuner.egg-info/PKG-INFO",
                 "bench/results/storage-scaling.md", "studies/digits-rare.toml"):
        assert ignored(path), path
    sources = [src for copy in instructions("COPY") for src in copy.split()[:-1]]
    assert sources and not any(ignored(src) for src in sources), sources
    for source in (ROOT / "tuner").rglob("*.py"):
        assert not ignored(source.relative_to(ROOT).as_posix()), source


def test_study_files_are_mounted_not_baked_into_the_image():
    assert not any("studies" in copy for copy in instructions("COPY"))
    assert instructions("WORKDIR")[-1] == "/app"
    for name in TUNER_SERVICES:
        volumes = SERVICES[name]["volumes"]
        assert "./studies:/app/studies:ro" in volumes and "artifacts:/app/tuner-artifacts" in volumes, (name, volumes)
    assert (ROOT / "studies").is_dir()


def test_postgres_keeps_data_in_a_named_volume_with_health_check():
    pg = SERVICES["postgres"]
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_passwords_come_from_secret_files_not_the_environment():
    """What docker inspect shows: the environment. Passwords reach the containers as files."""
    for name, service in SERVICES.items():
        assert "env_file" not in service, name
        for key, value in (service.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), (name, key)
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)) and "${POSTGRES_PASSWORD" not in str(value), (name, key)
        assert "TUNER_STORAGE" not in (service.get("environment") or {}), name
    pg = SERVICES["postgres"]
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password" and "postgres_password" in pg["secrets"]
    for name in TUNER_SERVICES:
        assert SERVICES[name]["environment"]["TUNER_STORAGE_FILE"] == "/run/secrets/tuner_storage_url", name
        assert "tuner_storage_url" in SERVICES[name]["secrets"], name
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/") and ignored(secret["file"][2:]), secret
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    settings = [line for line in (ROOT / ".env.example").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert settings and not any("PASSWORD" in line.upper() for line in settings), settings


def test_dashboard_is_published_on_loopback_only():
    assert all(p.startswith("127.0.0.1:") for p in SERVICES["dashboard"]["ports"])


def test_workers_scale_and_get_a_gpu_in_the_gpu_overlay():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and not any(":" in p for p in worker.get("ports", []))
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and device["capabilities"] == ["gpu"]


def parse(args: list[str]) -> None:
    """Raises as tuner would on an unknown command or option, or a bad value."""
    command = typer.main.get_command(app)
    with command.make_context("tuner", list(args), resilient_parsing=False) as ctx:
        sub = command.get_command(ctx, args[0])
        assert sub is not None, args
        sub.make_context(args[0], list(args[1:]), parent=ctx)


@pytest.mark.parametrize("service", TUNER_SERVICES)
def test_commands_and_health_checks_are_valid_tuner_invocations(service):
    args = SERVICES[service]["command"]
    parse(args)
    parse(tuner_args(SERVICES[service]["healthcheck"]["test"]))
    for arg in args:
        if re.fullmatch(r"studies/.+\.toml", arg):
            assert (ROOT / arg).exists()


@pytest.mark.parametrize("service", ["postgres", *TUNER_SERVICES])
def test_every_service_has_a_health_check(service):
    check = SERVICES[service]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and check["retries"] >= 1 and check["timeout"] and check["interval"]
    if service == "dashboard":
        url = tuner_args(check["test"])[-1]
        port = SERVICES["dashboard"]["command"][SERVICES["dashboard"]["command"].index("--port") + 1]
        assert url == f"http://127.0.0.1:{port}/api/studies"  # an HTTP GET that reads the storage


def test_storage_health_check(tmp_path, cli, monkeypatch):
    """What study's and worker's health check runs: healthy while the storage opens, not when it does not."""
    args = tuner_args(SERVICES["worker"]["healthcheck"]["test"])
    secret = tmp_path / "tuner_storage_url"
    monkeypatch.setenv("TUNER_STORAGE_FILE", str(secret))
    secret.write_text(f"sqlite:///{tmp_path / 'tuner.db'}\n")
    assert_user_error(cli(*args, cwd=tmp_path), f"(the file {tmp_path / 'tuner.db'} does not exist)")
    assert not (tmp_path / "tuner.db").exists()  # a mistyped path is not made healthy by the check
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'tuner.db'}")  # what the study service creates
    healthy = cli(*args, cwd=tmp_path)
    assert healthy.returncode == 0 and healthy.stderr == "", healthy.stderr
    with socket_without_server() as port:
        secret.write_text(f"postgresql+psycopg://tuner:pw-in-a-file@127.0.0.1:{port}/tuner")
        down = cli(*args, cwd=tmp_path)
    assert_user_error(down, "cannot open storage", "***")
    assert "pw-in-a-file" not in down.stderr


@contextlib.contextmanager
def socket_without_server():
    """A port nothing listens on, kept bound (not listening) so nothing else takes it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_dashboard_health_check(tmp_path, cli):
    args = tuner_args(SERVICES["dashboard"]["healthcheck"]["test"])
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'tuner.db'}")  # what the study service creates
    dashboard = Dashboard(tmp_path)
    try:
        with_port = [re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{dashboard.port}", a) for a in args]
        healthy = cli(*with_port, cwd=tmp_path)
    finally:
        dashboard.stop()
    assert healthy.returncode == 0 and healthy.stderr == "", healthy.stderr
    assert_user_error(cli(*with_port, cwd=tmp_path), "no answer from", str(dashboard.port))


def test_storage_url_from_a_file(tmp_path, cli, monkeypatch):
    """TUNER_STORAGE_FILE: read when neither --storage nor $TUNER_STORAGE is given."""
    url = f"sqlite:///{tmp_path / 'filed.db'}"
    optuna.create_study(storage=url, study_name="filed")
    (tmp_path / "url").write_text(f"{url}\n")
    monkeypatch.setenv("TUNER_STORAGE_FILE", str(tmp_path / "url"))
    monkeypatch.setenv("TUNER_STORAGE", "")
    assert default_url() == url
    monkeypatch.setenv("TUNER_STORAGE", "sqlite:///other.db")
    assert default_url() == "sqlite:///other.db"
    monkeypatch.setenv("TUNER_STORAGE", " sqlite:///other.db\n")
    assert default_url() == "sqlite:///other.db"
    monkeypatch.setenv("TUNER_STORAGE", " ")  # blank: as if unset
    assert default_url() == url
    monkeypatch.delenv("TUNER_STORAGE_FILE")
    monkeypatch.delenv("TUNER_STORAGE")
    assert default_url() == "sqlite:///tuner.db"

    monkeypatch.setenv("TUNER_STORAGE_FILE", str(tmp_path / "url"))
    status = cli("status", cwd=tmp_path)
    assert status.returncode == 0 and "study filed" in status.stdout, status.stdout + status.stderr
    (tmp_path / "blank").write_text(" \n")
    for name, words in (("missing", ["No such file"]), ("blank", ["is empty"]), (".", ["Is a directory"])):
        monkeypatch.setenv("TUNER_STORAGE_FILE", str(tmp_path / name))
        assert_user_error(cli("status", cwd=tmp_path), "TUNER_STORAGE_FILE", *words)


def test_study_and_worker_commands_run_against_local_postgres(postgres_url, tmp_path):
    """What the study and worker services run, against the local PostgreSQL, with the URL in a file
    as the secret gives it to them."""
    name = f"compose-{uuid.uuid4().hex[:8]}"
    secret = tmp_path / "tuner_storage_url"
    secret.write_text(postgres_url)
    as_compose = {"TUNER_STORAGE": "", "TUNER_STORAGE_FILE": str(secret)}
    env = {**os.environ, **as_compose, "PYTHONWARNINGS": "ignore"}
    fast = ["--study-name", name, "--n-trials", "3", "--set", "train.epochs=1", "--set", "data.folds=1"]
    shutil.copytree(ROOT / "studies", tmp_path / "studies")  # mounted on the image's WORKDIR
    study = subprocess.Popen([sys.executable, "-m", "tuner", *SERVICES["study"]["command"], *fast], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = tuner(*tuner_args(SERVICES["worker"]["healthcheck"]["test"]), cwd=tmp_path, env=as_compose)
        assert health.returncode == 0, health.stderr
        worker_cmd = [a if a != "digits-rare" else name for a in SERVICES["worker"]["command"]]
        for _ in range(60):  # like the service's restart: on-failure, until the study exists
            worker = tuner(*worker_cmd, cwd=tmp_path, env=as_compose)
            if worker.returncode != 2:
                break
        assert worker.returncode == 0, worker.stdout + worker.stderr
        out, _ = study.communicate(timeout=300)
        assert study.returncode == 0, out
        trials = optuna.load_study(study_name=name, storage=postgres_url).trials
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    finally:
        study.kill()
        if name in optuna.get_all_study_names(postgres_url):
            optuna.delete_study(study_name=name, storage=postgres_url)
