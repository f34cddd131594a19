"""The benchmark script runs and writes real figures (no timing is asserted)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.weights("vgg16")
def test_benchmark_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, check=True)
    assert "overhead_pct=" in proc.stdout
    with open(tmp_path / "benchmark_cpu_quick.csv", newline="") as fh:
        rows = {row["metric"]: row for row in csv.DictReader(fh)}
    assert set(rows) == {"deepssim", "deepssim-lite", "deepwsd-vgg", "deepjsd-squeeze"}
    for row in rows.values():
        for key in ("pair_ms", "backbone_ms", "after_backbone_ms", "per_dist_ms", "batched_per_dist_ms", "peak_mib"):
            assert float(row[key]) > 0 if key != "peak_mib" else float(row[key]) >= 0, (key, row)
        assert float(row["overhead_pct"]) > 0
    assert rows["deepssim"]["weights"] == "pretrained"
    assert rows["deepwsd-vgg"]["weights"] in ("pretrained", "random")  # VGG19 weights exist only where a user has them
    assert (tmp_path / "benchmark_cpu_quick.md").read_text().count("| deep") == 4


def test_dataset_mode_writes_loop_engine_and_precision_rows(tmp_path):
    """--dataset 2,5: a generated rated set, scored by the per-pair loop and the engine in fp32 and fp64 (random
    weights); fp32 is the reference of the deviations, fp64 deviates a little, both order the levels alike."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--dataset", "2,5", "--size",
                           "64x48", "--metrics", "deepssim", "--weights", "deepssim=random", "--precisions",
                           "fp32,fp64", "--nproc", "1", "--authors-seconds", "deepssim=100", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "dataset_cpu.csv", newline="") as fh:
        rows = {(row["mode"], row["precision"]): row for row in csv.DictReader(fh)}
    assert set(rows) == {("per-pair loop", "fp32"), ("engine", "fp32"), ("engine", "fp64")}
    assert all(int(row["pairs"]) == 10 and float(row["pairs_per_s"]) > 0 for row in rows.values())
    fp32, fp64 = rows[("engine", "fp32")], rows[("engine", "fp64")]
    assert float(fp32["max_rel_diff_vs_fp32"]) == 0 and 0 < float(fp64["max_rel_diff_vs_fp32"]) < 1e-5
    assert -1 <= float(fp32["srcc"]) <= 1 and abs(float(fp64["srcc_change"])) < 1e-9
    assert (tmp_path / "dataset_cpu.md").read_text().count("| deepssim |") == 3
    # the authors' code's seconds, given: the engine rows' speed-up over it is those seconds over the row's own
    assert float(fp32["speedup_vs_authors"]) == pytest.approx(100 / float(fp32["wall_s"]), rel=1e-6)
    assert rows[("per-pair loop", "fp32")]["speedup_vs_authors"] == ""


@pytest.mark.parametrize("option, value", [("--authors-seconds", "deepssim"), ("--authors-seconds", "deepssim=fast"),
                                           ("--weights", "=x.pth")])
def test_malformed_metric_values_are_one_line_errors(option, value, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"), "--dataset", "2,5", option,
                           value, "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and f"{option} '{value}': expected METRIC=VALUE" in proc.stderr
    assert "Traceback" not in proc.stderr
