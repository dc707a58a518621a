"""Is the training budget enough? The default k-fold study of bench/quality.py run side by side at
several numbers of epochs, on the same tasks and study seeds, scored on the same held-out images:

    .venv/bin/python bench/epochs.py [--epochs 5 10] [--seeds 0 1 2] [--workers 2] [--out bench/results/epochs.md]

For each run: the final model and the two reference trials (held-out AP / balanced accuracy), and the
wall time of the whole start-study.
"""

import argparse, re, statistics, sys, tempfile  # noqa: E401
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import quality  # noqa: E402
from quality import TASKS, final_heldout, heldout_files, run_tuner, seed_cells, trial_heldout, write_task  # noqa: E402

MODELS = ("final model", "ref 0 (cross-entropy)", "ref 1 (focal default)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "epochs.md")
    args = ap.parse_args()
    template, rows = quality.STUDY, []
    with tempfile.TemporaryDirectory() as tmp:
        for t, task in enumerate(TASKS):
            dirs = {e: Path(tmp) / f"task{t}-{e}" for e in args.epochs}  # the same images, a study database each
            for task_dir in dirs.values():
                write_task(task_dir / "data", *TASKS[task])
            got = {}
            for seed in args.seeds:
                for epochs in args.epochs:  # side by side, so that the machine's load hits both alike
                    task_dir, files = dirs[epochs], heldout_files(dirs[epochs])
                    quality.STUDY = re.sub(r"(?m)^epochs = \d+$", f"epochs = {epochs}", template)
                    best, wall, _ = run_tuner(task_dir, seed, args.workers, "auto")
                    name = f"auto-{seed}"
                    refs = {r["trial"]: trial_heldout(task_dir, name, r["trial"], files) for r in best["references"] if r["test"]}
                    for model, scores in zip(MODELS, (final_heldout(task_dir, name, files), refs.get(0), refs.get(1))):
                        if scores is not None:
                            got.setdefault((epochs, model), {})[seed] = scores
                    got.setdefault((epochs, "wall"), {})[seed] = wall
                    print(task, seed, epochs, round(wall), flush=True)
            for epochs in args.epochs:
                wall = statistics.mean(got[(epochs, "wall")].values())
                for model in MODELS:
                    cells = seed_cells(got.get((epochs, model), {}), got.get((epochs, MODELS[1]), {}))
                    rows.append(f"| {task} | {epochs} | {model} | " + " | ".join(cells) + f" | {wall:.0f} |")
            write(args, rows)


def write(args, rows) -> None:
    args.out.write_text("\n".join([
        "# Training budget: the default study with more epochs, on held-out images",
        "",
        f"`python bench/epochs.py --epochs {' '.join(map(str, args.epochs))} --seeds {' '.join(map(str, args.seeds))} "
        f"--workers {args.workers}` on a 2-core CPU. The default study of bench/quality.py (12 trials, 5 folds) with "
        "only the number of epochs changed, both runs of a seed one after the other. Held-out images and metrics as in "
        "quality.md. Mean ± std over study seeds; in how many seeds a model scored strictly higher than the "
        "cross-entropy reference of the same run; wall: one whole start-study, seconds.",
        "",
        "| task | epochs | model | held-out AP | held-out balanced accuracy | AP > ref 0 | BA > ref 0 | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]))


if __name__ == "__main__":
    main()
