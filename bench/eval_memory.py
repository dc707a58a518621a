"""Memory and time of scoring images (validation every epoch, the test check, predict): chunks of
512 images whatever their size (before) against ``eval_chunk``'s chunks sized by the pixels (now).

    .venv/bin/python bench/eval_memory.py [--images 600] [--out bench/results/eval-memory.md]

Each measurement runs in a fresh process: the peak resident memory it adds while scoring
(``ru_maxrss`` after minus before) and the seconds taken, for one SimpleCNN on random uint8
images of each size (RGB)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ONE = """
import json, resource, sys, time
import torch
from tuner.learn.models import SimpleCNN
from tuner.learn.train import eval_chunk, predict
size, n, old = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "old"
torch.manual_seed(0)
x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
model = SimpleCNN(3, size, 1)
predict(model, x[:2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
predict(model, x, batch_size=512 if old else None)
took = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"added_mib": (peak - before) / 1024, "seconds": took, "chunk": 512 if old else eval_chunk(x)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224])
    ap.add_argument("--out", default="bench/results/eval-memory.md")
    args = ap.parse_args()
    rows = []
    for size in args.sizes:
        got = {}
        for way in ("old", "new"):
            proc = subprocess.run([sys.executable, "-c", ONE, str(size), str(args.images), way],
                                  capture_output=True, text=True, check=True)
            got[way] = json.loads(proc.stdout)
        rows.append((size, got))
        print(size, got, flush=True)
    pixels = lambda s: args.images * 3 * s * s / 2**20  # noqa: E731
    lines = ["# Scoring memory: chunks by image count against chunks by pixels", "",
             f"`python bench/eval_memory.py --images {args.images}` on a 2-core CPU: one SimpleCNN scoring "
             f"{args.images} random RGB images of each size in a fresh process; peak resident memory added while "
             "scoring, and its seconds. Before: 512 images per forward pass at every size; now: `eval_chunk` "
             "(512 at 32x32, fewer in proportion to the pixels).", "",
             "| image size | uint8 pixels (MiB) | chunk before | memory added before (MiB) | seconds before "
             "| chunk now | memory added now (MiB) | seconds now |",
             "|---|---|---|---|---|---|---|---|"]
    for size, g in rows:
        lines.append(f"| {size}x{size} | {pixels(size):.0f} | {g['old']['chunk']} | {g['old']['added_mib']:.0f} | "
                     f"{g['old']['seconds']:.2f} | {g['new']['chunk']} | {g['new']['added_mib']:.0f} | {g['new']['seconds']:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
