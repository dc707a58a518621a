"""Trained models on disk: the state of a running trial after each epoch (so a retried trial
resumes where its dead worker stopped), and the model of each finished trial.

A file holds only tensors and plain values, so ``torch.load(path, weights_only=True)`` reads it.
Paths live under the study's artifacts folder (``cfg.study.artifacts``, cfg a StudyConfig).
"""

import contextlib
import errno
import io
import os
from pathlib import Path

import torch

from tuner import keys
from tuner.errors import DiskError, UserError
from tuner.learn.ensemble import TrialMean
from tuner.learn.folds import FoldEnsemble
from tuner.learn.fused import FusedCNN
from tuner.learn.models import build_model


class Unreadable(Exception):
    """A checkpoint that exists but cannot be read; it was moved to ``moved_to``."""

    def __init__(self, reason: str, moved_to: Path):
        super().__init__(reason)
        self.reason, self.moved_to = reason, moved_to


def study_folder(cfg, study_name: str) -> Path:
    """The study's folder under the artifacts folder; a name that is not one plain folder name
    (the search layer validates names; this is the last guard before a path is made) is refused."""
    if study_name in ("", ".", "..") or Path(study_name).name != study_name or "\\" in study_name:
        raise UserError(f"study name {study_name!r} cannot name a folder under {cfg.study.artifacts}")
    return Path(cfg.study.artifacts) / study_name


def trial_path(cfg, study_name: str, number: int) -> Path:
    return study_folder(cfg, study_name) / f"trial-{number}.pt"


def running_path(cfg, study_name: str, origin: int) -> Path:
    """One file per trial lineage: a retry writes where the trial it retries wrote."""
    return study_folder(cfg, study_name) / "running" / f"trial-{origin}.pt"


def _write(path: Path, payload: dict) -> None:
    """Write then rename, so a reader never sees half a file. Serialised in memory first: torch's
    own file writer turns a full disk into "unexpected pos" errors without an errno."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        code = errno.errorcode.get(e.errno, str(e.errno))
        raise DiskError(f"cannot write to {path.parent}: {code} ({e.strerror}); free space or make the folder "
                        "writable (or give the worker another one: tuner worker --artifacts PATH), then start the worker "
                        "again (its trials are queued to resume)") from e


def save_running(path: Path, state: dict, params: dict) -> None:
    _write(path, {**state, "params": params})


def load_running(path: Path, params: dict) -> dict | None:
    """The saved state of this lineage, or None (no file, or other parameters). A file that cannot
    be read is moved aside (to NAME.bad, for a look) and ``Unreadable`` raised."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - bad bytes raise UnpicklingError, RuntimeError, EOFError, ValueError...
        bad = path.with_name(path.name + ".bad")
        with contextlib.suppress(OSError):
            os.replace(path, bad)
        raise Unreadable(f"{type(e).__name__}: {e}"[:300], bad) from e
    return state if isinstance(state, dict) and state.get("params") == params else None


def save_trial_model(cfg, study_name, number, model, data, gamma, alpha, seed, final: dict,
                     study_key: str | None = None) -> Path:
    path = trial_path(cfg, study_name, number)
    _write(path, model_payload(cfg, number, model, data, gamma, alpha, seed, final, study_key))
    return path


def model_payload(cfg, number, model, data, gamma, alpha, seed, final: dict, study_key: str | None = None) -> dict:
    """A trained model with what is needed to rebuild and use it: shape, classes, settings, and
    the operating point chosen on validation (``final``: its last epoch's metrics): the temperature
    that calibrates its probabilities and, with two classes, the threshold on the calibrated
    probability of the positive class (classes[1]), with more, the per-class thresholds.
    ``study_key`` tells the file from one a deleted study of the same name left at its path."""
    return {
        "temperature": float(final.get(keys.TEMPERATURE, 1.0)),
        "threshold": final.get(keys.THRESHOLD),
        "class_thresholds": final.get(keys.CLASS_THRESHOLDS),
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
        "study_key": study_key,
        "config": cfg.to_dict(),
    }


def ensemble_payload(members: list[dict], metrics: dict) -> dict:
    """The mean of several trials' models (``members``: their payloads) as one file that
    ``load_trial_model`` reads: the members, and the temperature, threshold and validation metrics
    of their mean (``tuner.learn.ensemble.combine``)."""
    first = members[0]
    return {
        "temperature": float(metrics[keys.TEMPERATURE]),
        "threshold": metrics.get(keys.THRESHOLD),
        "class_thresholds": metrics.get(keys.CLASS_THRESHOLDS),
        "operating_point": first["operating_point"],
        "positive_class": first["positive_class"],
        "classes": first["classes"],
        "model": first["model"],
        "trials": [m["trial"] for m in members],
        "validation": {k: v if isinstance(v, list) else float(v) for k, v in metrics.items()},
        "members": members,
        "config": first["config"],
    }


def detected_class(payload: dict) -> str | None:
    """With more than two classes, the class the file's f1 or recall>=X operating point is for (its
    stored config's data.positive_class); None with two classes or under balanced accuracy."""
    name = payload.get("config", {}).get("data", {}).get("positive_class")
    return name if len(payload["classes"]) > 2 and name else None


def decision_cut(payload: dict):
    """What a model file decides at (``tuner.learn.metrics.decide``): its threshold with two classes,
    its per-class thresholds with more (None in files written before they were chosen: the argmax)."""
    if len(payload["classes"]) == 2:
        return payload.get("threshold")
    return payload.get("class_thresholds")


def load_trial_model(path: Path) -> tuple[torch.nn.Module, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "members" in payload:
        return TrialMean([build(m) for m in payload["members"]], [m["temperature"] for m in payload["members"]]).eval(), payload
    return build(payload), payload


def build(payload: dict) -> torch.nn.Module:
    """The model of one trial's payload, its weights loaded."""
    m = payload["model"]
    if m.get("folds", 1) > 1:
        outputs = 1 if len(m["class_counts"]) == 2 else len(m["class_counts"])
        model = FoldEnsemble(FusedCNN(m["folds"], m["channels"], m["image_size"], outputs, m["width"]))
    else:
        model = build_model(m["kind"], m["channels"], m["image_size"], m["class_counts"], m["width"])
    model.load_state_dict(payload["state_dict"])
    return model
