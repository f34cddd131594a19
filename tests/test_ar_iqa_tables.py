"""experiments/ar_iqa_tables.py end to end on a generated TID2013 fixture: outputs, and resuming after a kill."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_datasets import make_fixture

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ar_iqa_tables.py"
METRICS = "deepssim,deepssim-lite"
pytestmark = pytest.mark.weights("vgg16")


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


def test_each_reference_is_encoded_once(tid_fixture, tmp_path, monkeypatch):
    """Each distorted image and each reference goes through the backbone once (not two images per pair); the
    distorted images of a reference go in batches, so there are fewer calls than images."""
    import importlib

    from deepssim.deepssim import DeepSSIMLite
    from iqa_core.datasets import load_dataset

    tables = importlib.import_module("experiments.ar_iqa_tables")
    passes = []
    original = DeepSSIMLite.tap_outputs
    monkeypatch.setattr(DeepSSIMLite, "tap_outputs", lambda self, x, **kw: passes.append(x.shape[0]) or
                        original(self, x, **kw))
    assert tables.main(["--dataset", "TID2013", "--root", str(tid_fixture), "--metrics", "deepssim-lite",
                        "--quick", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    records = list(load_dataset("TID2013", root=tid_fixture))[:40]
    assert sum(passes) == len(records) + len({r.ref for r in records}) < 2 * len(records)
    assert len(passes) < sum(passes)


def test_interrupted_run_resumes_to_the_rows_of_an_uninterrupted_one(tid_fixture, tmp_path):
    """--stop-after 7 stops the run after its 7th prediction (mid-reference); the rerun computes only the rest and
    ends with the rows and tables of a run that was never interrupted."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    subprocess.run(_command(tid_fixture, straight), capture_output=True, text=True, check=True)
    first = subprocess.run([*_command(tid_fixture, split), "--stop-after", "7"], capture_output=True, text=True,
                           check=True)
    assert "stopped after 7 new rows" in first.stdout and not (split / "table.csv").exists()
    assert len(_rows(split / "TID2013_predictions.csv")) == 7
    rerun = subprocess.run(_command(tid_fixture, split), capture_output=True, text=True, check=True)
    assert "(7 cached" in rerun.stdout
    predictions = (split / "TID2013_predictions.csv").read_bytes()
    assert predictions == (straight / "TID2013_predictions.csv").read_bytes()  # same rows, same order, same values
    for name in ("table.csv", "by_distortion.csv"):
        assert (split / name).read_bytes() == (straight / name).read_bytes(), name


def test_root_with_several_datasets_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dataset",
                           "TID2013,KADID-10k", "--root", str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --root goes with a single --dataset: run once per dataset, "
                                                "or put the datasets under $IQA_DATA_DIR (one folder each)"]
