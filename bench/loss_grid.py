"""Can the out-of-fold objective rank trials? A grid of gamma and class weights, each configuration
scored out of fold (what the search sees) and on held-out images (what the user gets):

    .venv/bin/python bench/loss_grid.py [--task NAME] [--seeds 0 1 2] [--reverse] [--out bench/results/long-tail-grid.md]

A task of bench/quality.py, by default the 10-class long tail (124 training images down to 6, imbalance
about 20, digit 0 the most common; --reverse: the same counts with digit 9 the most common, a tail the
defaults were not chosen on), whose weights are class-balanced (beta); a binary task's weight is the
alpha of its positive class (0.5: none). Per study seed, every configuration trains as a member of one
fused k-fold run (5 folds, 10 epochs, the default budget) from the same initial weights and batch
order, so configurations differ only in their loss. Each is scored as a trial is: pooled out-of-fold
AP (macro over classes with 10) and balanced accuracy at the operating point of the balanced-accuracy
rule, temperature and thresholds chosen out of fold, and the out-of-fold negative log-likelihood
after that temperature (a proper score that rests on every image, not on the ranking of a rare
class's few images); then its fold ensemble on the held-out images of quality.md at those
thresholds. The rank correlation (Spearman) between an out-of-fold score and the held-out metrics,
over the configurations of one seed, says how well the value a search ranks by carries to images it
did not see.
"""

import argparse, sys, tempfile  # noqa: E401
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality import TASKS, heldout_files, heldout_scores, out_flag, study_epochs, write_task  # noqa: E402

from tuner import keys  # noqa: E402
from tuner.learn.calibration import nll  # noqa: E402
from tuner.learn.data import load_data  # noqa: E402
from tuner.learn.ensemble import validation_logits  # noqa: E402
from tuner.learn.folds import train_folds  # noqa: E402
from tuner.learn.weights import class_balanced_weights  # noqa: E402
from tuner.learn.metrics import decide  # noqa: E402
from tuner.learn.train import predict, probabilities  # noqa: E402
from tuner.search.config import from_dict  # noqa: E402
from tuner.show.predict import read_image  # noqa: E402

LONG_TAIL = "10 classes, long tail 124 -> 6"
DEFAULT_OUT = ROOT / "bench" / "results" / "long-tail-grid.md"
GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.0)
BETAS = (None, 0.9, 0.99, 0.999)  # class-balanced weights; None: none
ALPHAS = (0.25, 0.5, 0.75, 0.9)  # two classes: the positive class's weight (the other's 1 - alpha)
COLUMNS = ("out-of-fold AP", "out-of-fold BA", "out-of-fold NLL", "held-out AP", "held-out BA")
RANKERS = ((0, 1, "out-of-fold AP"), (1, 1, "out-of-fold BA"), (2, -1, "out-of-fold NLL"))  # column, sign (higher is better), name


def spearman(a, b) -> float:
    ra, rb = (np.argsort(np.argsort(v)).astype(np.float64) for v in (a, b))
    return float(np.corrcoef(ra, rb)[0, 1])


def weight_name(binary: bool) -> str:
    return "alpha" if binary else "beta"


def run_seed(task_dir: Path, files, seed: int, binary: bool) -> dict:
    """(gamma, alpha or beta) -> the scores of ``COLUMNS`` for one study seed."""
    cfg = from_dict({"study": {"seed": seed}, "train": {"epochs": study_epochs(), "device": "cpu"},
                     "data": {"kind": "imagefolder", "root": str(task_dir / "data"), "image_size": 32, "folds": 5}})
    data = load_data(cfg.data, seed=seed)
    x = torch.stack([read_image(f, data.channels, cfg.data.image_size) for f, _, _ in files])
    y = np.array([list(data.classes).index(c) for _, c, _ in files])
    w = np.array([weight for _, _, weight in files])
    grid = [(g, b) for g in GAMMAS for b in (ALPHAS if binary else BETAS)]
    counts = data.class_counts()
    trials = [(g, b if binary or b is None else class_balanced_weights(counts, b), seed) for g, b in grid]
    out = {}
    for (g, b), r in zip(grid, train_folds(cfg, data, trials, order_seed=seed)):
        m = r.history[-1]
        with torch.no_grad():
            p = probabilities(predict(r.model, x).double() / m[keys.TEMPERATURE]).numpy()
        held = heldout_scores(p, y, w, decide(p, m[keys.THRESHOLD if binary else keys.CLASS_THRESHOLDS]))
        own, y_pool = validation_logits(r.model, data, cfg.data.folds, seed)
        out[(g, b)] = (m[keys.AVERAGE_PRECISION], m[keys.BALANCED_ACCURACY], float(nll(own.double() / m[keys.TEMPERATURE], y_pool)),
                       held["average_precision"], held["balanced_accuracy"])
        print(f"seed {seed} gamma {g} {weight_name(binary)} {b}: " + ", ".join(f"{v:.4f}" for v in out[(g, b)]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default=LONG_TAIL, choices=list(TASKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reverse", action="store_true", help="digit 9 the most common class, digit 0 the rarest")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if args.reverse and args.task != LONG_TAIL:
        ap.error(f"--reverse reverses the long tail; a binary task ({args.task!r}) has no tail to reverse")
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = Path(tmp) / "task"
        write_task(task_dir / "data", *TASKS[args.task], reverse=args.reverse)
        binary = TASKS[args.task][0] is not None
        runs = {seed: run_seed(task_dir, heldout_files(task_dir), seed, binary) for seed in args.seeds}
    write(args, runs)


def write(args, runs: dict) -> None:
    grid = list(next(iter(runs.values())))
    out = out_flag(args.out, DEFAULT_OUT)
    binary = TASKS[args.task][0] is not None
    task = f"--task '{args.task}' " if args.task != LONG_TAIL else ""
    weights = ("alpha: the positive class's weight (the other's 1 - alpha; 0.5 weights both alike); BA at the threshold "
               "of the balanced-accuracy rule" if binary else
               f"{'digit 9' if args.reverse else 'digit 0'} the most common class. beta: class-balanced weights (Cui et al. "
               "2019, the largest weight 1; none: every class 1); BA at the per-class thresholds of the balanced-accuracy rule")
    lines = [
        f"# {args.task}: out-of-fold against held-out scores over a grid of gamma and class weights",
        "",
        f"`python bench/loss_grid.py {task}--seeds {' '.join(map(str, args.seeds))}{' --reverse' if args.reverse else ''}{out}` "
        f"on a 2-core CPU (see the script's docstring): {weights}. Mean over study seeds.",
        "",
        f"| gamma | {weight_name(binary)} | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for g, b in grid:
        means = np.mean([runs[s][(g, b)] for s in runs], axis=0)
        lines.append(f"| {g} | {'none' if b is None else b} | " + " | ".join(f"{v:.4f}" for v in means) + " |")
    lines += ["", "## Does an out-of-fold score rank the configurations as the held-out images do?", "",
              "| seed | ranked by | Spearman with held-out AP | with held-out BA | its first | its first's held-out AP rank | held-out BA rank |",
              "|---|---|---|---|---|---|---|"]
    held_ap, held_ba = len(COLUMNS) - 2, len(COLUMNS) - 1
    for seed, got in runs.items():
        v = np.array([got[c] for c in grid])
        for col, sign, name in RANKERS:
            score = sign * v[:, col]
            first = int(np.argmax(score))
            ranks = [int((v[:, i] > v[first, i]).sum()) + 1 for i in (held_ap, held_ba)]
            g, b = grid[first]
            lines.append(f"| {seed} | {name} | {spearman(score, v[:, held_ap]):+.2f} | {spearman(score, v[:, held_ba]):+.2f} | "
                         f"gamma {g}, {weight_name(binary)} {'none' if b is None else b} | {ranks[0]} of {len(grid)} | {ranks[1]} of {len(grid)} |")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
