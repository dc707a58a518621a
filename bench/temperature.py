"""Which targets should the temperature be fitted to? The labels (maximum likelihood, Guo et al. 2017),
Platt's (1999) smoothed targets, (n + 1) / (n + 2) for a class of n validation images, or the labels except
where they have no minimum inside T_RANGE (separable predictions: the labels ask for T -> 0), and there
Platt's? Scored on held-out images:

    .venv/bin/python bench/temperature.py [--seeds 0 1 2] [--workers 2] [--out bench/results/temperature.md]

Per task of bench/quality.py, plus a small 3-class task (zero / one / nine, 13 nines for training, the
case where the out-of-fold predictions are separable), and study seed: one `tuner start-study` with the
default settings. From the trials whose model files the study keeps, the same models are calibrated under
each rule exactly as the product does it: each trial's out-of-fold logits get a temperature, and the final
model (the mean of the kept trials' calibrated logits) one more, with its threshold chosen on its
out-of-fold probabilities by the balanced-accuracy rule. Held-out images and weights as in quality.md.
Scores of the probabilities on the held-out images: NLL (of the true class), ECE (15 bins; of the rare
class's probability with two classes, of the top label with more), Brier score (squared error of the
probability vector), and the balanced accuracy of the decisions; the final temperature; and how many of
the temperatures fitted (every trial's and the final one) sit at the lower bound of T_RANGE.
"""

import argparse, statistics, sys, tempfile  # noqa: E401
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from final_models import kept_trials  # noqa: E402
from quality import TASKS, heldout_files, out_flag, run_tuner, study_epochs, write_task  # noqa: E402

from tuner.learn.calibration import T_RANGE, fit_temperature  # noqa: E402
from tuner.learn.metrics import ECE_BINS, balanced_accuracy, decide, scores  # noqa: E402
from tuner.learn.train import probabilities  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "temperature.md"
SMALL = "3 classes, 13 rare training images"
RULES = {"labels": False, "Platt's targets": True, "labels, Platt's where separable": None}


def write_small(root: Path) -> None:
    """zero, one and nine: 80, 80 and 17 images (a quarter of each to test/); every other image of
    the three digits is left out, and held out."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    for digit, name, n in ((0, "zero", 80), (1, "one", 80), (9, "nine", 17)):
        idx = rng.permutation(np.flatnonzero(digits.target == digit))
        n_test = round(0.25 * n)
        for split, chosen in (("test", idx[:n_test]), ("train", idx[n_test:n]), ("left-out", idx[n:])):
            folder = (root.parent if split == "left-out" else root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")


def weighted_scores(p: np.ndarray, y: np.ndarray, w: np.ndarray, pred: np.ndarray) -> dict:
    """NLL, ECE and Brier score of the probabilities ``p`` ((N,) of class 1, or (N, C)), weighted by ``w``."""
    full = np.stack([1 - p, p], 1) if p.ndim == 1 else p
    onehot = np.eye(full.shape[1])[y]
    w = w / w.sum()
    nll = -np.sum(w * np.log(np.clip(full[np.arange(len(y)), y], 1e-300, None)))
    brier = np.sum(w * ((full - onehot) ** 2).sum(1))
    conf, hit = (p, (y == 1) * 1.0) if p.ndim == 1 else (p.max(1), (p.argmax(1) == y) * 1.0)
    b = np.minimum((conf * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ece = np.abs(np.bincount(b, w * hit, ECE_BINS) - np.bincount(b, w * conf, ECE_BINS)).sum()
    return {"nll": float(nll), "ece": float(ece), "brier": float(brier), "ba": balanced_accuracy(y, pred)}


def final_model(kept: dict, smooth: bool) -> dict:
    """The final model's held-out scores under one rule, its temperature and how many temperatures hit the bound."""
    y, trials = kept["y"], kept["trials"]
    temps = [fit_temperature(torch.from_numpy(t["raw_oof"]), y, smooth) for t in trials]
    zo = np.mean([t["raw_oof"] / s for t, s in zip(trials, temps)], 0)
    zh = np.mean([t["raw_held"] / s for t, s in zip(trials, temps)], 0)
    final = fit_temperature(torch.from_numpy(zo), y, smooth)
    po, ph = (probabilities(torch.from_numpy(z) / final) for z in (zo, zh))
    got = scores(po.float(), y, "balanced_accuracy", po.float())
    cut = got.get("threshold", got.get("class_thresholds"))
    ph = ph.numpy()
    at_bound = sum(t <= T_RANGE[0] * (1 + 1e-9) for t in [*temps, final])
    return {**weighted_scores(ph, kept["y_held"], kept["w_held"], decide(ph, cut)), "t": final,
            "bound": at_bound, "fitted": len(temps) + 1}


def cell(values: list[float], digits: int = 4) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", nargs="*", default=[*TASKS, SMALL], help="task names (default: all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, task in enumerate(args.tasks):
            task_dir = Path(tmp) / f"task{n}"
            write_small(task_dir / "data") if task == SMALL else write_task(task_dir / "data", *TASKS[task])
            files = heldout_files(task_dir)
            got = {rule: [] for rule in RULES}
            for seed in args.seeds:
                kept = kept_trials(task_dir, run_tuner(task_dir, seed, args.workers, "auto")[2], files)
                for rule, smooth in RULES.items():
                    got[rule].append(final_model(kept, smooth))
            for rule, runs in got.items():
                ref = got["labels"]
                wins = {m: sum(r[m] < b[m] - 1e-9 for r, b in zip(runs, ref)) for m in ("nll", "ece", "brier")}
                rows.append(f"| {task} | {rule} | " + " | ".join(
                    [f"{cell([r[m] for r in runs])} ({wins[m]}/{len(runs)})" for m in ("nll", "ece", "brier")]
                    + [cell([r["ba"] for r in runs]), cell([r["t"] for r in runs], 3),
                       f"{sum(r['bound'] for r in runs)} of {sum(r['fitted'] for r in runs)}"]) + " |")
                print(rows[-1], flush=True)
            write(args, rows)


def write(args, rows) -> None:
    epochs, out = study_epochs(), out_flag(args.out, DEFAULT_OUT)
    tasks = "" if args.tasks == [*TASKS, SMALL] else " --tasks " + " ".join(f"'{t}'" for t in args.tasks)
    args.out.write_text("\n".join([
        "# The temperature's targets: the labels, Platt's, or Platt's where the labels have no minimum, on held-out images",
        "",
        f"`python bench/temperature.py --seeds {' '.join(map(str, args.seeds))} --workers {args.workers}{tasks}{out}` "
        f"on a 2-core CPU (see the script's docstring), at the default budget of {epochs} epochs. The final model of each "
        "study (the mean of its kept trials), calibrated under each rule; held-out images and weights as in quality.md. "
        "Mean ± std over study seeds; in brackets, in how many seeds the rule scored strictly lower (better) than the "
        f"labels. T: the final model's temperature. At the bound: temperatures (every kept trial's and the final one) at T = {T_RANGE[0]}.",
        "",
        "| task | targets | held-out NLL | held-out ECE | held-out Brier | held-out balanced accuracy | T | at the bound |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]))


if __name__ == "__main__":
    main()
