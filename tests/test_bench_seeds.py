"""bench/seeds.py pools the per-seed rows of bench/quality.py result files: means, wins, ties, spreads."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
HEADER = ("| task | seed | (c) best trial | params | (c) | ref 0 | ref 1 | (a) | (d) | (c) test | ref 0 test | ref 1 test "
          "| (a) test | (d) test |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def row(seed: int, c: str, ref0: str) -> str:
    held = [c, ref0, "0.900 / 0.800", "0.700 / 0.600", f"0.{seed}00 / 0.500"]
    return f"| t | {seed} | 2 | gamma 1, alpha 0.5 | " + " | ".join(held + ["1.000 / 1.000"] * 5) + " |\n"


def pool(tmp_path, *texts):
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"q{i}.md")
        files[-1].write_text("# q\n\nsome header\n\n" + HEADER + text + "\n## next section\n")
    return subprocess.run([sys.executable, str(BENCH / "seeds.py"), *map(str, files), "--out", str(tmp_path / "out.md")],
                          capture_output=True, text=True)


def test_seeds_of_two_files_are_pooled_per_task(tmp_path):
    proc = pool(tmp_path, row(1, "0.980 / 0.950", "0.970 / 0.950") + row(2, "0.960 / 0.940", "0.970 / 0.930"),
                row(3, "0.970 / 0.960", "0.960 / 0.970"))
    assert proc.returncode == 0, proc.stderr
    out = (tmp_path / "out.md").read_text()
    assert "| t | c tuner, folds auto | 3 | 0.970 ± 0.008 | 0.950 ± 0.008 |" in out
    assert "(c) beats b ref 0 (cross-entropy) in: AP 2/3, balanced accuracy 1/3 (1 ties)" in out
    # (d)'s AP is 0.1, 0.2, 0.3 over the seeds: std 0.082, and (c)'s 0.008 is at most half of it
    assert "spread of AP: (c) 0.008 vs (d) 0.082 (at most half)" in out


def test_a_seed_given_twice_is_refused(tmp_path):
    proc = pool(tmp_path, row(1, "0.980 / 0.950", "0.970 / 0.950"), row(1, "0.960 / 0.940", "0.970 / 0.930"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "repeats seeds [1] of task 't'" in proc.stderr


def test_a_file_without_per_seed_rows_is_refused(tmp_path):
    (tmp_path / "empty.md").write_text("# nothing here\n")
    proc = subprocess.run([sys.executable, str(BENCH / "seeds.py"), str(tmp_path / "empty.md"), "--out", str(tmp_path / "o.md")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "has no per-seed table" in proc.stderr and not (tmp_path / "o.md").exists()
