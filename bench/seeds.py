"""Pool the per-seed rows of several bench/quality.py result files into one table over all their seeds.

    python bench/seeds.py bench/results/quality.md bench/results/quality-seeds-3-5.md \
        bench/results/quality-seeds-3-5-at-5-percent.md --out bench/results/quality-6-seeds.md

The per-seed tables hold 3 decimals, so two values equal there count as a tie, not a win.
"""

import argparse
import statistics
import sys
from pathlib import Path

COLUMNS = ("(c)", "ref 0", "ref 1", "(a)", "(d)")  # the held-out columns of the per-seed table, in order
NAMES = {"(c)": "c tuner, folds auto", "ref 0": "b ref 0 (cross-entropy)", "ref 1": "b ref 1 (focal default)",
         "(a)": "a blog loop", "(d)": "d tuner, folds = 1"}
METRICS = ("AP", "balanced accuracy")


def fail(sentence: str) -> None:
    print(f"error: {sentence}", file=sys.stderr)
    sys.exit(2)


def read(path: Path) -> dict:
    """{task: {seed: {column: (AP, BA)}}} from the file's per-seed table."""
    rows, inside = {}, False
    for line in path.read_text().splitlines():
        if line.startswith("| task | seed |"):
            inside = True
            continue
        if not inside or not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        task, seed, held = cells[0], int(cells[1]), cells[4:4 + len(COLUMNS)]
        rows.setdefault(task, {})[seed] = {k: tuple(float(v) for v in cell.split(" / ")) for k, cell in zip(COLUMNS, held)}
    if not rows:
        fail(f"{path} has no per-seed table (a file written by bench/quality.py has one)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    tasks: dict = {}
    for path in args.files:
        for task, seeds in read(path).items():
            clash = tasks.setdefault(task, {}).keys() & seeds.keys()
            if clash:
                fail(f"{path} repeats seeds {sorted(clash)} of task {task!r}; pass each seed once")
            tasks[task].update(seeds)
    table, verdicts = [], []
    for task, seeds in tasks.items():
        runs = list(seeds.values())
        for col in COLUMNS:
            cells = [f"{statistics.mean(r[col][i] for r in runs):.3f} ± {statistics.pstdev(r[col][i] for r in runs):.3f}"
                     for i in range(len(METRICS))]
            table.append(f"| {task} | {NAMES[col]} | {len(runs)} | " + " | ".join(cells) + " |")
        said = []
        for col in ("ref 0", "ref 1", "(a)"):
            wins = [f"{m} {sum(r['(c)'][i] > r[col][i] for r in runs)}/{len(runs)}"
                    + (f" ({ties} ties)" if (ties := sum(r["(c)"][i] == r[col][i] for r in runs)) else "")
                    for i, m in enumerate(METRICS)]
            said.append(f"  (c) beats {NAMES[col]} in: " + ", ".join(wins))
        for i, m in enumerate(METRICS):
            sc, sd = (statistics.pstdev(r[col][i] for r in runs) for col in ("(c)", "(d)"))
            said.append(f"  spread of {m}: (c) {sc:.3f} vs (d) {sd:.3f} ({'at most half' if sc <= sd / 2 else 'more than half'})")
        verdicts.append(f"- **{task}** (seeds {', '.join(map(str, sorted(seeds)))}):\n" + "\n".join(said))
    args.out.write_text("\n".join([
        "# Search quality on held-out data, all seeds pooled",
        "",
        f"`python bench/seeds.py {' '.join(str(p) for p in args.files)} --out {args.out}`: the per-seed rows of those "
        "files (written by `bench/quality.py`; their headers say how each was run and what **held-out** means), "
        "pooled per task. Held-out AP and balanced accuracy of the model each run hands back, mean ± std over seeds. "
        "Values have 3 decimals, so equal ones count as ties.",
        "",
        "| task | configuration | seeds | held-out AP | held-out balanced accuracy |",
        "|---|---|---|---|---|",
        *table,
        "",
        "## Verdicts ((c): seeds where it was strictly higher; spreads: (c) against (d))",
        "",
        *verdicts,
        "",
    ]))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
