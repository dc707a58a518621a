import os
import shlex
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from tuner.learn.data import Splits, class_to_detect, decode_image, load_data, orient
from tuner.search.config import DataConfig, apply_override
from tuner.errors import UserError


def make_tree(root, counts, split="train", colour=None, seed=0):
    """Write counts[class] small RGB PNGs under root/split/class/; random noise unless colour is given."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            if colour:
                pixels = np.full((12, 12, 3), colour[name], dtype=np.uint8)
            else:
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"img{i:03d}.png")
    return root


def folder_cfg(root, **kw):
    return DataConfig(kind="imagefolder", root=str(root), image_size=kw.pop("image_size", 16), **kw)


def balanced_cfg(root, **kw):
    """Two classes of equal size need their positive class named: b."""
    return folder_cfg(root, positive_class="b", **kw)


def corrupt(path):
    """Overwrite a file with garbage of the same size and keep its mtime, so the cache key is unchanged."""
    st = path.stat()
    path.write_bytes(b"\x00not an image" * (st.st_size // 13 + 1))
    with open(path, "r+b") as f:
        f.truncate(st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- imagefolder ----


def test_imagefolder_shapes_dtypes_and_sorted_classes(tmp_path):
    make_tree(tmp_path, {"zebra": 30, "ant": 10, "moth": 12})
    (tmp_path / "train" / "ant" / ".hidden.png").write_bytes(b"junk")  # hidden: ignored, not skipped
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    d = load_data(folder_cfg(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert d.classes == ["ant", "moth", "zebra"] and d.num_classes == 3
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_x.shape[1:] == (1, 16, 16) and d.val_x.shape[1:] == (1, 16, 16) and d.channels == 1
    assert len(d.train_x) == len(d.train_y) and len(d.val_x) == len(d.val_y)
    assert len(d.train_y) + len(d.val_y) == 52 and d.skipped == 0
    assert d.test_x is None and d.test_y is None


def test_imagefolder_grayscale_and_rgb_conversion(tmp_path):
    make_tree(tmp_path, {"blue": 6, "red": 6}, colour={"red": (255, 0, 0), "blue": (0, 0, 255)})
    gray = load_data(folder_cfg(tmp_path, image_size=20, positive_class="red"), cache_dir=str(tmp_path / "c"))
    assert gray.train_x.shape[1:] == (1, 20, 20)
    x = torch.cat([gray.train_x, gray.val_x]).flatten(1)
    y = torch.cat([gray.train_y, gray.val_y])
    assert (x[y == 1] == 76).all() and (x[y == 0] == 29).all()  # PIL's L = 0.299 R + 0.587 G + 0.114 B
    rgb = load_data(folder_cfg(tmp_path, image_size=20, grayscale=False, positive_class="red"), cache_dir=str(tmp_path / "c"))
    assert rgb.train_x.shape[1:] == (3, 20, 20) and rgb.channels == 3
    red = rgb.train_x[rgb.train_y == 1]
    assert (red[:, 0] == 255).all() and (red[:, 1:] == 0).all()


def test_imagefolder_stratified_split(tmp_path):
    make_tree(tmp_path, {"common": 60, "rare": 8})
    d = load_data(folder_cfg(tmp_path, val_fraction=0.25), seed=3, cache_dir=str(tmp_path / "c"))
    assert d.class_counts() == [45, 6]
    assert torch.bincount(d.val_y, minlength=2).tolist() == [15, 2]
    other = load_data(folder_cfg(tmp_path, val_fraction=0.25), seed=4, cache_dir=str(tmp_path / "c"))
    assert not torch.equal(d.val_x, other.val_x)  # the split follows the seed


def test_imagefolder_rare_class_always_in_val(tmp_path):
    make_tree(tmp_path, {"common": 100, "rare": 2})
    d = load_data(folder_cfg(tmp_path, val_fraction=0.1), cache_dir=str(tmp_path / "c"))
    assert d.class_counts() == [90, 1] and torch.bincount(d.val_y).tolist() == [10, 1]


def test_imagefolder_test_folder(tmp_path):
    make_tree(tmp_path, {"a": 10, "b": 10})
    make_tree(tmp_path, {"a": 4, "b": 3}, split="test", seed=1)
    d = load_data(balanced_cfg(tmp_path), cache_dir=str(tmp_path / "c"))
    assert d.test_x.shape == (7, 1, 16, 16) and d.test_y.tolist() == [0] * 4 + [1] * 3
    assert len(d.train_y) + len(d.val_y) == 20


def test_imagefolder_second_load_comes_from_cache(tmp_path):
    make_tree(tmp_path, {"a": 10, "b": 10})
    cache = tmp_path / "cache"
    first = load_data(balanced_cfg(tmp_path), cache_dir=str(cache))
    assert len(list(cache.glob("*.pt"))) == 1
    for path in (tmp_path / "train").rglob("*.png"):
        corrupt(path)
    second = load_data(balanced_cfg(tmp_path), cache_dir=str(cache))  # would fail if it decoded anything
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.val_y, second.val_y)
    assert second.skipped == 0
    with pytest.raises(UserError, match="20 of 20 images"):
        load_data(balanced_cfg(tmp_path), cache_dir=str(tmp_path / "fresh"))


def test_imagefolder_default_cache_dir_is_under_root(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 5})
    load_data(balanced_cfg(tmp_path))
    assert len(list((tmp_path / ".tuner-cache").glob("*.pt"))) == 1


def test_imagefolder_cache_key_follows_files_and_settings(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 5}, colour={"a": (0, 0, 0), "b": (0, 0, 0)})
    cache = tmp_path / "cache"
    before = load_data(balanced_cfg(tmp_path, val_fraction=0.4), cache_dir=str(cache))
    path = tmp_path / "train" / "a" / "img000.png"
    Image.fromarray(np.full((12, 12, 3), 255, dtype=np.uint8)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = load_data(balanced_cfg(tmp_path, val_fraction=0.4), cache_dir=str(cache))
    assert len(list(cache.glob("*.pt"))) == 2
    assert before.train_x.sum() + before.val_x.sum() == 0
    assert after.train_x.sum() + after.val_x.sum() == 255 * 16 * 16
    load_data(balanced_cfg(tmp_path, image_size=24), cache_dir=str(cache))
    assert len(list(cache.glob("*.pt"))) == 3


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        load_data(folder_cfg(tmp_path / "nope"))


def test_imagefolder_no_train_folder(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match=f"{tmp_path} has no train/ folder"):
        load_data(folder_cfg(tmp_path))
    (tmp_path / "test").rmdir()
    make_tree(tmp_path / "one", {"a": 3}, split="")
    with pytest.raises(UserError, match=f"{tmp_path / 'one'} has no train/ folder.*or the class folders in"):
        load_data(folder_cfg(tmp_path / "one"))


def test_class_folders_in_the_root_itself_as_torchvision_reads_them(tmp_path):
    make_tree(tmp_path / "split", {"a": 20, "b": 6})
    make_tree(tmp_path / "flat", {"a": 20, "b": 6}, split="")
    split = load_data(folder_cfg(tmp_path / "split"), cache_dir=str(tmp_path / "c"))
    flat = load_data(folder_cfg(tmp_path / "flat"), cache_dir=str(tmp_path / "c"))
    assert flat.classes == split.classes == ["a", "b"] and flat.test_x is None
    for a, b in ((flat.train_x, split.train_x), (flat.train_y, split.train_y), (flat.val_x, split.val_x)):
        assert torch.equal(a, b)


def test_the_train_folder_as_root_is_an_error_when_a_test_folder_stands_beside_it(tmp_path):
    make_tree(tmp_path, {"a": 20, "b": 6})
    make_tree(tmp_path, {"a": 4, "b": 2}, split="test")
    with pytest.raises(UserError, match=f"data.root {tmp_path / 'train'} is the train/ folder of {tmp_path}, so its test/ "
                                        f"would be left out; set data.root to {tmp_path}."):
        load_data(folder_cfg(tmp_path / "train"), cache_dir=str(tmp_path / "c"))


def test_imagefolder_no_class_folders(tmp_path):
    (tmp_path / "train" / ".git").mkdir(parents=True)
    (tmp_path / "train" / "loose.png").write_bytes(b"x")
    with pytest.raises(UserError, match=f"{tmp_path / 'train'} has no class folders"):
        load_data(folder_cfg(tmp_path))


def test_imagefolder_single_class(tmp_path):
    make_tree(tmp_path, {"only": 5})
    with pytest.raises(UserError, match=r"only one class folder \(only\)"):
        load_data(folder_cfg(tmp_path))


def test_imagefolder_empty_class_folder(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "train" / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match=f"{tmp_path / 'train' / 'empty'} has no images"):
        load_data(folder_cfg(tmp_path))


def test_imagefolder_class_with_one_image(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 1})
    with pytest.raises(UserError, match="class 'b' has 1 readable image"):
        load_data(folder_cfg(tmp_path), cache_dir=str(tmp_path / "c"))


def test_imagefolder_few_corrupt_images_are_skipped(tmp_path):
    make_tree(tmp_path, {"a": 40, "b": 40})
    corrupt(tmp_path / "train" / "a" / "img003.png")
    (tmp_path / "train" / "b" / "img007.png").write_bytes(b"")
    why = r"img003.png \(UnidentifiedImageError: cannot identify image file .*img007.png \(UnidentifiedImageError"
    with pytest.warns(UserWarning, match="skipped 2 unreadable images.*" + why):
        d = load_data(balanced_cfg(tmp_path, max_bad_fraction=0.05), cache_dir=str(tmp_path / "c"))
    assert d.skipped == 2 and len(d.train_y) + len(d.val_y) == 78
    with pytest.warns(UserWarning, match="skipped 2.*" + why):  # the cache remembers which files were bad, and why
        assert load_data(balanced_cfg(tmp_path, max_bad_fraction=0.05), cache_dir=str(tmp_path / "c")).skipped == 2


def test_an_image_too_large_for_pil_is_skipped_with_the_reason(tmp_path, monkeypatch):
    make_tree(tmp_path, {"a": 40, "b": 40})
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "train" / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels: over twice the limit, as a giant scan would be
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image .*huge.png \(DecompressionBombError: Image size \(4096 pixels\)"):
        assert load_data(balanced_cfg(tmp_path, max_bad_fraction=0.05), cache_dir=str(tmp_path / "c")).skipped == 1


def test_imagefolder_too_many_corrupt_images(tmp_path):
    make_tree(tmp_path, {"a": 40, "b": 40})
    first_bad = tmp_path / "train" / "a" / "img001.png"
    for i in (1, 2):
        corrupt(tmp_path / "train" / "a" / f"img00{i}.png")
    with pytest.raises(UserError, match=f"2 of 80 images .*first: {first_bad}: UnidentifiedImageError.*data.max_bad_fraction"):
        load_data(balanced_cfg(tmp_path), cache_dir=str(tmp_path / "c"))


def test_imagefolder_class_with_no_readable_images(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 2})
    for path in (tmp_path / "train" / "b").iterdir():
        corrupt(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match="class 'b' has 0 readable"):
            load_data(folder_cfg(tmp_path, max_bad_fraction=0.5), cache_dir=str(tmp_path / "c"))


def test_imagefolder_mismatched_test_classes(tmp_path):
    make_tree(tmp_path, {"a": 5, "b": 5})
    make_tree(tmp_path, {"a": 2, "c": 2}, split="test")
    with pytest.raises(UserError, match=r"test has classes \['a', 'c'\] but .*train has \['a', 'b'\]"):
        load_data(folder_cfg(tmp_path))



def test_imagefolder_finds_images_in_subfolders_but_not_hidden_ones(tmp_path):
    make_tree(tmp_path / "flat", {"a": 6, "b": 3})
    for patient, n in (("p1", 4), ("p2", 2)):  # a/ holds one folder per patient, as ImageFolder allows
        make_tree(tmp_path / "flat" / "train" / "a", {patient: n}, split="", seed=n)
    make_tree(tmp_path / "flat" / "train" / "b", {".ipynb_checkpoints": 5}, split="")
    (tmp_path / "flat" / "train" / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: not an image
    d = load_data(folder_cfg(tmp_path / "flat"), cache_dir=str(tmp_path / "c"))
    assert d.classes == ["a", "b"] and d.pool_counts() == [12, 3] and d.skipped == 0


def sixteen_bit_gradient(path, top=4095):
    """A 12-bit ramp (0 at the left to `top` at the right) in a 16-bit grayscale PNG, as X-rays come."""
    ramp = np.tile(np.linspace(0, top, 32), (32, 1)).round().astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"


def test_sixteen_bit_and_float_images_are_stretched_to_0_255_not_clipped(tmp_path):
    sixteen_bit_gradient(tmp_path / "xray.png")
    Image.fromarray(np.tile(np.linspace(-1, 3, 32, dtype=np.float32), (32, 1))).save(tmp_path / "float.tiff")
    for name in ("xray.png", "float.tiff"):
        a = decode_image(tmp_path / name, 1, 32)[0].astype(int)
        assert a.shape == (32, 32) and a[:, 0].max() == 0 and a[:, -1].min() == 255
        assert (a == 255).mean() < 0.05  # clipped at 255, most of the ramp would be white
        assert (np.diff(a, axis=1) >= 0).all() and (np.diff(a, axis=1) <= 9).all()  # a smooth ramp
    rgb = decode_image(tmp_path / "xray.png", 3, 32)
    assert rgb.shape == (3, 32, 32) and (rgb == decode_image(tmp_path / "xray.png", 1, 32)).all()
    Image.fromarray(np.full((8, 8), 700, np.uint16)).save(tmp_path / "flat.png")
    assert (decode_image(tmp_path / "flat.png", 1, 8) == 0).all()  # one value: no range to stretch


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((8, 16), np.uint8)
    pixels[:, :4] = 255  # a bright band at the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: shown turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.png", exif=exif)
    a = decode_image(tmp_path / "turned.png", 1, 16)[0]
    upright = np.asarray(Image.fromarray(np.rot90(pixels, k=-1).copy()).resize((16, 16), Image.Resampling.BILINEAR))
    assert (a == upright).all() and a[:3].min() == 255 and a[-3:].max() == 0  # the band is now at the top


def test_an_image_drawn_only_in_its_alpha_is_put_on_white_and_other_transparent_images_drop_their_alpha(tmp_path):
    glyph = np.zeros((16, 16, 4), np.uint8)  # black everywhere; the shape is where it is opaque
    glyph[4:12, 4:12, 3] = 255
    Image.fromarray(glyph, "RGBA").save(tmp_path / "glyph.png")
    Image.fromarray(glyph[..., 3], "L").convert("LA").save(tmp_path / "flat-la.png")  # LA with no alpha range: kept
    la = np.stack([np.zeros((16, 16), np.uint8), glyph[..., 3]], -1)
    Image.fromarray(la, "LA").save(tmp_path / "glyph-la.png")
    for name in ("glyph.png", "glyph-la.png"):
        for channels in (1, 3):
            a = decode_image(tmp_path / name, channels, 16)
            assert a.shape == (channels, 16, 16) and (a[:, 6:10, 6:10] == 0).all() and (a[:, :2] == 255).all(), name
    assert decode_image(tmp_path / "flat-la.png", 1, 16)[0, 6, 6] == 255  # its colour has the shape
    photo = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)  # colour varies: alpha dropped
    Image.fromarray(photo, "RGBA").save(tmp_path / "photo.png")
    assert (decode_image(tmp_path / "photo.png", 3, 16) == photo[..., :3].transpose(2, 0, 1)).all()


def test_imagefolder_of_sixteen_bit_images_keeps_their_contrast(tmp_path):
    for cls, n in (("a", 6), ("b", 4)):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(n):
            sixteen_bit_gradient(tmp_path / "train" / cls / f"{i}.png", top=1000 + 500 * i)
    d = load_data(folder_cfg(tmp_path, image_size=32), cache_dir=str(tmp_path / "c"))
    x = torch.cat([d.train_x, d.val_x]).float()
    assert d.skipped == 0 and x.min() == 0 and x.max() == 255 and 100 < x.mean() < 155


# ---- digits ----


def test_digits_binary_task():
    d = load_data(DataConfig(kind="digits"), seed=0)
    total = len(d.train_y) + len(d.val_y) + len(d.test_y)
    assert 1690 <= total <= 1710 and d.classes == ["other", "digit 9"]
    for y in (d.train_y, d.val_y, d.test_y):
        assert abs(y.float().mean().item() - 0.05) < 0.01
    assert 1250 <= len(d.train_y) + len(d.val_y) <= 1300
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (1, 32, 32)
    assert d.train_x.min() == 0 and d.train_x.max() == 255


def test_digits_seeded():
    a, b = load_data(DataConfig(kind="digits"), seed=1), load_data(DataConfig(kind="digits"), seed=1)
    c = load_data(DataConfig(kind="digits"), seed=2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_digits_rgb_and_balanced():
    d = load_data(DataConfig(kind="digits", grayscale=False, rare_fraction=0.5, rare_class=3, image_size=16))
    assert d.train_x.shape[1:] == (3, 16, 16) and torch.equal(d.train_x[:, 0], d.train_x[:, 2])
    assert abs(d.train_y.float().mean().item() - 0.5) < 0.02 and d.classes[1] == "digit 3"


def assert_same_splits(a, b):
    for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and torch.equal(x, y), k
    assert a.classes == b.classes


@pytest.mark.parametrize("cfg", [DataConfig(kind="digits"),
                                 DataConfig(kind="digits", grayscale=False, rare_class=3, rare_fraction=0.5, image_size=12)])
def test_digits_cache_is_bit_identical_and_skips_sklearn(tmp_path, monkeypatch, cfg):
    first = load_data(cfg, seed=7, cache_dir=str(tmp_path))  # a miss: loads through sklearn, writes the cache
    assert [p.name.startswith("digits-") for p in tmp_path.iterdir()] == [True]
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # any import of it now fails
    assert_same_splits(first, load_data(cfg, seed=7, cache_dir=str(tmp_path)))


def test_digits_torn_cache_is_a_miss(tmp_path):
    cfg = DataConfig(kind="digits")
    first = load_data(cfg, seed=1, cache_dir=str(tmp_path))
    (cache,) = tmp_path.iterdir()
    cache.write_bytes(cache.read_bytes()[:5000])
    assert_same_splits(first, load_data(cfg, seed=1, cache_dir=str(tmp_path)))
    assert len(cache.read_bytes()) > 5000  # rewritten whole
    assert [p.name for p in tmp_path.iterdir()] == [cache.name]  # no temporary file left


# ---- synthetic ----


def plus_detector(x):
    """Max response of a zero-mean plus-shaped filter: what a CNN has to learn to find the pattern."""
    k = torch.zeros(7, 7)
    k[3, :], k[:, 3] = 1, 1
    r = F.conv2d(x.float().mean(1, keepdim=True), (k - k.mean()).view(1, 1, 7, 7))
    return r.flatten(1).max(1).values.unsqueeze(1).numpy()


def test_synthetic_seeded_and_rare_fraction():
    cfg = DataConfig(kind="synthetic", n_samples=1000, rare_fraction=0.1)
    a, b, c = load_data(cfg, seed=5), load_data(cfg, seed=5), load_data(cfg, seed=6)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert sum(int(y.sum()) for y in (a.train_y, a.val_y, a.test_y)) == 100
    assert a.classes == ["background", "rare"] and a.train_x.dtype == torch.uint8
    for y in (a.train_y, a.val_y, a.test_y):
        assert abs(y.float().mean().item() - 0.1) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_learnable_but_not_trivial(seed):
    d = load_data(DataConfig(kind="synthetic", grayscale=seed != 2), seed=seed)
    assert d.channels == (1 if seed != 2 else 3) and d.train_x.shape[2:] == (32, 32)
    prior = d.val_y.float().mean().item()
    clf = LogisticRegression().fit(plus_detector(d.train_x), d.train_y.numpy())
    ap = average_precision_score(d.val_y.numpy(), clf.predict_proba(plus_detector(d.val_x))[:, 1])
    assert ap > 0.5 > 5 * prior  # the right filter finds the pattern, so a CNN can learn one
    # brightness alone must not give the rare class away
    assert average_precision_score(d.val_y.numpy(), d.val_x.float().mean((1, 2, 3)).numpy()) < 0.5


# ---- config and Splits ----


def test_too_few_rare_images():
    with pytest.raises(UserError, match="data.rare_fraction"):
        load_data(DataConfig(kind="digits", rare_fraction=0.001))


def test_splits_helpers(tmp_path):
    make_tree(tmp_path, {"a": 10, "b": 5})
    d = load_data(folder_cfg(tmp_path), cache_dir=str(tmp_path / "c"))
    assert isinstance(d, Splits) and d.class_counts() == [8, 4]
    moved = d.to("meta")
    assert moved is not d and moved.train_x.device.type == "meta" and moved.val_y.device.type == "meta"
    assert moved.test_x is None and d.train_x.device.type == "cpu" and moved.classes == d.classes


# ---- the positive class ----


def digit_tree(root, names: dict[str, int], rare_digit=9, n_rare=14, n_common=120, test=False):
    """Real digits as PNG: names = {folder: digit or -1 for "any other digit"}; the rare folder gets
    n_rare images of rare_digit, the other n_common images of other digits. Same files whatever the names."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rare = np.flatnonzero(digits.target == rare_digit)
    other = np.flatnonzero(digits.target != rare_digit)
    for split, (r, o) in {"train": (rare[:n_rare], other[:n_common]), "test": (rare[n_rare:n_rare + 6], other[n_common:n_common + 40])}.items():
        if split == "test" and not test:
            continue
        for name, digit in names.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in (r if digit == rare_digit else o):
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"img{i:04d}.png")
    return root


def trial_history(root, **kw):
    from tuner.search.config import from_dict
    from tuner.learn.train import train_trial

    cfg = from_dict({"data": {"kind": "imagefolder", "root": str(root), "image_size": 16, **kw},
                     "train": {"epochs": 2, "batch_size": 16, "device": "cpu"}})
    data = load_data(cfg.data, seed=0, cache_dir=str(root / "cache"))
    return data, train_trial(cfg, data, gamma=2.0, alpha=0.3, seed=5).history


def test_renaming_the_folders_so_the_rare_class_sorts_first_or_last_changes_nothing(tmp_path):
    first = digit_tree(tmp_path / "first", {"abnormal": 9, "normal": -1}, test=True)  # rare sorts first
    last = digit_tree(tmp_path / "last", {"no_finding": -1, "yes_finding": 9}, test=True)  # rare sorts last
    d1, h1 = trial_history(first)
    d2, h2 = trial_history(last)
    assert d1.classes == ["normal", "abnormal"] and d2.classes == ["no_finding", "yes_finding"]
    assert d1.positive_class == "abnormal" and d2.positive_class == "yes_finding"
    for a, b in zip((d1.train_x, d1.train_y, d1.val_x, d1.val_y, d1.test_x, d1.test_y),
                    (d2.train_x, d2.train_y, d2.val_x, d2.val_y, d2.test_x, d2.test_y)):
        assert torch.equal(a, b)
    assert h1 == h2 and len(h1) == 2  # the same trial values, epoch by epoch
    assert h1[-1]["average_precision"] < 0.99  # the rare class, not the common one (AP ~ 1 for any model)
    _, named = trial_history(first, positive_class="abnormal")
    assert named == h1


def test_the_positive_class_defaults_to_the_fewest_training_images_and_can_be_named(tmp_path):
    digit_tree(tmp_path, {"abnormal": 9, "normal": -1})
    d = load_data(folder_cfg(tmp_path), cache_dir=str(tmp_path / "c"))
    assert d.classes == ["normal", "abnormal"] and d.pool_counts() == [120, 14]
    assert d.describe_positive() == "positive class 'abnormal': 14 of 134 training images (train and val)"
    flipped = load_data(folder_cfg(tmp_path, positive_class="normal"), cache_dir=str(tmp_path / "c"))
    assert flipped.classes == ["abnormal", "normal"] and flipped.pool_counts() == [14, 120]


def test_positive_class_errors(tmp_path):
    make_tree(tmp_path / "tie", {"a": 5, "b": 5})
    with pytest.raises(UserError, match="both have 5 training images.*set data.positive_class"):
        load_data(folder_cfg(tmp_path / "tie"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="'c' is not a class of the data \\(a, b\\)"):
        load_data(folder_cfg(tmp_path / "tie", positive_class="c"), cache_dir=str(tmp_path / "c"))
    make_tree(tmp_path / "three", {"a": 5, "b": 4, "c": 3})
    with pytest.raises(UserError, match="'d' is not a class of the data \\(a, b, c\\)"):
        load_data(folder_cfg(tmp_path / "three", positive_class="d"), cache_dir=str(tmp_path / "c"))
    named = load_data(folder_cfg(tmp_path / "three", positive_class="c"), cache_dir=str(tmp_path / "c"))
    assert named.classes == ["a", "b", "c"] and named.positive_class is None  # a class to detect, not a binary positive
    assert load_data(folder_cfg(tmp_path / "three"), cache_dir=str(tmp_path / "c")).positive_class is None


def test_built_in_data_keep_their_rare_class_positive():
    d = load_data(DataConfig(kind="digits", rare_fraction=0.5, rare_class=3), seed=0)  # a tie is fine here
    assert d.classes == ["other", "digit 3"] and d.positive_class == "digit 3"
    flipped = load_data(DataConfig(kind="digits", rare_class=3, positive_class="other"), seed=0)
    assert flipped.positive_class == "other" and flipped.pool_counts()[1] > flipped.pool_counts()[0]


def test_the_class_to_detect_among_many_is_the_named_or_the_rarest_for_f1_and_recall_rules():
    classes, counts = ["benign", "malignant", "normal"], [88, 17, 143]
    assert class_to_detect(classes, counts, "", "recall>=0.95") == "malignant"
    assert class_to_detect(classes, counts, "benign", "f1") == "benign"
    assert class_to_detect(classes, counts, "", "balanced_accuracy") is None  # every class weighs the same
    assert class_to_detect(["no", "yes"], [90, 10], "", "balanced_accuracy") == "yes"  # two classes: the positive one (index 1)


def test_naming_a_class_under_balanced_accuracy_with_many_classes_is_an_error_that_says_what_to_do():
    with pytest.raises(UserError, match=r"data.positive_class = 'benign' names a class to detect, but with 3 classes .*"
                                        r"remove data.positive_class, or set study.operating_point to \"f1\" or \"recall>=X\""):
        class_to_detect(["benign", "malignant", "normal"], [88, 17, 143], "benign", "balanced_accuracy")


def test_a_tie_for_the_rarest_of_many_classes_asks_for_the_class_to_detect():
    with pytest.raises(UserError, match=r"classes 'a', 'c' both have 5 training images.*--set data.positive_class=a"):
        class_to_detect(["a", "b", "c"], [5, 40, 5], "", "recall>=0.9")
    # alpha for "the rarest class" under balanced accuracy: which one? (class-balanced weights need none)
    with pytest.raises(UserError, match=r"classes 'a', 'c' both have 5 training images, so none is the rarest that "
                                        r"search.alpha_mode = \"rare\" weights"):
        class_to_detect(["a", "b", "c"], [5, 40, 5], "", "balanced_accuracy", "rare")
    assert class_to_detect(["a", "b", "c"], [5, 40, 5], "", "balanced_accuracy", "auto") is None


def test_a_named_class_that_is_not_in_the_data_is_an_error_with_any_number_of_classes():
    labels = np.array([0, 1, 2, 2])
    with pytest.raises(UserError, match=r"data.positive_class = 'cancer' is not a class of the data \(a, b, c\)"):
        orient(labels, ["a", "b", "c"], labels, "cancer")
    got, classes = orient(labels, ["a", "b", "c"], labels, "b")  # more classes keep their labels
    assert (got == labels).all() and classes == ["a", "b", "c"]


def suggested_set(message: str) -> str:
    """The value of the ``--set`` argument an error suggests, read back as a shell would split the line."""
    words = shlex.split(message.split("e.g. ", 1)[1])
    assert words[0] == "--set" and len(words) == 2, words  # one argument: a space in a class name does not split it
    return words[1]


def test_a_suggested_positive_class_with_a_space_can_be_pasted_into_a_shell(tmp_path):
    make_tree(tmp_path / "tie", {"Class A": 5, "Class B": 5})
    with pytest.raises(UserError) as tie:
        load_data(folder_cfg(tmp_path / "tie"), cache_dir=str(tmp_path / "c"))
    raw = {}
    apply_override(raw, suggested_set(str(tie.value)))  # as start-study reads --set
    named = load_data(folder_cfg(tmp_path / "tie", **raw["data"]), cache_dir=str(tmp_path / "c"))
    assert named.positive_class == "Class B" and named.classes == ["Class A", "Class B"]
    for rule, mode in (("recall>=0.9", "auto"), ("balanced_accuracy", "rare")):  # a tie for the rarest of many
        with pytest.raises(UserError) as many:
            class_to_detect(["Dr. O'Neil's", "b", "c"], [5, 40, 5], "", rule, mode)
        assert suggested_set(str(many.value)) == "data.positive_class=Dr. O'Neil's"
    assert "--set data.positive_class=b" in str(pytest.raises(UserError, orient, np.array([0, 1]), ["a", "b"],
                                                               np.array([0, 1]), "").value)  # a plain name stays unquoted


def test_the_first_decode_of_a_folder_is_counted_and_a_cached_load_is_not(tmp_path):
    make_tree(tmp_path, {"a": 300, "b": 20})
    told = []
    load_data(folder_cfg(tmp_path), cache_dir=str(tmp_path / "c"), on_decode=lambda done, total: told.append((done, total)))
    assert told == [(n, 320) for n in (0, 50, 100, 150, 200, 250, 300, 320)]
    again = []
    load_data(folder_cfg(tmp_path), cache_dir=str(tmp_path / "c"), on_decode=lambda done, total: again.append(done))
    assert again == []  # read from the cache: nothing to count


def test_only_the_most_recently_used_image_caches_are_kept(tmp_path):
    from tuner.learn.data import KEEP_CACHES

    make_tree(tmp_path / "images", {"a": 20, "b": 5})
    cache = tmp_path / "c"
    cache.mkdir()
    old = [cache / f"imagefolder-old{i}.pt" for i in range(KEEP_CACHES + 2)]
    for i, f in enumerate(old):  # other sizes, or the folder before its files changed: each unused for a while
        f.write_bytes(b"x")
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    (cache / "digits-abc.npz").write_bytes(b"x")  # not an image cache: never removed
    load_data(folder_cfg(tmp_path / "images"), cache_dir=str(cache))
    kept = sorted(f.name for f in cache.glob("imagefolder-*.pt"))
    new = [n for n in kept if not n.startswith("imagefolder-old")]
    assert len(kept) == KEEP_CACHES and len(new) == 1  # the one just written, and the most recent old ones
    assert set(kept) - set(new) == {f.name for f in old[-(KEEP_CACHES - 1):]}
    assert (cache / "digits-abc.npz").exists()
    os.utime(cache / new[0], (1, 1))  # a cache read again is used again: it stays as the newest
    load_data(folder_cfg(tmp_path / "images"), cache_dir=str(cache))
    assert (cache / new[0]).stat().st_mtime > 1_000_000 + len(old)
