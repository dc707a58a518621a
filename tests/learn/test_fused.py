"""Fused trials: a FusedCNN of K members trains exactly like K separate runs."""

import math

import pytest
import torch

from tuner.search.config import from_dict
from tuner.learn.data import Splits, load_data
from tuner.learn.fused import FusedCNN, _sum_finite, _train_loop, choose_k, member_losses, train_fused
from tuner.learn.losses import focal_loss
from tuner.learn.models import SimpleCNN, build_model
from tuner.learn.train import train_trial

# Fused and separate runs do the same arithmetic, possibly in another reduction order (one conv with
# K * width channels instead of width, a batched matmul instead of a linear layer, a (N, K) loss mean),
# so they may differ by float32 rounding. Measured on this CPU: <= 3e-8 on weights and metrics after
# 2 epochs (12 steps). 1e-5 leaves room for other kernels and Adam's 1/sqrt(v) amplifying rounding,
# yet is 100x below one wrong update (lr = 1e-3 moves each weight by ~1e-3 per step).
ATOL = 1e-5


def config(**train):
    return from_dict({"data": {"kind": "synthetic", "n_samples": 300, "image_size": 16, "rare_fraction": 0.2},
                      "train": {"epochs": 2, "batch_size": 32, "device": "cpu", **train}})


@pytest.fixture(scope="module")
def data():
    return load_data(config().data, seed=0)


def three_class_data(n=150, size=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 3
    y[: n // 2] = 0  # make one class rarer than the others
    x[y == 2, :, 4:8, 4:8] = 255  # something to learn
    return Splits(x[:100], y[:100], x[100:], y[100:], None, None, ["a", "b", "c"])


def assert_same_result(a, b, atol=ATOL):
    assert a.state == b.state and len(a.history) == len(b.history)
    for ha, hb in zip(a.history, b.history):
        assert ha.keys() == hb.keys()
        for key in ha:
            assert ha[key] == pytest.approx(hb[key], abs=atol), key
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("channels,outputs", [(1, 1), (3, 4)])
def test_fused_forward_equals_members_and_round_trips(channels, outputs):
    torch.manual_seed(0)
    models = [SimpleCNN(channels, 16, outputs, width=8) for _ in range(3)]
    fused = FusedCNN.from_models(models)
    x = torch.randn(5, channels, 16, 16)
    out = fused(x)
    assert out.shape == (5, 3, outputs)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[:, i], m(x), atol=1e-5, rtol=0)
        for (name, a), b in zip(fused.member(i).state_dict().items(), m.state_dict().values()):
            assert torch.equal(a, b), name
    kept = fused.keep([2, 0])
    assert kept.k == 2
    assert torch.equal(kept.member(0).head.weight, models[2].head.weight)
    assert torch.equal(kept.member(1).features[3].weight, models[0].features[3].weight)
    torch.testing.assert_close(kept(x), out[:, [2, 0]], atol=1e-5, rtol=0)


def test_resnet_cannot_be_fused(data):
    cfg = from_dict({"model": {"kind": "resnet"}, "train": {"device": "cpu"}})
    with pytest.raises(ValueError, match="simple_cnn"):
        train_fused(cfg, data, [(2.0, 0.25, 0)])
    assert choose_k(cfg, data, torch.device("cpu")) == 1


@pytest.mark.parametrize("classes", [2, 3])
def test_member_losses_equal_focal_loss(classes):
    torch.manual_seed(0)
    outputs = 1 if classes == 2 else classes
    logits, y = 3 * torch.randn(20, 4, outputs), torch.randint(0, classes, (20,))
    gammas = [0.0, 0.5, 2.0, 5.0]
    alphas = [None, 0.25, 0.9, None] if classes == 2 else [None, [0.2, 0.3, 0.5], [1.0, 0.0, 0.5], None]
    got = member_losses(logits, y, list(zip(gammas, alphas)))
    for k, (g, a) in enumerate(zip(gammas, alphas)):
        want = focal_loss(logits[:, k, 0], y.float(), g, a) if classes == 2 else focal_loss(logits[:, k], y, g, a)
        torch.testing.assert_close(got[k], want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("optimizer,amp,k", [("adam", False, 4), ("sgd", True, 2)])
def test_fused_training_equals_separate_runs(data, optimizer, amp, k):
    cfg = config(optimizer=optimizer, weight_decay=1e-4, amp=amp)
    members = [(0.0, None, 1), (2.0, 0.75, 3), (0.5, 0.25, 2), (1.0, 0.5, 4)][:k]
    fused = train_fused(cfg, data, members, order_seed=7)
    for m, r in zip(members, fused):
        assert r.state == "complete" and r.epochs == 2 and r.value == r.history[-1]["average_precision"]
        assert_same_result(r, train_fused(cfg, data, [m], order_seed=7)[0])
    assert fused[0].history != fused[1].history  # members really trained differently


@pytest.mark.parametrize("three_classes,amp", [(False, False), (True, False), (False, True)])
def test_single_member_equals_train_trial(data, three_classes, amp):
    cfg = config(amp=amp)
    data = three_class_data() if three_classes else data
    alpha = 0.3 if three_classes else 0.25
    fused = train_fused(cfg, data, [(2.0, alpha, 5)], order_seed=5)[0]
    assert_same_result(fused, train_trial(cfg, data, 2.0, alpha, 5), atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_pruned_member_frees_the_others(data, optimizer):
    cfg = config(optimizer=optimizer, epochs=3)
    members = [(0.0, None, 1), (2.0, 0.25, 2), (1.0, 0.75, 3)]
    calls = []

    def report(i, epoch, metrics):
        calls.append((i, epoch))
        return i == 1 and epoch == 1

    results = train_fused(cfg, data, members, report=report, order_seed=9)
    assert [r.state for r in results] == ["complete", "pruned", "complete"]
    assert results[1].epochs == 1 and [r.epochs for r in results[::2]] == [3, 3]
    assert calls == [(0, 1), (1, 1), (2, 1), (0, 2), (2, 2), (0, 3), (2, 3)]
    alone = train_fused(cfg, data, members[1:2], order_seed=9)[0]
    assert results[1].history[0] == pytest.approx(alone.history[0], abs=ATOL)
    for r, s in zip(results[::2], train_fused(cfg, data, members[::2], order_seed=9)):
        assert_same_result(r, s)


def test_prune_at_last_epoch_stays_complete(data):
    results = train_fused(config(), data, [(2.0, 0.25, 1), (0.0, None, 2)], report=lambda i, e, m: e == 2)
    assert [(r.state, r.epochs) for r in results] == [("complete", 2), ("complete", 2)]


def test_sum_finite_masks_and_keeps_gradients_apart():
    losses = torch.tensor([1.0, math.nan, 2.0, math.inf], requires_grad=True)
    total, finite = _sum_finite(losses)
    assert total.item() == 3.0 and finite.tolist() == [True, False, True, False]
    total.backward()
    assert losses.grad.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_diverged_member_does_not_touch_the_others(data):
    cfg = config()
    members = [(0.0, None, 1), (2.0, 0.25, 2), (1.0, 0.75, 3)]
    counts = data.class_counts()
    models = []
    for _, _, seed in members:
        torch.manual_seed(seed)
        models.append(build_model("simple_cnn", 1, 16, counts))
    with torch.no_grad():
        models[1].features[0].weight[0, 0, 1, 1] = math.nan  # NaN flows through the whole member
    fused = FusedCNN.from_models(models)
    results = _train_loop(cfg, data, fused, [(g, a) for g, a, _ in members], None, torch.device("cpu"), 4)
    assert results[1].state == "diverged" and results[1].epochs == 0 and results[1].value is None
    for r, s in zip(results[::2], train_fused(cfg, data, members[::2], order_seed=4)):
        assert_same_result(r, s)
        assert all(torch.isfinite(p).all() for p in r.model.parameters())


def test_choose_k_respects_max_k(data):
    cfg = config()
    for max_k in (1, 3, 8):
        k = choose_k(cfg, data, torch.device("cpu"), max_k=max_k, budget_s=1.0)
        assert isinstance(k, int) and 1 <= k <= max_k


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_checkpoints_resume_fused_or_alone_as_if_never_stopped(data, optimizer, tmp_path):
    """A fused run stopped after epoch 2 of 4: its members' checkpoints continue it, all together
    or one member alone through train_trial, to the same weights as the run that never stopped."""
    from tuner.learn.checkpoints import load_running, save_running

    cfg = config(optimizer=optimizer, epochs=4)
    members = [(0.0, None, 1), (2.0, 0.75, 3), (0.5, 0.25, 2)]
    unbroken = train_fused(cfg, data, members, order_seed=7)

    def save(i, state):  # through the files a worker writes, as a retry would read them
        save_running(tmp_path / f"{i}.pt", state, {"member": i})

    def stop_after_two(i, epoch, metrics):
        if epoch == 2 and i == len(members) - 1:
            raise KeyboardInterrupt  # a worker stopped mid-run
        return False

    with pytest.raises(KeyboardInterrupt):
        train_fused(cfg, data, members, report=stop_after_two, order_seed=7, save=save)
    states = [load_running(tmp_path / f"{i}.pt", {"member": i}) for i in range(3)]
    assert [s["epoch"] for s in states] == [2, 2, 2]

    resumed = train_fused(cfg, data, members, order_seed=7, resume=states)
    for r, u in zip(resumed, unbroken):
        assert_same_result(r, u)
    gamma, alpha, seed = members[1]
    alone = train_trial(cfg, data, gamma, alpha, seed, order_seed=7, resume=states[1])
    assert_same_result(alone, unbroken[1])
    assert unbroken[0].history != unbroken[1].history


def test_fused_resume_refuses_states_of_different_epochs(data):
    cfg = config()
    saved = {}
    train_fused(cfg, data, [(0.0, None, 1), (2.0, 0.25, 2)], save=lambda i, s: saved.setdefault((i, s["epoch"]), s))
    with pytest.raises(ValueError, match="same epoch"):
        train_fused(cfg, data, [(0.0, None, 1), (2.0, 0.25, 2)], resume=[saved[0, 1], saved[1, 2]])


def test_scoring_chunks_shrink_with_the_pixels_and_give_the_same_logits():
    from tuner.learn.fused import score
    from tuner.learn.train import eval_chunk, predict

    assert eval_chunk(torch.zeros(1, 1, 32, 32)) == 512  # the size every default was measured at keeps its chunk
    assert eval_chunk(torch.zeros(1, 3, 224, 224)) == 10  # 512 images there held over 3 GB of activations
    assert eval_chunk(torch.zeros(1, 1, 4096, 4096)) == 1
    torch.manual_seed(0)
    x = torch.randint(0, 256, (23, 3, 224, 224), dtype=torch.uint8)
    model = SimpleCNN(3, 224, 1)
    assert torch.allclose(predict(model, x), predict(model, x, batch_size=23), atol=1e-5)
    fused = FusedCNN(2, 3, 224, 1).eval()
    whole = fused(((x.float() / 127.5) - 1.0))
    assert torch.allclose(score(fused, x), whole.float(), atol=1e-5)
