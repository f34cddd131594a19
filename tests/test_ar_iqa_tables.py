"""experiments/ar_iqa_tables.py end to end on a generated TID2013 fixture: outputs, and resuming after a kill."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_datasets import make_fixture

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ar_iqa_tables.py"
METRICS = "deepssim,deepssim-lite"


def _command(root: Path, out: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--dataset", "TID2013", "--root", str(root), "--metrics", METRICS,
            "--quick", "--out", str(out), "--device", "cpu"]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("score")]


@pytest.fixture
def tid_fixture(tmp_path):
    return make_fixture("TID2013", tmp_path / "TID2013", size=48)


def test_quick_run_writes_every_output(tid_fixture, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(_command(tid_fixture, out), capture_output=True, text=True, check=True)
    rows = _rows(out / "TID2013_predictions.csv")
    n_pairs = min(40, len({r["dist"] for r in rows}))
    assert len(rows) == 2 * n_pairs and {r["metric"] for r in rows} == {"deepssim", "deepssim-lite"}
    with (out / "table.csv").open(newline="") as fh:
        table = {row["metric"]: row for row in csv.DictReader(fh)}
    # The fixture's distortions grow with the level and MOS falls with it: both metrics must agree with it.
    for name, row in table.items():
        assert float(row["srcc"]) > 0.5, (name, row)
        assert 0 < float(row["plcc"]) <= 1
        assert float(row["srcc_ci95_low"]) <= float(row["srcc"]) <= float(row["srcc_ci95_high"])
    with (out / "by_distortion.csv").open(newline="") as fh:
        breakdown = list(csv.DictReader(fh))
    assert {r["metric"] for r in breakdown} == {"deepssim", "deepssim-lite"} and len(breakdown) >= 4
    for suffix in ("md", "tex"):
        assert "deepssim-lite" in (out / f"table.{suffix}").read_text()
    assert (out / "TID2013_deepssim_scatter.png").stat().st_size > 0
    assert "| TID2013 | deepssim |" in proc.stdout


def test_interrupted_run_resumes_without_recomputing(tid_fixture, tmp_path):
    out = tmp_path / "out"
    predictions = out / "TID2013_predictions.csv"
    proc = subprocess.Popen(_command(tid_fixture, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not predictions.is_file() or len(predictions.read_text().splitlines()) < 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(predictions)
    assert 0 < len(before) < 80, "the run must be cut short for this test to mean anything"
    rerun = subprocess.run(_command(tid_fixture, out), capture_output=True, text=True, check=True)
    assert f"({len(before)} cached" in rerun.stdout
    after = _rows(predictions)
    assert after[: len(before)] == before  # finished rows kept as they were
    keys = [(r["metric"], r["dist"]) for r in after]
    assert len(keys) == len(set(keys))  # and never computed twice
