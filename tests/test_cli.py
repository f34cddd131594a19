"""The command line: single pairs, errors, and the resumable batch form."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEEPSSIM_LITE_REL

from iqa_core.cli import main

ROOT_ARGS = ["--metric", "deepssim-lite"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.weights("vgg16")
def test_batch_scores_pairs_and_resumes(tmp_path, example_dir, capsys):
    pairs = example_dir / "pairs.csv"
    out = tmp_path / "scores.csv"
    with open(pairs, newline="") as fh:
        all_pairs = list(csv.DictReader(fh))
    kadid = [p for p in all_pairs if p["ref"].startswith("kadid")]
    small = tmp_path / "pairs.csv"
    with open(small, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["ref", "dist"])
        writer.writeheader()
        writer.writerows(kadid[:1])
    assert main(["batch", "--pairs", str(small), "--root", str(example_dir), "--out", str(out), *ROOT_ARGS]) == 0
    first = _rows(out)
    assert len(first) == 1 and first[0]["dist"] == kadid[0]["dist"]

    # An interrupted run resumes: the finished row is kept as it is, only the new one is scored.
    with open(small, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=["ref", "dist"]).writerow(kadid[1])
    assert main(["batch", "--pairs", str(small), "--root", str(example_dir), "--out", str(out), *ROOT_ARGS]) == 0
    rows = _rows(out)
    assert [r["dist"] for r in rows] == [p["dist"] for p in kadid[:2]]
    assert rows[0] == first[0]
    assert "1 already in" in capsys.readouterr().err

    # Scores equal the single-pair command (reference features were computed once for both rows).
    for row in rows:
        assert main(["score", str(example_dir / row["ref"]), str(example_dir / row["dist"]), "--json",
                     *ROOT_ARGS]) == 0
        single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["score"]
        # the Lite loss in another reduction order (the batch splits its work its own way): DEEPSSIM_LITE_REL
        assert float(row["score"]) == pytest.approx(single, rel=DEEPSSIM_LITE_REL)

    # A run killed while writing leaves a row cut short: it is not trusted but scored again.
    text = out.read_text()
    out.write_text(text[: text.rindex(",") + 4])  # the last score cut to 2 digits, no newline
    assert main(["batch", "--pairs", str(small), "--root", str(example_dir), "--out", str(out), *ROOT_ARGS]) == 0
    assert _rows(out) == rows


def _four_pairs(folder: Path) -> Path:
    """pairs.csv of the KADID sample: two references with two distorted images each."""
    kadid, names = "kadid10k_I47_sample/", ["I47.png", "I47_03_05.png", "I47_22_02.png"]
    pairs = folder / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ref", "dist"])
        writer.writerows([kadid + ref, kadid + dist] for ref in names[:2] for dist in names if dist != ref)
    return pairs


@pytest.mark.weights("vgg16")
def test_batch_stopped_and_resumed_equals_an_uninterrupted_run(tmp_path, example_dir, capsys):
    """--stop-after 2 interrupts the run at a known row; the rerun finishes it: the same rows, the same values."""
    pairs = _four_pairs(tmp_path)
    common = ["batch", "--pairs", str(pairs), "--root", str(example_dir), *ROOT_ARGS]
    assert main([*common, "--out", str(tmp_path / "straight.csv")]) == 0
    assert main([*common, "--out", str(tmp_path / "split.csv"), "--stop-after", "2"]) == 0
    assert "stopped after 2 new rows" in capsys.readouterr().err
    assert len(_rows(tmp_path / "split.csv")) == 2
    assert main([*common, "--out", str(tmp_path / "split.csv")]) == 0
    assert "2 already in" in capsys.readouterr().err
    assert (tmp_path / "split.csv").read_bytes() == (tmp_path / "straight.csv").read_bytes()
    assert len(_rows(tmp_path / "straight.csv")) == 4


@pytest.mark.weights("vgg16")
def test_batch_encodes_each_reference_once(tmp_path, example_dir, monkeypatch):
    """Four pairs of two references: six images through the backbone (4 distorted + 2 references), not eight; the two
    distorted images of a reference go through it as one batch."""
    from deepssim.deepssim import DeepSSIMLite

    passes = []
    original = DeepSSIMLite.tap_outputs
    monkeypatch.setattr(DeepSSIMLite, "tap_outputs", lambda self, x, **kw: passes.append(x.shape) or
                        original(self, x, **kw))
    pairs = _four_pairs(tmp_path)
    assert main(["batch", "--pairs", str(pairs), "--root", str(example_dir), "--out", str(tmp_path / "s.csv"),
                 *ROOT_ARGS]) == 0
    assert sum(shape[0] for shape in passes) == 6 and len(passes) == 4 and len(_rows(tmp_path / "s.csv")) == 4


@pytest.mark.weights("vgg16")
def test_dtype_and_device_options(example_dir, capsys):
    """--dtype float64 is the API's dtype=torch.float64 (not the float32 value), --device is where it ran."""
    import torch

    from iqa_core import create_metric, load_image

    ref, dist = (example_dir / "kadid10k_I47_sample" / n for n in ("I47.png", "I47_03_05.png"))
    argv = ["score", str(ref), str(dist), "--json", *ROOT_ARGS]
    assert main([*argv, "--dtype", "float64", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with torch.no_grad():
        expected = create_metric("deepssim-lite", dtype=torch.float64)(load_image(dist), load_image(ref)).item()
        single = create_metric("deepssim-lite")(load_image(dist), load_image(ref)).item()
    assert out["score"] == expected and out["score"] != single and out["device"] == "cpu"


def test_errors_exit_2_with_a_message(tmp_path, example_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    ref = str(example_dir / "kadid10k_I47_sample" / "I47.png")
    assert main(["score", "--metric", "deepssim", ref, str(bad)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["score", "--metric", "nope", ref, ref]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert main(["score", "--metric", "deepssim", ref, ref, "--weights", str(tmp_path / "w.pth")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.weights("vgg16")
def test_module_entry_point_prints_json_last(example_dir):
    ref = example_dir / "kadid10k_I47_sample" / "I47.png"
    proc = subprocess.run([sys.executable, "-m", "iqa_core", "score", "--metric", "deepssim", str(ref), str(ref),
                           "--json"], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["metric"] == "deepssim" and result["score"] == pytest.approx(1.0)
    listing = subprocess.run([sys.executable, "-m", "iqa_core", "list", "--json"], capture_output=True, text=True,
                             check=True)
    assert {"deepssim", "deepssim-sc", "deepssim-lite"} <= {m["name"] for m in json.loads(listing.stdout)}
