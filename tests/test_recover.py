"""experiments/recover.py in --quick mode: the loss goes down, outputs are written, a rerun resumes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "recover.py"
pytestmark = pytest.mark.weights("vgg16")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--quick", *args], capture_output=True, text=True, check=True)


@pytest.mark.parametrize("metric,init", [("deepwsd-vgg16", "white"), ("deepssim-lite", "noise")])
def test_recover_quick(tmp_path, metric, init):
    out = tmp_path / "run"
    _run("--metric", metric, "--init", init, "--out", str(out))
    with open(out / "loss.csv", newline="") as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0]  # the optimisation makes real progress in 24 steps
    for name in ("progress.png", "loss.png", "final.png", "summary.md", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0
    assert Image.open(out / "final.png").size == (96, 72)
    final_bytes = (out / "final.png").read_bytes()
    rerun = _run("--metric", metric, "--init", init, "--out", str(out))
    assert "resuming from step 25" in rerun.stdout
    assert (out / "final.png").read_bytes() == final_bytes


def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path):
    """--stop-after 10 checkpoints after step 9 and stops; the rerun continues from there (Adam state included) and
    writes what an uninterrupted run writes."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run("--metric", "deepssim-lite", "--out", str(straight))
    stopped = _run("--metric", "deepssim-lite", "--out", str(split), "--stop-after", "10")
    assert "stopped after step 9 of 24" in stopped.stdout and not (split / "final.png").exists()
    resumed = _run("--metric", "deepssim-lite", "--out", str(split))
    assert "resuming from step 10" in resumed.stdout
    for name in ("final.png", "loss.csv", "summary.md"):
        assert (split / name).read_bytes() == (straight / name).read_bytes(), name


def test_recover_reports_unknown_metric_and_missing_weights(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--metric", "no-such-metric", "--out",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown metric 'no-such-metric'")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--weights", str(tmp_path / "none.pth"), "--out",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not found" in proc.stderr
