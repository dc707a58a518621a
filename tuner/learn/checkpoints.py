"""Trained models on disk: the state of a running trial after each epoch (so a retried trial
resumes where its dead worker stopped), and the model of each finished trial.

A file holds only tensors and plain values, so ``torch.load(path, weights_only=True)`` reads it.
Paths live under the study's artifacts folder (``cfg.study.artifacts``, cfg a StudyConfig).
"""

import os
from pathlib import Path

import torch

from tuner import keys
from tuner.learn.folds import FoldEnsemble
from tuner.learn.fused import FusedCNN
from tuner.learn.models import build_model


def trial_path(cfg, study_name: str, number: int) -> Path:
    return Path(cfg.study.artifacts) / study_name / f"trial-{number}.pt"


def running_path(cfg, study_name: str, origin: int) -> Path:
    """One file per trial lineage: a retry writes where the trial it retries wrote."""
    return Path(cfg.study.artifacts) / study_name / "running" / f"trial-{origin}.pt"


def _write(path: Path, payload: dict) -> None:
    """Write then rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def save_running(path: Path, state: dict, params: dict) -> None:
    _write(path, {**state, "params": params})


def load_running(path: Path, params: dict) -> dict | None:
    """The saved state of this lineage, or None (no file, unreadable, or other parameters)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return state if state.get("params") == params else None


def save_trial_model(cfg, study_name, number, model, data, gamma, alpha, seed, final: dict) -> Path:
    path = trial_path(cfg, study_name, number)
    _write(path, model_payload(cfg, number, model, data, gamma, alpha, seed, final))
    return path


def model_payload(cfg, number, model, data, gamma, alpha, seed, final: dict) -> dict:
    """A trained model with what is needed to rebuild and use it: shape, classes, settings, and
    the operating point chosen on validation (``final``: its last epoch's metrics): the temperature
    that calibrates its probabilities and, with two classes, the threshold on the calibrated
    probability of the positive class (classes[1])."""
    return {
        "temperature": float(final.get(keys.TEMPERATURE, 1.0)),
        "threshold": final.get(keys.THRESHOLD),
        "operating_point": cfg.study.operating_point,
        "positive_class": data.positive_class,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": {"kind": cfg.model.kind, "width": cfg.model.width, "channels": data.channels,
                  "image_size": cfg.data.image_size, "class_counts": data.class_counts(),
                  "folds": getattr(model, "folds", 1)},
        "classes": list(data.classes),
        "params": {"gamma": gamma, "alpha": alpha},
        "seed": seed,
        "trial": number,
        "config": cfg.to_dict(),
    }


def load_trial_model(path: Path) -> tuple[torch.nn.Module, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    m = payload["model"]
    if m.get("folds", 1) > 1:
        outputs = 1 if len(m["class_counts"]) == 2 else len(m["class_counts"])
        model = FoldEnsemble(FusedCNN(m["folds"], m["channels"], m["image_size"], outputs, m["width"]))
    else:
        model = build_model(m["kind"], m["channels"], m["image_size"], m["class_counts"], m["width"])
    model.load_state_dict(payload["state_dict"])
    return model, payload
