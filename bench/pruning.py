"""The default pruner against no pruning, and k-fold against one split: search quality and wall time of
the bundled default study, side by side.

    .venv/bin/python bench/pruning.py [--seeds 0 1 2] [--out bench/results/pruning-and-folds.md]

Per study seed, four runs of `tuner start-study studies/digits-rare.toml --workers 2`, interleaved so that
machine load hits all alike: (1) the defaults (5 folds here, median pruner waiting for a third of the
epochs), (2) the same without pruning, (3) one split (data.folds = 1) with the default pruner, (4) one
split with the old pruner setting (n_warmup_steps = 1). Test AP and balanced accuracy of the best trial
at its own threshold, pruned trials, and wall time.
"""

import argparse, json, math, os, statistics, subprocess, sys, tempfile, time, tomllib  # noqa: E401
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = tomllib.loads((ROOT / "studies" / "digits-rare.toml").read_text())["train"]["epochs"]
WAITS = f"pruner from epoch {math.ceil(EPOCHS / 3)} of {EPOCHS}"  # pruner.n_warmup_steps = "auto"
RUNS = {
    f"defaults: 5 folds, {WAITS}": [],
    "5 folds, no pruning": ["--set", "pruner.kind=none"],
    f"1 split, {WAITS}": ["--set", "data.folds=1"],
    "1 split, pruner from epoch 1 (the old default)": ["--set", "data.folds=1", "--set", "pruner.n_warmup_steps=1"],
}


def run(folder: Path, seed: int, extra: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{folder}/t.db", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "tuner", "start-study", str(ROOT / "studies" / "digits-rare.toml"), "--workers", "2",
           "--set", f"study.seed={seed}", *extra]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    best = subprocess.run([sys.executable, "-m", "tuner", "best", "--json"], cwd=folder, env=env, capture_output=True, text=True)
    return json.loads(best.stdout), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pruning-and-folds.md")
    args = ap.parse_args()
    got = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for i, (name, extra) in enumerate(RUNS.items()):
                folder = Path(tmp) / f"{seed}-{i}"
                folder.mkdir()
                best, wall = run(folder, seed, extra)
                got[name].append((best, wall))
                print(name, seed, f"{wall:.0f} s", best["test"]["average_precision"], best["test"]["balanced_accuracy"], flush=True)
    cell = lambda v: f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"  # noqa: E731
    rows = [f"| {name} | {cell([b['test']['average_precision'] for b, _ in runs])} | "
            f"{cell([b['test']['balanced_accuracy'] for b, _ in runs])} | "
            f"{statistics.mean(b['counts']['PRUNED'] for b, _ in runs):.1f} | {statistics.mean(w for _, w in runs):.0f} s |"
            for name, runs in got.items()]
    text = "\n".join([
        "# The default pruner and k-fold validation on the bundled default study",
        "",
        f"`python bench/pruning.py --seeds {' '.join(map(str, args.seeds))}` on a 2-core CPU, the four runs of each seed "
        "interleaved (the machine was shared with other work: compare the walls as ratios within this table). Test "
        "metrics of the best trial (425 test images, 21 nines) at its own threshold, mean ± std over seeds.",
        "",
        "| run | test AP | test balanced accuracy | pruned trials (of 12) | wall |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
