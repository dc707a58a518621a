"""The model a study hands back: the mean of several finished trials' models.

The best trial of a search is partly the luckiest: with a few dozen rare images its validation
value is noise of about the size of the gaps between trials. Averaging the best few trials and the
reference trials keeps what each learned and the luck of none (bench/results/final-models-at-5-epochs.md, where it was chosen).
Each member's logits are divided by its own temperature first; the mean gets one temperature and
one threshold of its own, chosen on the members' averaged validation logits exactly as a trial
chooses them (``logit_metrics``).

>>> model, metrics = combine([(m1, 1.2, v1), (m2, 0.9, v2)], y_val)   # doctest: +SKIP
>>> model(x_new).shape, metrics["threshold"]   # doctest: +SKIP
"""

import torch
from torch import nn

from tuner import keys
from tuner.learn.folds import fold_of, pool
from tuner.learn.fused import score
from tuner.learn.train import logit_metrics, predict


class TrialMean(nn.Module):
    """Several trials' models as one: the mean of their calibrated logits (logits / temperature)."""

    def __init__(self, models: list[nn.Module], temperatures: list[float]):
        super().__init__()
        self.models, self.temperatures = nn.ModuleList(models), list(temperatures)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) / t for m, t in zip(self.models, self.temperatures)]).mean(dim=0)


def validation_logits(model: nn.Module, data, folds: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of every validation image from a model that did not train on it, and the labels:
    a k-fold trial's pooled out-of-fold logits (``folds`` and ``seed`` as the study split them), or
    one split's validation logits. Every trial of a study gets the same images in the same order."""
    model.eval()
    with torch.no_grad():
        if folds == 1:
            return predict(model, data.val_x).float(), data.val_y
        x, y = pool(data)
        fold = torch.from_numpy(fold_of(y.numpy(), folds, seed))
        own = score(model.fused, x)[torch.arange(len(x)), fold]
    return (own.squeeze(1) if own.shape[1] == 1 else own), y


def combine(members: list[tuple[nn.Module, float, torch.Tensor]], y: torch.Tensor,
            operating_point: str = "balanced_accuracy", focus: int | None = None) -> tuple[TrialMean, dict[str, float]]:
    """(model, temperature, validation logits) of each member -> the mean model and its validation
    metrics, with the temperature and threshold it ships with."""
    mean = torch.stack([logits / t for _, t, logits in members]).mean(dim=0)
    metrics = logit_metrics(mean, y, 0.0, None, operating_point, focus)
    metrics.pop(keys.LOSS, None)  # the members trained on their own losses; a loss of the mean says nothing
    return TrialMean([m for m, _, _ in members], [t for _, t, _ in members]).eval(), metrics
