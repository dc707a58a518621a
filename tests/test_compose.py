"""docker-compose.yml: no Docker engine runs here, so check the file and run its commands for real."""

import os
import re
import shutil
import subprocess
import sys
import uuid

import optuna
import pytest
import typer
import yaml
from optuna.trial import TrialState

from conftest import ROOT, tuner
from tuner.cli import app

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_are_there():
    assert {"postgres", "study", "worker", "dashboard"} <= set(SERVICES)


def test_postgres_keeps_data_in_a_named_volume_with_health_check_and_no_committed_password():
    pg = SERVICES["postgres"]
    assert any(v.startswith("pgdata:") for v in pg["volumes"]) and "pgdata" in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["env_file"] == ".env" and "POSTGRES_PASSWORD" not in pg.get("environment", {})
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert "POSTGRES_PASSWORD=" in (ROOT / ".env.example").read_text()
    assert "${POSTGRES_PASSWORD" in SERVICES["worker"]["environment"]["TUNER_STORAGE"]


def test_dashboard_is_published_on_loopback_only():
    assert all(p.startswith("127.0.0.1:") for p in SERVICES["dashboard"]["ports"])


def test_workers_scale_and_get_a_gpu_in_the_gpu_overlay():
    worker = SERVICES["worker"]
    assert "container_name" not in worker and not any(":" in p for p in worker.get("ports", []))
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]["worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and device["capabilities"] == ["gpu"]


@pytest.mark.parametrize("service", ["study", "worker", "dashboard"])
def test_commands_are_valid_tuner_invocations(service):
    args = SERVICES[service]["command"]
    command = typer.main.get_command(app)
    with command.make_context("tuner", list(args), resilient_parsing=False) as ctx:
        sub = command.get_command(ctx, args[0])
        sub.make_context(args[0], list(args[1:]), parent=ctx)  # raises on an unknown option or bad value
    for arg in args:
        if re.fullmatch(r"studies/.+\.toml", arg):
            assert (ROOT / arg).exists()


def test_study_and_worker_commands_run_against_local_postgres(postgres_url, tmp_path):
    """What the study and worker services run, against the local PostgreSQL."""
    name = f"compose-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TUNER_STORAGE": postgres_url, "PYTHONWARNINGS": "ignore"}
    fast = ["--study-name", name, "--n-trials", "3", "--set", "train.epochs=1"]
    shutil.copytree(ROOT / "studies", tmp_path / "studies")  # the image's WORKDIR holds studies/
    study = subprocess.Popen([sys.executable, "-m", "tuner", *SERVICES["study"]["command"], *fast], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        worker_cmd = [a if a != "digits-rare" else name for a in SERVICES["worker"]["command"]]
        for _ in range(60):  # like the service's restart: on-failure, until the study exists
            worker = tuner(*worker_cmd, cwd=tmp_path, env={"TUNER_STORAGE": postgres_url})
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
