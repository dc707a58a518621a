"""tuner.learn.metrics is plain numpy; scikit-learn, still a dependency, is the reference it must equal."""

import doctest
import subprocess
import sys
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

import tuner.learn.metrics
from tuner.learn.metrics import (check_operating_point, choose_threshold, misses_allowed, class_thresholds, confusion, decide, focus_thresholds,
                                 paired_bootstrap, scores)

TOL = 1e-12


def reference(p: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """scikit-learn's metrics of decisions ``pred`` (and of the scores, for AP)."""
    if p.ndim == 1:
        ap = skm.average_precision_score(y, p) if y.any() else 0.0
    else:
        ap = np.mean([skm.average_precision_score(y == c, p[:, c]) for c in range(p.shape[1]) if (y == c).any()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "average_precision": float(ap),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        }
        if p.ndim == 1:
            out["recall"] = float(skm.recall_score(y, pred, zero_division=0))
            out["precision"] = float(skm.precision_score(y, pred, zero_division=0))
    return out


def ece_by_hand(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, hit = (p, y == 1) if p.ndim == 1 else (p.max(axis=1), p.argmax(axis=1) == y)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if inside.any():
            total += inside.sum() / len(conf) * abs(hit[inside].mean() - conf[inside].astype(np.float64).mean())
    return total


def check(p: np.ndarray, y: np.ndarray) -> None:
    p = p.astype(np.float32)  # what scores() sees: probabilities as float32
    got = scores(torch.from_numpy(p), torch.from_numpy(y))
    if p.ndim == 1:
        pred = (p >= got["threshold"]).astype(np.int64)
        half = reference(p, y, (p >= 0.5).astype(np.int64))
        assert abs(got["balanced_accuracy@0.5"] - half["balanced_accuracy"]) <= TOL
        assert abs(got["macro_f1@0.5"] - half["macro_f1"]) <= TOL
        if 0 < y.sum() < len(y):  # the balanced-accuracy rule: the positive share
            assert got["threshold"] == pytest.approx(y.mean())
    else:  # per-class thresholds when every class has an image, else the argmax
        assert ("class_thresholds" in got) == (np.bincount(y, minlength=p.shape[1]) > 0).all()
        t = got.get("class_thresholds")
        pred = (p / np.array(t)).argmax(axis=1) if t else p.argmax(axis=1)
    want = reference(p, y, pred)
    for key in want:
        assert abs(got[key] - want[key]) <= TOL, (key, got[key], want[key], p, y)
    assert got["ece"] == pytest.approx(ece_by_hand(p, y), abs=1e-9)
    c = 2 if p.ndim == 1 else p.shape[1]
    for n in (c, c + 2):  # also a matrix wider than the classes seen
        cut = got.get("threshold", got.get("class_thresholds", 0.5))
        assert confusion(torch.from_numpy(p), torch.from_numpy(y), n, cut) == skm.confusion_matrix(y, pred, labels=range(n)).tolist()


def binary_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.choice([1, 2, 3, 7, 40, 300]))
    y = (rng.random(n) < rng.choice([0.05, 0.3, 0.5, 0.9])).astype(np.int64)
    p = np.clip(0.35 * y + rng.random(n) * 0.8, 0, 1)
    kind = rng.integers(5)
    if kind == 1:
        p = p.round(1)  # many ties, some exactly 0.5
    elif kind == 2:
        p = (p * 3).round() / 3 * 0.49  # few distinct values, class 1 never predicted
    elif kind == 3:
        y[:] = rng.integers(2)  # all one class
    elif kind == 4:
        p = np.full(n, rng.choice([0.2, 0.5, 0.7]))  # one score for everything
    return p, y


def multiclass_case(rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.choice([1, 2, 5, 30, 250]))
    y = rng.integers(c, size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y] * rng.random()
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    kind = rng.integers(6)
    if kind == 1:
        p = p.round(1)  # many ties, in scores and in the argmax
    elif kind == 2:
        p[:, rng.integers(c)] = 0  # a class never predicted
    elif kind == 3:
        y = np.where(y == (k := rng.integers(c)), (k + 1) % c, y)  # a class absent from y, maybe predicted
    elif kind == 4:
        y[:] = rng.integers(c)  # all one class
    elif kind == 5:
        y = y % 2  # most classes absent from y, still predicted
    return p, y


@pytest.mark.parametrize("seed", range(4))
def test_binary_scores_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        check(*binary_case(rng))


@pytest.mark.parametrize("c", [3, 5])
@pytest.mark.parametrize("seed", range(2))
def test_multiclass_scores_equal_sklearn(c, seed):
    rng = np.random.default_rng(100 * c + seed)
    for _ in range(40):
        check(*multiclass_case(rng, c))


def test_edge_cases_by_hand():
    check(np.array([0.9, 0.2, 0.1, 0.3]), np.array([1, 0, 0, 0]))
    check(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 0]))  # one tied threshold, exactly 0.5
    check(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]))  # no positives: AP 0.0
    check(np.array([0.6, 0.7, 0.8]), np.array([1, 1, 1]))
    check(np.array([0.1, 0.2]), np.array([1, 1]))  # positives only, never predicted
    three = np.array([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.1, 0.9, 0.0]])
    check(three, np.array([0, 1, 2, 2]))  # class 2 true but never predicted
    check(three, np.array([0, 0, 0, 0]))  # y all one class, class 1 predicted
    check(np.eye(5)[[4, 3, 1, 1]], np.array([4, 3, 1, 1]))


def test_no_positives_is_zero_not_nan():
    assert scores(torch.tensor([0.1, 0.7]), torch.tensor([0, 0]))["average_precision"] == 0.0


def test_doctest():
    assert doctest.testmod(tuner.learn.metrics).failed == 0


def test_a_worker_imports_no_sklearn():
    code = "import sys, tuner.search.workers, tuner.learn.data; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- operating points ----


def test_balanced_accuracy_threshold_is_the_positive_share():
    t = choose_threshold(np.array([0.9, 0.6, 0.3, 0.2, 0.1]), np.array([1, 0, 1, 0, 0]), "balanced_accuracy")
    assert t == pytest.approx(2 / 5)


def test_on_calibrated_probabilities_the_positive_share_maximises_expected_balanced_accuracy():
    # labels drawn from the probabilities themselves (calibrated by construction), 5% positives: no
    # threshold on a fine grid beats the share by more than the sampling noise of 400,000 images
    rng = np.random.default_rng(0)
    p = rng.beta(0.3, 5.7, 400_000)
    y = rng.random(len(p)) < p
    ba = lambda cut: ((p[y] >= cut).mean() + (p[~y] < cut).mean()) / 2  # noqa: E731
    share = choose_threshold(p, y, "balanced_accuracy")
    assert share == pytest.approx(0.05, abs=0.002)
    assert ba(share) >= max(ba(c) for c in np.linspace(0.005, 0.5, 100)) - 0.002
    assert ba(share) > ba(0.5) + 0.1


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ba(y, pred):
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


def test_class_thresholds_shift_the_totals_to_the_class_counts():
    rng = np.random.default_rng(1)
    p, y = _softmax(rng.normal(size=(300, 4)) * 2), rng.choice(4, 300, p=[0.6, 0.25, 0.1, 0.05])
    t = np.array(class_thresholds(p, y, "balanced_accuracy"))
    counts = np.bincount(y, minlength=4)
    assert t.sum() == pytest.approx(1.0) and (t > 0).all()
    q = p * (counts / len(y)) / t  # p shifted by exp(b), b = log(share / t) up to a constant
    q /= q.sum(axis=1, keepdims=True)
    assert q.sum(axis=0) == pytest.approx(counts, abs=1e-6)


def test_with_totals_that_already_match_the_thresholds_are_the_shares_and_two_classes_give_the_binary_rule():
    p1, y = np.array([0.7, 0.1, 0.1, 0.1, 0.6, 0.2, 0.1, 0.1]), np.array([1, 0, 0, 0, 1, 0, 0, 0])  # sum(p1) = 2 positives
    t = class_thresholds(np.c_[1 - p1, p1], y, "balanced_accuracy")
    assert t == pytest.approx([0.75, 0.25])
    assert (decide(np.c_[1 - p1, p1], t) == decide(p1, choose_threshold(p1, y == 1, "balanced_accuracy"))).all()


def test_class_thresholds_are_the_bayes_rule_for_balanced_accuracy_and_beat_the_argmax():
    # labels drawn from the probabilities (calibrated by construction), a long tail of three classes
    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(size=(200_000, 3)) * 1.5 + np.log([0.8, 0.15, 0.05]))
    y = (rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1)
    t = class_thresholds(p, y, "balanced_accuracy")
    shares = np.bincount(y) / len(y)
    assert t == pytest.approx(shares, abs=0.01)
    rule = _ba(y, decide(p, t))
    assert rule > _ba(y, p.argmax(axis=1)) + 0.05
    for _ in range(50):  # no nearby set of thresholds does better beyond the sampling noise
        other = shares * np.exp(rng.normal(scale=0.3, size=3))
        assert rule >= _ba(y, decide(p, other / other.sum())) - 0.003


def test_class_thresholds_undo_a_per_class_shift_of_the_logits():
    # class weights shift each class's logit; one temperature cannot undo that, the thresholds do
    rng = np.random.default_rng(2)
    z = rng.normal(size=(20_000, 4)) * 2 + np.log([0.7, 0.2, 0.07, 0.03])
    p = _softmax(z)
    y = (rng.random(len(p))[:, None] > p.cumsum(axis=1)).sum(axis=1)
    shifted = _softmax(z + np.array([-1.0, 0.5, 1.5, 2.5]))
    plain, moved = decide(p, class_thresholds(p, y, "balanced_accuracy")), decide(shifted, class_thresholds(shifted, y, "balanced_accuracy"))
    assert (plain == moved).mean() > 0.99
    assert abs(_ba(y, plain) - _ba(y, moved)) < 0.005


def test_class_thresholds_only_for_balanced_accuracy_and_with_every_class_present():
    p = _softmax(np.random.default_rng(3).normal(size=(30, 3)))
    assert class_thresholds(p, np.arange(30) % 3, "f1") is None
    assert class_thresholds(p, np.arange(30) % 2, "balanced_accuracy") is None  # class 2 has no image
    assert "class_thresholds" not in scores(torch.from_numpy(p), torch.from_numpy(np.arange(30) % 3), "f1")
    assert (decide(p, None) == p.argmax(axis=1)).all()


def test_f1_takes_the_higher_cut_of_equal_values():
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    pos = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    # top 1 and top 4 both give F1 2/3: the higher cut
    assert choose_threshold(score, pos, "f1") == pytest.approx((0.9 + 0.8) / 2)


def test_recall_rule_is_the_highest_threshold_that_keeps_the_recall():
    score = np.array([0.95, 0.9, 0.8, 0.7, 0.4, 0.3])
    pos = np.array([1, 1, 0, 1, 1, 0])
    assert choose_threshold(score, pos, "recall>=0.5") == pytest.approx((0.9 + 0.8) / 2)
    assert choose_threshold(score, pos, "recall>=0.75") == pytest.approx((0.7 + 0.4) / 2)
    assert choose_threshold(score, pos, "recall>=1") == pytest.approx((0.4 + 0.3) / 2)
    assert choose_threshold(score[:5], pos[:5], "recall>=1") == pytest.approx(0.4 / 2)  # every image positive: below the last


def test_tied_scores_are_decided_together():
    # three images share 0.5: one positive, two negatives; a cut can only take all three or none
    score = np.array([0.8, 0.5, 0.5, 0.5, 0.2])
    pos = np.array([1, 1, 0, 0, 0])
    t = choose_threshold(score, pos, "recall>=1")
    assert t == pytest.approx((0.5 + 0.2) / 2)
    assert ((score >= t) & (pos == 1)).sum() == 2 and (score >= t).sum() == 4
    assert choose_threshold(score, pos, "f1") == pytest.approx((0.8 + 0.5) / 2)  # F1 2/3 beats 4/6


def test_validation_without_positives_or_negatives_falls_back_to_one_half():
    assert choose_threshold(np.array([0.1, 0.7, 0.3]), np.array([0, 0, 0]), "balanced_accuracy") == 0.5
    assert choose_threshold(np.array([0.1, 0.7]), np.array([1, 1]), "recall>=0.9") == 0.5
    s = scores(torch.tensor([0.1, 0.7, 0.3]), torch.tensor([0, 0, 0]), "f1")
    assert s["threshold"] == 0.5 and s["recall"] == 0.0 and s["average_precision"] == 0.0


def test_a_fixed_threshold_is_used_as_given():
    s = scores(torch.tensor([0.9, 0.4, 0.35, 0.1]), torch.tensor([1, 1, 0, 0]), threshold=0.38)
    assert s["threshold"] == 0.38 and s["recall"] == 1.0 and s["precision"] == 1.0 and s["balanced_accuracy"] == 1.0
    assert s["balanced_accuracy@0.5"] == 0.75


def test_decisions_and_ece_after_calibration_use_the_calibrated_probabilities():
    raw = torch.tensor([0.9, 0.6, 0.55, 0.52, 0.51, 0.5])
    calibrated = torch.tensor([0.99, 0.7, 0.6, 0.3, 0.2, 0.1])
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    s = scores(raw, y, "balanced_accuracy", calibrated)
    assert s["threshold"] == 0.5 and s["balanced_accuracy"] == 1.0  # the raw scores at 0.5 take all six
    assert scores(raw, y, "f1", calibrated)["threshold"] == pytest.approx((0.6 + 0.3) / 2)
    assert s["ece"] == pytest.approx(ece_by_hand(raw.numpy(), y.numpy()))
    assert s["ece_calibrated"] == pytest.approx(ece_by_hand(calibrated.numpy(), y.numpy()))


@pytest.mark.parametrize("rule", ["recall>=", "recall>=0", "recall>=1.5", "precision>=0.9", "accuracy", "recall>=-0.1"])
def test_unknown_operating_points_raise(rule):
    with pytest.raises(ValueError, match="operating point"):
        check_operating_point(rule)


def test_known_operating_points():
    assert check_operating_point("balanced_accuracy") is None and check_operating_point("f1") is None
    assert check_operating_point("recall>=0.95") == 0.95 and check_operating_point("recall>=1") == 1.0


def noisy_pair(n: int, seed: int = 0, classes: int = 2):
    """Labels with 10% positives (or a long tail) and two models' probabilities and decisions: a
    better one and a worse one, each with its own noise."""
    rng = np.random.default_rng(seed)
    if classes == 2:
        y = (rng.random(n) < 0.1).astype(np.int64)
        y[:2] = [0, 1]
        out = []
        for noise in (1.0, 2.0):
            p = 1 / (1 + np.exp(-(3 * (2 * y - 1) + noise * rng.normal(size=n))))
            out.append((p, (p >= 0.5).astype(np.int64)))
    else:
        y = rng.choice(classes, n, p=np.arange(classes, 0, -1) / np.arange(classes, 0, -1).sum())
        out = []
        for noise in (1.0, 2.0):
            logits = 3 * np.eye(classes)[y] + noise * rng.normal(size=(n, classes))
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            out.append((p, p.argmax(1)))
    return y, out[0], out[1]


@pytest.mark.parametrize("classes", [2, 4])
def test_paired_bootstrap_difference_is_that_of_the_scores_on_all_images(classes):
    y, a, b = noisy_pair(300, classes=classes)
    got = paired_bootstrap(y, a, b, resamples=50)
    ra, rb = reference(a[0], y, a[1]), reference(b[0], y, b[1])
    assert got["average_precision"] == pytest.approx(ra["average_precision"] - rb["average_precision"], abs=TOL)
    assert got["balanced_accuracy"] == pytest.approx(ra["balanced_accuracy"] - rb["balanced_accuracy"], abs=TOL)
    assert got["average_precision"] > 0 and got["average_precision_std"] > 0 and got["balanced_accuracy_std"] > 0


def test_paired_bootstrap_with_a_class_to_detect_adds_that_class_s_own_ap_difference():
    y, a, b = noisy_pair(300, classes=4, seed=2)
    got = paired_bootstrap(y, a, b, resamples=50, focus=3)
    own = skm.average_precision_score(y == 3, a[0][:, 3]) - skm.average_precision_score(y == 3, b[0][:, 3])
    assert got["class_average_precision"] == pytest.approx(own, abs=TOL)
    assert got["class_average_precision"] != pytest.approx(got["average_precision"], abs=1e-3)  # not the macro AP again
    assert got["class_average_precision_std"] > 0
    assert "class_average_precision" not in paired_bootstrap(y, a, b, resamples=5)


def test_paired_bootstrap_of_a_model_with_itself_is_zero():
    y, a, _ = noisy_pair(200)
    got = paired_bootstrap(y, a, a, resamples=50)
    assert got == {"average_precision": 0.0, "average_precision_std": 0.0, "balanced_accuracy": 0.0, "balanced_accuracy_std": 0.0}


def test_paired_bootstrap_std_shrinks_as_one_over_the_root_of_the_images():
    y, a, b = noisy_pair(200, seed=3)
    small = paired_bootstrap(y, a, b, resamples=400)
    big = paired_bootstrap(np.tile(y, 16), *((np.tile(p, 16), np.tile(d, 16)) for p, d in (a, b)), resamples=400)
    for k in ("average_precision_std", "balanced_accuracy_std"):
        assert 0.15 < big[k] / small[k] < 0.35  # 1/sqrt(16) = 0.25


def test_paired_bootstrap_keeps_every_class_in_every_resample():
    y, a, b = noisy_pair(100, seed=1)
    y = np.zeros_like(y)
    y[7] = 1  # one positive: a resample without it would have no AP
    got = paired_bootstrap(y, a, b, resamples=100)
    assert all(np.isfinite(v) for v in got.values())


def _focus_case(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    return _softmax(logits), y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_recall_rule_on_one_of_many_classes_is_the_highest_cut_that_keeps_its_recall(seed, target):
    p, y = _focus_case(seed)
    t = focus_thresholds(p, y, f"recall>={target}", 2)
    assert t[0] == t[1] == 1.0
    ratio = p[:, 2] / np.delete(p, 2, axis=1).max(axis=1)
    pred = decide(p, t)
    assert ((pred == 2) == (ratio >= t[2])).all()  # class 2 exactly when its ratio reaches the cut
    assert (pred[pred != 2] == p[pred != 2][:, :2].argmax(axis=1)).all()  # else the most probable other class
    recall = ((pred == 2) & (y == 2)).sum() / (y == 2).sum()
    assert recall >= target - 1e-12
    higher = ratio[ratio > t[2]]
    if len(higher):  # the next cut up loses the target
        assert ((ratio >= higher.min() + 1e-12) & (y == 2)).sum() / (y == 2).sum() < target
    if (ratio < t[2]).any():  # halfway on the log scale between the last ratio taken and the next one down
        assert t[2] == pytest.approx(np.sqrt(ratio[ratio >= t[2]].min() * ratio[ratio < t[2]].max()), rel=1e-12)


def test_a_cut_on_a_ratio_lies_halfway_on_its_log_scale():
    ratio, pos = np.array([300.0, 154.0, 15.6, 0.2]), np.array([True, True, True, False])
    # recall>=0.6 keeps 2 of the 3: the cut lies between 154 and 15.6, not next to 154 as their mean would
    assert choose_threshold(ratio, pos, "recall>=0.6", ratio=True) == pytest.approx(np.sqrt(154 * 15.6))
    assert choose_threshold(ratio, pos, "recall>=0.6") == pytest.approx((154 + 15.6) / 2)
    assert choose_threshold(ratio, pos, "recall>=1", ratio=True) == pytest.approx(np.sqrt(15.6 * 0.2))
    odd = np.array([True, False, True])  # the last positive is the lowest score: half of it, as on a probability
    assert choose_threshold(ratio[:3], odd, "recall>=1", ratio=True) == pytest.approx(15.6 / 2)


@pytest.mark.parametrize("seed", range(4))
def test_f1_rule_on_one_of_many_classes_maximises_its_f1(seed):
    p, y = _focus_case(seed)
    ratio = p[:, 1] / np.delete(p, 1, axis=1).max(axis=1)
    t = focus_thresholds(p, y, "f1", 1)
    best = max(skm.f1_score(y == 1, ratio >= c) for c in np.unique(ratio))
    assert skm.f1_score(y == 1, decide(p, t) == 1) == pytest.approx(best, abs=TOL)


@pytest.mark.parametrize("rule", ["f1", "recall>=0.9", "recall>=0.6"])
def test_with_a_class_that_never_wins_the_rule_on_one_class_is_the_binary_rule(rule):
    rng = np.random.default_rng(7)
    q = rng.uniform(size=150)
    y = (rng.uniform(size=150) < q).astype(np.int64) + 1  # classes 1 and 2; class 0 has probability 0
    p = np.c_[np.zeros(150), 1 - q, q]
    binary = q >= choose_threshold(q, y == 2, rule)
    assert ((decide(p, focus_thresholds(p, y, rule, 2)) == 2) == binary).all()


def test_scores_with_a_class_to_detect_report_its_recall_and_precision_and_keep_the_other_metrics():
    p, y = _focus_case(1)
    got = scores(torch.from_numpy(p), torch.from_numpy(y), "recall>=0.9", focus=2)
    pred = decide(p, got["class_thresholds"])
    assert got["recall"] == pytest.approx(skm.recall_score(y == 2, pred == 2), abs=TOL) and got["recall"] >= 0.9
    assert got["precision"] == pytest.approx(skm.precision_score(y == 2, pred == 2), abs=TOL)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=TOL)
    assert got["class_average_precision"] == pytest.approx(skm.average_precision_score(y == 2, p[:, 2]), abs=TOL)
    plain = scores(torch.from_numpy(p), torch.from_numpy(y), "recall>=0.9")  # no class named: the argmax, as before
    assert "class_thresholds" not in plain and "recall" not in plain
    assert scores(torch.from_numpy(p), torch.from_numpy(y), "balanced_accuracy", focus=2)["class_thresholds"] == \
        pytest.approx(class_thresholds(p, y, "balanced_accuracy"), rel=1e-6)  # balanced accuracy weighs every class alike


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99])
def test_misses_allowed_is_what_the_recall_rule_misses_on_validation(target):
    rng = np.random.default_rng(0)
    for n in range(1, 45):
        positive = np.r_[np.ones(n, bool), np.zeros(3 * n, bool)]
        score = rng.permutation(len(positive)) / len(positive)  # distinct scores, classes interleaved
        missed = int((score[positive] < choose_threshold(score, positive, f"recall>={target}")).sum())
        assert missed == misses_allowed(n, target), (n, target)
