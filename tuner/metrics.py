"""Metrics that see the rare class; plain accuracy is not one of them.

With 5% positives, always answering "negative" scores 95% accuracy but an average precision equal
to the prior (0.05) and a balanced accuracy of 0.5.

>>> scores(torch.tensor([0.9, 0.2, 0.1, 0.3]), torch.tensor([1, 0, 0, 0]))["average_precision"]
1.0

Plain numpy, so that a worker does not spend a second importing scikit-learn; each function below
computes what the named scikit-learn function does, in the same order of floating-point operations
(tests/test_metrics.py checks them against scikit-learn).
"""

import numpy as np
import torch


def scores(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Average precision (macro over classes when C > 2), balanced accuracy and macro-F1.

    ``probs`` is (N,) for two classes (the probability of class 1) or (N, C).
    """
    p = probs.detach().float().cpu().numpy()
    y = targets.detach().cpu().numpy()
    if p.ndim == 1:
        pred = (p >= 0.5).astype(np.int64)
        ap = average_precision(y == 1, p) if y.any() else 0.0
    else:
        pred = p.argmax(axis=1)
        present = [c for c in range(p.shape[1]) if (y == c).any()]
        ap = float(np.mean([average_precision(y == c, p[:, c]) for c in present]))
    return {
        "average_precision": float(ap),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "macro_f1": macro_f1(y, pred),
    }


def confusion(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Confusion matrix as nested lists (rows: true class, columns: predicted); as
    ``sklearn.metrics.confusion_matrix(y, pred, labels=range(num_classes))``."""
    p = probs.detach().float().cpu().numpy()
    pred = (p >= 0.5).astype(np.int64) if p.ndim == 1 else p.argmax(axis=1)
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
