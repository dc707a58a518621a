"""Classify image files with a model saved by ``tuner best --save-model``.

Images go through the training preprocessing: grayscale or RGB as the model was trained, resized
to its image size like the image-folder loader does, then ``tuner.learn.train.prepare``.

>>> model, payload = load_model("best.pt")  # doctest: +SKIP
>>> classify(model, payload, ["a.png"])
[{'path': 'a.png', 'predicted': 'nine', 'probabilities': {'other': 0.07, 'nine': 0.93}}]
"""

from pathlib import Path

import torch

from tuner.learn.checkpoints import decision_cut, load_trial_model
from tuner.learn.data import IMAGE_EXTENSIONS, decode_image, decode_pool, find_images
from tuner.learn.metrics import decide
from tuner.errors import UserError
from tuner.learn.train import predict, probabilities


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; write one with tuner best --save-model {path}")
    try:
        return load_trial_model(path)
    except Exception as e:  # torch raises many types on a file that is not a checkpoint
        raise UserError(f"{path} is not a model saved by tuner ({type(e).__name__}); write one with tuner best --save-model {path}")


def image_files(paths: list[str]) -> list[str]:
    """The paths, each folder replaced by the image files under it (subfolders too, sorted)."""
    files = []
    for p in paths:
        if not Path(p).is_dir():
            files.append(p)
        elif found := find_images(Path(p)):
            files += map(str, found)
        else:
            raise UserError(f"folder {p} holds no images ({' '.join(IMAGE_EXTENSIONS)}); pass image files or a folder of them")
    return files


class Unreadable(UserError):
    """An image file that cannot be decoded."""


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """uint8 (channels, size, size), as ``tuner.learn.data`` decodes an image folder."""
    try:
        a = decode_image(path, channels, size)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... on bad files
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise Unreadable(f"cannot read image {path}: {reason}")
    return torch.from_numpy(a)


def classify(model: torch.nn.Module, payload: dict, paths: list[str], threshold: float | None = None,
             skipped: list[str] | None = None) -> list[dict]:
    """One dict per image: ``path``, ``predicted`` class name and ``probabilities`` of every class
    by name, calibrated by the model's temperature. Two classes: the positive class is predicted
    when its probability is at least ``threshold`` (default: the model's, chosen on validation); more:
    the class with the largest probability divided by its threshold, chosen on validation.
    Reads every image before predicting. An image that cannot be read is an error, or, when
    ``skipped`` is a list, left out with its reason appended there."""
    m, classes = payload["model"], payload["classes"]

    def read(path):
        try:
            return read_image(path, m["channels"], m["image_size"])
        except Unreadable as e:
            if skipped is None:
                raise UserError(f"{e}; pass image files PIL can open (png, jpg, ...), or --skip-unreadable")
            return e

    with decode_pool() as pool:
        got = list(pool.map(read, paths))
    if skipped is not None:
        skipped += [str(g) for g in got if isinstance(g, Unreadable)]
        paths = [p for p, g in zip(paths, got) if not isinstance(g, Unreadable)]
        got = [g for g in got if not isinstance(g, Unreadable)]
        if not got:
            return []
    x = torch.stack(got)
    probs = probabilities(predict(model, x).double() / payload.get("temperature", 1.0)).float()
    label = decide(probs.double().numpy(), threshold if threshold is not None and probs.dim() == 1 else decision_cut(payload))
    # two classes: one sigmoid output, the probability of the positive class (index 1)
    per_class = torch.stack([1 - probs, probs], dim=1) if probs.dim() == 1 else probs
    return [{"path": str(p), "predicted": classes[int(c)], "probabilities": dict(zip(classes, map(float, q)))}
            for p, c, q in zip(paths, label, per_class)]


def operating_threshold(payload: dict) -> float:
    """The model's threshold on the calibrated probability of its positive class (0.5 for files
    written before thresholds were chosen)."""
    t = payload.get("threshold")
    return 0.5 if t is None else float(t)
