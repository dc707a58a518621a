"""Temperature scaling: it must lower the validation NLL of a miscalibrated model and keep rankings."""

import doctest
import subprocess
import sys

import pytest
import torch

import tuner.learn.calibration
from tuner.learn.calibration import T_RANGE, fit_temperature, nll, soft_targets
from tuner.learn.metrics import expected_calibration_error


def toy(n=2000, scale=1.0, c=None, seed=0):
    """Logits of a calibrated model (labels drawn from its own probabilities), times ``scale``."""
    g = torch.Generator().manual_seed(seed)
    if c is None:
        z = torch.randn(n, generator=g, dtype=torch.float64) * 2
        y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(z)).long()
    else:
        z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
        y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * scale, y


@pytest.mark.parametrize("c", [None, 4])
@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_temperature_undoes_over_and_under_confidence(scale, c):
    logits, y = toy(scale=scale, c=c)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(scale, rel=0.15)  # the true model is logits / scale
    assert nll(logits / t, y) < nll(logits, y) - 0.01
    p = torch.sigmoid if c is None else (lambda x: torch.softmax(x, 1))
    before = expected_calibration_error(p(logits).numpy(), y.numpy())
    after = expected_calibration_error(p(logits / t).numpy(), y.numpy())
    assert after < before


def test_calibrated_model_keeps_its_temperature_near_one():
    logits, y = toy(scale=1.0)
    assert fit_temperature(logits, y) == pytest.approx(1.0, abs=0.1)


def test_separable_or_broken_logits_stay_in_bounds():
    y = torch.tensor([0, 0, 1, 1])
    assert fit_temperature(torch.tensor([-5.0, -4.0, 4.0, 5.0]), y, smooth=False) == T_RANGE[0]  # the labels: never 0
    assert fit_temperature(torch.tensor([-5.0, -4.0, 4.0, 5.0]), y) > 1  # 2 images a class: 3/4 sure, not 1
    assert fit_temperature(torch.tensor([-5e3, -4e3, 4e3, 5e3]), y) >= T_RANGE[0]
    assert fit_temperature(torch.tensor([float("nan"), 0.0, 1.0, 2.0]), y) == 1.0
    assert fit_temperature(torch.zeros(0), torch.zeros(0, dtype=torch.long)) == 1.0


def test_doctest():
    assert doctest.testmod(tuner.learn.calibration).failed == 0


@pytest.mark.parametrize("c", [None, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_temperature_is_the_minimum_of_the_nll_on_a_fine_grid(c, seed):
    logits, y = toy(n=300, scale=[0.2, 1.0, 6.0][seed], c=c, seed=seed)
    t = fit_temperature(logits, y)
    grid = torch.logspace(-1.3, 1.3, 4001, dtype=torch.float64)
    best = min(float(nll(logits / g, y)) for g in grid)
    assert float(nll(logits / t, y)) <= best + 1e-9


def test_fitting_a_temperature_imports_no_compiler():
    # torch.optim imports torch._dynamo (seconds): the commands that only read a study fit
    # temperatures for the final model and must not pay for it.
    code = ("import sys, torch; from tuner.learn.calibration import fit_temperature; "
            "fit_temperature(torch.randn(50), torch.randint(0, 2, (50,))); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def soft_nll(logits, goal):
    if logits.dim() == 1:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, goal))
    return float(-(goal * torch.log_softmax(logits, 1)).sum(1).mean())


@pytest.mark.parametrize("c", [None, 3])
def test_platt_targets_by_hand_and_their_temperature_is_the_grid_minimum(c):
    y = torch.tensor([0, 0, 0, 1, 1] if c is None else [0, 0, 0, 1, 1, 2])
    goal = soft_targets(y, 2 if c is None else c)
    if c is None:  # 3 negatives: 1 / (3 + 2); 2 positives: (2 + 1) / (2 + 2)
        assert goal.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.75, 0.75])
    else:  # class 2 has 1 image: 2/3 on its own, 1/6 on each other class
        assert goal[5].tolist() == pytest.approx([1 / 6, 1 / 6, 2 / 3]) and goal[0].tolist() == pytest.approx([0.8, 0.1, 0.1])
        assert goal.sum(1).tolist() == pytest.approx([1.0] * 6)
    logits, y = toy(n=300, scale=4.0, c=c, seed=3)
    goal = soft_targets(y, 2 if c is None else c)
    t = fit_temperature(logits, y, smooth=True)
    grid = torch.logspace(-1.3, 1.3, 4001, dtype=torch.float64)
    assert soft_nll(logits / t, goal) <= min(soft_nll(logits / g, goal) for g in grid) + 1e-9


@pytest.mark.parametrize("c", [None, 3])
def test_platt_targets_keep_separable_data_off_the_bound(c):
    # 10 images per class, perfectly ranked: the labels ask for T -> 0, Platt's targets for a finite one
    g = torch.Generator().manual_seed(0)
    if c is None:
        y = torch.tensor([0] * 10 + [1] * 10)
        logits = torch.where(y == 1, 1.0, -1.0) * (1 + torch.rand(20, generator=g, dtype=torch.float64))
    else:
        y = torch.arange(3).repeat_interleave(10)
        logits = torch.randn(30, 3, generator=g, dtype=torch.float64) * 0.1 + 2 * torch.nn.functional.one_hot(y, 3)
    assert fit_temperature(logits, y, smooth=False) == T_RANGE[0]
    t = fit_temperature(logits, y, smooth=True)
    assert fit_temperature(logits, y, smooth=None) == t  # the labels have no minimum here: Platt's targets
    assert T_RANGE[0] * 2 < t < 1
    p = torch.sigmoid(logits / t) if c is None else torch.softmax(logits / t, 1).max(1).values
    assert float(p.max()) < 0.999 if c is None else float(p.max()) < 0.99  # no image is called certain


def test_platt_targets_change_little_where_images_are_many_and_only_separable_data_gets_them():
    logits, y = toy(n=4000, scale=1.0, seed=4)
    assert fit_temperature(logits, y, smooth=True) == pytest.approx(fit_temperature(logits, y, smooth=False), rel=0.03)
    assert fit_temperature(logits, y, smooth=None) == fit_temperature(logits, y, smooth=False)
