"""The final model: a mean of several trials' models, its threshold and temperature chosen on
their averaged validation logits, saved as one file that loads with weights_only."""

import numpy as np
import pytest
import torch

from tuner import keys
from tuner.learn.calibration import fit_temperature
from tuner.learn.checkpoints import ensemble_payload, load_trial_model, model_payload
from tuner.learn.data import load_data
from tuner.learn.ensemble import TrialMean, combine, validation_logits
from tuner.learn.folds import FoldEnsemble, fold_of, pool
from tuner.learn.fused import FusedCNN
from tuner.learn.models import build_model
from tuner.learn.train import predict
from tuner.search.config import from_dict


@pytest.fixture(scope="module")
def data():
    cfg = from_dict({"data": {"kind": "synthetic", "image_size": 16}})
    return cfg, load_data(cfg.data, seed=0)


def models(data, n=3):
    cfg, d = data
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_model("simple_cnn", d.channels, 16, d.class_counts()).eval())
    return out


def test_the_mean_is_that_of_each_member_s_logits_over_its_own_temperature(data):
    _, d = data
    ms, temps = models(data), [0.5, 1.0, 2.0]
    x = d.test_x[:20]
    by_hand = sum(predict(m, x) / t for m, t in zip(ms, temps)) / 3
    assert torch.allclose(predict(TrialMean(ms, temps), x), by_hand, atol=1e-6)


def test_combine_chooses_temperature_and_share_threshold_on_the_averaged_validation_logits(data):
    cfg, d = data
    ms, temps = models(data), [0.7, 1.3, 1.0]
    parts = [(m, t, validation_logits(m, d, 1, 0)[0]) for m, t in zip(ms, temps)]
    model, metrics = combine(parts, d.val_y)
    mean = torch.stack([logits / t for _, t, logits in parts]).mean(0)
    assert metrics[keys.TEMPERATURE] == pytest.approx(fit_temperature(mean, d.val_y))
    assert metrics[keys.THRESHOLD] == pytest.approx(float(d.val_y.float().mean()))  # the share rule
    assert keys.LOSS not in metrics and 0 < metrics[keys.AVERAGE_PRECISION] <= 1
    assert torch.allclose(predict(model, d.val_x), mean, atol=1e-5)


def test_k_fold_validation_logits_score_each_image_by_the_fold_model_that_did_not_train_on_it(data):
    cfg, d = data
    torch.manual_seed(0)
    fused = FusedCNN(3, d.channels, 16, 1, 16).eval()
    logits, y = validation_logits(FoldEnsemble(fused), d, 3, seed=5)
    x, y_pool = pool(d)
    fold = fold_of(y_pool.numpy(), 3, 5)
    for f in range(3):
        member = fused.member(f).eval()
        assert torch.allclose(logits[fold == f], predict(member, x[fold == f]), atol=1e-5)
    assert torch.equal(y, y_pool)


def test_the_saved_mean_loads_with_weights_only_and_predicts_the_same(data, tmp_path):
    cfg, d = data
    ms, temps = models(data, 2), [0.8, 1.2]
    payloads = [model_payload(cfg, n, m, d, 2.0, 0.25, n, {keys.TEMPERATURE: t, keys.THRESHOLD: 0.3})
                for n, (m, t) in enumerate(zip(ms, temps))]
    model, metrics = combine([(m, t, validation_logits(m, d, 1, 0)[0]) for m, t in zip(ms, temps)], d.val_y)
    torch.save(ensemble_payload(payloads, metrics), tmp_path / "final.pt")
    loaded, payload = load_trial_model(tmp_path / "final.pt")  # torch.load(weights_only=True)
    assert payload["trials"] == [0, 1] and payload["temperature"] == metrics[keys.TEMPERATURE]
    assert payload["threshold"] == metrics[keys.THRESHOLD] and payload["classes"] == list(d.classes)
    assert np.allclose(predict(loaded, d.test_x).numpy(), predict(model, d.test_x).numpy(), atol=1e-6)
