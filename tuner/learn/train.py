"""One trial: train a focal-loss CNN with a given gamma/alpha, evaluate on validation each epoch.

The trainer knows nothing of Optuna: it calls ``report(epoch, metrics)`` after every epoch and
stops when that returns True, and asks ``stop()`` before every batch (a stop signal must not wait
for the end of a long epoch). ``cfg`` is the study's ``StudyConfig``: it reads ``cfg.train``,
``cfg.model``, ``cfg.data.image_size`` and ``cfg.study.metric`` / ``operating_point``. The data stay
on the device as uint8 tensors; a batch is an index slice, so no decoding or DataLoader work
happens inside the loop.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tuner import keys
from tuner.learn import optim
from tuner.errors import UserError
from tuner.learn.data import Splits
from tuner.learn.calibration import fit_temperature
from tuner.learn.losses import focal_loss
from tuner.learn.metrics import confusion, scores
from tuner.learn.models import build_model
from tuner.learn.weights import class_weights, focus_class

Reporter = Callable[[int, dict[str, float]], bool]
Saver = Callable[[dict], None]
Stop = Callable[[], bool]


@dataclass
class TrialResult:
    state: str  # "complete", "pruned" (report said stop), "diverged" (loss not finite) or "interrupted" (stop())
    value: float | None  # the study metric at the last epoch run
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.history)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            have = f"CUDA devices here: {count} (cuda:0 to cuda:{count - 1})" if count else "CUDA is not available here"
            raise UserError(f"device {name!r} was asked for but {have}; pass --device cpu or another device")
    return torch.device(name)


def prepare(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to floats in [-1, 1], the tutorial's Normalize(0.5, 0.5)."""
    return x.float().div_(127.5).sub_(1.0)


def eval_chunk(x: torch.Tensor, images: int = 512) -> int:
    """Images per forward pass when scoring: ``images`` at 32x32, fewer as images grow, since the
    activations grow with the pixels (512 images at 224x224 held over 3 GB)."""
    return max(1, images * 32 * 32 // (x.shape[-1] * x.shape[-2]))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits for all images, in evaluation mode."""
    model.eval()
    batch_size = batch_size or eval_chunk(x)
    out = torch.cat([model(prepare(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    model.train()
    return out.squeeze(1) if out.shape[1] == 1 else out


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.dim() == 1 else torch.softmax(logits, dim=1)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float, alpha,
             operating_point: str = "balanced_accuracy", focus: int | None = None) -> dict[str, float]:
    return logit_metrics(predict(model, x).float(), y, gamma, alpha, operating_point, focus)


def logit_metrics(logits: torch.Tensor, y: torch.Tensor, gamma: float, alpha,
                  operating_point: str = "balanced_accuracy", focus: int | None = None) -> dict[str, float]:
    """Validation metrics and focal loss from logits; only a loss entry (NaN) when they are not finite.

    The temperature is fitted on these logits, and the threshold chosen by ``operating_point`` on
    the calibrated probabilities, so the threshold a model ships with is one on the probabilities
    that ``tuner predict`` prints."""
    target = y.float() if logits.dim() == 1 else y
    loss = focal_loss(logits, target, gamma, alpha).item()
    if not math.isfinite(loss) or not torch.isfinite(logits).all():
        return {keys.LOSS: float("nan")}
    temperature = fit_temperature(logits, y)
    calibrated = probabilities(logits.double() / temperature).float()
    return {**scores(probabilities(logits), y, operating_point, calibrated, focus), keys.TEMPERATURE: temperature, keys.LOSS: loss}


@torch.no_grad()
def heldout_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threshold: float | None,
                 temperature: float, logits: torch.Tensor | None = None, focus: int | None = None) -> dict:
    """Held-out metrics of a finished model at the threshold and temperature chosen on validation,
    with the confusion matrix at that threshold and the ECE before and after the temperature;
    ``logits``: the model's on ``x`` when already computed."""
    logits = predict(model, x).float() if logits is None else logits
    raw, calibrated = probabilities(logits), probabilities(logits.double() / temperature).float()
    cut = 0.5 if threshold is None else threshold
    return {"n": len(y), **scores(raw, y, cut, calibrated, focus),
            "confusion_matrix": confusion(calibrated, y, raw.shape[1] if raw.dim() == 2 else 2, cut)}


def make_optimizer(cfg, params) -> optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    return optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, decoupled_weight_decay=t.optimizer == "adamw")


def train_trial(
    cfg,
    data: Splits,
    gamma: float,
    alpha: float | None,
    seed: int,
    report: Reporter | None = None,
    device: torch.device | None = None,
    order_seed: int | None = None,
    resume: dict | None = None,
    save: Saver | None = None,
    stop: Stop | None = None,
) -> TrialResult:
    """Train one model; ``seed`` fixes its initial weights, ``order_seed`` (default: seed) the
    batch order, so fused and separate runs can be compared batch for batch.

    ``save(state)`` gets everything needed to continue after each epoch; ``resume=state`` continues
    from it with the same weights, optimizer moments and batch order as an unbroken run. When
    ``stop()`` turns true the epoch under way is dropped and the result is "interrupted"."""
    device = device or pick_device(cfg.train.device)
    t = cfg.train
    torch.manual_seed(seed)
    counts = data.class_counts()
    weights = class_weights(alpha, counts, focus_class(cfg, data.classes))
    model = build_model(cfg.model.kind, data.channels, cfg.data.image_size, counts, cfg.model.width).to(device)
    opt = make_optimizer(cfg, model.parameters())
    x, y = data.train_x.to(device), data.train_y.to(device)
    binary = len(counts) == 2
    order = torch.Generator().manual_seed(seed if order_seed is None else order_seed)
    result = TrialResult("complete", None, model)
    first = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        order.set_state(resume["order"])
        result.history = list(resume["history"])
        result.value = result.history[-1][cfg.study.metric] if result.history else None
        first = resume["epoch"] + 1

    for epoch in range(first, t.epochs + 1):
        total = torch.zeros((), device=device)
        for idx in torch.randperm(len(x), generator=order).split(t.batch_size):
            if stop is not None and stop():
                result.state = "interrupted"
                return result
            idx = idx.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
                logits = model(prepare(x[idx]))
            logits = logits.float().squeeze(1) if binary else logits.float()
            loss = focal_loss(logits, y[idx].float() if binary else y[idx], gamma, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        metrics = evaluate(model, data.val_x.to(device), data.val_y.to(device), gamma, weights, cfg.study.operating_point,
                           focus_class(cfg, data.classes))
        metrics[keys.TRAIN_LOSS] = total.item() * t.batch_size / len(x)
        if not math.isfinite(metrics[keys.TRAIN_LOSS]) or not math.isfinite(metrics[keys.LOSS]):
            result.state = "diverged"
            return result
        result.history.append(metrics)
        result.value = metrics[cfg.study.metric]
        if save is not None:
            save({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                  "order": order.get_state(), "history": result.history})
        if report is not None and report(epoch, metrics) and epoch < t.epochs:
            result.state = "pruned"
            return result
    return result
