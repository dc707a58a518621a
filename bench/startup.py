"""What torch's compiler cost every command that built a torch.optim optimizer.

    .venv/bin/python bench/startup.py [--runs 5] [--out bench/results/startup.md]

Building any torch.optim optimizer (LBFGS for the temperature, Adam or SGD for training) imports
torch._dynamo. tuner now fits the temperature by bisection and trains with its own optimizers
(``tuner/learn/optim.py``), so none of its commands imports it. Here each command runs alternately
as it is now and with torch._dynamo imported first (what it cost before), side by side in one run;
the table gives the median wall time of each and their ratio.
"""

import argparse, os, subprocess, sys, tempfile  # noqa: E401
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_study  # noqa: E402
from read_commands import finished_study, side_by_side  # noqa: E402  (bench/ is on the path of a script run from it)

WITH_DYNAMO = "import sys, runpy, torch._dynamo; sys.argv[0] = 'tuner'; runpy.run_module('tuner', run_name='__main__')"
COMMANDS = (["best", "--save-model", "m.pt"], ["start-study", "smoke.toml", "--workers", "0"],
            ["worker", "--max-trials", "1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "startup.md")
    args = ap.parse_args()
    env = {**os.environ, "TUNER_STORAGE": "", "PYTHONWARNINGS": "ignore"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        finished_study(folder, env, n_trials=3)
        # joining workers need trials left: a second study in its own storage, with room for every run
        worker_folder = folder / "join"
        worker_folder.mkdir()
        write_study(worker_folder, n_trials=2 * args.runs + 2, epochs=1)
        subprocess.run([sys.executable, "-c", "from tuner.search.config import load_config; "
                        "from tuner.search.study import create_or_resume; "
                        "create_or_resume(load_config('smoke.toml').resolved(2, 'rare', 100), 'sqlite:///tuner.db', 'smoke')"],
                       cwd=worker_folder, env=env, check=True)
        for cmd in COMMANDS:
            where = worker_folder if cmd[0] == "worker" else folder
            rows.append((" ".join(cmd), *side_by_side(cmd, WITH_DYNAMO, where, env, args.runs)))
    lines = ["# Commands without torch's compiler: seconds, now and with torch._dynamo imported as before", "",
             f"`python bench/startup.py --runs {args.runs}` on a {os.cpu_count()}-core CPU: median wall time of "
             f"{args.runs} runs of each command, alternately as it is now and with torch._dynamo imported first, as "
             "building a torch.optim optimizer did. `best --save-model` and `start-study` on a finished 3-trial study "
             "(the final model's temperature fit, the test check); `worker --max-trials 1` joins a study and trains "
             "one 1-epoch trial.", "",
             "| command | now (s) | with torch._dynamo, as before (s) | before / now |", "|---|---|---|---|"]
    lines += [f"| `tuner {c}` | {a:.2f} | {b:.2f} | {b / a:.2f}x |" for c, a, b in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
