"""The dashboard behind its guard, as a real server process, and as a real headless browser sees it."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import optuna
import pytest

from conftest import assert_user_error
from test_report import assert_not_blank, finished_study

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def start(folder, *args: str, port: int):
    env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{folder / 'tuner.db'}", "TUNER_DASHBOARD_TOKEN": "", "PYTHONWARNINGS": "ignore"}
    server = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--port", str(port), *args], cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise AssertionError(f"dashboard exited {server.returncode}: {server.stderr.read()}")
            time.sleep(0.25)
    server.kill()
    raise AssertionError("dashboard did not answer")


def stop(server) -> str:
    """Stop the server; returns what it printed."""
    server.terminate()
    out, err = server.communicate(timeout=10)
    return out + err


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    folder = finished_study(tmp_path_factory)
    port = free_port()
    server = start(folder, port=port)
    yield folder, port
    stop(server)


def studies(port: int, headers=None) -> list[dict]:
    status, _, body = request(port, "GET", "/api/studies", headers)
    assert status == 200, body
    return json.loads(body)["study_summaries"]


def test_read_only_dashboard_lists_the_study(read_only):
    _, port = read_only
    assert [s["study_name"] for s in studies(port)] == ["smoke"]


def test_read_only_dashboard_refuses_writes(read_only):
    folder, port = read_only
    study_id = studies(port)[0]["study_id"]
    status, _, body = request(port, "DELETE", f"/api/studies/{study_id}")
    assert status == 403 and b"read-only" in body
    status, _, _ = request(port, "POST", "/api/studies", {"Content-Type": "application/json"})
    assert status == 403
    assert optuna.get_all_study_names(f"sqlite:///{folder / 'tuner.db'}") == ["smoke"]


def test_writes_with_a_token(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    optuna.create_study(storage=url, study_name="throwaway").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = free_port()
    server = start(tmp_path, "--allow-writes", "--token", "s3cret", port=port)
    try:
        status, headers, _ = request(port, "GET", "/api/studies")
        assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
        status, _, _ = request(port, "DELETE", "/api/studies/1")
        assert status == 401
        status, _, _ = request(port, "GET", "/api/studies", {"Authorization": "Bearer wrong"})
        assert status == 401
        assert [s["study_name"] for s in studies(port, {"Authorization": "Bearer s3cret"})] == ["throwaway"]

        status, headers, _ = request(port, "GET", "/dashboard?token=s3cret")  # a browser's first visit
        assert status == 303 and headers["Location"] == "/dashboard" and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "s3cret" not in cookie and len(studies(port, {"Cookie": cookie})) == 1

        status, _, body = request(port, "DELETE", "/api/studies/1", {"Authorization": "Bearer s3cret"})
        assert status == 204, body
        assert optuna.get_all_study_names(url) == []
    finally:
        printed = stop(server)
    assert "read-write, token required" in printed and "s3cret" not in printed


def test_port_in_use_and_public_address_warning(tmp_path, cli, monkeypatch):
    monkeypatch.delenv("TUNER_DASHBOARD_TOKEN", raising=False)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        local = cli("dashboard", "--host", "127.0.0.1", "--port", port, cwd=tmp_path)
        public = cli("dashboard", "--host", "0.0.0.0", "--port", port, cwd=tmp_path)
    assert_user_error(local, port, "pick another --port")
    lines = public.stderr.splitlines()
    assert public.returncode == 2 and len(lines) == 2, public.stderr
    assert lines[0].startswith("warning: ") and "no token" in lines[0] and lines[1].startswith("error: ")


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
           "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")
def test_browser_renders_the_study_and_its_trials(read_only, tmp_path):
    folder, port = read_only
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{folder / 'tuner.db'}")
    study_id = studies(port)[0]["study_id"]
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1280,900",
                    f"http://127.0.0.1:{port}/dashboard/studies/{study_id}/trials")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", proc.stdout, flags=re.S)))
    assert "smoke" in text, text[:2000]
    assert f"{len(study.trials)} Trials" in text, text[:2000]
    for t in study.trials:
        assert f"Trial {t.number} {t.state.name.capitalize()}" in text, (t.number, text[:2000])
    assert_not_blank(shot, size=(1280, 900))
