"""Focal loss (Lin et al. 2017) for one-logit binary and softmax multi-class classifiers."""

import math
import numbers

import torch
import torch.nn.functional as F

_REDUCTIONS = ("mean", "sum", "none")


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha=None, reduction: str = "mean"):
    r"""Focal loss ``FL(p_t) = -alpha_t * (1 - p_t)**gamma * log(p_t)``, https://arxiv.org/abs/1708.02002.

    Binary form: ``logits`` (N,) and float ``targets`` y in {0, 1}. With p = sigmoid(x),
    p_t = p if y == 1 else 1 - p, and alpha_t = alpha if y == 1 else 1 - alpha, exactly as
    ``torchvision.ops.sigmoid_focal_loss`` (whose ``alpha=-1`` is ``alpha=None`` here).

    Softmax form: ``logits`` (N, C) and long ``targets`` y in [0, C). p_t = softmax(x)_y and
    alpha_t = alpha[y] for a length-C sequence or 1-D tensor of weights in [0, 1]. A float
    alpha is allowed only when C == 2 and means ``[1 - alpha, alpha]``, so class 1 plays the
    positive class of the binary form. The binary form accepts the same length-2 sequence.

    ``alpha=None`` weights every sample 1, so ``gamma=0`` gives plain cross-entropy. "mean"
    averages over samples (like torchvision), not over the weights (unlike
    ``F.cross_entropy(weight=...)``); like torch's losses, the "mean" of an empty batch is NaN
    (skip such a batch, or use "sum" divided by a count of your own). A 0-d tensor alpha counts
    as a float. 16-bit logits are computed in float32 and give a float32 loss.

    Log space: both forms go through the target margin m = x_y - logsumexp_{j != y} x_j
    (binary: m = x if y == 1 else -x), for which p_t = sigmoid(m) exactly. Hence
    ``log p_t = logsigmoid(m)``, ``log(1 - p_t) = logsigmoid(-m)`` and
    ``FL = -alpha_t * exp(gamma * logsigmoid(-m)) * logsigmoid(m)``. The naive
    ``(1 - p_t)**gamma`` has an infinite derivative at p_t = 1 for gamma < 1 (NaN gradients),
    and ``1 - p_t``, ``1 - exp(-ce)`` or ``-log_softmax`` round to 0 in float32 past a margin of
    about 17; logsigmoid stays finite and accurate for any finite logit.

    Raises ValueError for gamma that is not a finite number >= 0, alpha outside [0, 1] or of the
    wrong length, an unknown reduction, or targets whose shape does not fit the logits.

    >>> x, y = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    >>> torch.allclose(focal_loss(x, y, gamma=0.0), F.binary_cross_entropy_with_logits(x, y))
    True
    >>> focal_loss(x, y, gamma=2.0, alpha=0.25, reduction="none")
    tensor([2.7321e-05, 1.6994e-02, 2.8306e-01])
    >>> logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 1])
    >>> focal_loss(logits, labels, gamma=2.0, alpha=[0.2, 0.5, 0.3])
    tensor(0.4261)
    """
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0 <= gamma < math.inf:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):  # as torch's own losses under autocast: a 16-bit sum loses digits
        logits = logits.float()
    if logits.dim() == 1:
        if targets.shape != logits.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}"
            )
        t = targets.to(logits.dtype)
        margin = logits * (2 * t - 1)
        if alpha is not None:
            w = _class_weights(alpha, 2, logits)
            alpha_t = w[0] + (w[1] - w[0]) * t
    elif logits.dim() == 2:
        n, c = logits.shape
        if c < 2:
            raise ValueError(f"softmax logits need at least 2 classes, got shape {tuple(logits.shape)}; one logit "
                             "per sample is the binary form: pass logits.squeeze(1) of shape (N,) and float 0/1 targets "
                             "of the same shape")
        if targets.shape != (n,) or targets.is_floating_point():
            raise ValueError(
                f"targets must be class indices of shape ({n},) for logits of shape {tuple(logits.shape)}, "
                f"got {targets.dtype} of shape {tuple(targets.shape)}"
            )
        y = targets.long().unsqueeze(1)
        margin = logits.gather(1, y).squeeze(1) - logits.scatter(1, y, -math.inf).logsumexp(1)
        if alpha is not None:
            alpha_t = _class_weights(alpha, c, logits)[y.squeeze(1)]
    else:
        raise ValueError(f"logits must have shape (N,) or (N, C), got {tuple(logits.shape)}")

    loss = -F.logsigmoid(margin)
    if gamma > 0:  # at 0, skipping avoids 0 * -inf = NaN for an infinite logit
        loss = loss * torch.exp(gamma * F.logsigmoid(-margin))
    if alpha is not None:
        loss = alpha_t * loss
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def _class_weights(alpha, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """alpha as one weight per class, validated, on ``like``'s device and dtype."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 0:  # a 0-d tensor is one number, as a float
        alpha = alpha.item()
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        if num_classes != 2:
            raise ValueError(
                f"a float alpha ({alpha!r}) is only defined for 2 classes; "
                f"with {num_classes} classes pass a length-{num_classes} sequence of per-class weights"
            )
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        values = [1.0 - float(alpha), float(alpha)]
    else:
        try:
            values = torch.as_tensor(alpha, dtype=torch.float64).tolist()
        except (TypeError, ValueError, RuntimeError):
            msg = f"alpha must be None, a float or a sequence of per-class weights, got {alpha!r}"
            raise ValueError(msg) from None
        if not isinstance(values, list) or len(values) != num_classes or any(isinstance(v, list) for v in values):
            raise ValueError(f"alpha must have one weight per class ({num_classes}), got {alpha!r}")
        bad = [v for v in values if not 0 <= v <= 1]
        if bad:
            raise ValueError(f"alpha weights must be in [0, 1], got {bad} in {values}")
    return torch.tensor(values, dtype=like.dtype, device=like.device)
