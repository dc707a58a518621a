"""More than two classes: class-balanced alpha searched through beta, named per class in the output."""

import json
import re
import shutil

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from conftest import assert_user_error, tuner
from tuner import keys
from tuner.errors import UserError
from tuner.learn.weights import class_balanced_weights
from tuner.show.predict import cut_with
from tuner.show.progress import cut_text

COUNTS = {"eight": 6, "five": 12, "one": 24, "zero": 48}  # a long tail, by name, not sorted by count


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("many")
    digits = load_digits()
    for name, digit in zip(COUNTS, (8, 5, 1, 0)):
        idx = np.flatnonzero(digits.target == digit)
        for split, chosen in (("train", idx[: COUNTS[name]]), ("test", idx[100:110])):
            (root / "data" / split / name).mkdir(parents=True)
            for i in chosen:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(root / "data" / split / name / f"{i}.png")
    (root / "study.toml").write_text(f"""
[study]
name = "tail"
n_trials = 4
n_startup_trials = 2
[data]
kind = "imagefolder"
root = "{root / 'data'}"
image_size = 16
val_fraction = 0.34
[train]
epochs = 2
device = "cpu"
[pruner]
kind = "none"
""")
    proc = tuner("start-study", "study.toml", "--workers", "1", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc


def test_the_driver_says_how_classes_are_weighted(folder):
    _, proc = folder
    assert "classes eight, five, one, zero: class_balanced class weights, per-class thresholds for balanced accuracy" in proc.stderr
    assert "class weights: eight 1.000" in proc.stdout and "macro AP" in proc.stdout
    # every model on test with its own per-class thresholds (the final model's are predict's) and its confusion matrix
    final = json.loads(tuner("best", "--json", cwd=folder[0]).stdout)["final"]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("  the final model (the mean of trials"))
    assert ("at thresholds " + ", ".join(f"{c} {cut_text(v)}" for c, v in zip(COUNTS, final["class_thresholds"]))) in line
    assert f"confusion {final['confusion_matrix']} (rows true, columns predicted: 'eight', 'five', 'one', 'zero')" in line
    # The cross-entropy reference stores a beta Optuna needs but trains without it: no line shows one.
    assert re.search(r"trial 0 gamma=0\.000 no class weights \(cross-entropy", proc.stderr), proc.stderr
    assert not re.search(r"trial 0 gamma=\S+ beta", proc.stderr)
    status = json.loads(tuner("status", "--json", cwd=folder[0]).stdout)["trials"]
    rows = json.loads(tuner("export", "-f", "json", cwd=folder[0]).stdout)
    assert status[0]["beta"] is None and rows[0]["beta"] is None and 0.9 <= status[1]["beta"] == rows[1]["beta"] <= 0.9999


def test_best_json_names_the_per_class_alpha_and_it_follows_the_formula(folder, cli):
    root, _ = folder
    best = json.loads(cli("best", "--json", cwd=root).stdout)
    assert best["alpha_mode"] == "class_balanced" and best["positive_class"] is None and best["threshold"] is None
    assert best["unweighted"] == (best["trial"] == 0)
    params = best["params"]
    assert set(params) == {"gamma", "one_minus_beta", "beta"} and 0.9 <= params["beta"] <= 0.9999
    alpha = best["alpha_per_class"]
    assert list(alpha) == list(COUNTS)
    if best["trial"] == 0:  # the cross-entropy reference trains with no class weights
        assert set(alpha.values()) == {1.0}
    else:
        assert list(alpha.values()) == pytest.approx(class_balanced_weights(_train_counts(root), params["beta"]))
        assert alpha["eight"] == 1.0 and alpha["zero"] < alpha["one"] < alpha["five"] < 1.0


def _train_counts(root):
    from tuner.search.config import load_config
    from tuner.learn.data import load_data

    cfg = load_config(root / "study.toml")
    return load_data(cfg.data, seed=cfg.study.seed).class_counts()


def test_reference_trials_are_cross_entropy_and_class_balanced_focal(folder, cli):
    root, _ = folder
    best = json.loads(cli("best", "--json", cwd=root).stdout)
    labels = {r["trial"]: r["label"] for r in best["references"]}
    assert labels[0].startswith("cross-entropy") and "no class weights" in labels[0]
    assert labels[1] == "focal gamma=2 with class-balanced weights of beta=0.999"
    refs = {r["trial"]: r for r in best["references"]}
    assert refs[1]["params"]["beta"] == pytest.approx(0.999) and refs[1]["params"]["gamma"] == 2.0
    assert all(r["test"] is not None and "balanced_accuracy" in r["test"] for r in best["references"])
    assert all("against_final" in r["test"] for r in best["references"] if r["trial"] != best["trial"])


def test_the_final_model_decides_by_per_class_thresholds_chosen_on_validation(folder, tmp_path, cli):
    root, _ = folder
    best = json.loads(cli("best", "--json", cwd=root).stdout)
    assert list(best["class_thresholds"]) == list(COUNTS) and sum(best["class_thresholds"].values()) == pytest.approx(1.0)
    assert "per-class thresholds" in cli("best", cwd=root).stdout
    status = cli("status", cwd=root).stdout
    assert "threshold: one per class, chosen on validation (tuner best shows them)" in status
    saved = tmp_path / "final.pt"
    assert cli("best", "--save-model", str(saved), cwd=root).returncode == 0
    t = torch.load(saved, weights_only=True)["class_thresholds"]
    assert len(t) == 4 and sum(t) == pytest.approx(1.0)
    images = sorted((root / "data" / "test").glob("*/*.png"))
    proc = cli("predict", str(saved), *map(str, images), "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "divided by its threshold" in proc.stderr
    rows = json.loads(proc.stdout)
    names = list(COUNTS)
    by_hand = [names[int(np.argmax([r["probabilities"][c] / t[i] for i, c in enumerate(names)]))] for r in rows]
    assert [r["predicted"] for r in rows] == by_hand and all(r["threshold"] is None for r in rows)  # no one cut
    assert {r["threshold_of"] for r in rows} == {"one per class, in the model file's class_thresholds"}
    truth = [p.parent.name for p in images]
    recall = np.mean([np.mean([p == c for p, y in zip(by_hand, truth) if y == c]) for c in names])
    assert recall == pytest.approx(best["final"]["balanced_accuracy"], abs=1e-6)
    # per-class thresholds have no one cut for --threshold to move
    assert_user_error(cli("predict", str(saved), str(images[0]), "--threshold", "0.5", cwd=root),
                      "--threshold is a cut for one class to detect", "leave out --threshold")


def test_the_report_names_the_decision_rule_and_scores_every_class(folder, tmp_path, cli):
    root, _ = folder
    proc = cli("report", "--out", str(tmp_path / "report"), cwd=root)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    best = json.loads(cli("best", "--json", cwd=root).stdout)
    cuts = ", ".join(f"{c} {cut_text(v)}" for c, v in zip(COUNTS, best["final"]["class_thresholds"]))
    assert f"deciding at per-class thresholds chosen on validation for balanced accuracy ({cuts})" in page
    assert f"balanced accuracy {best['final']['balanced_accuracy']:.4f}" in page
    # beta is searched here, not alpha, and the cross-entropy reference (trial 0) has no class weights
    assert "Objective over gamma x 1 - beta" in page and "<th>beta</th>" in page and "<th>alpha</th>" not in page
    assert re.search(r"<tr class=\"(ref|best)\"><td>\d+</td><td>0</td><td>\w+</td><td>0\.000</td><td>none</td>", page)


@pytest.fixture(scope="module")
def screening(folder):
    """The same images with a screening operating point, in a storage of its own."""
    root, _ = folder
    text = (root / "study.toml").read_text().replace('name = "tail"', 'name = "screen"\noperating_point = "recall>=0.9"')
    (root / "screen.toml").write_text(text.replace("n_trials = 4", "n_trials = 2"))
    proc = tuner("start-study", "screen.toml", "--workers", "1", "--storage", "sqlite:///screen.db", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, proc


def test_a_study_stored_before_the_final_thresholds_were_shows_those_its_test_check_used(screening, tmp_path, cli):
    root, _ = screening
    shutil.copy(root / "screen.db", tmp_path / "screen.db")
    url = f"sqlite:///{tmp_path / 'screen.db'}"
    now = json.loads(cli("best", "--json", "--storage", url, cwd=root).stdout)
    assert now["final_decision"]["class_thresholds"]["eight"] == now["final"]["class_thresholds"][0]
    optuna.load_study(study_name="screen", storage=url).set_user_attr(keys.FINAL_DECISION, None)  # as stored before they were
    then = cli("best", "--storage", url, cwd=root)
    assert "not chosen" not in then.stdout and "the final model's threshold" in then.stdout, then.stdout
    assert json.loads(cli("best", "--json", "--storage", url, cwd=root).stdout)["final_decision"] == now["final_decision"]


def test_a_recall_rule_with_many_classes_is_for_the_rarest_class_by_name(screening, cli):
    root, proc = screening
    assert "class to detect 'eight'" in proc.stderr and "recall>=0.9" in proc.stderr
    # 6 out-of-fold images: recall 0.9 cannot spare one, and the driver says what that costs
    assert "note: only 6 validation images of 'eight': recall>=0.9 must find every one (missing one is recall 0.83)" in proc.stderr
    best = json.loads(cli("best", "--json", "--storage", "sqlite:///screen.db", cwd=root).stdout)
    assert best["positive_class"] == "eight" and best["threshold"] is None
    t = best["class_thresholds"]
    assert [t[c] for c in ("five", "one", "zero")] == [1.0, 1.0, 1.0] and t["eight"] > 0
    assert best["validation"]["recall"] >= 0.9  # the rule holds on the images it was chosen on
    assert "recall" in best["test"] and "recall" in best["final"] and "precision" in best["final"]
    assert "threshold" in proc.stdout and "on p(eight) / the largest other class's probability" in proc.stdout
    assert ": average_precision (macro over the 4 classes) " in proc.stdout  # not the AP of 'eight'
    assert "recall of 'eight'" in proc.stdout
    # its own AP beside the macro one, on the test split (by its probability)
    assert ", AP of 'eight' " in proc.stdout and 0 <= best["final"]["class_average_precision"] <= 1
    # status and export give each trial's cut for 'eight' and say what it cuts
    status = json.loads(cli("status", "--json", "--storage", "sqlite:///screen.db", cwd=root).stdout)
    assert status["threshold_of"] == "on p(eight) / the largest other class's probability"
    row = next(r for r in status["trials"] if r["trial"] == best["trial"])
    assert row["threshold"] == t["eight"]
    rows = json.loads(cli("export", "-f", "json", "--storage", "sqlite:///screen.db", cwd=root).stdout)
    assert [(r["threshold"], r["threshold_of"]) for r in rows] == [(r["threshold"], status["threshold_of"]) for r in status["trials"]]


def test_the_screening_model_predicts_the_class_to_detect_when_its_ratio_reaches_the_cut(screening, tmp_path, cli):
    root, _ = screening
    saved = tmp_path / "screen.pt"
    assert cli("best", "--save-model", str(saved), "--storage", "sqlite:///screen.db", cwd=root).returncode == 0
    best = json.loads(cli("best", "--json", "--storage", "sqlite:///screen.db", cwd=root).stdout)
    assert json.loads((tmp_path / "screen.pt.json").read_text())["positive_class"] == best["positive_class"] == "eight"
    from tuner.learn.checkpoints import detected_class
    from tuner.show.predict import load_model

    assert detected_class(load_model(saved)[1]) == "eight"  # as the README tells a script to find it
    images = sorted((root / "data" / "test").glob("*/*.png"))
    proc = cli("predict", str(saved), *map(str, images), "--json", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "'eight' is predicted when p(eight) / the largest other probability is at least" in proc.stderr
    names, cut = list(COUNTS), best["final"]["class_thresholds"][0]
    by_hand = []
    for r in json.loads(proc.stdout):
        assert r["threshold"] == cut  # the ratio cut each decision was made at
        assert r["threshold_of"] == "on p(eight) / the largest other class's probability"  # status's words
        p = r["probabilities"]
        rival = max(p[c] for c in names if c != "eight")
        by_hand.append("eight" if p["eight"] >= cut * rival else max((c for c in names if c != "eight"), key=p.get))
    truth = [p.parent.name for p in images]
    assert [r["predicted"] for r in json.loads(proc.stdout)] == by_hand
    found = sum(p == y == "eight" for p, y in zip(by_hand, truth))
    assert found / truth.count("eight") == pytest.approx(best["final"]["recall"], abs=1e-9)
    table = cli("predict", str(saved), *map(str, images[:2]), cwd=root).stdout
    assert table.splitlines()[0] == "path\tpredicted\tp(eight)"
    # best shows the cut predict used on the final model's test line, the one class's alone
    text = cli("best", "--storage", "sqlite:///screen.db", cwd=root).stdout
    assert (f"the final model's threshold {cut:.4f} on p(eight) / the largest other class's probability "
            "(chosen on its trials' averaged validation predictions for recall>=0.9") in text and "; predict uses it" in text
    line = next(line for line in text.splitlines() if line.startswith("  the final model (the mean of trials"))
    assert f"at threshold {cut:.4f} on p(eight) / the largest other;" in line and "at thresholds" not in line


def test_predict_threshold_moves_the_cut_on_the_ratio_of_the_class_to_detect(screening, tmp_path, cli):
    root, _ = screening
    saved = tmp_path / "screen.pt"
    assert cli("best", "--save-model", str(saved), "--storage", "sqlite:///screen.db", cwd=root).returncode == 0
    images = [str(p) for p in sorted((root / "data" / "test").glob("*/*.png"))]
    names, found = list(COUNTS), []
    for cut in (0.001, 1000.0):
        proc = cli("predict", str(saved), *images, "--threshold", str(cut), "--json", cwd=root)
        assert proc.returncode == 0, proc.stderr
        assert f"p(eight) / the largest other probability is at least {cut:.4f} (from --threshold)" in proc.stderr
        rows = json.loads(proc.stdout)
        for r in rows:
            p = r["probabilities"]
            rival = max(p[c] for c in names if c != "eight")
            assert r["predicted"] == ("eight" if p["eight"] >= cut * rival else max((c for c in names if c != "eight"), key=p.get))
        found.append(sum(r["predicted"] == "eight" for r in rows))
    assert found[0] > found[1]
    assert_user_error(cli("predict", str(saved), images[0], "--threshold", "0", cwd=root),
                      "--threshold 0.0 is not a cut on p(eight) / the largest other probability")
    payload = torch.load(saved, weights_only=True)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="is not a cut on p\\(eight\\)"):
            cut_with(payload, bad)


def test_the_report_says_how_the_screening_model_decides(screening, tmp_path, cli):
    root, _ = screening
    assert cli("report", "--out", str(tmp_path / "r"), "--storage", "sqlite:///screen.db", cwd=root).returncode == 0
    page = (tmp_path / "r" / "index.html").read_text()
    best = json.loads(cli("best", "--json", "--storage", "sqlite:///screen.db", cwd=root).stdout)
    assert (f"deciding for &#x27;eight&#x27; when its probability over the largest other one reaches "
            f"{cut_text(best['final']['class_thresholds'][0])}, chosen on validation for recall&gt;=0.9") in page
    assert "recall of &#x27;eight&#x27;" in page
    assert "Note: Only 6 validation images of &#x27;eight&#x27;: recall&gt;=0.9 must find every one" in page


def test_naming_a_class_under_balanced_accuracy_is_a_one_line_error_before_any_study_exists(folder, cli):
    root, _ = folder
    proc = tuner("start-study", "study.toml", "--set", "data.positive_class=five", "--storage", "sqlite:///named.db", cwd=root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: data.positive_class = 'five' names a class to detect, but with 4 classes")
    assert "no study" in cli("list", "--storage", "sqlite:///named.db", cwd=root).stderr


def test_a_tie_for_the_rarest_class_under_a_recall_rule_is_a_one_line_error_before_any_study_exists(folder, tmp_path):
    root, _ = folder
    for name, n in (("a", 4), ("b", 4), ("c", 10)):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 20 * i + 40 * len(name), np.uint8)).save(tmp_path / "data" / "train" / name / f"{i}.png")
    study = (root / "study.toml").read_text().replace(str(root / "data"), str(tmp_path / "data"))
    (tmp_path / "tie.toml").write_text(study.replace('name = "tail"', 'name = "tie"\noperating_point = "recall>=0.9"'))
    proc = tuner("start-study", "tie.toml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: classes 'a', 'b' both have 4 training images") and "data.positive_class=a" in proc.stderr
    assert not (tmp_path / "tuner.db").exists()


def test_alpha_of_a_named_class_to_detect_weights_that_class_not_the_rarest(folder, cli):
    root, _ = folder
    text = (root / "study.toml").read_text().replace('name = "tail"', 'name = "named"\noperating_point = "recall>=0.9"')
    text = text.replace("n_trials = 4", "n_trials = 2") + '\n[search]\nalpha_mode = "rare"\n'
    (root / "named.toml").write_text(text.replace("[data]", '[data]\npositive_class = "five"'))
    proc = tuner("start-study", "named.toml", "--workers", "1", "--storage", "sqlite:///named-alpha.db", cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "must find every one" not in proc.stderr  # 12 images of 'five': one may be missed
    focal = torch.load(root / "tuner-artifacts" / "named" / "trial-1.pt", weights_only=True)
    assert focal["params"] == {"gamma": 2.0, "alpha": [0.75, 0.25, 0.75, 0.75]}  # eight, five, one, zero: five is weighted
    best = json.loads(cli("best", "--json", "--storage", "sqlite:///named-alpha.db", cwd=root).stdout)
    assert best["positive_class"] == "five"
    shown = best["alpha_per_class"]
    assert shown["five"] == best["params"]["alpha"] and {shown[c] for c in ("eight", "one", "zero")} == {1 - shown["five"]}
    assert f"class weights: eight {shown['eight']:.3f}, five {shown['five']:.3f}," in proc.stdout  # whom alpha weights


def test_a_screening_study_stored_before_a_class_to_detect_existed_resumes_deciding_by_the_argmax(screening, tmp_path, cli):
    import shutil

    import optuna

    from tuner import keys

    root, _ = screening
    shutil.copy(root / "screen.db", tmp_path / "old.db")
    url = f"sqlite:///{tmp_path / 'old.db'}"
    study = optuna.load_study(study_name="screen", storage=url)
    stored = study.user_attrs[keys.CONFIG]
    stored["data"]["positive_class"] = ""  # as stored when an f1 or recall rule with many classes was the argmax
    study.set_user_attr(keys.CONFIG, stored)
    proc = tuner("start-study", "screen.toml", "--workers", "1", "--n-trials", "3", "--storage", url, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the most probable class decided, as in the study's earlier trials" in proc.stderr
    new = optuna.load_study(study_name="screen", storage=url).trials[2]
    assert new.state == optuna.trial.TrialState.COMPLETE and new.user_attrs.get("class_thresholds") is None
    status = json.loads(cli("status", "--json", "--storage", url, cwd=root).stdout)
    assert status["threshold_of"] == "none: the most probable class is decided"
