"""bench/loss_grid.py's table: its rank correlation against scipy's, and the configuration each
out-of-fold score puts first, with that configuration's held-out ranks, read back from the written file."""

import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import loss_grid as grid  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(20), rng.random(20)
    assert grid.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert grid.spearman(a, a) == pytest.approx(1.0) and grid.spearman(a, -a) == pytest.approx(-1.0)


def test_table_names_the_first_by_each_score_and_its_held_out_ranks(tmp_path):
    configs = [(g, b) for g in grid.GAMMAS for b in grid.BETAS]
    rng = np.random.default_rng(0)
    runs = {seed: {c: tuple(rng.random(len(grid.COLUMNS))) for c in configs} for seed in (3, 4)}
    out = tmp_path / "t.md"
    grid.write(types.SimpleNamespace(task=grid.LONG_TAIL, seeds=[3, 4], reverse=True, out=out), runs)
    text = out.read_text()
    assert "loss_grid.py --seeds 3 4 --reverse --out " in text and "digit 9 the most common class" in text
    assert len(re.findall(r"(?m)^\| \d\.\d \| (none|0\.\d+) \|", text)) == len(configs)
    for seed, got in runs.items():
        v = np.array([got[c] for c in configs])
        for col, sign, name in grid.RANKERS:
            first = int(np.argmax(sign * v[:, col]))
            g, b = configs[first]
            ap_rank = 1 + int((v[:, -2] > v[first, -2]).sum())
            row = next(line for line in text.splitlines() if line.startswith(f"| {seed} | {name} |"))
            assert f"gamma {g}, beta {'none' if b is None else b} | {ap_rank} of {len(configs)} |" in row
    nll_first = next(line for line in text.splitlines() if line.startswith("| 3 | out-of-fold NLL |"))
    v = np.array([runs[3][c] for c in configs])
    g, b = configs[int(np.argmin(v[:, 2]))]  # the lowest NLL is the best
    assert f"gamma {g}, beta {'none' if b is None else b} |" in nll_first


def test_a_binary_task_is_named_and_its_weights_are_alpha(tmp_path):
    task = next(t for t, spec in grid.TASKS.items() if spec[0] is not None)
    configs = [(g, a) for g in grid.GAMMAS for a in grid.ALPHAS]
    runs = {0: {c: tuple(np.linspace(0, 1, len(grid.COLUMNS))) for c in configs}}
    out = tmp_path / "b.md"
    grid.write(types.SimpleNamespace(task=task, seeds=[0], reverse=False, out=out), runs)
    text = out.read_text()
    assert f"--task '{task}' --seeds 0" in text and "| gamma | alpha |" in text and "beta" not in text


def test_reverse_of_a_binary_task_is_an_error_before_any_training():
    task = next(t for t, spec in grid.TASKS.items() if spec[0] is not None)
    done = subprocess.run([sys.executable, str(grid.ROOT / "bench" / "loss_grid.py"), "--task", task, "--reverse"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error: --reverse reverses the long tail" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
