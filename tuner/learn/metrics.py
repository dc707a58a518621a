"""Metrics that see the rare class; plain accuracy is not one of them.

With 5% positives, always answering "negative" scores 95% accuracy but an average precision equal
to the prior (0.05) and a balanced accuracy of 0.5.

>>> scores(torch.tensor([0.9, 0.2, 0.1, 0.3]), torch.tensor([1, 0, 0, 0]))["average_precision"]
1.0

Two classes: the positive class is index 1 (``tuner.learn.data`` puts the named positive class there),
and a probability is that of the positive class. Thresholded metrics are computed at an operating
point chosen on the same scores by a rule (``choose_threshold``) or at a given threshold; the
values at 0.5 are kept under names ending in ``@0.5``. More classes: the class with the largest
probability divided by its own threshold (``class_thresholds`` for balanced accuracy,
``focus_thresholds`` when a class to detect has an ``f1`` or ``recall>=X`` rule; else the argmax).

Plain numpy, so that a worker does not spend a second importing scikit-learn; each function named
after a scikit-learn one computes what it does, in the same order of floating-point operations
(tests/test_metrics.py checks them against scikit-learn).
"""

import re

import numpy as np
import torch

from tuner import keys

OPERATING_POINTS = ("balanced_accuracy", "f1", "recall>=X")
ECE_BINS = 15


def check_operating_point(rule: str) -> float | None:
    """The target recall of a ``recall>=X`` rule, None for the other rules; ValueError when unknown."""
    if rule in ("balanced_accuracy", "f1"):
        return None
    m = re.fullmatch(r"recall>=(0?\.\d+|1(\.0*)?)", rule) if isinstance(rule, str) else None
    if m is None or not 0 < float(m.group(1)) <= 1:
        raise ValueError(f"operating point {rule!r} is not one of balanced_accuracy, f1, recall>=X with 0 < X <= 1")
    return float(m.group(1))


def misses_allowed(n: int, target: float) -> int:
    """How many of ``n`` validation images of a class a ``recall>=target`` rule may miss (as
    ``choose_threshold`` counts). With fewer than 1 / (1 - target) images it is none: the threshold then
    falls below the class's hardest image, wherever the target lies.

    >>> misses_allowed(10, 0.9), misses_allowed(9, 0.9), misses_allowed(40, 0.95)
    (1, 0, 2)
    """
    return int(n * (1 - target) + 1e-9)  # 10 * (1 - 0.9) is 0.99999... in floating point


def choose_threshold(score: np.ndarray, positive: np.ndarray, rule: str, ratio: bool = False) -> float:
    """The decision threshold (predict positive when score >= it) that the rule picks on these scores.

    - ``balanced_accuracy``: the positive class's share of these images. On calibrated probabilities
      this is the Bayes rule for balanced accuracy (positive when p / share >= (1 - p) / (1 - share)):
      it rests on every score through the calibration instead of on the last few positives, which the
      threshold that maximises balanced accuracy on validation follows (bench/results/quality.md).
    - ``f1``: the one that maximises F1; among equal values, the highest.
    - ``recall>=X``: the highest that keeps the recall of the positive class at or above X.
    For these two, tied scores are decided together and the threshold lies halfway between the lowest
    score taken as positive and the next lower score (or 0), so that new images a little below the
    last positive still count; ``ratio``: the scores are ratios of probabilities (0 to infinity), and
    halfway is on their log scale (the log-odds with two classes), since halfway on the ratio itself
    would sit next to the last positive when it is far above the next image (154 and 15.6 gave 85).
    Scores with no positives or no negatives give 0.5.
    """
    target = check_operating_point(rule)
    pos = np.asarray(positive, dtype=bool)
    if pos.all() or not pos.any():
        return 0.5
    if rule == "balanced_accuracy":
        return float(pos.mean())
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # cut k takes s[: last[k] + 1] as positive
    tp = np.cumsum(pos)[last].astype(np.float64)
    fp = last + 1 - tp
    n_pos = tp[-1]
    if target is not None:
        k = int(np.argmax(tp / n_pos >= target - 1e-12))
    else:
        k = int(np.argmax(2 * tp / (n_pos + tp + fp)))
    below = s[last[k] + 1] if last[k] + 1 < len(s) else 0.0
    if ratio and below > 0:
        return float(np.sqrt(s[last[k]] * below))
    return float((s[last[k]] + below) / 2)


def class_thresholds(p: np.ndarray, y: np.ndarray, rule: str, steps: int = 200) -> list[float] | None:
    """Per-class thresholds t for C > 2 classes: decide the class with the largest p / t (``decide``).

    - ``balanced_accuracy``: the Bayes rule for it, p(c | x) / share_c, where p is first shifted per
      class until its totals match the class counts of these images (the prior adjustment of Saerens et
      al. 2002: b_c += log(n_c / sum_i p_ic) until it settles). One temperature cannot undo the per-class
      shift that class weights put into the logits, so without the shift weighted and unweighted models
      would be decided on different scales. Then t_c = share_c * exp(-b_c), normalised to sum 1 (for a
      model whose totals already match, b = 0 and t is the shares: the binary rule with two classes).
    - other rules: None (plain argmax); so too when a class has no image here.
    """
    counts = np.bincount(np.asarray(y), minlength=p.shape[1]).astype(np.float64)
    if rule != "balanced_accuracy" or (counts == 0).any():
        return None
    log_p = np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-300, None))
    b = np.zeros(p.shape[1])
    for _ in range(steps):
        z = log_p + b
        q = np.exp(z - z.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        step = np.log(counts / np.clip(q.sum(axis=0), 1e-300, None))
        b += step
        if np.abs(step).max() < 1e-9:
            break
    t = counts / counts.sum() * np.exp(-(b - b.max()))
    return (t / t.sum()).tolist()


def focus_thresholds(p: np.ndarray, y: np.ndarray, rule: str, focus: int) -> list[float]:
    """Per-class thresholds for C > 2 classes that put the ``f1`` or ``recall>=X`` rule on one class
    (``focus``, the class to detect): the others get 1, so the argmax decides among them, and the
    focus class wins when its probability divided by the largest other one reaches its threshold,
    chosen by the rule on that ratio as ``choose_threshold`` chooses on a binary score, halfway on the
    ratio's log scale. With two classes the ratio is the odds p / (1 - p): the same ranking as the
    binary rule, with the cut halfway in log-odds rather than in probability."""
    q = np.asarray(p, dtype=np.float64)
    rival = np.delete(q, focus, axis=1).max(axis=1)
    ratio = q[:, focus] / np.clip(rival, 1e-300, None)
    t = [1.0] * q.shape[1]
    t[focus] = choose_threshold(ratio, np.asarray(y) == focus, rule, ratio=True)
    return t


def decide(p: np.ndarray, cut) -> np.ndarray:
    """Decisions: two classes (``p`` of shape (N,)), positive when p >= ``cut`` (0.5 when None); more,
    the class with the largest p / cut (per-class thresholds), or the argmax when ``cut`` is not a
    list of them."""
    if p.ndim == 1:
        return (p >= (0.5 if cut is None else cut)).astype(np.int64)
    if isinstance(cut, (list, tuple, np.ndarray)) and len(cut) == p.shape[1]:
        return (p / np.asarray(cut, dtype=np.float64)).argmax(axis=1)
    return p.argmax(axis=1)


def scores(probs: torch.Tensor, targets: torch.Tensor, threshold: str | float = "balanced_accuracy",
           calibrated: torch.Tensor | None = None, focus: int | None = None) -> dict[str, float]:
    """Average precision (macro over classes when C > 2), balanced accuracy, macro-F1 and expected
    calibration error; for two classes also the threshold, recall and precision of the positive class.

    ``probs`` is (N,) for two classes (the probability of the positive class, index 1) or (N, C).
    ``threshold``: an operating-point rule chosen on these scores, or a fixed threshold (with C > 2,
    per-class thresholds or None for the argmax; the chosen ones are returned as ``class_thresholds``).
    ``calibrated``: the same probabilities after temperature scaling; thresholds and decisions then
    refer to them (and ``ece_calibrated`` is theirs); the ranking, hence AP, is the same.
    ``focus``: with C > 2, the class to detect: the ``f1`` and ``recall>=X`` rules are for it
    (``focus_thresholds``), and its recall and precision are returned.
    """
    p = probs.detach().float().cpu().numpy()
    y = targets.detach().cpu().numpy()
    cal = p if calibrated is None else calibrated.detach().float().cpu().numpy()
    if p.ndim == 1:
        t = choose_threshold(cal, y == 1, threshold) if isinstance(threshold, str) else float(threshold)
        pred, half = (cal >= t).astype(np.int64), (p >= 0.5).astype(np.int64)
        out = {
            keys.AVERAGE_PRECISION: float(average_precision(y == 1, p)) if y.any() else 0.0,
            keys.THRESHOLD: t,
            keys.BALANCED_ACCURACY: balanced_accuracy(y, pred),
            keys.MACRO_F1: macro_f1(y, pred),
            **recall_precision(y, pred, 1),
            keys.BALANCED_ACCURACY_HALF: balanced_accuracy(y, half),
            keys.MACRO_F1_HALF: macro_f1(y, half),
        }
    else:
        t = threshold
        if isinstance(threshold, str):
            ruled = focus is not None and threshold != "balanced_accuracy"
            t = focus_thresholds(cal, y, threshold, focus) if ruled else class_thresholds(cal, y, threshold)
        pred = decide(cal, t)
        out = {
            keys.AVERAGE_PRECISION: _ap(p, y),
            keys.BALANCED_ACCURACY: balanced_accuracy(y, pred),
            keys.MACRO_F1: macro_f1(y, pred),
        }
        if focus is not None:  # macro AP weighs every class alike: the class to detect gets its own too
            out.update(recall_precision(y, pred, focus), **{keys.CLASS_AVERAGE_PRECISION: average_precision(y == focus, p[:, focus])})
        if isinstance(t, (list, tuple)):
            out[keys.CLASS_THRESHOLDS] = list(t)
    out[keys.ECE] = expected_calibration_error(p, y)
    if calibrated is not None:
        out[keys.ECE_CALIBRATED] = expected_calibration_error(cal, y)
    return out


def recall_precision(y: np.ndarray, pred: np.ndarray, c: int) -> dict[str, float]:
    """Recall and precision of class ``c`` (0 where nothing is true or nothing predicted)."""
    tp = int(((pred == c) & (y == c)).sum())
    return {keys.RECALL: tp / max(int((y == c).sum()), 1), keys.PRECISION: tp / max(int((pred == c).sum()), 1)}


def paired_bootstrap(y: np.ndarray, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                     resamples: int = 400, seed: int = 0, focus: int | None = None) -> dict[str, float]:
    """How far apart two models are on the same images, and how much of that the images alone could
    make: the difference a - b in average precision and in balanced accuracy, and the standard
    deviation of each difference over bootstrap resamples of the images (each class resampled within
    itself, so every resample keeps the class counts). ``a``, ``b``: each model's probabilities (as
    ``scores`` takes them) and decisions; ``focus``: a class to detect among more than two, whose own
    AP difference is added (``class_average_precision``). With a few dozen rare images, a difference
    under about twice its standard deviation is the luck of which images were drawn, not a better model."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]

    names = [keys.AVERAGE_PRECISION, keys.BALANCED_ACCURACY] + ([keys.CLASS_AVERAGE_PRECISION] if focus is not None else [])

    def differences(idx: np.ndarray) -> list[float]:
        (pa, da), (pb, db), yy = (a[0][idx], a[1][idx]), (b[0][idx], b[1][idx]), y[idx]
        out = [_ap(pa, yy) - _ap(pb, yy), balanced_accuracy(yy, da) - balanced_accuracy(yy, db)]
        if focus is not None:
            out.append(average_precision(yy == focus, pa[:, focus]) - average_precision(yy == focus, pb[:, focus]))
        return out

    whole = differences(np.arange(len(y)))
    draws = np.array([differences(np.concatenate([rng.choice(i, len(i)) for i in by_class])) for _ in range(resamples)])
    out = {}
    for i, k in enumerate(names):
        out |= {k: whole[i], k + "_std": float(draws[:, i].std())}
    return out


def _ap(p: np.ndarray, y: np.ndarray) -> float:
    """Average precision as ``scores`` reports it: of the positive class, or macro over the classes present."""
    if p.ndim == 1:
        return average_precision(y == 1, p)
    return float(np.mean([average_precision(y == c, p[:, c]) for c in range(p.shape[1]) if (y == c).any()]))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over equal-width bins: the mean |observed frequency - mean probability|, weighted by the
    bin's share of samples. Two classes (``p`` of shape (N,)): of the positive class's probability;
    more: of the top label (confidence = max probability, observed = argmax is right)."""
    if p.ndim == 1:
        conf, hit = p.astype(np.float64), (y == 1).astype(np.float64)
    else:
        conf, hit = p.max(axis=1).astype(np.float64), (p.argmax(axis=1) == y).astype(np.float64)
    if len(conf) == 0:
        return 0.0
    b = np.minimum((conf * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(b, hit, bins) - np.bincount(b, conf, bins))  # |sum(hit) - sum(conf)| per bin
    return float(gap.sum() / len(conf))


def confusion(probs: torch.Tensor, targets: torch.Tensor, num_classes: int, threshold=0.5) -> list[list[int]]:
    """Confusion matrix as nested lists (rows: true class, columns: predicted) of the decisions at
    ``threshold`` (``decide``); as ``sklearn.metrics.confusion_matrix(y, pred, labels=range(num_classes))``."""
    p = probs.detach().float().cpu().numpy()
    pred = decide(p, threshold)
    return confusion_matrix(targets.cpu().numpy(), pred, np.arange(num_classes)).tolist()


def confusion_matrix(y: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts (rows: true, columns: predicted) over sorted ``labels``; pairs with a value outside
    ``labels`` are left out, as ``sklearn.metrics.confusion_matrix(y, pred, labels=labels)`` does."""
    k = len(labels)
    keep = np.isin(y, labels) & np.isin(pred, labels)
    i, j = np.searchsorted(labels, y[keep]), np.searchsorted(labels, pred[keep])
    return np.bincount(i * k + j, minlength=k * k).reshape(k, k)


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """``sklearn.metrics.average_precision_score(positive, score)``: the sum over distinct score
    thresholds (tied scores form one step) of precision times the recall gained at that threshold.
    ``positive`` is boolean and has at least one True."""
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each distinct score
    tps = np.cumsum(positive, dtype=np.float64)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    # sklearn reverses both curves, appends the point (recall 0, precision 1) and sums the steps
    steps = np.diff(np.r_[recall[::-1], 0.0]) * precision[::-1]
    return float(max(0.0, -np.sum(steps)))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """``sklearn.metrics.balanced_accuracy_score(y, pred)``: the mean recall of the classes in ``y``;
    a class only predicted, never true, has no recall and is left out."""
    cm = confusion_matrix(y, pred, np.union1d(y, pred))
    true = cm.sum(axis=1)
    return float(np.mean(np.diag(cm)[true > 0] / true[true > 0]))


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """``sklearn.metrics.f1_score(y, pred, average="macro", zero_division=0)``: the mean F1 over every
    class true or predicted (so no F1 has a zero denominator and zero_division never applies)."""
    cm = confusion_matrix(y, pred, np.union1d(y, pred))
    tp = np.diag(cm).astype(np.float64)
    return float(np.mean(2 * tp / (cm.sum(axis=1) + cm.sum(axis=0))))
