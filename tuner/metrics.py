"""Metrics that see the rare class; plain accuracy is not one of them.

With 5% positives, always answering "negative" scores 95% accuracy but an average precision equal
to the prior (0.05) and a balanced accuracy of 0.5.

>>> scores(torch.tensor([0.9, 0.2, 0.1, 0.3]), torch.tensor([1, 0, 0, 0]))["average_precision"]
1.0
"""

import warnings

import numpy as np
import torch
from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score


def scores(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Average precision (macro over classes when C > 2), balanced accuracy and macro-F1.

    ``probs`` is (N,) for two classes (the probability of class 1) or (N, C).
    """
    p = probs.detach().float().cpu().numpy()
    y = targets.detach().cpu().numpy()
    if p.ndim == 1:
        pred = (p >= 0.5).astype(np.int64)
        ap = average_precision_score(y, p) if y.any() else 0.0
    else:
        pred = p.argmax(axis=1)
        present = [c for c in range(p.shape[1]) if (y == c).any()]
        ap = float(np.mean([average_precision_score(y == c, p[:, c]) for c in present]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class never predicted is a valid, if bad, outcome
        return {
            "average_precision": float(ap),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        }


def confusion(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Confusion matrix as nested lists (rows: true class, columns: predicted)."""
    p = probs.detach().float().cpu().numpy()
    pred = (p >= 0.5).astype(np.int64) if p.ndim == 1 else p.argmax(axis=1)
    return confusion_matrix(targets.cpu().numpy(), pred, labels=list(range(num_classes))).tolist()
