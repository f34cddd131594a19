"""Notebooks are executed, so they cannot rot; their printed numbers are checked too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def last_stdout(nb: nbformat.NotebookNode) -> str:
    cell = [c for c in nb.cells if c.cell_type == "code"][-1]
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_deepssim_notebook(reference_values):
    nb = run_notebook("deepssim.ipynb")
    scores = json.loads(last_stdout(nb))
    for pair, expected in reference_values["deepssim"]["pairs"].items():
        for key in ("deepssim", "deepssim_lite_loss", "deepssim_with_saliency"):
            if key in expected:
                assert scores[pair][key] == pytest.approx(expected[key], rel=1e-4), (pair, key)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the similarity-map figure and the saliency figure


def test_distribution_measures_notebook():
    nb = run_notebook("distribution_measures.ipynb")
    result = json.loads(last_stdout(nb))
    assert result["reproduced_max_rel"] is not None and result["reproduced_max_rel"] < 1e-4
    for name, rows in result["scores"].items():
        blur, quantised = (rows[k]["score"] for k in sorted(rows))
        assert 0 < quantised < blur, name  # every measure ranks the MOS 1.70 image below the MOS 4.39 one


def test_gdr_robustness_notebook():
    nb = run_notebook("gdr_robustness.ipynb")
    result = json.loads(last_stdout(nb))
    assert result["transforms"] == sorted(["translation", "scale", "rotation", "perspective", "elastic"])
    assert 0.0 in result["severities"] and len(result["severities"]) >= 3
    assert result["rows"] == len(result["metrics"]) * 5 * len(result["severities"])
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2


def test_dps_analysis_notebook():
    nb = run_notebook("dps_analysis.ipynb")
    result = json.loads(last_stdout(nb))
    assert result["columns"] == ["backbone", "tap", "comparator", "accuracy", "robustness", "monotonicity",
                                 "cost_ms", "merit"]
    assert result["cells"] > 0 and result["ranking_sorted"] and result["factors_in_range"]
    assert result["hf_images"] >= 2 and len(result["best"]) == 3
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # the merit heatmaps, top-1 scatter, HF scatter, outlier gallery


def test_zs_iqa_notebook():
    nb = run_notebook("zs_iqa.ipynb")
    result = json.loads(last_stdout(nb))
    scores = result["zs-vgg16-l2"]
    assert scores["I47_03_05.png"] > scores["I47_22_02.png"] > 0  # DMOS 1.70 is farther from I47 than DMOS 4.39
    assert result["cli"] == pytest.approx(scores["I47_03_05.png"], rel=1e-6)  # python -m zs_iqa = the API
    assert result["windows"] == 6  # 3 x 2 windows of 224 on 512 x 384
    assert result["foundation"]["status"] in ("real weights", "random weights (plumbing only)", "not registered")
    perturbed = result["perturbed"]
    assert set(perturbed) == {"none", "tra", "sca", "rot"}
    assert all(perturbed[k] > perturbed["none"] for k in ("tra", "sca", "rot"))  # misalignment adds distance
    assert result["layer_rows"] > 0 and "alexnet" in result["layer_backbones"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # windows, perturbations, per-tap curves


def test_train_restoration_notebook(tmp_path, monkeypatch, train_restoration_quick):
    # Always the quick run, in a temp folder; a copy of the session's quick run, so the notebook's call of the script
    # resumes it (nothing retrained: tests/test_train_restoration.py checks that) instead of training nine nets again.
    shutil.copytree(train_restoration_quick("sr4")[0], tmp_path / "sr4")
    monkeypatch.setenv("TRAIN_RESTORATION_OUT", str(tmp_path / "sr4"))
    nb = run_notebook("train_restoration.ipynb")
    result = json.loads(last_stdout(nb))
    assert result["rows"] == 10 and len(result["losses"]) == 9
    assert {"psnr", "l1", "ssim", "lpips-vgg", "dists", "deepssim", "deepwsd-vgg16"} <= set(result["metrics"])
    assert result["finite"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the crops and the loss curves
