"""k-fold validation trained as fused members: a trial's k fold models are k members of one
FusedCNN, and the trials a worker claimed together share it too (trials x folds members).

Every member sees the same batches of the whole training pool (train + validation images); the
images of its own fold are masked out of its loss, so it never learns from what it is scored on.
After each epoch every image is scored once, by the member that did not train on it: the trial's
metrics are those of these pooled out-of-fold predictions (k times the rare images of one split),
and ``fold_spread`` is the spread of the objective over the k folds. The model a complete trial
gives back is the ensemble of its k fold models (``FoldEnsemble``: the mean of their logits).

>>> cfg = from_dict({"data": {"kind": "synthetic", "folds": 3}, "train": {"epochs": 1}})   # doctest: +SKIP
>>> [r.state for r in train_folds(cfg, load_data(cfg.data), [(2.0, 0.25, 1)])]
['complete']
"""

import math

import numpy as np
import torch
from torch import nn

from tuner import keys
from tuner.learn.data import Splits
from tuner.learn.fused import FusedCNN, keep_members, score, stack_optimizer_states, take_optimizer_state, train_epoch
from tuner.learn.metrics import scores
from tuner.learn.models import build_model
from tuner.learn.train import TrialResult, logit_metrics, make_optimizer, pick_device, probabilities
from tuner.learn.weights import class_weights, focus_class

FOLD_SEED_STEP = 7919  # fold f of a trial with seed s starts from seed s + f * this: k different initial weights


def fold_of(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each image: each class shuffled and dealt round robin, so every fold
    holds the same share of every class (a class with fewer than k images leaves some folds without it)."""
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        out[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return out


def pool(data: Splits) -> tuple[torch.Tensor, torch.Tensor]:
    """All training images: the train and validation splits together (the test split stays apart)."""
    return torch.cat([data.train_x, data.val_x]), torch.cat([data.train_y, data.val_y])


class FoldEnsemble(nn.Module):
    """A trial's k fold models as one model: the mean of their logits."""

    def __init__(self, fused: FusedCNN):
        super().__init__()
        self.fused, self.folds = fused, fused.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x).mean(dim=1)


def train_folds(cfg, data: Splits, trials: list[tuple[float, object, int]], report=None, device=None,
                order_seed: int | None = None, resume: list[dict] | None = None, save=None, stop=None) -> list[TrialResult]:
    """Train trials (gamma, alpha, seed) with ``cfg.data.folds`` folds each, as one FusedCNN;
    ``report(i, epoch, metrics)`` gets trial i's pooled out-of-fold metrics and returning True prunes
    it (all its folds). ``save(i, state)`` gets trial i's checkpoint after each epoch, ``resume`` one
    such state per trial (all after the same epoch of one batch order); ``stop()`` interrupts."""
    k, t = cfg.data.folds, cfg.train
    if cfg.model.kind != "simple_cnn":
        raise ValueError(f"k-fold trials train as fused members, which model.kind {cfg.model.kind!r} has not; "
                         "use simple_cnn or data.folds = 1")
    device = device or pick_device(t.device)
    x, y = (v.to(device) for v in pool(data))
    folds = torch.from_numpy(fold_of(y.cpu().numpy(), k, cfg.study.seed)).to(device)
    counts = data.class_counts()
    focus = focus_class(cfg, data.classes)
    losses = [(gamma, class_weights(alpha, counts, focus)) for gamma, alpha, _ in trials]
    models = []
    for i, (_, _, seed) in enumerate(trials):
        for f in range(k):
            torch.manual_seed(seed + f * FOLD_SEED_STEP)
            models.append(build_model("simple_cnn", data.channels, cfg.data.image_size, counts, cfg.model.width))
            if resume:
                models[-1].load_state_dict(resume[i]["folds"][f]["model"])
    model = FusedCNN.from_models(models).to(device)
    opt = make_optimizer(cfg, model.parameters())
    order = torch.Generator().manual_seed(trials[0][2] if order_seed is None else order_seed)
    results = [TrialResult("complete", None, None) for _ in trials]
    first = 1
    if resume:
        opt.load_state_dict(stack_optimizer_states([fs["optimizer"] for s in resume for fs in s["folds"]]))
        order.set_state(resume[0]["order"])
        for r, s in zip(results, resume):
            r.history, r.value = list(s["history"]), s["history"][-1][cfg.study.metric] if s["history"] else None
        first = resume[0]["epoch"] + 1
    live = list(range(len(trials)))  # trial live[j] owns members j*k .. j*k + k - 1

    for epoch in range(first, t.epochs + 1):
        member_fold = torch.arange(k, device=device).repeat(len(live))
        total = train_epoch(model, opt, x, y, order, t, [losses[i] for i in live for _ in range(k)], stop,
                            keep=lambda idx: folds[idx].unsqueeze(1) != member_fold)  # a member skips its own fold
        if total is None:
            for i in live:
                results[i].state = "interrupted"
            return results
        logits = score(model, x)
        stay = []
        for j, i in enumerate(live):
            r = results[i]
            own = logits[torch.arange(len(x), device=device), j * k + folds]  # each image from the member that did not train on it
            metrics = logit_metrics(own.squeeze(1) if own.shape[1] == 1 else own, y, *losses[i], cfg.study.operating_point,
                                    focus_class(cfg, data.classes))
            metrics[keys.TRAIN_LOSS] = (total[j * k:(j + 1) * k].mean() * t.batch_size / len(x)).item()
            if not math.isfinite(metrics[keys.TRAIN_LOSS]) or not math.isfinite(metrics[keys.LOSS]):
                r.state = "diverged"
            else:
                metrics[keys.FOLD_SPREAD] = fold_spread(own, y, folds, k, cfg.study.metric, metrics, metrics[keys.TEMPERATURE])
                r.history.append(metrics)
                r.value = metrics[cfg.study.metric]
                if save is not None:
                    save(i, {"epoch": epoch, "order": order.get_state(), "history": r.history,
                             "folds": [{"model": model.member(j * k + f).state_dict(),
                                        "optimizer": take_optimizer_state(model, opt, j * k + f)} for f in range(k)]})
                if report is not None and report(i, epoch, metrics) and epoch < t.epochs:
                    r.state = "pruned"
            if r.state == "complete":
                stay.append(j)
        if len(stay) < len(live):
            live = [live[j] for j in stay]
            if not live:
                break
            model, opt = keep_members(cfg, model, opt, [j * k + f for j in stay for f in range(k)])
    for j, i in enumerate(live):
        results[i].model = FoldEnsemble(model.keep(list(range(j * k, (j + 1) * k)))).cpu()
    return results


def fold_spread(logits: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, k: int, metric: str, pooled: dict,
                temperature: float) -> float:
    """The standard deviation over folds of the objective on each fold's own images (decisions at the
    pooled threshold): how much the trial's value would move with another split of the data."""
    probs = probabilities(logits.squeeze(1) if logits.shape[1] == 1 else logits)
    calibrated = probabilities((logits.squeeze(1) if logits.shape[1] == 1 else logits).double() / temperature).float()
    cut = pooled.get(keys.THRESHOLD, pooled.get(keys.CLASS_THRESHOLDS, 0.5))
    values = [scores(probs[folds == f], y[folds == f], cut, calibrated[folds == f])[metric] for f in range(k)
              if (y[folds == f] == 1).any() or probs.dim() == 2]
    return float(np.std(values)) if len(values) > 1 else 0.0
