"""How long the read commands take to answer, with and without loading torch.

    .venv/bin/python bench/read_commands.py [--runs 7] [--out bench/results/read-commands.md]

`status`, `list`, `best` and `export` read stored attributes only; before, they imported torch (through
the modules that load models) and paid for it on every call. Here each command runs on one small
finished study, alternately as it is now and with torch imported first (what it cost before),
side by side in one run; the table gives the median wall time of each and their ratio.
"""

import argparse, os, statistics, subprocess, sys, tempfile, time  # noqa: E401
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_study  # noqa: E402

COMMANDS = (["status"], ["list"], ["best", "--json"], ["best"], ["export", "-f", "csv"])
WITH_TORCH = "import sys, runpy, torch; sys.argv[0] = 'tuner'; runpy.run_module('tuner', run_name='__main__')"


def clock(argv: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def finished_study(folder: Path, env: dict, n_trials: int) -> None:
    """A finished 1-epoch study of ``n_trials`` trials in ``folder`` (tuner.db, smoke.toml)."""
    study = write_study(folder, n_trials=n_trials, epochs=1)
    subprocess.run([sys.executable, "-m", "tuner", "start-study", str(study), "--workers", "1"], cwd=folder, env=env,
                   check=True, capture_output=True)


def side_by_side(cmd: list[str], before: str, cwd: Path, env: dict, runs: int) -> tuple[float, float]:
    """Median seconds of ``tuner CMD`` as it is now and run through the ``before`` code (python -c),
    alternately, so that a busy moment of the machine hits both."""
    now, then = [], []
    for _ in range(runs):
        now.append(clock([sys.executable, "-m", "tuner", *cmd], cwd, env))
        then.append(clock([sys.executable, "-c", before, *cmd], cwd, env))
    return statistics.median(now), statistics.median(then)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "read-commands.md")
    args = ap.parse_args()
    env = {**os.environ, "TUNER_STORAGE": "", "PYTHONWARNINGS": "ignore"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        finished_study(folder, env, n_trials=2)
        for cmd in COMMANDS:
            rows.append((" ".join(cmd), *side_by_side(cmd, WITH_TORCH, folder, env, args.runs)))
    lines = ["# Read commands: seconds to answer, without and with torch loaded", "",
             f"`python bench/read_commands.py --runs {args.runs}` on a {os.cpu_count()}-core CPU: median wall time of "
             f"{args.runs} runs of each command on a finished 2-trial study (SQLite), run alternately as it is now and "
             "with torch imported first, as these commands did before they stopped loading it.", "",
             "| command | now (s) | with torch, as before (s) | before / now |", "|---|---|---|---|"]
    lines += [f"| `tuner {c}` | {a:.2f} | {b:.2f} | {b / a:.1f}x |" for c, a, b in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
