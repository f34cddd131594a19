"""The command line: single pairs, errors, and the resumable batch form."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from iqa_core.cli import main

ROOT_ARGS = ["--metric", "deepssim-lite"]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


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
        assert float(row["score"]) == pytest.approx(single, rel=1e-6)

    # A run killed while writing leaves a row cut short: it is not trusted but scored again.
    text = out.read_text()
    out.write_text(text[: text.rindex(",") + 4])  # the last score cut to 2 digits, no newline
    assert main(["batch", "--pairs", str(small), "--root", str(example_dir), "--out", str(out), *ROOT_ARGS]) == 0
    assert _rows(out) == rows


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


def test_module_entry_point_prints_json_last(example_dir):
    ref = example_dir / "kadid10k_I47_sample" / "I47.png"
    proc = subprocess.run([sys.executable, "-m", "iqa_core", "score", "--metric", "deepssim", str(ref), str(ref),
                           "--json"], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["metric"] == "deepssim" and result["score"] == pytest.approx(1.0)
    listing = subprocess.run([sys.executable, "-m", "iqa_core", "list", "--json"], capture_output=True, text=True,
                             check=True)
    assert {"deepssim", "deepssim-sc", "deepssim-lite"} <= {m["name"] for m in json.loads(listing.stdout)}
