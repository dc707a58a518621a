"""Classify image files with a model saved by ``tuner best --save-model``.

Images go through the training preprocessing: grayscale or RGB as the model was trained, resized
to its image size like the image-folder loader does, then ``tuner.learn.train.prepare``.

>>> model, payload = load_model("best.pt")  # doctest: +SKIP
>>> classify(model, payload, ["a.png"])
[{'path': 'a.png', 'predicted': 'nine', 'probabilities': {'other': 0.07, 'nine': 0.93}}]
"""

import math
from pathlib import Path

import torch

from tuner.learn.checkpoints import decision_cut, detected_class, load_trial_model
from tuner.learn.data import IMAGE_EXTENSIONS, decode_image, decode_pool, find_images
from tuner.learn.metrics import decide
from tuner.errors import UserError
from tuner.learn.train import predict, probabilities
from tuner.show.progress import cut_of, cut_text


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    path = Path(path)
    if path.suffix == ".json" and Path(path.stem).suffix:  # best.pt.json: the settings written beside best.pt
        raise UserError(f"{path} is the settings file written beside the model; pass the model, {path.with_suffix('')}")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a model file; the model comes first: tuner predict MODEL.pt IMAGES...")
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; write one with tuner best --save-model {path}")
    try:
        return load_trial_model(path)
    except Exception as e:  # torch raises many types on a file that is not a checkpoint
        image = path.suffix.lower() in IMAGE_EXTENSIONS
        raise UserError(f"{path} is not a model saved by tuner ({type(e).__name__})"
                        + ("; the model comes first: tuner predict MODEL.pt IMAGES..." if image else
                           "; pass the file tuner best --save-model wrote"))


def image_files(paths: list[str]) -> list[str]:
    """The paths, each folder replaced by the image files under it (subfolders too, sorted)."""
    files = []
    for p in paths:
        if not Path(p).exists():  # a mistyped path: --skip-unreadable is for files that are there
            raise UserError(f"{p} does not exist; pass image files or folders of them")
        if not Path(p).is_dir():
            files.append(p)
        elif found := find_images(Path(p)):
            files += map(str, found)
        else:
            raise UserError(f"folder {p} holds no images ({' '.join(IMAGE_EXTENSIONS)}); pass image files or a folder of them")
    return files


def resize_note(paths: list[str], channels: int, size: int) -> str | None:
    """A sentence when some images are not of the size the model takes (read from the files' headers):
    each is resized, and stretched when not square, as the training images were."""
    from PIL import Image

    other = stretched = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Exception:  # read, or skipped, by classify already
            continue
        other += (w, h) != (size, size)
        stretched += w != h
    if not other:
        return None
    are = lambda n: "is" if n == 1 else "are"  # noqa: E731
    return (f"{other} image{'s' * (other != 1)} of {len(paths)} {are(other)} not {size}x{size}: resized to {size}x{size} "
            f"{'grayscale' if channels == 1 else 'RGB'}, as the model's training images were"
            + (f"; {stretched} not square {are(stretched)} stretched to it (crop first to keep the proportions)" if stretched else ""))


class Unreadable(UserError):
    """An image file that cannot be decoded."""


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """uint8 (channels, size, size), as ``tuner.learn.data`` decodes an image folder."""
    try:
        a = decode_image(path, channels, size)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError... on bad files
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        reason = reason.replace(f" {str(path)!r}", "").rstrip(".")  # PIL names the file again, and ends with a stop
        raise Unreadable(f"cannot read image {path}: {reason}")
    return torch.from_numpy(a)


def classify(model: torch.nn.Module, payload: dict, paths: list[str], threshold: float | None = None,
             skipped: list[str] | None = None) -> list[dict]:
    """One dict per image: ``path``, ``predicted`` class name and ``probabilities`` of every class
    by name, calibrated by the model's temperature, decided at ``cut_with(payload, threshold)``.
    Reads every image before predicting. An image that cannot be read is an error, or, when
    ``skipped`` is a list, left out with its reason appended there."""
    m, classes = payload["model"], payload["classes"]
    cut = cut_with(payload, threshold)

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
    label = decide(probs.double().numpy(), cut)
    # two classes: one sigmoid output, the probability of the positive class (index 1)
    per_class = torch.stack([1 - probs, probs], dim=1) if probs.dim() == 1 else probs
    return [{"path": str(p), "predicted": classes[int(c)], "probabilities": dict(zip(classes, map(float, q)))}
            for p, c, q in zip(paths, label, per_class)]


def cut_with(payload: dict, threshold: float | None):
    """What to decide at (``tuner.learn.metrics.decide``): the model's cut, or ``threshold`` in its
    place. Two classes: a cut on the positive class's probability. More, with a class to detect (an
    f1 or recall>=X model): a cut on its probability divided by the largest other one. A model that
    picks among more classes by per-class thresholds has no one cut to replace."""
    classes, cut = payload["classes"], decision_cut(payload)
    if threshold is None:
        return cut
    if len(classes) == 2:
        if not 0 <= threshold <= 1:
            raise UserError(f"--threshold {threshold} is not a probability; pass a number from 0 to 1")
        return threshold
    detect = detected_class(payload)
    if detect is None or not cut:
        raise UserError(f"--threshold is a cut for one class to detect, and this model picks among its {len(classes)} "
                        "classes by per-class thresholds chosen on validation; leave out --threshold, or start a study with "
                        "an f1 or recall>=X operating point and data.positive_class for a model that has one")
    if not (math.isfinite(threshold) and threshold > 0):
        raise UserError(f"--threshold {threshold} is not a cut on p({detect}) / the largest other probability; "
                        f"pass a number above 0 (1: {detect!r} whenever it is the most probable class)")
    cut = list(cut)
    cut[classes.index(detect)] = threshold
    return cut


def operating_threshold(payload: dict) -> float:
    """The model's threshold on the calibrated probability of its positive class (0.5 for files
    written before thresholds were chosen)."""
    t = payload.get("threshold")
    return 0.5 if t is None else float(t)


def positive_of(payload: dict) -> str | None:
    """The class a two-class model's threshold is on (classes[1] in files that do not name it)."""
    classes = payload["classes"]
    return payload.get("positive_class") or (classes[1] if len(classes) == 2 else None)


def decision_words(payload: dict, threshold: float | None) -> tuple[float | None, str, str]:
    """The one cut the decisions are made at (None where there is none), what it cuts (in the words
    of status and export), and the line that tells the user."""
    classes, positive, detect = payload["classes"], positive_of(payload), detected_class(payload)
    rule = payload.get("operating_point")
    how = "from --threshold" if threshold is not None else f"chosen on validation for {rule or 'an unknown rule'}"
    if positive:
        cut = operating_threshold(payload) if threshold is None else threshold
        return cut, cut_of(positive=positive), (
            f"threshold {cut_text(cut)} on the calibrated probability of {positive!r} ({how})")
    if payload.get("class_thresholds") and detect:
        cut = payload["class_thresholds"][classes.index(detect)] if threshold is None else threshold
        return cut, cut_of(detect=detect), (
            f"{len(classes)} classes: {detect!r} is predicted when p({detect}) / the largest other probability is at "
            f"least {cut_text(cut)} ({how}), else the most probable class")
    if payload.get("class_thresholds"):
        return None, "one per class, in the model file's class_thresholds", (
            f"{len(classes)} classes: the predicted class has the largest probability divided by its threshold (chosen "
            f"on validation for {rule}: " + ", ".join(f"{c} {cut_text(t)}" for c, t in zip(classes, payload["class_thresholds"])) + ")")
    return None, cut_of(), f"{len(classes)} classes: the predicted class is the most probable one"

