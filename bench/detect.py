"""A class to detect among more than two: the recall rule against the argmax, on held-out images.

    .venv/bin/python bench/detect.py [--seeds 0 1 2] [--target 0.9] [--workers 2] [--out bench/results/detect.md]

Before, a study with more than two classes and ``operating_point = "recall>=X"`` decided by the argmax;
now the rule is for one class to detect (the rarest by default), decided when its calibrated probability
over the largest other class's reaches the threshold the rule chose on the pooled out-of-fold predictions.
Per task and study seed, one `tuner start-study` at the default budget of bench/quality.py (12 trials x
10 epochs, 5 folds) with that operating point; its final model (`tuner best --save-model`, read back as
`tuner predict` reads it) decides the held-out images (bench/quality.py's: the test split plus every
left-out image of a subsampled class) once by the rule and once by the argmax of the same calibrated
probabilities. Recall of the class to detect (over all its held-out images), its precision with each class
weighted to its share of the test split (so the left-out images do not inflate it), and balanced accuracy.
Tasks: the 10-class long tail of bench/quality.py (rarest: nine, 6 training images), and three classes as a
screening study would have them (normal = digit 0, benign = digit 1, malignant = digit 7 at 5% of the images).
"""

import argparse, json, os, statistics, sys, tempfile, time  # noqa: E401
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality import STUDY, heldout_files, out_flag, tuner, write_task  # noqa: E402

THREE = {"normal": (0, None), "benign": (1, None), "malignant": (7, 0.05)}  # name: (digit, share of all images or None)
TASKS = ("10 classes, long tail 124 -> 6", "3 classes, malignant at 5%")


def write_three(root: Path) -> None:
    """normal, benign and malignant folders from digits 0, 1 and 7 (7 subsampled to 5% of the images; the
    rest of its images go to left-out/), a quarter of each class to test/."""
    digits, rng = load_digits(), np.random.default_rng(0)
    common = sum(int((digits.target == d).sum()) for d, share in THREE.values() if share is None)
    for name, (digit, share) in THREE.items():
        idx = rng.permutation(np.flatnonzero(digits.target == digit))
        kept = idx if share is None else idx[: round(share * common / (1 - share))]
        n_test = max(1, round(0.25 * len(kept)))
        for split, chosen in (("test", kept[:n_test]), ("train", kept[n_test:]), ("left-out", idx[len(kept):])):
            folder = (root.parent if split == "left-out" else root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")


def decisions(task_dir: Path, env: dict, files) -> tuple[dict, str]:
    """The final model's held-out scores by its rule and by the argmax of the same probabilities."""
    from tuner.learn.checkpoints import detected_class
    from tuner.show.predict import classify, load_model

    path = task_dir / "final.pt"
    tuner(["best", "--save-model", str(path)], task_dir, env)
    model, payload = load_model(path)
    rows = classify(model, payload, [str(f) for f, _, _ in files])
    classes, detect = payload["classes"], detected_class(payload)
    k = classes.index(detect)
    y = np.array([classes.index(c) for _, c, _ in files])
    w = np.array([w for _, _, w in files])
    probs = np.array([[r["probabilities"][c] for c in classes] for r in rows])
    out = {}
    for rule, pred in (("rule", np.array([classes.index(r["predicted"]) for r in rows])), ("argmax", probs.argmax(axis=1))):
        hit = (pred == k) & (y == k)
        out[rule] = {"recall": float(hit.sum() / (y == k).sum()),
                     "precision": float(w[hit].sum() / max(w[pred == k].sum(), 1e-12)),
                     "balanced_accuracy": float(balanced_accuracy_score(y, pred))}
    out["validation_recall"] = float(payload["validation"]["recall"])
    return out, detect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detect.md")
    args = ap.parse_args()
    runs: dict[str, dict[int, dict]] = {t: {} for t in TASKS}
    detected, walls = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASKS:
            task_dir = Path(tmp) / task.split(",")[0].replace(" ", "-")
            if task.startswith("10"):
                write_task(task_dir / "data", None, 20.0, ())
            else:
                write_three(task_dir / "data")
            files = heldout_files(task_dir)
            for seed in args.seeds:
                study = task_dir / f"study-{seed}.toml"
                study.write_text(STUDY.format(seed=seed, root=task_dir / "data", folds='"auto"')
                                 .replace('name = "q"', f'name = "q"\noperating_point = "recall>={args.target}"'))
                env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{task_dir}/s{seed}.db", "PYTHONWARNINGS": "ignore"}
                t0 = time.time()
                tuner(["start-study", str(study), "--workers", str(args.workers),
                       "--set", f"study.artifacts={task_dir}/artifacts-{seed}"], task_dir, env)
                walls.append(time.time() - t0)
                runs[task][seed], detected[task] = decisions(task_dir, env, files)
                print(task, seed, json.dumps(runs[task][seed]), file=sys.stderr)

    def cell(task, rule, metric):
        v = [r[rule][metric] for r in runs[task].values()]
        return f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"

    lines = ["# A class to detect among more than two: the recall rule against the argmax", "",
             f"`python bench/detect.py --seeds {' '.join(map(str, args.seeds))} --target {args.target}"
             f"{out_flag(args.out, ROOT / 'bench' / 'results' / 'detect.md')}` on a {os.cpu_count()}-core CPU "
             f"(tuner runs of {statistics.mean(walls):.0f} s on average). Each study: `operating_point = \"recall>={args.target}\"`, "
             "the default budget of bench/quality.py; its final model on the held-out images (the test split plus every "
             "left-out image of the subsampled classes), decided by the rule it ships with and by the argmax of the same "
             "calibrated probabilities (what such a study did before). Recall of the class to detect over all its held-out "
             "images; its precision with each class weighted to its test-split share; mean ± std over seeds.", "",
             "| task | class to detect | decisions | held-out recall | held-out precision | held-out balanced accuracy | "
             "seeds with recall >= target |", "|---|---|---|---|---|---|---|"]
    for task in TASKS:
        for rule, words in (("rule", f"recall>={args.target} rule"), ("argmax", "argmax (before)")):
            hits = sum(r[rule]["recall"] >= args.target for r in runs[task].values())
            lines.append(f"| {task} | {detected[task]} | {words} | {cell(task, rule, 'recall')} | {cell(task, rule, 'precision')} | "
                         f"{cell(task, rule, 'balanced_accuracy')} | {hits}/{len(runs[task])} |")
    lines += ["", "Per seed (held-out recall / precision, rule then argmax; the recall the rule reached on the pooled "
              "out-of-fold predictions it was chosen on):", ""]
    for task in TASKS:
        for seed, r in runs[task].items():
            lines.append(f"- {task}, seed {seed}: {r['rule']['recall']:.3f} / {r['rule']['precision']:.3f} against "
                         f"{r['argmax']['recall']:.3f} / {r['argmax']['precision']:.3f}; out-of-fold recall {r['validation_recall']:.3f}")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
