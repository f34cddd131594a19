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
