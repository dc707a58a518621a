"""Classify image files with a model saved by ``tuner best --save-model``.

Images go through the training preprocessing: grayscale or RGB as the model was trained, resized
to its image size like the image-folder loader does, then ``tuner.train.prepare``.

>>> model, payload = load_model("best.pt")  # doctest: +SKIP
>>> classify(model, payload, ["a.png"])
[('a.png', 'rare', 0.93)]
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tuner.checkpoints import load_trial_model
from tuner.errors import UserError
from tuner.train import predict, probabilities


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; write one with tuner best --save-model {path}")
    try:
        return load_trial_model(path)
    except Exception as e:  # torch raises many types on a file that is not a checkpoint
        raise UserError(f"{path} is not a model saved by tuner ({type(e).__name__}); write one with tuner best --save-model {path}")


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """uint8 (channels, size, size), as ``tuner.data`` decodes an image folder."""
    try:
        with Image.open(path) as im:
            a = np.array(im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR))
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... on bad files
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise UserError(f"cannot read image {path}: {reason}; pass image files PIL can open (png, jpg, ...)")
    return torch.from_numpy(np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1)))


def classify(model: torch.nn.Module, payload: dict, paths: list[str]) -> list[tuple[str, str, float]]:
    """(path, predicted class name, its probability) per image; reads every image before predicting."""
    m = payload["model"]
    x = torch.stack([read_image(p, m["channels"], m["image_size"]) for p in paths])
    probs = probabilities(predict(model, x))
    if probs.dim() == 1:  # two classes: one sigmoid output, the probability of class 1
        label = (probs >= 0.5).long()
        conf = torch.where(label == 1, probs, 1 - probs)
    else:
        conf, label = probs.max(dim=1)
    classes = payload["classes"]
    return [(str(p), classes[int(c)], float(q)) for p, c, q in zip(paths, label, conf)]
