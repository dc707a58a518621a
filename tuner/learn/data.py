"""Data for a study: an image folder tree, scikit-learn's digits, or synthetic images.

Every kind ends as uint8 image tensors (N, C, H, W) split into train / val / (test). An image
folder is decoded once; the decoded arrays are cached in a .pt file keyed by the files' sizes and
mtimes, so later trials and studies on the same tree decode nothing. The digits are cached the same
way (an .npz of scikit-learn's bundled arrays), so only the first load imports scikit-learn (~1 s).
"""

import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import shlex
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from tuner.errors import UserError
from tuner.machine import usable_cpus

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CACHE_VERSION = 3  # bump when the cached layout or the decoding changes
KEEP_CACHES = 8  # image caches kept per cache folder, the most recently used
SYNTHETIC_CONTRAST = 48.0  # tuned so a small CNN needs a few epochs and results depend on gamma/alpha


@dataclass
class Splits:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None  # None when an image folder has no test/ folder
    test_y: torch.Tensor | None
    classes: list[str]  # class names, index = label; with two, index 1 is the positive class
    skipped: int = 0  # unreadable images skipped
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)  # an image folder's "train" and "test" files

    @property
    def positive_class(self) -> str | None:
        return self.classes[1] if self.num_classes == 2 else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    def class_counts(self) -> list[int]:
        return torch.bincount(self.train_y.cpu(), minlength=self.num_classes).tolist()

    def pool_counts(self) -> list[int]:
        """Images per class in train + validation (the training images before the split)."""
        return torch.bincount(torch.cat([self.train_y, self.val_y]).cpu(), minlength=self.num_classes).tolist()

    def val_counts(self) -> list[int]:
        return torch.bincount(self.val_y.cpu(), minlength=self.num_classes).tolist()

    def describe_images(self, folds: int) -> str:
        """E.g. "50 train / 13 val images at 32x32 grayscale", or with k-fold validation, which trains
        and validates on both, "63 train images in 5 folds at 64x64 RGB": the size and colours every
        image was made to, whatever its file's."""
        h, w = self.train_x.shape[-2:]
        made = f"at {h}x{w} {'grayscale' if self.channels == 1 else 'RGB'}"
        if folds > 1:
            return f"{len(self.train_y) + len(self.val_y):,} train images in {folds} folds {made}"
        return f"{len(self.train_y):,} train / {len(self.val_y):,} val images {made}"

    def describe_positive(self) -> str:
        """E.g. "positive class 'nine': 64 of 1,277 training images (train and val)"; "" with more than two classes."""
        if self.positive_class is None:
            return ""
        counts = self.pool_counts()
        return f"positive class {self.positive_class!r}: {counts[1]:,} of {sum(counts):,} training images (train and val)"

    def to(self, device) -> "Splits":
        moved = {k: getattr(self, k) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return dataclasses.replace(self, **{k: None if t is None else t.to(device) for k, t in moved.items()})


def load_data(cfg, seed: int = 0, cache_dir: str | None = None, on_decode=None) -> Splits:
    """The splits of the data ``cfg`` (a validated ``tuner.search.config.DataConfig``) describes.
    ``on_decode(done, total)``: told as an image folder's files are decoded (not when read from the cache)."""
    if cfg.kind == "imagefolder":
        return load_imagefolder(cfg, seed, cache_dir, on_decode)
    x, y, classes = make_digits(cfg, seed, cache_dir) if cfg.kind == "digits" else make_synthetic(cfg, seed)
    if cfg.positive_class:  # built-in data: the rare class is the positive one unless another is named
        y, classes = orient(y, classes, y, cfg.positive_class)
    if (n_pos := int((y == 1).sum())) < 3:
        raise UserError(f"data.rare_fraction = {cfg.rare_fraction} leaves only {n_pos} rare images, too few for "
                        "train, val and test; raise data.rare_fraction (or data.n_samples).")
    rest, test = stratified_split(y, cfg.test_fraction, seed)
    train, val = (rest[i] for i in stratified_split(y[rest], cfg.val_fraction, seed + 1))
    y = torch.from_numpy(y)
    return Splits(x[train], y[train], x[val], y[val], x[test], y[test], classes)


def orient(labels: np.ndarray, classes: list[str], train_labels: np.ndarray, positive: str) -> tuple[np.ndarray, list[str]]:
    """Two classes: relabel so that the positive class is index 1 and the other index 0, whatever
    the order of their names. ``positive`` names it; "" picks the class with fewer images in
    ``train_labels``. More classes keep their labels (``class_to_detect`` reads the name)."""
    if positive and positive not in classes:
        raise UserError(f"data.positive_class = {positive!r} is not a class of the data ({', '.join(classes)}); "
                        "set it to one of them.")
    if len(classes) != 2:
        return labels, classes
    if positive:
        p = classes.index(positive)
    else:
        counts = np.bincount(train_labels, minlength=2)
        if counts[0] == counts[1]:
            raise UserError(f"classes {classes[0]!r} and {classes[1]!r} both have {counts[0]} training images, so neither is "
                            f"the rare one; set data.positive_class to the class to detect, e.g. --set {set_class(classes[1])}")
        p = int(np.argmin(counts))
    return (labels == p).astype(np.int64), [classes[1 - p], classes[p]]


def set_class(name: str) -> str:
    """The argument of ``--set`` that names ``name`` as data.positive_class, quoted for a shell when
    the folder name needs it (a space, a quote...), so the suggestion can be pasted as it is."""
    return shlex.quote(f"data.positive_class={name}")


def class_to_detect(classes: list[str], counts: list[int], named: str, rule: str, alpha_mode: str = "auto") -> str | None:
    """The class the operating point is for. Two classes: the positive one (index 1 after ``orient``).
    More: for an ``f1`` or ``recall>=X`` rule, ``named`` (data.positive_class) or else the class with
    the fewest training images (``counts``); for ``balanced_accuracy``, which weighs every class
    alike, none, and naming one is an error (so is a tie for the rarest class that ``alpha_mode``
    "rare" would have to weight)."""
    if named and named not in classes:  # checked here too: a resumed study's images are loaded as it stored them
        raise UserError(f"data.positive_class = {named!r} is not a class of the data ({', '.join(classes)}); "
                        "set it to one of them.")
    if len(classes) == 2:
        return named or classes[1]
    tied = [c for c, n in zip(classes, counts) if n == min(counts)]
    if rule == "balanced_accuracy":
        if named:
            raise UserError(f"data.positive_class = {named!r} names a class to detect, but with {len(classes)} classes "
                            'study.operating_point = "balanced_accuracy" weighs every class alike; remove data.positive_class, '
                            f'or set study.operating_point to "f1" or "recall>=X" (e.g. "recall>=0.95") for {named!r}.')
        if alpha_mode == "rare" and len(tied) > 1:
            raise UserError(f"classes {', '.join(map(repr, tied))} {'both' if len(tied) == 2 else 'all'} have {min(counts)} training images, so none is the rarest "
                            'that search.alpha_mode = "rare" weights with alpha; use search.alpha_mode = "class_balanced" (the '
                            'default with more than two classes), or an "f1" or "recall>=X" operating point with '
                            f"data.positive_class naming the class, e.g. --set {set_class(tied[0])}")
        return None
    if named:
        return named
    if len(tied) > 1:
        raise UserError(f"classes {', '.join(map(repr, tied))} {'both' if len(tied) == 2 else 'all'} have {min(counts)} training images, so none is the rare one "
                        f"that study.operating_point = {rule!r} is for; set data.positive_class to the class to detect, "
                        f"e.g. --set {set_class(tied[0])}")
    return tied[0]


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices (kept, held out) with about `fraction` of each class held out. Unlike sklearn's
    rounding, every class with 2+ items lands on both sides, so a rare class is never missing from val."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        kept.append(idx[n:])
        held.append(idx[:n])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def make_digits(cfg, seed: int, cache_dir: str | None = None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """sklearn's bundled 8x8 digits as the binary task "is it rare_class", positives subsampled."""
    images, target = digits_arrays(Path(cache_dir) if cache_dir else default_cache_dir(None))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(target == cfg.rare_class), np.flatnonzero(target != cfg.rare_class)
    f = cfg.rare_fraction
    if (want := round(f * len(neg) / (1 - f))) <= len(pos):
        pos = rng.choice(pos, want, replace=False)
    else:  # not enough positives for this fraction: keep them all and drop negatives instead
        neg = rng.choice(neg, round(len(pos) * (1 - f) / f), replace=False)
    idx = np.sort(np.concatenate([neg, pos]))
    x = torch.from_numpy(images[idx]).float().mul(255 / 16).unsqueeze(1)
    x = F.interpolate(x, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).repeat(1, 1 if cfg.grayscale else 3, 1, 1)
    y = (target[idx] == cfg.rare_class).astype(np.int64)
    return x, y, ["other", f"digit {cfg.rare_class}"]


def digits_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """load_digits()'s images (1797, 8, 8) and target, from an .npz in `folder` keyed by the path, size and
    mtime of scikit-learn's digits file (found without importing scikit-learn); the first load writes it."""
    source = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"
    st = source.stat()
    key = hashlib.sha256(f"v{CACHE_VERSION} {source} {st.st_size} {st.st_mtime_ns}".encode()).hexdigest()[:24]
    cache = folder / f"digits-{key}.npz"
    try:
        with np.load(cache) as saved:  # no pickles: a foreign file cannot run code
            images, target = saved["images"], saved["target"]
        if images.shape[1:] == (8, 8) and len(images) == len(target):
            return images, target
    except Exception:  # missing, torn or foreign: a miss
        pass
    from sklearn.datasets import load_digits  # the first load only: importing sklearn takes ~1 s

    digits = load_digits()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, images=digits.images, target=digits.target)
        os.replace(tmp, cache)  # atomic, so concurrent workers never read half a file
    except OSError as e:
        warnings.warn(f"could not write the digits cache {cache}: {e}")
    return digits.images, digits.target


def make_synthetic(cfg, seed: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Smooth noise; the rare class adds a faint plus sign at a random place."""
    g = torch.Generator().manual_seed(seed)
    n, s, c = cfg.n_samples, cfg.image_size, 1 if cfg.grayscale else 3
    y = torch.zeros(n, dtype=torch.int64)
    y[torch.randperm(n, generator=g)[: round(n * cfg.rare_fraction)]] = 1
    low = F.interpolate(torch.randn(n, c, 4, 4, generator=g), size=(s, s), mode="bilinear", align_corners=False)
    x = 128 + 10 * low + 16 * torch.randn(n, c, s, s, generator=g)
    pos = y.nonzero().squeeze(1)
    arm, half = s / 10, max(s / 64, 0.5)
    centre = arm + torch.rand(len(pos), 2, generator=g) * (s - 1 - 2 * arm)
    grid = torch.arange(s, dtype=torch.float32)
    dy = (grid.view(1, s, 1) - centre[:, 0].round().view(-1, 1, 1)).abs()
    dx = (grid.view(1, 1, s) - centre[:, 1].round().view(-1, 1, 1)).abs()
    plus = ((dy <= arm) & (dx <= half)) | ((dx <= arm) & (dy <= half))
    x[pos] += SYNTHETIC_CONTRAST * plus.unsqueeze(1).float()
    return x.round().clamp(0, 255).to(torch.uint8), y.numpy(), ["background", "rare"]


def load_imagefolder(cfg, seed: int, cache_dir: str | None, on_decode=None) -> Splits:
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"data.root {root} does not exist or is not a folder; point it at a folder with train/<class>/ images.")
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        if root.name == "train" and (root.parent / "test").is_dir():
            raise UserError(f"data.root {root} is the train/ folder of {root.parent}, so its test/ would be left out; "
                            f"set data.root to {root.parent}.")
        if test_dir.is_dir() or len(class_folders(root)) < 2:
            raise UserError(f"{root} has no train/ folder; put the training images in {train_dir}/<class>/ "
                            f"(or the class folders in {root} itself, without a test split).")
        if root.name == "test" and (root.parent / "train").is_dir():
            raise UserError(f"data.root {root} is the test/ folder of {root.parent}, so the study would train on the test "
                            f"images; set data.root to {root.parent}.")
        train_dir = root  # torchvision's layout: the class folders in the root itself, and no test split
    classes = class_folders(train_dir)
    if not classes:
        raise UserError(f"{train_dir} has no class folders; put each class's images in its own folder, e.g. {train_dir}/cat/.")
    if len(classes) < 2:
        raise UserError(f"{train_dir} has only one class folder ({classes[0]}); add a folder for at least one more class.")
    files = list_files(train_dir, classes)
    n_train = len(files)
    if loose := [p for p in train_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]:
        warnings.warn(f"{len(loose)} image{'s' * (len(loose) != 1)} directly in {train_dir} (e.g. {loose[0].name}) "
                      f"{'are' if len(loose) != 1 else 'is'} in no class folder, so left out; move {'them' if len(loose) != 1 else 'it'} "
                      "into the folder of its class")
    if train_dir != root and test_dir.is_dir():
        if not (test_classes := class_folders(test_dir)):
            raise UserError(f"{test_dir} has no class folders; put the test images in {test_dir}/<class>/ with the classes of "
                            f"{train_dir} ({', '.join(classes)}), or remove the empty test/ folder to run without a test check.")
        if test_classes != classes:
            raise UserError(f"{test_dir} has classes {test_classes} but {train_dir} has {classes}; give both the same class folders.")
        files += list_files(test_dir, classes)
    paths, labels = [p for p, _ in files], np.array([label for _, label in files], dtype=np.int64)

    cache = Path(cache_dir) if cache_dir else default_cache_dir(root)
    stats = [p.stat() for p in paths]
    x, ok, why = decode_all(paths, cfg, cache / f"imagefolder-{cache_key(root, paths, stats, cfg)}.pt", on_decode)
    bad = [(p, why.get(i, "unreadable")) for i, (p, good) in enumerate(zip(paths, ok)) if not good]
    if len(bad) > cfg.max_bad_fraction * len(paths):
        raise UserError(f"{len(bad)} of {len(paths)} images under {root} cannot be read (first: {bad[0][0]}: {bad[0][1]}), more than "
                        f"data.max_bad_fraction = {cfg.max_bad_fraction}; fix or remove them.")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image{'s' * (len(bad) != 1)} under {root}: "
                      f"{'; '.join(f'{p} ({e})' for p, e in bad[:3])}")

    is_train = np.arange(len(paths)) < n_train
    for name, count in zip(classes, np.bincount(labels[ok & is_train], minlength=len(classes))):
        if count < 2:
            raise UserError(f"class {name!r} has {count} readable image(s) in {train_dir / name}; "
                            "add images so it has at least 2 (one for training, one for validation).")
    for name, count in zip(classes, np.bincount(labels[ok & ~is_train], minlength=len(classes))):
        if n_train < len(paths) and count == 0:
            raise UserError(f"class {name!r} has no readable image in {test_dir / name}; the test check needs at least one "
                            "of each class: add images there, or remove test/ to run without a test check.")
    folder_classes = classes
    labels, classes = orient(labels, classes, labels[ok & is_train], cfg.positive_class)
    # Files were listed folder by folder; listing them by their new label instead (a stable sort
    # keeps file-name order within a class) makes the data, hence every trial, independent of
    # whether the positive folder's name sorts first or last.
    order = np.argsort(labels, kind="stable") if classes != folder_classes else np.arange(len(paths))
    pool, test = order[(ok & is_train)[order]], order[(ok & ~is_train)[order]]  # positions in x
    train, val = (pool[i] for i in stratified_split(labels[pool], cfg.val_fraction, seed))
    part = lambda idx: (torch.from_numpy(x[idx]), torch.from_numpy(labels[idx]))  # noqa: E731  each image copied once
    test_x, test_y = part(test) if n_train < len(paths) else (None, None)
    return Splits(*part(train), *part(val), test_x, test_y, classes, skipped=len(bad),
                  fingerprints={"train": fingerprint(root, paths[:n_train], stats[:n_train]),
                                "test": fingerprint(root, paths[n_train:], stats[n_train:])})


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        if not (images := find_images(folder / name)):
            raise UserError(f"class folder {folder / name} has no images ({' '.join(IMAGE_EXTENSIONS)}); "
                            "add some or remove the folder.")
        files += [(p, label) for p in images]
    return files


def find_images(folder: Path) -> list[Path]:
    """The image files in `folder` and its subfolders (as torchvision's ImageFolder finds them), sorted;
    hidden files and folders (.ipynb_checkpoints, ...) are left out."""
    images = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        images += [Path(parent, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(p for p in images if p.is_file())  # not a broken link


def fingerprint(root: Path, paths: list[Path], stats: list[os.stat_result]) -> str:
    """The same for the same images wherever they lie (their paths under the root and sizes): a worker
    on another machine checks that its copy is the one the study was created with. "" for no images."""
    if not paths:
        return ""
    h = hashlib.sha256()
    for p, st in sorted(zip(paths, stats)):
        h.update(f"{p.relative_to(root).as_posix()} {st.st_size}\n".encode())
    return f"{len(paths):,} files, sha256 {h.hexdigest()[:16]}"


def cache_key(root: Path, paths: list[Path], stats: list[os.stat_result], cfg) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION} {root} {cfg.image_size} {cfg.grayscale}\n".encode())
    for p, st in zip(paths, stats):
        h.update(f"{p.relative_to(root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def default_cache_dir(root: Path | None) -> Path:
    """ROOT/.tuner-cache when writable, else (and with no root) this user's cache folder: not the
    shared temp folder, where another user could plant a file under the expected name."""
    if root is not None:
        d = root / ".tuner-cache"
        try:
            d.mkdir(exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            pass
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tuner"


def decode_all(paths: list[Path], cfg, cache: Path, on_decode=None) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """All images as uint8 (N, C, S, S), a mask of the ones that decoded, and why each other one did
    not (by index); from cache if there, else decoded, telling ``on_decode(done, total)`` from 0 on."""
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            if len(saved["ok"]) == len(paths):
                with contextlib.suppress(OSError):
                    os.utime(cache)  # used: kept by keep_recent_caches
                return saved["x"].numpy(), saved["ok"].numpy(), saved["why"]
        except Exception:  # a torn or foreign cache file is just a miss
            pass
    s, mode = cfg.image_size, "L" if cfg.grayscale else "RGB"
    x = np.zeros((len(paths), len(mode), s, s), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    why = {}

    def decode(i: int) -> None:
        try:
            x[i], ok[i] = decode_image(paths[i], len(mode), s), True
        except Exception as e:  # PIL raises many types (OSError, ValueError, SyntaxError, DecompressionBombError...)
            why[i] = f"{type(e).__name__}: {e}"[:200]

    tell = on_decode or (lambda done, total: None)
    tell(0, len(paths))
    with decode_pool() as pool:
        for done, _ in enumerate(pool.map(decode, range(len(paths))), 1):
            if done % 50 == 0 or done == len(paths):
                tell(done, len(paths))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        torch.save({"x": torch.from_numpy(x), "ok": torch.from_numpy(ok), "why": why}, tmp)
        os.replace(tmp, cache)  # atomic, so concurrent trials never read half a file
    except OSError as e:
        warnings.warn(f"could not write the image cache {cache}: {e}")
    keep_recent_caches(cache.parent)
    return x, ok, why


def keep_recent_caches(folder: Path, keep: int = KEEP_CACHES) -> None:
    """Remove all but the ``keep`` most recently used image caches in ``folder``: each image size,
    colour setting and change to the files makes a new one, and a folder of large images gives
    caches of gigabytes. A cache removed while in use is only decoded again."""
    found = []
    for f in folder.glob("imagefolder-*.pt"):
        with contextlib.suppress(OSError):
            found.append((f.stat().st_mtime, f))
    for _, f in sorted(found, reverse=True)[keep:]:
        with contextlib.suppress(OSError):
            f.unlink()


def decode_pool() -> ThreadPoolExecutor:
    """Threads to decode images with: PIL lets go of the GIL while it decodes and resizes, so they use every core."""
    return ThreadPoolExecutor(min(usable_cpus(), 16))


def decode_image(path: str | Path, channels: int, size: int) -> np.ndarray:
    """One image file as uint8 (channels, size, size): upright by its EXIF orientation, grayscale
    (channels 1) or RGB, resized bilinearly. A 16-bit or float image (a 12-bit X-ray in a 16-bit
    PNG, say) is first stretched from its own minimum to its maximum onto 0-255, as PIL's own
    conversion would clip every value above 255 to white."""
    with Image.open(path) as im:
        im.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at 1/2-1/8 scale when that is still >= size
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":
            im = Image.fromarray(stretch_to_uint8(np.asarray(im)))
        im = drawn_in_alpha(im) or im
        a = np.array(im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR))
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def drawn_in_alpha(im: Image.Image) -> Image.Image | None:
    """An image whose colour is one flat value and whose content is its transparency (a glyph, an
    icon, a mask saved as alpha), put on white as a viewer shows it; None for any other image, which
    decodes as torchvision's loader does, its alpha dropped. Dropping it here would leave one flat value."""
    if "A" not in im.getbands() and "transparency" not in im.info:
        return None
    rgba = im.convert("RGBA")
    *colour, alpha = rgba.getextrema()
    if any(lo != hi for lo, hi in colour) or alpha[0] == alpha[1]:
        return None
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def stretch_to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float32), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = a.min(), a.max()
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    a -= lo
    a *= np.float32(255 / (hi - lo))
    return np.rint(a, out=a).astype(np.uint8)
