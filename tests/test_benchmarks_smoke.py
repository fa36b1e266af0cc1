"""Smoke tests of the scripts in bench/: each runs end to end on a toy configuration in seconds, so that it cannot rot.

They check that the output is complete and well formed, never a speed (speed is what the benchmarks measure).
"""

from __future__ import annotations

import math
import re

import pytest

TORCH_THREADS = 1


@pytest.mark.parametrize("padding, passes", [("max_length", "one concatenated pass")])
def test_textcls_step_bench_runs_and_prints_its_ratios(data_dir, capsys, padding, passes, repo_script):
    bench = repo_script("bench/textcls_step_bench.py")
    medians = bench.main(["--random-init", "--tiny", "--steps", "2", "--warmup", "1", "--batch", "8", "--max-length", "16",
                          "--padding", padding, "--threads", "1", "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert set(medians) == {"plain", "plain_oe", "trainer", "trainer_oe"}
    assert all(m > 0 and math.isfinite(m) for m in medians.values())
    rows = [line for line in out.splitlines() if line.startswith("| (")]
    assert len(rows) == 4, out
    # max_length padding: every batch is (8, 16), so OETrainer runs the in+outlier rows in one pass
    assert rows[0].startswith("| (1) plain loop, in-distribution | 8x16 |")
    assert rows[3].startswith(f"| (3) OETrainer.train, with outliers ({passes}) | 8x16 + 8x16 |")
    assert "torch threads 1" in out and "load before:" in out
    r1 = re.search(r"^ratio \(3\)/\(1\), no outliers: ([0-9.]+)$", out, re.M)
    r2 = re.search(r"^ratio \(3 with OE\)/\(2\): ([0-9.]+)$", out, re.M)
    assert r1 and r2, out
    assert float(r1.group(1)) == pytest.approx(medians["trainer"] / medians["plain"], abs=0.006)
    assert float(r2.group(1)) == pytest.approx(medians["trainer_oe"] / medians["plain_oe"], abs=0.006)


def test_textcls_step_bench_rejects_bad_arguments(capsys, repo_script):
    bench = repo_script("bench/textcls_step_bench.py")
    with pytest.raises(SystemExit) as err:
        bench.main(["--steps", "0"])
    assert err.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err


def test_textcls_padding_bench_runs_one_forward_per_step_and_prints_its_ratios(data_dir, capsys, repo_script):
    """Toy GRU, one timed step per method: every OE step is one forward pass (the bench raises otherwise), the
    padded lengths are max_length for 'max_length' and at most that for 'longest'."""
    bench = repo_script("bench/textcls_padding_bench.py")
    speeds = bench.main(["--tiny", "--steps", "1", "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    methods = {"max_length", "longest", "longest + group_by_length"}
    assert set(speeds) == {"baseline", "oe"} and all(set(s) == methods for s in speeds.values())
    assert all(v > 0 and math.isfinite(v) for s in speeds.values() for v in s.values())
    lengths = re.findall(r"^\| (max_length|longest[^|]*) \| (\d+) x ([0-9.]+) \|", out, re.M)
    assert [(m.strip(), int(r)) for m, r, _ in lengths] == [("max_length", 32), ("longest", 32), ("longest + group_by_length", 32),
                                                            ("max_length", 64), ("longest", 64), ("longest + group_by_length", 64)]
    assert all(float(length) == 24.0 for m, _, length in lengths if m == "max_length")
    assert all(float(length) <= 24.0 for _, _, length in lengths)
