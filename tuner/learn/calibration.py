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

T_RANGE = (0.05, 20.0)  # separable validation data would push T to 0 (or overflow) without bounds


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood: binary logits (N,) with targets in {0, 1}, or (N, C) with indices."""
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets.long())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T in ``T_RANGE`` minimising ``nll(logits / T, targets)``, by LBFGS on log T in float64."""
    x, y = logits.detach().double().cpu(), targets.detach().cpu()
    if len(x) == 0 or not torch.isfinite(x).all():
        return 1.0
    lo, hi = (math.log(v) for v in T_RANGE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll(x / log_t.clamp(lo, hi).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(lo, hi).exp())
    return t if math.isfinite(t) else 1.0
