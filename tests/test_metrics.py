"""tuner.metrics is plain numpy; scikit-learn, still a dependency, is the reference it must equal."""

import doctest
import subprocess
import sys
import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

import tuner.metrics
from tuner.metrics import confusion, scores

TOL = 1e-12


def reference(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """What tuner.metrics.scores computed when it called scikit-learn."""
    if p.ndim == 1:
        pred = (p >= 0.5).astype(np.int64)
        ap = skm.average_precision_score(y, p) if y.any() else 0.0
    else:
        pred = p.argmax(axis=1)
        ap = np.mean([skm.average_precision_score(y == c, p[:, c]) for c in range(p.shape[1]) if (y == c).any()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "average_precision": float(ap),
            "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
            "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        }


def check(p: np.ndarray, y: np.ndarray) -> None:
    p = p.astype(np.float32)  # what scores() sees: probabilities as float32
    got = scores(torch.from_numpy(p), torch.from_numpy(y))
    want = reference(p, y)
    assert got.keys() == want.keys()
    for key in want:
        assert abs(got[key] - want[key]) <= TOL, (key, got[key], want[key], p, y)
    c = 2 if p.ndim == 1 else p.shape[1]
    pred = (p >= 0.5).astype(np.int64) if p.ndim == 1 else p.argmax(axis=1)
    for n in (c, c + 2):  # also a matrix wider than the classes seen
        assert confusion(torch.from_numpy(p), torch.from_numpy(y), n) == skm.confusion_matrix(y, pred, labels=range(n)).tolist()


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
    assert doctest.testmod(tuner.metrics).failed == 0


def test_a_worker_imports_no_sklearn():
    code = "import sys, tuner.workers, tuner.data; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
