"""Temperature scaling (Guo et al. 2017): one scalar T, logits / T, fitted on validation.

Focal loss pushes probabilities towards 0.5 (Mukhoti et al. 2020), and alpha shifts them by
design, so a probability read off a focal-loss model rarely means what it says. Dividing the
logits by T keeps every ranking and argmax (so AP and decisions at a matching threshold are
unchanged) and makes the probabilities honest on data like the validation split.

>>> logits, y = torch.tensor([4.0, -4.0, 3.0, -3.0, 2.0]), torch.tensor([1, 0, 0, 1, 1])
>>> 0 < fit_temperature(logits, y) < 20
True
"""

import math

import torch
import torch.nn.functional as F

T_RANGE = (0.05, 20.0)  # bounds for logits no fit can tame (e.g. thousands)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood: binary logits (N,) with targets in {0, 1}, or (N, C) with indices."""
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets.long())


def soft_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Platt's (1999) targets: a class with n images gets (n + 1) / (n + 2) on its own images, and
    its other 1 / (n + 2) spread over the other classes (two classes: 1 / (n_other + 2) as the
    negative's target). The same count of images says no more than this about how sure a model
    may be; with hard targets a separable validation set asks for T = 0."""
    n = torch.bincount(y, minlength=num_classes).double()
    own = (n + 1) / (n + 2)
    if num_classes == 2:
        return torch.where(y == 1, own[1], 1 - own[0])
    rest = ((1 - own) / (num_classes - 1))[y]
    return torch.where(F.one_hot(y, num_classes).bool(), own[y][:, None], rest[:, None])


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, smooth: bool | None = None) -> float:
    """The T in ``T_RANGE`` minimising ``nll(logits / T, targets)``, in float64; ``smooth``: the
    cross-entropy with Platt's targets (``soft_targets``) instead of the labels; None (the default):
    the labels unless they have no minimum above the lower bound (separable predictions: they ask
    for T -> 0, and every probability would read 0 or 1), then Platt's targets. On held-out images
    (bench/results/temperature.md) Platt's targets everywhere cost the binary tasks' balanced
    accuracy 0.005; only where the labels hit the bound did they help (NLL 4.7 -> 0.10).

    The NLL is convex in s = 1 / T (a linear model in s), so its derivative in s rises through
    zero once: bisection on its sign, over log s, finds the minimum to float precision. (No
    torch.optim here: building an optimizer imports torch._dynamo, seconds of start-up for every
    command that only reads a study.)"""
    x, y = logits.detach().double().cpu(), targets.detach().cpu().long()
    if len(x) == 0 or not torch.isfinite(x).all():
        return 1.0
    if x.dim() == 1:
        goal = soft_targets(y, 2) if smooth else y.double()
        slope = lambda s: (x * (torch.sigmoid(s * x) - goal)).mean()  # noqa: E731
    else:
        goal = soft_targets(y, x.shape[1]) if smooth else F.one_hot(y, x.shape[1]).double()
        slope = lambda s: ((torch.softmax(s * x, 1) - goal) * x).sum(1).mean()  # noqa: E731
    lo, hi = (math.log(1 / t) for t in reversed(T_RANGE))
    if slope(math.exp(lo)) >= 0:
        return T_RANGE[1]
    if slope(math.exp(hi)) <= 0:
        return fit_temperature(logits, targets, True) if smooth is None else T_RANGE[0]
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(math.exp(mid)) < 0 else (lo, mid)
    return 1 / math.exp((lo + hi) / 2)
