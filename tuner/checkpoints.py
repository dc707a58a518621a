"""Trained models on disk: the state of a running trial after each epoch (so a retried trial
resumes where its dead worker stopped), and the model of each finished trial, the best few kept.

A file holds only tensors and plain values, so ``torch.load(path, weights_only=True)`` reads it.
"""

import os
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tuner.config import StudyConfig

KEEP = 3


def trial_path(cfg: StudyConfig, study_name: str, number: int) -> Path:
    return Path(cfg.study.artifacts) / study_name / f"trial-{number}.pt"


def running_path(cfg: StudyConfig, study_name: str, origin: int) -> Path:
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
        "temperature": float(final.get("temperature", 1.0)),
        "threshold": final.get("threshold"),
        "operating_point": cfg.study.operating_point,
        "positive_class": data.positive_class,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": {"kind": cfg.model.kind, "width": cfg.model.width, "channels": data.channels,
                  "image_size": cfg.data.image_size, "class_counts": data.class_counts()},
        "classes": list(data.classes),
        "params": {"gamma": gamma, "alpha": alpha},
        "seed": seed,
        "trial": number,
        "config": cfg.to_dict(),
    }


def load_trial_model(path: Path) -> tuple[torch.nn.Module, dict]:
    from tuner.models import build_model

    payload = torch.load(path, map_location="cpu", weights_only=True)
    m = payload["model"]
    model = build_model(m["kind"], m["channels"], m["image_size"], m["class_counts"], m["width"])
    model.load_state_dict(payload["state_dict"])
    return model, payload


def keep_best(cfg: StudyConfig, study: optuna.Study, keep: int = KEEP) -> None:
    """Delete the files of finished trials outside the best ``keep``, to bound disk use; the
    reference trials' models stay, for the comparison on the test split."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and "reference" not in t.user_attrs]
    done.sort(key=lambda t: t.value, reverse=True)
    for t in done[keep:]:
        trial_path(cfg, study.study_name, t.number).unlink(missing_ok=True)
