"""How fast an image folder is decoded the first time (before the cache): the loader as it was (one
thread, full-size JPEG decoding, the 16-bit stretch in float64) against the loader now (a thread per
core, JPEG decoded at a reduced scale, the stretch in float32), side by side on the same files:

    .venv/bin/python bench/decode.py [--images 200] [--size 1536] [--out bench/results/decode.md]

The files are written once into a temporary folder: RGB JPEGs and 12-bit grayscale images in 16-bit
PNGs, both of size x size pixels, as scans come; both loaders resize them to 64 x 64 grayscale.
"""

import argparse, os, statistics, sys, tempfile, time  # noqa: E401
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality import out_flag  # noqa: E402
from tuner.learn.data import decode_all  # noqa: E402
from tuner.machine import usable_cpus  # noqa: E402
from tuner.search.config import DataConfig  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "decode.md"


def decode_before(paths: list[Path], size: int) -> np.ndarray:
    """The loader before: one image after the other, each decoded at full size."""
    x = np.zeros((len(paths), 1, size, size), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I"):
                a = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.rint((a - a.min()) * (255 / (a.max() - a.min()))).astype(np.uint8))
            x[i, 0] = np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR))
    return x


def write_images(folder: Path, n: int, size: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (size // 12, size // 12, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    paths = {"JPEG, RGB": [], "PNG, 16-bit grayscale": []}
    for i in range(n):
        jpeg, png = folder / f"{i}.jpg", folder / f"{i}.png"
        smooth.rotate(i % 4 * 90).save(jpeg, quality=90)
        Image.fromarray(np.asarray(smooth.convert("L").rotate(i % 4 * 90), np.uint16) * 16).save(png)
        paths["JPEG, RGB"].append(jpeg)
        paths["PNG, 16-bit grayscale"].append(png)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    cfg = DataConfig(kind="imagefolder", image_size=64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (kind, paths) in enumerate(write_images(Path(tmp), args.images, args.size).items()):
            walls = {"before": [], "now": []}
            for r in range(args.repeats):  # alternate, so that the machine's load hits both alike
                t = time.perf_counter()
                old = decode_before(paths, 64)
                walls["before"].append(time.perf_counter() - t)
                t = time.perf_counter()
                new, ok, _ = decode_all(paths, cfg, Path(tmp) / f"cache-{k}-{r}.pt")  # a miss each time
                walls["now"].append(time.perf_counter() - t)
            assert ok.all()
            diff = np.abs(old.astype(int) - new.astype(int))
            before, now = statistics.median(walls["before"]), statistics.median(walls["now"])
            rows.append(f"| {kind} | {before / len(paths) * 1000:.1f} | {now / len(paths) * 1000:.1f} | {before / now:.1f}x "
                        f"| {diff.mean():.2f} / {diff.max()} |")
    text = "\n".join([
        "# Decoding an image folder the first time",
        "",
        f"`python bench/decode.py --images {args.images} --size {args.size}{out_flag(args.out, DEFAULT_OUT)}` on {usable_cpus()} "
        f"usable cores ({os.cpu_count()} in the machine). {args.images} files of each kind, {args.size} x {args.size} pixels, "
        f"decoded to 64 x 64 grayscale; median of {args.repeats} alternating runs. The last column compares the pixels "
        "the two loaders give (0-255).",
        "",
        "| files | before, ms per image | now, ms per image | speed-up | pixel difference, mean / max |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
