"""k-fold trials: the split, pooled out-of-fold metrics, folds fused equal folds trained one by one,
resume after an interruption, and the ensemble a trial gives back."""

import numpy as np
import pytest
import torch

from tuner import keys
from tuner.learn import checkpoints
from tuner.learn.data import load_data
from tuner.learn.folds import FOLD_SEED_STEP, FoldEnsemble, fold_of, pool, train_folds
from tuner.learn.losses import focal_loss
from tuner.learn.metrics import scores
from tuner.learn.models import build_model
from tuner.learn.train import logit_metrics, predict, prepare
from tuner.learn.weights import class_weights
from tuner.search.config import from_dict

K = 3


def config(**data):
    return from_dict({"study": {"seed": 4}, "data": {"kind": "synthetic", "n_samples": 240, "image_size": 16,
                                                     "rare_fraction": 0.15, "folds": K, **data},
                      "train": {"epochs": 2, "batch_size": 16, "device": "cpu"}})


@pytest.fixture(scope="module")
def data():
    return load_data(config().data, seed=0)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_stratified_disjoint_and_cover_every_image(k):
    y = np.array([1] * 17 + [0] * 203)
    f = fold_of(y, k, seed=1)
    assert sorted(set(f)) == list(range(k))  # every image in exactly one fold
    for c in (0, 1):
        sizes = np.bincount(f[y == c], minlength=k)
        assert sizes.max() - sizes.min() <= 1  # each class dealt evenly
    assert (fold_of(y, k, seed=1) == f).all() and not (fold_of(y, k, seed=2) == f).all()


def test_the_pool_is_train_and_validation_and_never_the_test_split(data):
    x, y = pool(data)
    assert len(y) == len(data.train_y) + len(data.val_y)
    rows = {bytes(r.numpy()) for r in x}
    assert not any(bytes(r.numpy()) in rows for r in data.test_x)


def separate_fold_models(cfg, data, gamma, alpha, seed):
    """Each fold model trained alone, by hand: the pool's batch order, its own fold masked out,
    a step on every batch (loss 0 when the batch holds only its own fold)."""
    x, y = pool(data)
    folds = torch.from_numpy(fold_of(y.numpy(), K, cfg.study.seed))
    weights = class_weights(alpha, data.class_counts())
    models = []
    for f in range(K):
        torch.manual_seed(seed + f * FOLD_SEED_STEP)
        model = build_model("simple_cnn", 1, 16, data.class_counts())
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        order = torch.Generator().manual_seed(seed)
        for _ in range(cfg.train.epochs):
            for idx in torch.randperm(len(x), generator=order).split(cfg.train.batch_size):
                keep = idx[folds[idx] != f]
                z = model(prepare(x[keep])).squeeze(1)
                loss = focal_loss(z, y[keep].float(), gamma, weights) if len(keep) else z.sum() * 0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        models.append(model)
    return models, folds


def test_fused_folds_equal_folds_trained_one_by_one_and_metrics_are_the_pooled_out_of_fold_ones(data):
    cfg = config()
    (result,) = train_folds(cfg, data, [(2.0, 0.3, 11)])
    models, folds = separate_fold_models(cfg, data, 2.0, 0.3, 11)
    for f, model in enumerate(models):
        for (name, want), got in zip(model.state_dict().items(), result.model.fused.member(f).state_dict().values()):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)
    x, y = pool(data)
    logits = torch.stack([predict(m, x) for m in models], dim=1)  # (N, K)
    own = logits[torch.arange(len(y)), folds]  # every image scored once, by the model that did not train on it
    want = logit_metrics(own, y, 2.0, class_weights(0.3, data.class_counts()), cfg.study.operating_point)
    got = result.history[-1]
    for key in (keys.AVERAGE_PRECISION, keys.BALANCED_ACCURACY, keys.THRESHOLD, keys.ECE, keys.LOSS):
        assert got[key] == pytest.approx(want[key], abs=1e-4), key
    per_fold = [scores(torch.sigmoid(own[folds == f]), y[folds == f], got[keys.THRESHOLD])[keys.AVERAGE_PRECISION]
                for f in range(K)]
    assert got[keys.FOLD_SPREAD] == pytest.approx(np.std(per_fold), abs=1e-4)
    assert len(result.history) == 2 and result.state == "complete"


def test_trials_fused_together_equal_trials_trained_apart(data):
    cfg = config()
    together = train_folds(cfg, data, [(0.0, 0.5, 3), (2.0, 0.25, 8)], order_seed=3)
    apart = [train_folds(cfg, data, [m], order_seed=3)[0] for m in ((0.0, 0.5, 3), (2.0, 0.25, 8))]
    for a, b in zip(together, apart):
        for ha, hb in zip(a.history, b.history):
            assert ha[keys.AVERAGE_PRECISION] == pytest.approx(hb[keys.AVERAGE_PRECISION], abs=1e-5)
        for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0)


def test_a_pruned_trial_drops_all_its_folds_and_the_others_go_on(data):
    cfg = config()
    results = train_folds(cfg, data, [(0.0, 0.5, 3), (2.0, 0.25, 8)], report=lambda i, epoch, m: i == 0)
    assert [r.state for r in results] == ["pruned", "complete"] and len(results[1].history) == 2


def test_an_interrupted_k_fold_trial_resumes_from_its_checkpoint_as_if_unbroken(data, tmp_path):
    cfg = config(n_samples=240)
    cfg = from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 3}})
    unbroken = train_folds(cfg, data, [(1.0, 0.4, 5)])[0]
    path = tmp_path / "running" / "trial-0.pt"
    params = {"gamma": 1.0, "alpha": 0.4, "seed": 5}
    epochs_seen = []

    def save(i, state):
        checkpoints.save_running(path, state, params)
        epochs_seen.append(state["epoch"])

    cut = train_folds(cfg, data, [(1.0, 0.4, 5)], save=save, stop=lambda: len(epochs_seen) >= 1)[0]
    assert cut.state == "interrupted" and epochs_seen == [1]
    state = checkpoints.load_running(path, params)
    resumed = train_folds(cfg, data, [(1.0, 0.4, 5)], resume=[state])[0]
    assert [h[keys.AVERAGE_PRECISION] for h in resumed.history] == pytest.approx(
        [h[keys.AVERAGE_PRECISION] for h in unbroken.history], abs=1e-6)
    for p, q in zip(resumed.model.state_dict().values(), unbroken.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_the_ensemble_is_the_mean_of_the_fold_logits_and_its_file_reads_back(data, tmp_path):
    cfg = config()
    (result,) = train_folds(cfg, data, [(2.0, 0.25, 1)])
    assert isinstance(result.model, FoldEnsemble) and result.model.folds == K
    x = data.test_x[:10]
    members = torch.stack([predict(result.model.fused.member(f), x) for f in range(K)], dim=1)
    torch.testing.assert_close(predict(result.model, x), members.mean(dim=1), atol=1e-5, rtol=0)
    path = checkpoints.save_trial_model(from_dict({**cfg.to_dict(), "study": {**cfg.to_dict()["study"], "artifacts": str(tmp_path)}}),
                                        "s", 0, result.model, data, 2.0, 0.25, 1, result.history[-1])
    model, payload = checkpoints.load_trial_model(path)
    assert payload["model"]["folds"] == K and payload["threshold"] == result.history[-1][keys.THRESHOLD]
    torch.testing.assert_close(predict(model, x), predict(result.model, x))


def test_folds_need_the_fused_model():
    from tuner.errors import UserError

    with pytest.raises(UserError, match="data.folds"):
        from_dict({"data": {"kind": "synthetic", "folds": 3}, "model": {"kind": "resnet"}})
    assert from_dict({"data": {"kind": "synthetic", "folds": 1}, "model": {"kind": "resnet"}}).data.folds == 1


def test_auto_folds_are_one_split_for_a_model_without_the_fused_form():
    auto = {"data": {"kind": "synthetic", "folds": "auto"}}
    assert from_dict(auto).resolved(2, "rare", 13).data.folds == 5
    assert from_dict({**auto, "model": {"kind": "resnet"}}).resolved(2, "rare", 13).data.folds == 1
