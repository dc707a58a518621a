"""The live view on a real terminal: start-study runs in a pseudo-terminal, and a small terminal
emulator replays what it wrote to see the screen a user sees."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import optuna

from conftest import write_study

CONTROL = re.compile(r"\x1b\[\??([0-9;]*)([A-Za-z])|\r|\n|[^\x1b\r\n]+")


def screen(output: str) -> list[str]:
    """The lines left on screen by ``output``, for the cursor moves rich's live display makes."""
    lines, row, col = [""], 0, 0
    for m in CONTROL.finditer(output):
        text = m.group(0)
        if text == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif text == "\r":
            col = 0
        elif m.group(2) == "A":
            row = max(0, row - int(m.group(1) or 1))
        elif m.group(2) == "K":
            lines[row] = ""
        elif m.group(2) == "G":
            col = int(m.group(1) or 1) - 1
        elif not text.startswith("\x1b"):
            line = lines[row].ljust(col)
            lines[row] = line[:col] + text + line[col + len(text):]
            col += len(text)
    return [line.rstrip() for line in lines]


def run_in_terminal(args, cwd, columns=120, timeout=300):
    """Run tuner with stderr on a pseudo-terminal; returns (stdout, [(seconds since start, stderr chunk)])."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    env.update(TUNER_STORAGE="", PYTHONWARNINGS="ignore", TERM="xterm")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1)
        if time.monotonic() - start > timeout:
            proc.kill()
            raise AssertionError("start-study did not end")
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            chunks.append((time.monotonic() - start, data.decode(errors="replace")))
    os.close(master)
    out = proc.stdout.read().decode()
    assert proc.wait() == 0, out + "".join(c for _, c in chunks)
    return out, chunks


def test_live_view_on_a_terminal(tmp_path):
    study_file = write_study(tmp_path, n_trials=6, epochs=2)
    # enough images that a trial outlasts a few frames on an idle machine (300 took 0.1 s a trial)
    out, chunks = run_in_terminal(["start-study", str(study_file), "--workers", "2", "--set", "data.n_samples=3000"], tmp_path)
    first = next(t for t, c in chunks if "elapsed 0:00:0" in c)
    # A first frame (the clock and what the driver does) before Optuna, torch and the data load.
    # Loose for a busy machine: on 2 cores shared with other test runs (load average 7) it came in 1.0-1.5 s.
    assert first < 3.0, first
    shown = screen("".join(c for _, c in chunks))
    text = "\n".join(shown)
    trials = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'tuner.db'}").trials
    # One kept line per trial, above the final frame, in the order the trials ended.
    kept = [i for i, line in enumerate(shown) if re.match(r"trial \d+ (complete|pruned|fail)", line)]
    assert sorted(int(shown[i].split()[1]) for i in kept) == [t.number for t in trials], text
    summary = next(i for i, line in enumerate(shown) if line.startswith("6/6 finished ("))
    assert kept and max(kept) < summary, text
    assert re.match(r"elapsed \d:\d\d:\d\d, [0-9.]+ trials/min, ETA 0:00:00$", shown[summary + 1]), text
    assert "worker" in shown[summary + 2] + shown[summary + 3] and "params" in text  # the (now empty) workers table
    assert "study 'smoke' in sqlite:///tuner.db: target 6 finished trials, 0 already" in text
    # stdout holds the result only, and no terminal control codes.
    assert "\x1b" not in out and "finished (" not in out and out.splitlines()[1].startswith("best trial")
    # While trials ran, a frame had a row per worker: its trial, epoch of 2 and parameters.
    row = re.compile(r"│ \S+\s+│\s+\d+ │\s+[0-2]/2 │ gamma=\d\.\d{3} alpha=\d\.\d{3}")
    frames = (screen("".join(c for _, c in chunks[:n])) for n in range(1, len(chunks) + 1))
    running = next((f for f in frames if any(row.search(line) for line in f) and any("ETA" in line for line in f)), None)
    assert running is not None, text
    print("\n".join(line for line in running if line))
