"""Search quality on held-out data: the classic tutorial's loop, the two reference trials, and tuner with
and without k-fold validation, over several study seeds.

    .venv/bin/python bench/quality.py [--seeds 0 1 2] [--workers 2] [--out bench/results/quality.md]

Each task is an ImageFolder tree written from scikit-learn's bundled digits (real 8x8 scans, resized to
32x32): a stratified quarter of every class goes to test/, the rest to train/. Per task and seed:
(a) bench/blog_loop.py, the plain Optuna loop of the classic tutorial (its FocalLoss and CNN, objective
test accuracy, threshold 0.5; with 10 classes its obvious softmax extension and the argmax); (b) the two reference trials of (c); (c) `tuner start-study`
with the default settings (studies/digits-rare.toml's budget: 12 trials x 10 epochs; data.folds = "auto",
i.e. 5 folds here) and its final model as `tuner best --save-model` writes it (the mean of the best 3
trials and the two reference trials, each the ensemble of its fold models), and for comparison its best
trial alone and that trial refitted on all training images ("c refit"); (d) the same with data.folds = 1
(one 80/20 split), its final model. AP and balanced accuracy at each model's own threshold (chosen on
validation: pooled out-of-fold predictions with folds) on the test split and on the held-out set (the
test split plus every image the task left out of a subsampled class, weighted to the test split's class
shares), mean and spread (std) over seeds, and the wall time of each run; and the held-out balanced
accuracy of the best trial and the reference trials at the threshold the earlier rule (the maximum of
balanced accuracy on validation) would have chosen.
"""

import argparse, json, os, re, statistics, subprocess, sys, tempfile, time  # noqa: E401
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, balanced_accuracy_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TASKS = {  # name: (rare digit or None for the long tail, rare fraction, folder names (rare, other))
    "digit 9 at 5%, rare folder sorts first": (9, 0.05, ("nine", "other")),
    "digit 9 at 2%, rare folder sorts first": (9, 0.02, ("nine", "other")),
    "digit 3 at 5%, rare folder sorts last": (3, 0.05, ("three", "other")),
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
folds = {folds}
[train]
epochs = 10
device = "cpu"
"""


def study_epochs() -> int:
    """The budget every tuner run of the benches trains for: ``STUDY``'s epochs."""
    return int(re.search(r"(?m)^epochs = (\d+)$", STUDY)[1])


def out_flag(out: Path, default: Path) -> str:
    """" --out PATH" for a result file's command line when ``out`` is not the script's default, else ""."""
    path = out.resolve()
    return "" if path == default else f" --out {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"


def write_task(root: Path, rare, fraction, names, reverse: bool = False) -> None:
    digits = load_digits()
    rng = np.random.default_rng(0)
    if rare is None:  # long tail: class c keeps about 124 * (6/124)^(c/9) train images, imbalance ~20 (reverse: 9 - c)
        rank = [9 - c if reverse else c for c in range(10)]
        keep = {NAMES[c]: rng.permutation(np.flatnonzero(digits.target == c))[: round(165 * (6 / 124) ** (rank[c] / 9))]
                for c in range(10)}
    else:
        other = np.flatnonzero(digits.target != rare)
        n_rare = round(fraction * len(other) / (1 - fraction))
        keep = {names[0]: rng.permutation(np.flatnonzero(digits.target == rare))[:n_rare], names[1]: other}
    for name, idx in keep.items():
        n_test = max(1, round(0.25 * len(idx)))
        digit = NAMES.index(name) if rare is None else rare if name == names[0] else None
        left = [] if digit is None else np.setdiff1d(np.flatnonzero(digits.target == digit), idx)
        for split, chosen in (("test", idx[:n_test]), ("train", idx[n_test:]), ("left-out", left)):
            folder = (root.parent if split == "left-out" else root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")


def heldout_files(task_dir: Path) -> list[tuple[Path, str, float]]:
    """(path, class name, weight) of every held-out image: the test split and the images of each class the
    task left out (never in its tree). A class's weight n_test / (n_test + n_left) keeps each class's share of
    the test split, so AP speaks of the task's imbalance while recall rests on every left-out image."""
    out = []
    for folder in sorted((task_dir / "data" / "test").iterdir()):
        test, left = sorted(folder.glob("*.png")), sorted((task_dir / "left-out" / folder.name).glob("*.png"))
        out += [(f, folder.name, len(test) / (len(test) + len(left))) for f in test + left]
    return out


def heldout_scores(probs: np.ndarray, y: np.ndarray, w: np.ndarray, pred: np.ndarray) -> dict:
    """AP (of the positive class, index 1, or macro over classes) weighted by ``w``; balanced accuracy of
    the decisions ``pred`` (a mean of per-class recalls: the weights, equal within a class, do not change it)."""
    if probs.ndim == 1:
        ap = average_precision_score(y == 1, probs, sample_weight=w)
    else:
        ap = float(np.mean([average_precision_score(y == c, probs[:, c], sample_weight=w) for c in range(probs.shape[1])]))
    return {"average_precision": float(ap), "balanced_accuracy": float(balanced_accuracy_score(y, pred))}


def tuner_heldout(model, payload: dict, files) -> dict:
    """A tuner model file on the held-out images, through the product's own path (``tuner predict``):
    the file's temperature and threshold."""
    from tuner.show.predict import classify

    rows = classify(model, payload, [str(f) for f, _, _ in files])
    classes = payload["classes"]
    probs = np.array([[r["probabilities"][c] for c in classes] for r in rows])
    y = np.array([classes.index(c) for _, c, _ in files])
    pred = np.array([classes.index(r["predicted"]) for r in rows])
    return heldout_scores(probs[:, 1] if len(classes) == 2 else probs, y, np.array([w for _, _, w in files]), pred)


def trial_heldout(task_dir: Path, name: str, trial: int, files) -> dict:
    from tuner.learn.checkpoints import load_trial_model

    model, payload = load_trial_model(task_dir / f"artifacts-{name}" / "q" / f"trial-{trial}.pt")
    return tuner_heldout(model, payload, files)


def oof_logits(task_dir: Path, url: str, trial: int):
    """A k-fold trial's model file, its payload, its pooled out-of-fold logits (recomputed from its fold
    models; their AP must equal the stored trial value) and the labels."""
    import optuna

    from tuner.learn.checkpoints import load_trial_model
    from tuner.learn.data import load_data
    from tuner.learn.folds import fold_of, pool
    from tuner.learn.fused import score
    from tuner.learn.metrics import scores
    from tuner.learn.train import probabilities
    from tuner.search.study import stored_config

    study = optuna.load_study(study_name="q", storage=url)
    cfg = stored_config(study)
    data = load_data(cfg.data, seed=cfg.study.seed, cache_dir=str(task_dir / "cache"))
    x, y = pool(data)
    folds = torch.from_numpy(fold_of(y.numpy(), cfg.data.folds, cfg.study.seed))
    model, payload = load_trial_model(task_dir / f"artifacts-auto-{cfg.study.seed}" / "q" / f"trial-{trial}.pt")
    logits = score(model.fused, x)
    oof = logits[torch.arange(len(x)), folds]
    oof = oof.squeeze(1) if oof.shape[1] == 1 else oof
    stored = study.trials[trial].value
    if abs(scores(probabilities(oof), y)["average_precision"] - stored) > 1e-4:
        raise SystemExit(f"trial {trial}: recomputed out-of-fold AP differs from the stored {stored}")
    return model, payload, oof, y


def max_rule_heldout(task_dir: Path, url: str, trial: int, files) -> dict:
    """Held-out metrics of a k-fold trial's model at the threshold the earlier balanced-accuracy rule
    chose: the one that maximises balanced accuracy on its pooled out-of-fold calibrated probabilities."""
    model, payload, oof, y = oof_logits(task_dir, url, trial)
    cal = torch.sigmoid(oof.double() / payload["temperature"]).numpy()
    order = np.argsort(-cal, kind="stable")
    sc, pos = cal[order], (y == 1).numpy()[order]
    last = np.r_[np.flatnonzero(np.diff(sc)), len(sc) - 1]
    tp = np.cumsum(pos)[last].astype(np.float64)
    fp = last + 1 - tp
    k = int(np.argmax(tp / tp[-1] + (fp[-1] - fp) / fp[-1]))
    cut = (sc[last[k]] + (sc[last[k] + 1] if last[k] + 1 < len(sc) else 0.0)) / 2
    return tuner_heldout(model, {**payload, "threshold": float(cut)}, files)


def final_heldout(task_dir: Path, name: str, files) -> dict:
    """The study's final model, written by ``tuner best --save-model`` and read back as ``tuner predict``
    reads it, on the held-out images."""
    from tuner.show.predict import load_model

    env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{task_dir}/{name}.db", "PYTHONWARNINGS": "ignore"}
    path = task_dir / f"final-{name}.pt"
    tuner(["best", "--save-model", str(path)], task_dir, env)
    return tuner_heldout(*load_model(path), files)


def tuner(args: list[str], cwd: Path, env: dict) -> str:
    p = subprocess.run([sys.executable, "-m", "tuner", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"tuner {' '.join(args)} failed:\n{p.stderr}")
    return p.stdout


def run_tuner(task_dir: Path, seed: int, workers: int, folds) -> tuple[dict, float, str]:
    name = f"{folds}-{seed}"
    study = task_dir / f"study-{name}.toml"
    study.write_text(STUDY.format(seed=seed, root=task_dir / "data", folds=json.dumps(folds)))
    env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{task_dir}/{name}.db", "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    tuner(["start-study", str(study), "--workers", str(workers), "--set", f"study.artifacts={task_dir}/artifacts-{name}"], task_dir, env)
    wall = time.time() - t0
    return json.loads(tuner(["best", "--json"], task_dir, env)), wall, env["TUNER_STORAGE"]


def refit(url: str, task_dir: Path, files) -> dict:
    """The best trial of a k-fold study trained again on all training images, for as many epochs, and
    used at the threshold (per-class thresholds with more classes) and temperature its out-of-fold
    predictions chose: test split and held-out."""
    import optuna

    from tuner.learn.checkpoints import decision_cut, model_payload
    from tuner.learn.data import Splits, load_data
    from tuner.learn.folds import pool
    from tuner.learn.train import heldout_metrics, train_trial
    from tuner.learn.weights import loss_alpha
    from tuner.search.study import stored_config

    study = optuna.load_study(study_name="q", storage=url)
    cfg, best = stored_config(study), study.best_trial
    data = load_data(cfg.data, seed=cfg.study.seed, cache_dir=str(task_dir / "cache"))
    x, y = pool(data)
    whole = Splits(x, y, x[:2], y[:2], data.test_x, data.test_y, data.classes)  # the val split is not used for choices here
    alpha = None if best.user_attrs.get("unweighted") else loss_alpha(best.params, data.class_counts())
    model = train_trial(cfg, whole, best.params["gamma"], alpha, best.user_attrs["seed"], device=torch.device("cpu")).model.cpu().eval()
    final = {k: best.user_attrs.get(k) for k in ("threshold", "class_thresholds", "temperature")}
    payload = model_payload(cfg, best.number, model, data, best.params["gamma"], alpha, best.user_attrs["seed"], final)
    return {"test": heldout_metrics(model, data.test_x, data.test_y, decision_cut(payload), final["temperature"]),
            "held": tuner_heldout(model, payload, files)}


def run_blog(task_dir: Path, seed: int, files) -> tuple[dict, float]:
    from blog_loop import TF, BlogCNN
    from torchvision.datasets import ImageFolder

    t0 = time.time()
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "blog_loop.py"), str(task_dir / "data"), "cpu",
                        str(task_dir / "blog.pt"), "12", str(seed)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"blog loop failed:\n{p.stderr}")
    wall = json.loads(p.stdout.splitlines()[-1])["ended"] - t0
    test = ImageFolder(task_dir / "data" / "test", TF)
    n = len(test.classes)
    model = BlogCNN(n).eval()
    model.load_state_dict(torch.load(task_dir / "blog.pt", weights_only=True))
    rare = int(np.argmin(np.bincount(test.targets)))  # the blog scores folder index 1 whatever it is; we score the rare class
    out = {}
    for part, images, y in (("test", [test[i][0] for i in range(len(test))], np.array(test.targets)),
                            ("held", [TF(Image.open(f)) for f, _, _ in files], np.array([test.class_to_idx[c] for _, c, _ in files]))):
        with torch.no_grad():
            logits = model(torch.stack(images))
        w = np.ones(len(y)) if part == "test" else np.array([w for _, _, w in files])
        if n == 2:
            p1 = torch.sigmoid(logits.squeeze(1)).numpy()
            out[part] = heldout_scores(p1 if rare == 1 else 1 - p1, (y == rare).astype(int), w, (p1 >= 0.5).astype(int))
            out[part]["balanced_accuracy"] = float(balanced_accuracy_score(y, (p1 >= 0.5).astype(int)))
        else:
            probs = torch.softmax(logits, dim=1).numpy()
            out[part] = heldout_scores(probs, y, w, probs.argmax(1))
    return out, wall


def seed_cells(runs: dict, against: dict) -> list[str]:
    """Held-out AP and balanced accuracy (``runs``: seed -> scores) as mean ± std over seeds, then in how
    many seeds each beat ``against`` (seed -> scores) by more than 1e-9: a rounding difference is no win."""
    metrics = ("average_precision", "balanced_accuracy")
    return ([f"{statistics.mean(r[m] for r in runs.values()):.4f} ± {statistics.pstdev(r[m] for r in runs.values()):.4f}"
             for m in metrics]
            + [f"{sum(r[m] > against[s][m] + 1e-9 for s, r in runs.items() if s in against)}/{len(runs)}" for m in metrics])


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "n/a"


CONFIGS = ("a blog loop", "b ref 0 (cross-entropy)", "b ref 1 (focal default)", "c tuner, folds auto",
           "c its best trial alone", "c refit on all images", "d tuner, folds = 1")
PARTS = {"held": "held-out", "test": "test split"}


def pair(x: dict | None, part: str = "held") -> str:
    return "-" if x is None else f"{x[part]['average_precision']:.3f} / {x[part]['balanced_accuracy']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), help="task names (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.md")
    args = ap.parse_args()
    rows, per_seed, verdicts, rules = [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for t, task in enumerate(args.tasks):
            task_dir = Path(tmp) / f"task{t}"
            write_task(task_dir / "data", *TASKS[task])
            files = heldout_files(task_dir)
            got, walls = {k: [] for k in CONFIGS}, {k: [] for k in CONFIGS}
            for seed in args.seeds:
                binary = TASKS[task][0] is not None
                blog, wall = run_blog(task_dir, seed, files)
                got["a blog loop"].append(blog)
                walls["a blog loop"].append(wall)
                best, wall, url = run_tuner(task_dir, seed, args.workers, "auto")
                c_held = trial_heldout(task_dir, f"auto-{seed}", best["trial"], files)
                got["c tuner, folds auto"].append({"test": best["final"] or best["test"],
                                                   "held": final_heldout(task_dir, f"auto-{seed}", files)})
                got["c its best trial alone"].append({"test": best["test"], "held": c_held})
                walls["c tuner, folds auto"].append(wall)
                refs = {}
                for r in best["references"]:
                    if r["test"]:
                        refs[r["trial"]] = {"test": r["test"], "held": trial_heldout(task_dir, f"auto-{seed}", r["trial"], files)}
                for n, key in ((0, "b ref 0 (cross-entropy)"), (1, "b ref 1 (focal default)")):
                    if n in refs:
                        got[key].append(refs[n])
                got["c refit on all images"].append(refit(url, task_dir, files))
                if binary:
                    for n, label in ((best["trial"], "(c)"), (0, "ref 0"), (1, "ref 1")):
                        if n == best["trial"] and label != "(c)":
                            continue
                        old = max_rule_heldout(task_dir, url, n, files)["balanced_accuracy"]
                        new = (c_held if label == "(c)" else refs[n]["held"])["balanced_accuracy"]
                        rules.setdefault(task, []).append((seed, label, new, old))
                single, wall, _ = run_tuner(task_dir, seed, args.workers, 1)
                got["d tuner, folds = 1"].append({"test": single["final"] or single["test"], "held": final_heldout(task_dir, f"1-{seed}", files)})
                walls["d tuner, folds = 1"].append(wall)
                c = got["c tuner, folds auto"][-1]
                a = got["a blog loop"][-1]
                params = ", ".join(f"{k} {v:.4g}" for k, v in best["params"].items() if k != "one_minus_beta")
                per_seed.append(f"| {task} | {seed} | {best['trial']} | {params} | "
                                + " | ".join(pair(x) for x in (c, refs.get(0), refs.get(1), a, got["d tuner, folds = 1"][-1])) + " | "
                                + " | ".join(pair(x, "test") for x in (c, refs.get(0), refs.get(1), a, got["d tuner, folds = 1"][-1])) + " |")
                print(per_seed[-1], flush=True)
            for key, runs in got.items():
                rows.append(f"| {task} | {key} | " + " | ".join(cell([x[part][m] for x in runs if part in x]) for part in PARTS
                                                                 for m in ("average_precision", "balanced_accuracy"))
                            + f" | {cell(walls[key]) if walls[key] else '-'} |")
            verdicts.append(verdict(task, got))
            write(args, rows, verdicts, per_seed, rules)  # after every task, so a cut run keeps what it measured


def rule_lines(rules: dict) -> list[str]:
    out = []
    for task, got in rules.items():
        better = sum(new > old for _, _, new, old in got)
        worse = sum(new < old for _, _, new, old in got)
        gain = statistics.mean(new - old for _, _, new, old in got)
        out.append(f"- **{task}**: share rule better in {better} of {len(got)}, worse in {worse}; mean change {gain:+.4f} ("
                   + "; ".join(f"seed {seed} {label} {new:.3f} vs {old:.3f}" for seed, label, new, old in got) + ")")
    return out


def write(args, rows, verdicts, per_seed, rules) -> None:
    from blog_loop import EPOCHS as BLOG_EPOCHS

    epochs = study_epochs()
    text = "\n".join([
        "# Search quality on held-out data",
        "",
        f"`python bench/quality.py --seeds {' '.join(map(str, args.seeds))} --workers {args.workers}"
        + (" --tasks " + " ".join(repr(t) for t in args.tasks) if args.tasks != list(TASKS) else "") + "` on a 2-core CPU "
        f"(wall times are indicative only). tuner: 12 trials x {epochs} epochs, the default budget; (a): 12 trials x "
        f"its own {BLOG_EPOCHS} epochs. "
        "Metrics of the model each run hands back, mean ± std over study seeds. "
        "**held-out**: the task's test split plus every image of a subsampled class that the task left out of its "
        "tree (no configuration ever sees them), each class weighted to keep its share of the test split, so AP "
        "speaks of the task's imbalance and recall rests on all the left-out rare images (about 5x the test split's); "
        "**test split**: the test split alone. AP of the positive class (macro over classes with 10 classes); "
        "balanced accuracy at the threshold the trial chose on validation (0.5 for the blog loop; with 10 classes, "
        "tuner's per-class thresholds of the balanced-accuracy rule, chosen on validation, and the blog loop's argmax). (a) with 10 classes: the obvious extension of the tutorial's loop (one output per class, softmax "
        "cross-entropy inside its focal loss, argmax), see bench/blog_loop.py.",
        "",
        "| task | configuration | held-out AP | held-out balanced accuracy | test-split AP | test-split balanced accuracy | wall (s) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Verdicts (the targets: (c) beats both references and (a) in at least 2 of 3 seeds on both metrics; "
        "(c)'s spread over seeds at most half of (d)'s)",
        "",
        *verdicts,
        "",
        "## The balanced-accuracy threshold: the positive share on calibrated probabilities vs the maximum on validation",
        "",
        "Held-out balanced accuracy of the same model file at the threshold it ships with (the positive class's "
        "share of the validation images, on the calibrated probability) and at the threshold the earlier rule chose "
        "(the one that maximises balanced accuracy on the pooled out-of-fold predictions), for (c)'s best trial "
        "and each reference trial of (c):",
        "",
        *rule_lines(rules),
        "",
        "## Per seed: held-out AP / balanced accuracy, then the same on the test split",
        "",
        "| task | seed | (c) best trial | params | (c) | ref 0 | ref 1 | (a) | (d) | (c) test | ref 0 test | ref 1 test | (a) test | (d) test |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *per_seed,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def verdict(task: str, got: dict) -> str:
    c, d = got["c tuner, folds auto"], got["d tuner, folds = 1"]
    lines = [f"- **{task}**:"]
    for key in ("b ref 0 (cross-entropy)", "b ref 1 (focal default)", "a blog loop"):
        other = got[key]
        if len(other) != len(c):
            lines.append(f"  {key}: n/a")
            continue
        said = []
        for part, words in PARTS.items():
            for m, short in (("average_precision", "AP"), ("balanced_accuracy", "balanced accuracy")):
                wins = sum(x[part][m] > y[part][m] for x, y in zip(c, other))
                ties = sum(x[part][m] == y[part][m] for x, y in zip(c, other))
                said.append(f"{words} {short} {wins}/{len(c)}" + (f" ({ties} ties)" if ties else ""))
        lines.append(f"  (c) beats {key} in: " + ", ".join(said))
    for part, words in PARTS.items():
        for m in ("average_precision", "balanced_accuracy"):
            sc, sd = statistics.pstdev([x[part][m] for x in c]), statistics.pstdev([x[part][m] for x in d])
            lines.append(f"  {words} spread of {m}: (c) {sc:.3f} vs (d) {sd:.3f} ({'at most half' if sc <= sd / 2 else 'more than half'})")
    refit, alone = got["c refit on all images"], got["c its best trial alone"]
    lines.append("  the best trial, held-out AP / balanced accuracy: its fold ensemble " + cell([x["held"]["average_precision"] for x in alone])
                 + " / " + cell([x["held"]["balanced_accuracy"] for x in alone]) + " vs refit on all images "
                 + cell([x["held"]["average_precision"] for x in refit]) + " / " + cell([x["held"]["balanced_accuracy"] for x in refit]))
    lines.append("  final model against its best trial alone, held-out AP / balanced accuracy: " + " / ".join(
        f"higher in {sum(x['held'][m] > y['held'][m] for x, y in zip(c, alone))}/{len(c)}" for m in ("average_precision", "balanced_accuracy")))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
