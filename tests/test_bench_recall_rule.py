"""bench/recall_rule.py's three threshold rules, on scores whose answers are known."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import recall_rule  # noqa: E402


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_the_expected_rule_with_certain_probabilities_is_tuners_rule(target):
    rng = np.random.default_rng(1)
    score = rng.random(60)
    is_k = rng.random(60) < 0.2
    cuts = recall_rule.thresholds(score, is_k, is_k.astype(float), target)
    assert cuts["expected"] == cuts["tuner's rule"]  # probabilities of 0 and 1 are the labels
    assert (score[is_k] >= cuts["quantile"]).mean() >= target - 1 / is_k.sum()  # the quantile aims at the target


def test_the_expected_rule_counts_every_image_by_its_probability():
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    p_k = np.array([0.5, 0.2, 0.2, 0.05, 0.05])  # 90% of the expected images of the class lie at 0.7 and above
    cuts = recall_rule.thresholds(score, np.array([True, False, False, False, True]), p_k, 0.9)
    assert cuts["expected"] == pytest.approx(0.65)  # halfway to the next score, as tuner's rule cuts
    assert cuts["tuner's rule"] == pytest.approx(0.25)  # the labelled image at 0.5 must be found


def test_the_score_of_a_class_among_many_is_its_probability_over_the_largest_other():
    p = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.5, 0.5, 0.0]])
    assert recall_rule.ratio(p, 1).tolist() == pytest.approx([0.5 / 0.3, 0.1 / 0.6, 1.0])
    assert recall_rule.ratio(np.array([0.1, 0.9]), 1).tolist() == [0.1, 0.9]
