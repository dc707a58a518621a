"""Held-out quality of tuner's best trial against its two reference trials, on tasks it was not tuned on.

    .venv/bin/python bench/quality.py [--seeds 0 1 2] [--workers 2] [--out bench/results/quality.md]

Each task is an ImageFolder tree written from scikit-learn's bundled digits (real 8x8 scans, resized to
32x32): a stratified quarter of every class goes to test/, the rest to train/. Per task and study seed,
`tuner start-study` runs the default study settings (studies/digits-rare.toml: 12 trials x 5 epochs,
TPE, median pruner) on a fresh SQLite file; the table reads `tuner best --json`: test average precision
and balanced accuracy at the threshold each trial chose on validation, and test ECE before -> after the
temperature fitted on validation, for the best trial and both reference trials.
"""

import argparse, json, os, statistics, subprocess, sys, tempfile, time  # noqa: E401
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TASKS = {  # name: (rare digit or None for the long tail, rare fraction, folder names (rare, other))
    "digit 3 at 5%, rare folder sorts last": (3, 0.05, ("three", "other")),
    "digit 9 at 5%, rare folder sorts first": (9, 0.05, ("nine", "other")),
    "digit 9 at 2%, rare folder sorts first": (9, 0.02, ("nine", "other")),
    "digit 5 at 10%, rare folder sorts last": (5, 0.10, ("5_rare", "0_common")),
    "10 classes, long tail 124 -> 6": (None, 20.0, ()),
}
STUDY = """
[study]
name = "q"
seed = {seed}
n_trials = 12
[data]
kind = "imagefolder"
root = "{root}"
image_size = 32
[train]
epochs = 5
device = "cpu"
[pruner]
kind = "median"
n_startup_trials = 4
n_warmup_steps = 1
"""


def write_task(root: Path, rare, fraction, names) -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    if rare is None:  # long tail: class c keeps 124 * (6/124)^(c/9) train images, imbalance ~20
        keep = {NAMES[c]: rng.permutation(np.flatnonzero(digits.target == c))[: round(165 * (6 / 124) ** (c / 9))]
                for c in range(10)}
    else:
        other = np.flatnonzero(digits.target != rare)
        n_rare = round(fraction * len(other) / (1 - fraction))
        keep = {names[0]: rng.permutation(np.flatnonzero(digits.target == rare))[:n_rare], names[1]: other}
    for name, idx in keep.items():
        n_test = max(1, round(0.25 * len(idx)))
        for split, chosen in (("test", idx[:n_test]), ("train", idx[n_test:])):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")


def run(task_dir: Path, seed: int, workers: int) -> tuple[dict, float]:
    study = task_dir / f"study-{seed}.toml"
    study.write_text(STUDY.format(seed=seed, root=task_dir / "data"))
    env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{task_dir}/seed-{seed}.db", "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    tuner(["start-study", str(study), "--workers", str(workers), "--set", f"study.artifacts={task_dir}/artifacts-{seed}"], task_dir, env)
    wall = time.time() - t0
    return json.loads(tuner(["best", "--json"], task_dir, env)), wall


def tuner(args: list[str], cwd: Path, env: dict) -> str:
    p = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"tuner {' '.join(args)} failed:\n{p.stderr}")
    return p.stdout


def cells(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), help="task names (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.md")
    args = ap.parse_args()
    rows, per_seed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for t, task in enumerate(args.tasks):
            task_dir = Path(tmp) / f"task{t}"
            write_task(task_dir / "data", *TASKS[task])
            got = {"best": [], "ref 0": [], "ref 1": []}
            walls = []
            for seed in args.seeds:
                best, wall = run(task_dir, seed, args.workers)
                walls.append(wall)
                refs = {r["trial"]: r for r in best["references"]}
                for name, test in (("best", best["test"]), ("ref 0", refs.get(0, {}).get("test")), ("ref 1", refs.get(1, {}).get("test"))):
                    if test:
                        got[name].append(test)
                ref_ba = " / ".join(f"{r['test']['balanced_accuracy']:.3f}" for r in best["references"] if r["test"])
                params = ", ".join(f"{k} {v:.4g}" for k, v in best["params"].items() if k != "one_minus_beta")
                per_seed.append(f"| {task} | {seed} | {best['trial']} | {params} | {best['test']['average_precision']:.3f} | "
                                f"{best['test']['balanced_accuracy']:.3f} | {ref_ba} | {wall:.0f} s |")
                print(per_seed[-1], flush=True)
            for name, tests in got.items():
                rows.append(f"| {task} | {name} | {cells([x['average_precision'] for x in tests])} | "
                            f"{cells([x['balanced_accuracy'] for x in tests])} | {cells([x['ece'] for x in tests])} -> "
                            f"{cells([x['ece_calibrated'] for x in tests])} | {len(tests)} | {statistics.mean(walls):.0f} s |")
    text = "\n".join([
        "# Held-out quality: best trial vs the reference trials",
        "",
        f"`python bench/quality.py --seeds {' '.join(map(str, args.seeds))} --workers {args.workers}` on a 2-core CPU. "
        "Test metrics (mean ± std over study seeds); balanced accuracy at the threshold each trial chose on validation "
        "(operating point balanced_accuracy; argmax for 10 classes); ECE (15 bins; positive class, or top label) before -> "
        "after the temperature fitted on validation. ref 0 = cross-entropy, ref 1 = gamma 2 with alpha 0.25 "
        "(binary) or class-balanced weights of beta 0.999 (10 classes). A reference that was itself the best is "
        "listed as best. Wall: one whole `start-study` run (12 trials x 5 epochs, 2 workers).",
        "",
        "| task | trial | test AP | test balanced accuracy | test ECE before -> after | runs | wall |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Per seed: the best trial's test AP and balanced accuracy, and the references' balanced accuracy.",
        "",
        "| task | seed | best trial | params | AP | balanced accuracy | references' balanced accuracy | wall |",
        "|---|---|---|---|---|---|---|---|",
        *per_seed,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
