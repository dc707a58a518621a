"""The dashboard behind its guard, as a real server process, and as a real headless browser sees it."""

import fcntl
import http.client
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from conftest import Dashboard, assert_user_error
from test_report import assert_not_blank, finished_study
from tuner.show.dashboard import allowed_hosts

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run installs it)")


def request(port: int, method: str, path: str, headers: dict | None = None, accept_encoding: bool = True) -> tuple[int, dict, bytes]:
    """One request; ``accept_encoding=False`` sends no Accept-Encoding header at all (http.client
    would send 'identity'), as curl and some health checks do."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=not accept_encoding)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    dashboard = Dashboard(finished_study(tmp_path_factory))
    yield dashboard
    dashboard.stop()


def studies(port: int, headers=None) -> list[dict]:
    status, _, body = request(port, "GET", "/api/studies", headers)
    assert status == 200, body
    return json.loads(body)["study_summaries"]


def test_read_only_dashboard_lists_the_study_on_the_port_it_printed(read_only):
    assert read_only.port != 0 and read_only.line.startswith("dashboard for sqlite:///")
    assert "(read-only; Ctrl-C stops)" in read_only.line
    assert [s["study_name"] for s in studies(read_only.port)] == ["smoke"]


def test_read_only_dashboard_refuses_writes(read_only):
    port = read_only.port
    study_id = studies(port)[0]["study_id"]
    status, _, body = request(port, "DELETE", f"/api/studies/{study_id}")
    assert status == 403 and b"read-only" in body
    status, _, _ = request(port, "POST", "/api/studies", {"Content-Type": "application/json"})
    assert status == 403
    assert optuna.get_all_study_names(f"sqlite:///{read_only.folder / 'tuner.db'}") == ["smoke"]


def test_loopback_dashboard_refuses_other_host_names(read_only):
    """DNS rebinding: a page on evil.example re-points that name at 127.0.0.1; its requests still say
    Host: evil.example."""
    port = read_only.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
        status, _, body = request(port, "GET", "/api/studies", {"Host": host})
        assert status == 403 and b"Host" in body, (host, status, body)
        status, _, _ = request(port, "GET", "/dashboard", {"Host": host})
        assert status == 403, host
    for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port + 1}"):
        assert len(studies(port, {"Host": host})) == 1, host
    assert allowed_hosts("0.0.0.0") is None and "localhost" in allowed_hosts("::1")


def test_favicon_and_static_files_without_accept_encoding(read_only):
    """optuna-dashboard 0.21 answers these with a 500 (KeyError) when Accept-Encoding is absent."""
    import optuna_dashboard

    package = Path(optuna_dashboard.__file__).parent
    port = read_only.port
    status, headers, body = request(port, "GET", "/favicon.ico", accept_encoding=False)
    assert status == 200 and body == (package / "img" / "favicon.ico").read_bytes()
    status, headers, body = request(port, "GET", "/static/bundle.js", accept_encoding=False)
    assert status == 200 and "Content-Encoding" not in headers and body == (package / "public" / "bundle.js").read_bytes()
    status, _, _ = request(port, "GET", "/static/no-such-file.js", accept_encoding=False)
    assert status == 404
    status, headers, body = request(port, "GET", "/static/bundle.js", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    assert "Traceback" not in read_only.stderr() and "KeyError" not in read_only.stderr(), read_only.stderr()


def test_read_only_page_carries_the_banner_whole(read_only):
    port = read_only.port
    status, headers, body = request(port, "GET", "/dashboard", {"If-Modified-Since": "Sun, 01 Jan 2090 00:00:00 GMT"})
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    assert b'<div id="tuner-read-only"' in body and b"<style>\n#tuner-read-only" in body
    assert "ETag" not in headers and headers["Cache-Control"] == "no-cache"
    status, head, empty = request(port, "HEAD", "/dashboard/studies/1")
    assert status == 200 and empty == b"" and int(head["Content-Length"]) == len(body)
    status, _, api = request(port, "GET", "/api/studies")
    assert b"tuner-read-only" not in api


def test_writes_with_a_token_from_a_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    optuna.create_study(storage=url, study_name="throwaway").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    (tmp_path / "token").write_text("s3cret\n")
    server = Dashboard(tmp_path, "--allow-writes", "--token-file", "token")
    port = server.port
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
        status, _, page = request(port, "GET", "/dashboard", {"Cookie": cookie})
        assert status == 200 and b"tuner-read-only" not in page

        status, _, body = request(port, "DELETE", "/api/studies/1", {"Authorization": "Bearer s3cret"})
        assert status == 204, body
        assert optuna.get_all_study_names(url) == []
    finally:
        printed = server.stop()
    assert "read-write, token required" in printed and "s3cret" not in printed and "warning" not in printed


@pytest.fixture
def taken_port():
    """A port some other socket listens on, on every address."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        yield str(taken.getsockname()[1])


def test_port_in_use_and_public_address_warning(tmp_path, cli, monkeypatch, taken_port):
    monkeypatch.delenv("TUNER_DASHBOARD_TOKEN", raising=False)
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'tuner.db'}")  # a storage with no study: the dashboard opens it
    local = cli("dashboard", "--host", "127.0.0.1", "--port", taken_port, cwd=tmp_path)
    public = cli("dashboard", "--host", "0.0.0.0", "--port", taken_port, cwd=tmp_path)
    monkeypatch.setenv("TUNER_DASHBOARD_TOKEN", "s3cret")
    public_with_token = cli("dashboard", "--host", "0.0.0.0", "--port", taken_port, cwd=tmp_path)
    assert_user_error(local, taken_port, "pick another --port")
    assert "dashboard for" not in local.stdout  # the address line comes only after the bind
    lines = public.stderr.splitlines()
    assert public.returncode == 2 and len(lines) == 2, public.stderr
    assert lines[0].startswith("warning: ") and "no token" in lines[0] and lines[1].startswith("error: ")
    assert_user_error(public_with_token, taken_port)  # the token from the environment: no warning


def test_token_on_the_command_line_warns(tmp_path, cli, taken_port):
    optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'tuner.db'}")
    proc = cli("dashboard", "--token", "s3cret", "--port", taken_port, cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 2 and taken_port in lines[1], proc.stderr
    assert lines[0].startswith("warning: ") and "ps" in lines[0] and "--token-file" in lines[0]
    assert lines[1].startswith("error: ") and "s3cret" not in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--port", "70000"], ["--port 70000", "1 to 65535"]),
    (["--port", "-5"], ["--port -5", "1 to 65535"]),
    (["--port", "65536"], ["--port 65536"]),
    (["--token", ""], ["--token is empty"]),
    (["--token", "  "], ["--token is empty"]),
    (["--token-file", "missing.txt"], ["missing.txt", "No such file"]),
    (["--token-file", "empty.txt"], ["empty.txt", "is empty"]),
    (["--token-file", "."], ["Is a directory"]),
    (["--token-file", "empty.txt", "--token", "x"], ["not both"]),
])
def test_bad_dashboard_inputs(tmp_path, cli, args, words):
    (tmp_path / "empty.txt").write_text("\n")
    assert_user_error(cli("dashboard", *args, cwd=tmp_path), *words)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@needs_chromium
def test_browser_renders_the_study_and_its_trials(read_only, tmp_path):
    port = read_only.port
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{read_only.folder / 'tuner.db'}")
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


class Browser:
    """Headless Chromium driven over its DevTools pipe: it reads commands on fd 3 and answers on fd 4,
    NUL-terminated JSON, so no WebSocket client is needed."""

    def __init__(self, tmp_path: Path):
        profile = tmp_path / "devtools-profile"
        profile.mkdir(exist_ok=True)
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()

        def on_fds_3_and_4():
            # Moved above 10 first: a pipe end may itself be fd 3 or 4.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, answers_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=on_fds_3_and_4, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_r)
        os.close(answers_w)
        self._buffer, self._id = b"", 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._answers], [], [], 60)
                chunk = os.read(self._answers, 1 << 20) if ready else b""
                if not chunk:
                    raise AssertionError(f"chromium stopped answering ({method})")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", url=url)["targetId"]
        return self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def wait_for(self, session: str, expression: str, timeout: float = 90):
        """The value of ``expression`` in the page, once it is neither null nor false."""
        deadline, value = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                result = self.call("Runtime.evaluate", session, expression=expression, returnByValue=True)
                value = result["result"].get("value")
            except RuntimeError:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"the page never got there: {expression[:200]}... stayed {value!r}")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._answers)


# What a person sees: the banner, and each write control as shown (true) or not; null until the
# page has rendered what READY names.
SEEN = """(() => {
  const shown = el => { const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && r.top >= 0 && r.bottom <= innerHeight && s.visibility !== "hidden" && s.opacity !== "0"; };
  const buttons = [...document.querySelectorAll("button")];
  const controls = {
    create: buttons.filter(b => b.textContent.trim() === "Create"),
    rename: buttons.filter(b => b.getAttribute("aria-label") === "rename study"),
    delete: buttons.filter(b => b.getAttribute("aria-label") === "delete study"),
    note: buttons.filter(b => b.querySelector('svg[data-testid="EditIcon"]')),
  };
  if (!(READY)) return null;
  const banner = document.getElementById("tuner-read-only");
  return {banner: banner && shown(banner) ? banner.innerText : null,
          ...Object.fromEntries(Object.entries(controls).filter(([, els]) => els.length).map(([k, els]) => [k, els.map(shown)]))};
})()"""


def seen(browser: Browser, url: str, ready: str) -> dict:
    return browser.wait_for(browser.open(url), SEEN.replace("READY", ready))


@needs_chromium
def test_browser_shows_read_only_and_no_write_controls(read_only, tmp_path):
    """The same pages on a read-only and on a read-write dashboard: the banner and the controls that
    create, rename and delete studies and edit notes are shown on exactly one of them."""
    study_id = studies(read_only.port)[0]["study_id"]
    writable = Dashboard(read_only.folder, "--allow-writes")
    browser = Browser(tmp_path)
    try:
        pages = {}
        for name, port in (("read-only", read_only.port), ("read-write", writable.port)):
            home = f"http://127.0.0.1:{port}/dashboard"
            listed = seen(browser, home, f'controls.create.length && controls.delete.length && document.querySelector("a[href$=\\"/studies/{study_id}\\"]")')
            note = seen(browser, f"{home}/studies/{study_id}/note", "controls.note.length")
            pages[name] = listed, note
    finally:
        browser.close()
        writable.stop()
    (listed, note), (listed_rw, note_rw) = pages["read-only"], pages["read-write"]
    assert listed["banner"] and listed["banner"].startswith("read-only") and "--allow-writes" in listed["banner"], listed
    assert note["banner"] == listed["banner"]
    assert listed["create"] == [False] and listed["rename"] == [False] and listed["delete"] == [False], listed
    assert note["note"] and not any(note["note"]), note
    assert listed_rw["banner"] is None and note_rw["banner"] is None
    assert listed_rw["create"] == [True] and listed_rw["rename"] == [True] and listed_rw["delete"] == [True], listed_rw
    assert note_rw["note"] and all(note_rw["note"]), note_rw
