import fcntl
import os
import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SMOKE = """
[study]
name = "smoke"
n_trials = {n_trials}
seed = 0
n_startup_trials = 2
heartbeat_interval = 2
grace_period = 6

[data]
kind = "synthetic"
n_samples = 400
image_size = 16
rare_fraction = 0.1
folds = {folds}

[train]
epochs = {epochs}
batch_size = 32
device = "cpu"

[search]
gamma = [0.0, 5.0]
alpha = [0.05, 0.95]

[pruner]
kind = "{pruner}"
n_startup_trials = 1
n_warmup_steps = 0
"""


def write_study(folder: Path, n_trials: int = 6, epochs: int = 3, pruner: str = "median", name: str = "smoke.toml",
                folds: int = 1) -> Path:
    path = folder / name
    path.write_text(SMOKE.format(n_trials=n_trials, epochs=epochs, pruner=pruner, folds=folds))
    return path


def tuner(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real command line in a separate process, as a user would."""
    full_env = {**os.environ, "TUNER_STORAGE": "", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """One 'error:' line on stderr, exit 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the command line in this process: the same ``main`` as ``tuner(...)`` (an 'error:' line
    and exit 2 on a UserError) without the seconds a fresh interpreter spends importing torch."""
    from tuner.cli import main

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        monkeypatch.setenv("TUNER_STORAGE", "")
        monkeypatch.setattr(sys, "argv", ["tuner", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            main()
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["tuner", *args], stopped.value.code, out, err)

    return run


def url_from_env(var: str, missing: str) -> str:
    """The database URL in environment variable ``var``, or skip the test saying what is missing."""
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"no {missing}: set {var}")
    return url


@pytest.fixture
def postgres_url():
    url = url_from_env("TUNER_TEST_POSTGRES_URL", "PostgreSQL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    # One PostgreSQL test at a time, also across pytest-xdist's processes (-n 2 in pyproject.toml):
    # one of them restarts the server, and others count the connections or workers they see.
    with open(Path(tempfile.gettempdir()) / "tuner-tests-postgres.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield url


class Dashboard:
    """A real ``tuner dashboard --port 0`` process; ``port`` is the one it printed once bound."""

    def __init__(self, folder: Path, *args: str, env: dict | None = None):
        env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{folder / 'tuner.db'}", "TUNER_DASHBOARD_TOKEN": "",
               "PYTHONWARNINGS": "ignore", **(env or {})}
        self.folder = folder
        self.err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", "--port", "0", *args], cwd=folder, env=env,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        self.line = self.proc.stdout.readline() if ready else ""
        bound = re.search(r" on http://127\.0\.0\.1:(\d+)/ ", self.line)
        if not bound:
            raise AssertionError(f"no address line from the dashboard: {self.line!r}\n{self.stop()}")
        self.port = int(bound[1])

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def stop(self) -> str:
        """Stop the server; returns all it printed."""
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.line + out + self.stderr()


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 1 MiB tmpfs mounted for the test (root only; skipped saying why elsewhere)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its filesystem is full; returns the file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
    return filler


def make_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
