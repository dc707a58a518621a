"""The held-out scores bench/temperature.py compares temperature rules by, against scikit-learn's."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from temperature import weighted_scores  # noqa: E402

from tuner.learn.metrics import expected_calibration_error  # noqa: E402


@pytest.mark.parametrize("classes", [2, 4])
def test_weighted_scores_match_log_loss_brier_and_the_product_s_ece(classes):
    rng = np.random.default_rng(classes)
    full = rng.dirichlet(np.ones(classes), 300)
    y = rng.integers(0, classes, 300)
    w = rng.uniform(0.2, 1.0, 300)
    p = full[:, 1] if classes == 2 else full
    got = weighted_scores(p, y, w, full.argmax(1))
    assert got["nll"] == pytest.approx(log_loss(y, full, sample_weight=w, labels=range(classes)), rel=1e-9)
    assert got["brier"] == pytest.approx(np.average(((full - np.eye(classes)[y]) ** 2).sum(1), weights=w), rel=1e-9)
    # with equal weights the ECE is the one the product reports
    assert weighted_scores(p, y, np.ones(300), full.argmax(1))["ece"] == pytest.approx(expected_calibration_error(p, y), rel=1e-9)
