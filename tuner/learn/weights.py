"""Class weights as the loss takes them, from a trial's parameters and the class counts.

Plain Python: the read commands show each trial's weights without importing torch.
"""

import math
import numbers


def class_balanced_weights(counts, beta: float) -> list[float]:
    """Per-class weights from the effective number of samples (Cui et al. 2019,
    https://arxiv.org/abs/1901.05555): w_c proportional to (1 - beta) / (1 - beta**n_c), scaled so
    that the largest weight is 1. beta -> 0 weights all classes alike; beta -> 1 approaches inverse
    class frequency. A class with no images gets the largest weight.

    >>> [round(w, 3) for w in class_balanced_weights([100, 10], beta=0.99)]
    [0.151, 1.0]
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    # (1 - beta**n) computed as -expm1(n * log(beta)): beta = 0.9999 and n = 5 would lose digits otherwise
    effective = [-math.expm1(n * math.log(beta)) if beta > 0 and n > 0 else (1.0 if n > 0 else 0.0) for n in counts]
    smallest = min(e for e in effective if e > 0)
    return [smallest / e if e > 0 else 1.0 for e in effective]


def focus_class(cfg, classes: list[str]) -> int | None:
    """The index of the class to detect among more than two (``data.positive_class`` of a resolved
    config, set when an ``f1`` or ``recall>=X`` operating point needs one); None otherwise."""
    name = cfg.data.positive_class
    return classes.index(name) if len(classes) > 2 and name in classes else None


def class_weights(alpha: float | list[float] | None, counts: list[int], focus: int | None = None) -> float | list[float] | None:
    """The trial's alpha as the loss wants it: with two classes, alpha for the positive class
    (index 1, see ``tuner.learn.data.orient``) and 1 - alpha for the other; with more, alpha for the
    class to detect (``focus``, see ``focus_class``), else the rarest, and 1 - alpha for the others.
    A per-class list passes through."""
    if alpha is None or len(counts) == 2 or not isinstance(alpha, (int, float)):
        return alpha
    weighted = counts.index(min(counts)) if focus is None else focus
    return [alpha if c == weighted else 1.0 - alpha for c in range(len(counts))]


def loss_alpha(params: dict, counts: list[int], focus: int | None = None) -> float | list[float] | None:
    """A trial's class weighting from its parameters: ``alpha`` (see ``class_weights``), or
    ``one_minus_beta`` for class-balanced weights from the class counts; None for neither."""
    if "one_minus_beta" in params:
        return class_balanced_weights(counts, 1.0 - params["one_minus_beta"])
    return class_weights(params.get("alpha"), counts, focus)


def alpha_per_class(alpha: float | list[float] | None, classes: list[str]) -> dict[str, float]:
    """The weight of each class by name, as reports show it (None: every class 1)."""
    if alpha is None:
        return {c: 1.0 for c in classes}
    if isinstance(alpha, (int, float)):
        return {classes[0]: 1.0 - alpha, classes[1]: float(alpha)}
    return {c: float(w) for c, w in zip(classes, alpha)}
