"""Three ways to choose a recall>=X threshold on out-of-fold predictions, judged on held-out images.

    .venv/bin/python bench/recall_rule.py [--seeds 0 1 2 3 4] [--targets 0.8 0.9 0.95] [--out bench/results/recall-rule.md]

With few validation images of the class to detect, tuner's rule (the highest threshold that keeps the
recall on validation, ``metrics.choose_threshold``) must often find every one of them, so held-out recall
overshoots the target and precision pays. Two alternatives aim at the target instead:

- quantile: the (1 - X) quantile of the class's out-of-fold scores, interpolated between images;
- expected: the highest threshold at which the calibrated probabilities of the class, summed over every
  out-of-fold image above it, reach X of their total (each image counts by how likely it is of the class,
  so the threshold rests on all images, not on the last few of the class).

Per task and study seed, one `tuner start-study` at the default budget of bench/quality.py; its final model
(`tuner best --save-model`, read back as `tuner predict` reads it) scores the held-out images of
bench/quality.py. The score is the calibrated probability of the class (two classes) or that probability
over the largest other one (more classes), as tuner decides. One study serves every target.
"""

import argparse, json, os, statistics, sys, tempfile  # noqa: E401
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from detect import write_three  # noqa: E402
from quality import STUDY, TASKS, heldout_files, out_flag, tuner, write_task  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "recall-rule.md"
TASK_NAMES = ("10 classes, long tail 124 -> 6", "3 classes, malignant at 5%", "digit 9 at 2%, rare folder sorts first")
RULES = ("tuner's rule", "quantile", "expected")


def ratio(p: np.ndarray, k: int) -> np.ndarray:
    """tuner's score for class k: its probability (two classes, given as p of the positive class) or its
    probability over the largest other class's."""
    if p.ndim == 1:
        return p
    with np.errstate(divide="ignore"):  # every other class at probability 0: the ratio is inf, and still ordered
        return p[:, k] / np.delete(p, k, axis=1).max(axis=1)


def thresholds(score: np.ndarray, is_k: np.ndarray, p_k: np.ndarray, target: float) -> dict[str, float]:
    from tuner.learn.metrics import choose_threshold

    order = np.argsort(-score, kind="stable")
    s, soft = score[order], np.cumsum(p_k[order]) / p_k.sum()
    i = int(np.argmax(soft >= target - 1e-12))
    below = s[i + 1] if i + 1 < len(s) else 0.0
    return {"tuner's rule": choose_threshold(score, is_k, f"recall>={target}"),
            "quantile": float(np.quantile(score[is_k], 1 - target)),
            "expected": float((s[i] + below) / 2)}


def out_of_fold(task_dir: Path, env: dict) -> tuple[np.ndarray, np.ndarray, float, str, list[str]]:
    """The final model's pooled out-of-fold calibrated probabilities, the labels, its temperature, the class
    to detect and the classes, computed as ``tuner.show.results.final_model`` computes them."""
    import optuna

    from tuner.learn.ensemble import validation_logits
    from tuner.learn.train import probabilities
    from tuner.search.study import stored_config
    from tuner.show.results import final_model, study_data, trial_model
    from tuner.show.summary import final_members

    cwd = os.getcwd()
    os.chdir(task_dir)  # where the study ran: its study.artifacts, if stored relative by an older tuner
    try:
        study = optuna.load_study(study_name="q", storage=env["TUNER_STORAGE"])
        cfg = stored_config(study)
        data = study_data(study, cfg)
        loaded = {}
        _, payload, _ = final_model(study, cfg, data, loaded=loaded)
        parts = []
        for t in final_members(study, cfg):
            model, member, _ = loaded.get(t.number) or trial_model(study, cfg, t, data)
            logits, y = validation_logits(model, data, cfg.data.folds, cfg.study.seed)
            parts.append(logits / member["temperature"])
    finally:
        os.chdir(cwd)
    p = probabilities(torch.stack(parts).mean(dim=0).double() / payload["temperature"]).numpy()
    detect = data.positive_class or cfg.data.positive_class
    return p, y.numpy(), payload["temperature"], detect, list(data.classes)


def judge(task_dir: Path, env: dict, files, targets) -> dict:
    from tuner.show.predict import classify, load_model

    p, y, temperature, detect, classes = out_of_fold(task_dir, env)
    path = task_dir / "final.pt"
    tuner(["best", "--save-model", str(path)], task_dir, env)
    model, payload = load_model(path)
    if abs(payload["temperature"] - temperature) > 1e-9:
        raise SystemExit("the saved final model is not the one whose out-of-fold predictions were scored")
    k = classes.index(detect)
    rows = classify(model, payload, [str(f) for f, _, _ in files])
    held = np.array([[r["probabilities"][c] for c in classes] for r in rows])
    held_y = np.array([classes.index(c) for _, c, _ in files])
    w = np.array([w for _, _, w in files])
    score, p_k = ratio(p, k), (p if p.ndim == 1 else p[:, k])
    held_score = ratio(held[:, 1] if len(classes) == 2 else held, k)
    out = {"n": int((y == k).sum()), "detect": detect}
    for target in targets:
        for rule, cut in thresholds(score, y == k, p_k, target).items():
            pred = held_score >= cut
            hit = pred & (held_y == k)
            out[f"{rule} {target}"] = {"recall": float(hit.sum() / (held_y == k).sum()),
                                       "precision": float(w[hit].sum() / max(w[pred].sum(), 1e-12))}
    return out


def write_data(task: str, root: Path) -> None:
    if task.startswith("3 classes"):
        write_three(root)
    else:
        write_task(root, *TASKS[task])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    runs: dict[str, dict[int, dict]] = {t: {} for t in TASK_NAMES}
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASK_NAMES:
            task_dir = Path(tmp) / task.split(",")[0].replace(" ", "-").replace("%", "")
            write_data(task, task_dir / "data")
            files = heldout_files(task_dir)
            for seed in args.seeds:
                study = task_dir / f"study-{seed}.toml"
                study.write_text(STUDY.format(seed=seed, root=task_dir / "data", folds='"auto"')
                                 .replace('name = "q"', 'name = "q"\noperating_point = "recall>=0.9"'))
                env = {**os.environ, "TUNER_STORAGE": f"sqlite:///{task_dir}/s{seed}.db", "PYTHONWARNINGS": "ignore"}
                tuner(["start-study", str(study), "--workers", str(args.workers),
                       "--set", f"study.artifacts=artifacts-{seed}"], task_dir, env)
                runs[task][seed] = judge(task_dir, env, files, args.targets)
                print(task, seed, json.dumps(runs[task][seed]), file=sys.stderr, flush=True)

    lines = ["# Choosing a recall>=X threshold: tuner's rule against two that aim at the target", "",
             f"`python bench/recall_rule.py --seeds {' '.join(map(str, args.seeds))} --targets "
             f"{' '.join(map(str, args.targets))}{out_flag(args.out, DEFAULT_OUT)}` on a {os.cpu_count()}-core CPU. "
             "Each study: the default budget of bench/quality.py with 5 folds; its final model's pooled out-of-fold "
             "predictions choose the threshold by each rule, and the held-out images (the test split plus every left-out "
             "image of the subsampled classes) judge it: recall of the class to detect over all its held-out images, "
             "its precision with each class weighted to its test-split share. Mean over seeds, and the seeds whose "
             "held-out recall reached the target.", "",
             "- tuner's rule: the highest threshold that keeps the out-of-fold recall at or above X (what tuner ships);",
             "- quantile: the (1 - X) quantile of the class's out-of-fold scores, interpolated;",
             "- expected: the highest threshold at which the calibrated probabilities of the class over all "
             "out-of-fold images above it reach X of their total.", "",
             "| task (out-of-fold images of the class) | target | rule | held-out recall | held-out precision | "
             "seeds at target |", "|---|---|---|---|---|---|"]
    for task in TASK_NAMES:
        r = runs[task]
        n = sorted({v["n"] for v in r.values()})
        for target in args.targets:
            for rule in RULES:
                got = [v[f"{rule} {target}"] for v in r.values()]
                hits = sum(g["recall"] >= target - 1e-12 for g in got)
                lines.append(f"| {task} ({r[args.seeds[0]]['detect']}, {'/'.join(map(str, n))}) | {target} | {rule} | "
                             f"{statistics.mean(g['recall'] for g in got):.3f} | "
                             f"{statistics.mean(g['precision'] for g in got):.3f} | {hits}/{len(got)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
