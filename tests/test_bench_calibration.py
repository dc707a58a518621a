"""The focal inversion that bench/calibration.py measures: from the minimiser of the expected focal risk
back to the class posterior, checked against a numerical minimisation of that risk."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from calibration import focal_posterior  # noqa: E402


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("gamma, alpha", [(0.0, 0.25), (0.4, 0.7), (2.0, 0.25), (4.5, 0.9), (2.0, None)])
@pytest.mark.parametrize("q", [0.01, 0.05, 0.3, 0.7, 0.97])
def test_two_classes_recover_the_posterior(gamma, alpha, q):
    a = 0.5 if alpha is None else alpha

    def risk(z):
        p = sigmoid(z)
        return q * a * -(1 - p) ** gamma * np.log(p) + (1 - q) * (1 - a) * -p ** gamma * np.log(1 - p)

    z = minimize_scalar(risk, bounds=(-30, 30), method="bounded", options={"xatol": 1e-10}).x
    assert sigmoid(focal_posterior(np.array([z]), gamma, alpha))[0] == pytest.approx(q, abs=1e-6)


@pytest.mark.parametrize("gamma, alpha", [(0.0, [0.2, 0.5, 1.0]), (2.0, [0.2, 0.5, 1.0]), (1.3, None)])
def test_softmax_recovers_the_posterior(gamma, alpha):
    q, a = np.array([0.6, 0.3, 0.1]), np.ones(3) if alpha is None else np.array(alpha)

    def risk(v):
        p = np.exp(v - np.logaddexp.reduce(v))
        return -(q * a * (1 - p) ** gamma * np.log(p)).sum()

    v = minimize(risk, np.zeros(3), method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-15, "maxiter": 20000}).x
    z = focal_posterior(v[None, :], gamma, alpha)[0]
    assert np.exp(z - np.logaddexp.reduce(z)) == pytest.approx(q, abs=1e-5)


def test_cross_entropy_is_left_as_it_is_and_large_logits_stay_finite():
    z = np.random.default_rng(0).normal(0, 6, 200)
    assert np.allclose(focal_posterior(z, 0.0, None), z)
    assert np.isfinite(focal_posterior(np.array([60.0, -60.0]), 2.0, 0.25)).all()
    zz = np.random.default_rng(1).normal(0, 3, (50, 4))
    shift = focal_posterior(zz, 0.0, None) - zz
    assert np.allclose(shift, shift[:, :1])  # softmax logits are defined up to a per-row constant
