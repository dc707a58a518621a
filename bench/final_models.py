"""Which model should a k-fold study hand back? Candidate final models built from the same studies,
scored on held-out images, with the noise of those images measured.

    .venv/bin/python bench/final_models.py [--seeds 0 1 2] [--workers 2] [--out bench/results/final-models.md]

Per task of bench/quality.py and study seed, one `tuner start-study` with the default settings (folds
"auto": 5 here). From the trials whose model files a study keeps (its best 3 and the two reference
trials), each candidate averages the calibrated logits of some trials' fold ensembles, fits one
temperature on their averaged out-of-fold logits, and decides at the share rule's threshold (with 10
classes, at the per-class thresholds of the same rule), as the product does for one trial:
- the best trial alone (what `study.final_model = "best_trial"` hands back), each reference trial alone;
- the mean of the best 2 or 3 trials (references among them if they rank there), of every kept trial
  (what tuner hands back by default, `study.final_model = "ensemble"`);
- greedy ensemble selection (Caruana et al. 2004): add, with replacement, the kept trial that most
  raises the out-of-fold AP of the mean, keep the best prefix;
- keep cross-entropy unless the best trial beats it by more than its fold spread.
The noise: a bootstrap of the held-out images (each class resampled within itself, the held-out
weights kept) gives the standard deviation of the difference between the best trial and the
cross-entropy reference; a difference below twice it cannot be told from the luck of the images.
"""

import argparse, statistics, sys, tempfile  # noqa: E401
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality import TASKS, heldout_files, heldout_scores, oof_logits, run_tuner, write_task  # noqa: E402

from tuner import keys  # noqa: E402
from tuner.learn.calibration import fit_temperature  # noqa: E402
from tuner.learn.metrics import average_precision, class_thresholds, decide  # noqa: E402
from tuner.learn.train import predict, probabilities  # noqa: E402
from tuner.show.predict import read_image  # noqa: E402

CANDIDATES = ("best trial", "ref 0 (cross-entropy)", "ref 1 (focal default)", "mean of the best 2",
              "mean of the best 3", "mean of every kept trial (shipped)", "greedy selection on out-of-fold AP",
              "cross-entropy unless beaten beyond the fold spread")


def kept_trials(task_dir: Path, url: str, files) -> dict:
    """Each complete trial that still has its model file: value, fold spread, reference label, parameters,
    and its calibrated logits out of fold and on the held-out images (``oof``, ``held``; ``raw_oof``,
    ``raw_held`` before its temperature, float64 arrays), with the labels and class counts."""
    study = optuna.load_study(study_name="q", storage=url)
    out = {"trials": []}
    x = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        try:
            model, payload, oof, y = oof_logits(task_dir, url, t.number)
        except FileNotFoundError:  # the study kept only its best 3 and the references
            continue
        if x is None:
            m = payload["model"]
            x = torch.stack([read_image(f, m["channels"], m["image_size"]) for f, _, _ in files])
            out["y"], out["y_held"] = y, np.array([payload["classes"].index(c) for _, c, _ in files])
            out["w_held"], out["counts"] = np.array([w for _, _, w in files]), torch.bincount(y).tolist()
        with torch.no_grad():
            held = predict(model, x).float()
        out["trials"].append({"number": t.number, "value": t.value, "spread": t.user_attrs.get("fold_spread", 0.0),
                              "reference": t.user_attrs.get("reference"), "params": dict(t.params),
                              "unweighted": bool(t.user_attrs.get(keys.UNWEIGHTED)),
                              "oof": oof.float() / payload["temperature"], "held": held / payload["temperature"],
                              "raw_oof": oof.double().numpy(), "raw_held": held.double().numpy()})
    return out


def outputs(kept: dict, members: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities and decisions of the mean of these trials (indexes into kept trials)."""
    tr, y = kept["trials"], kept["y"]
    oof = torch.stack([tr[i]["oof"] for i in members]).mean(0)
    t = fit_temperature(oof, y)
    p = probabilities(torch.stack([tr[i]["held"] for i in members]).mean(0).double() / t).numpy()
    if p.ndim == 1:
        return p, (p >= float((y == 1).float().mean())).astype(np.int64)
    return p, decide(p, class_thresholds(probabilities(oof.double() / t).numpy(), y.numpy(), "balanced_accuracy"))


def oof_ap(logits: torch.Tensor, y: torch.Tensor) -> float:
    p, yy = probabilities(logits).numpy(), y.numpy()
    if p.ndim == 1:
        return average_precision(yy == 1, p)
    return float(np.mean([average_precision(yy == c, p[:, c]) for c in range(p.shape[1])]))


def greedy(kept: dict, steps: int = 10) -> list[int]:
    tr, chosen, best, best_set = kept["trials"], [], -1.0, []
    for _ in range(steps):
        score, i = max((oof_ap(torch.stack([tr[j]["oof"] for j in chosen + [i]]).mean(0), kept["y"]), i) for i in range(len(tr)))
        chosen.append(i)
        if score > best:
            best, best_set = score, list(chosen)
    return best_set


def candidates(kept: dict) -> dict[str, list[int]]:
    tr = kept["trials"]
    order = sorted(range(len(tr)), key=lambda i: -tr[i]["value"])
    ref = {tr[i]["number"]: i for i in range(len(tr)) if tr[i]["reference"]}
    b = tr[order[0]]
    keep_ce = [ref[0]] if 0 in ref and b["value"] - tr[ref[0]]["value"] <= b["spread"] else [order[0]]
    return dict(zip(CANDIDATES, ([order[0]], [ref[0]], [ref[1]], order[:2], order[:3], order, greedy(kept), keep_ce)))


def noise(kept: dict, a: list[int], b: list[int], resamples: int = 300) -> tuple[float, float, float, float]:
    """Held-out AP and balanced-accuracy differences a - b and their bootstrap standard deviations."""
    y, w = kept["y_held"], kept["w_held"]
    (pa, da), (pb, db) = outputs(kept, a), outputs(kept, b)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    rng = np.random.default_rng(0)

    def diff(i):
        sa, sb = heldout_scores(pa[i], y[i], w[i], da[i]), heldout_scores(pb[i], y[i], w[i], db[i])
        return sa["average_precision"] - sb["average_precision"], sa["balanced_accuracy"] - sb["balanced_accuracy"]

    d0 = diff(np.arange(len(y)))
    draws = np.array([diff(np.concatenate([rng.choice(i, len(i)) for i in by_class])) for _ in range(resamples)])
    return d0[0], float(draws[:, 0].std()), d0[1], float(draws[:, 1].std())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "final-models.md")
    args = ap.parse_args()
    rows, noise_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for t, task in enumerate(TASKS):
            task_dir = Path(tmp) / f"task{t}"
            write_task(task_dir / "data", *TASKS[task])
            files = heldout_files(task_dir)
            got = {c: [] for c in CANDIDATES}
            for seed in args.seeds:
                _, _, url = run_tuner(task_dir, seed, args.workers, "auto")
                kept = kept_trials(task_dir, url, files)
                chosen = candidates(kept)
                for name, members in chosen.items():
                    p, pred = outputs(kept, members)
                    got[name].append(heldout_scores(p, kept["y_held"], kept["w_held"], pred))
                d_ap, s_ap, d_ba, s_ba = noise(kept, chosen["best trial"], chosen["ref 0 (cross-entropy)"])
                noise_rows.append(f"| {task} | {seed} | {d_ap:+.4f} | {s_ap:.4f} | {d_ba:+.4f} | {s_ba:.4f} | "
                                  f"{'yes' if abs(d_ap) > 2 * s_ap or abs(d_ba) > 2 * s_ba else 'no'} |")
                print(noise_rows[-1], flush=True)
            for name, runs in got.items():
                wins = [f"{sum(x[m] > r[m] for x, r in zip(runs, got[ref]))}/{len(runs)}"
                        for ref in ("ref 0 (cross-entropy)", "ref 1 (focal default)") for m in ("average_precision", "balanced_accuracy")]
                rows.append(f"| {task} | {name} | " + " | ".join(
                    f"{statistics.mean(x[m] for x in runs):.4f} ± {statistics.pstdev(x[m] for x in runs):.4f}"
                    for m in ("average_precision", "balanced_accuracy")) + " | " + " | ".join(wins) + " |")
            write(args, rows, noise_rows)


def write(args, rows, noise_rows) -> None:
    args.out.write_text("\n".join([
        "# Candidate final models of a k-fold study, on held-out images",
        "",
        f"`python bench/final_models.py --seeds {' '.join(map(str, args.seeds))} --workers {args.workers}` on a 2-core CPU. "
        "Held-out images and metrics as in quality.md (the test split plus every left-out image of the subsampled "
        "classes, weighted to the test split's class shares; AP of the positive class, macro over classes with 10; "
        "balanced accuracy at the share rule's threshold, with 10 classes at the per-class thresholds of the balanced-accuracy rule). Mean ± std over study seeds, and in "
        "how many seeds each candidate scored strictly higher than each reference trial.",
        "",
        "| task | candidate | held-out AP | held-out balanced accuracy | AP > ref 0 | BA > ref 0 | AP > ref 1 | BA > ref 1 |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## How much of a difference is the held-out images' luck",
        "",
        "The best trial minus the cross-entropy reference on the held-out images, and the standard deviation of that "
        "difference over 300 bootstrap resamples of the images (each class resampled within itself). A difference "
        "under twice its std cannot be told from noise.",
        "",
        "| task | seed | AP difference | its std | balanced-accuracy difference | its std | beyond 2 std? |",
        "|---|---|---|---|---|---|---|",
        *noise_rows,
        "",
    ]))


if __name__ == "__main__":
    main()
