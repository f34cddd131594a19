"""experiments/gdr_robustness.py --quick: the outputs' contents, and a rerun that resumes from scores.csv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "gdr_robustness.py"
KEY = ["metric", "image", "distortion", "level", "transform", "severity"]
METRICS = ["psnr", "ssim", "deepssim"]
TRANSFORMS = ["translation", "scale", "rotation", "perspective", "elastic"]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--quick", "--metrics", ",".join(METRICS), "--images", "1",
                           "--out", str(out), "--device", "cpu", *extra], capture_output=True, text=True, check=True)


@pytest.mark.weights("vgg16")
def test_quick_outputs_and_resume(tmp_path):
    out = tmp_path / "gdr"
    first = _run(out)
    scores = pd.read_csv(out / "scores.csv")
    # 1 image x 2 distortions x levels {0, 1, 3, 5} x (1 untransformed + 5 transforms x 2 severities) x 3 metrics
    assert len(scores) == 1 * 2 * 4 * 11 * 3 and scores.score.notna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["metric", "transform", "severity", "srcc", "score_shift"]
    assert len(summary) == len(METRICS) * len(TRANSFORMS) * 3  # severities 0, 2, 4
    untransformed = summary[summary.severity == 0]
    for metric, rows in untransformed.groupby("metric"):
        assert rows.srcc.nunique() == 1 and rows.srcc.iloc[0] > 0.8, metric  # every metric orders the levels
        assert (rows.score_shift == 0).all()
    shifted = summary[summary.severity > 0]
    assert (shifted.score_shift > 0).all() and shifted.srcc.between(-1, 1).all()
    # DeepSSIM's claim on this data: a 4 % translation leaves its ordering intact, but not PSNR's.
    at4 = shifted[(shifted["transform"] == "translation") & (shifted.severity == 4)].set_index("metric").srcc
    assert at4["deepssim"] > 0.8 > at4["psnr"]
    for name in [*TRANSFORMS, "panels", "examples"]:
        assert (out / f"{name}.png").stat().st_size > 0
    assert all(m in (out / "summary.md").read_text() for m in METRICS)
    assert "to score" in first.stdout

    before = (out / "scores.csv").read_bytes()
    summary_bytes = (out / "summary.csv").read_bytes()
    second = _run(out)
    assert "; 0 to score (264 already in" in second.stdout
    assert (out / "scores.csv").read_bytes() == before

    # A kill while writing leaves the last row cut short: that row is scored again, nothing else.
    (out / "scores.csv").write_bytes(before[: before.rindex(b",") + 4])
    third = _run(out)
    assert "; 1 to score (263 already in" in third.stdout
    again = pd.read_csv(out / "scores.csv").drop_duplicates(KEY, keep="last")
    pd.testing.assert_frame_equal(again.sort_values(KEY, ignore_index=True), scores.sort_values(KEY, ignore_index=True))
    assert (out / "summary.csv").read_bytes() == summary_bytes

    # Stopped at a known row (the 7th of a group of 11) and resumed: the rows and summary of the uninterrupted run.
    split = tmp_path / "split"
    stopped = _run(split, "--stop-after", "7")
    assert "stopped after 7 new rows" in stopped.stdout and not (split / "summary.csv").exists()
    assert len(pd.read_csv(split / "scores.csv")) == 7
    _run(split)
    assert (split / "scores.csv").read_bytes() == before
    assert (split / "summary.csv").read_bytes() == summary_bytes


def test_dataset_mode_on_a_fixture(tmp_path):
    from fixtures_datasets import make_fixture

    root = make_fixture("TID2013", tmp_path / "TID2013", size=48)
    out = tmp_path / "gdr_dataset"
    subprocess.run([sys.executable, str(SCRIPT), "--dataset", "TID2013", "--root", str(root), "--metrics",
                    "psnr,ssim", "--severities", "2", "--limit", "15", "--out", str(out), "--device", "cpu"],
                   capture_output=True, text=True, check=True)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == ["metric", "transform", "severity", "srcc", "plcc", "score_shift"]
    assert len(summary) == 2 * len(TRANSFORMS) * 2  # severities 0 and 2
    base = summary[summary.severity == 0]
    assert (base.srcc > 0.5).all()  # the fixture's MOS falls with the distortion level
    assert len(pd.read_csv(out / "scores.csv")) == 2 * 15 * (1 + len(TRANSFORMS))
