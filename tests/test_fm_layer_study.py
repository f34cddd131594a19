"""experiments/fm_layer_study.py: quick-mode outputs, per-tap scores = DeepFeatureMetric, resume (also after a kill
mid-line), skipped backbones, the all-tap metric, dataset mode; and iqa_core.resumable_csv."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iqa_core.backbones import list_backbones
from iqa_core.deep_features import DeepFeatureMetric, TapGrid
from iqa_core.metric import create_metric
from iqa_core.resumable_csv import ResumableCSV

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "fm_layer_study.py"
ALEXNET = pytest.mark.weights("alexnet")
LAYER_COLUMNS = ["backbone", "tap", "tap_index", "distance", "srcc", "srcc_pooled", "n"]
QUICK_PAIRS = 2 * 2 * 3  # images x distortions x levels


def _load_script():
    spec = importlib.util.spec_from_file_location("fm_layer_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


study = _load_script()


def read_scores(out: Path) -> pd.DataFrame:
    """scores.csv (the engine's store) with the cell's backbone, tap and distance from its metric name."""
    scores = pd.read_csv(out / "scores.csv")
    cells = scores.metric.str.split("/", expand=True)
    return scores.assign(backbone=cells[0], tap=cells[1], distance=cells[2])


@pytest.fixture
def count_passes(monkeypatch) -> list[int]:
    """Counts backbone passes (TapGrid.tap_outputs calls: one per image)."""
    calls = [0]
    original = TapGrid.tap_outputs

    def counted(self, x, *args):
        calls[0] += 1
        return original(self, x, *args)

    monkeypatch.setattr(TapGrid, "tap_outputs", counted)
    return calls


@pytest.fixture(scope="module")
def quick_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fm_quick")
    assert study.main(["--quick", "--out", str(out), "--device", "cpu"]) == 0
    return out


@ALEXNET
def test_quick_outputs(quick_out):
    stored = pd.read_csv(quick_out / "scores.csv")
    assert list(stored.columns) == ["metric", "options", "weights", "precision", "image", "distortion", "level",
                                    "setup", "files", "score"]
    assert set(stored.setup) == {"short_side=224;seed=0"} and set(stored.precision) == {"fp32"}
    scores = read_scores(quick_out)
    assert len(scores) == QUICK_PAIRS * 3 * 2 and np.isfinite(scores.score).all()  # 3 taps x 2 distances
    assert set(scores.tap) == {"relu1", "relu3", "relu5"} and set(scores.distance) == {"l2", "wsd"}
    table = pd.read_csv(quick_out / "layer_srcc.csv")
    assert list(table.columns) == LAYER_COLUMNS and len(table) == 3 * 2
    assert (table.n == QUICK_PAIRS).all() and list(table.drop_duplicates("tap").tap_index) == [1, 3, 5]
    for column in ("srcc", "srcc_pooled"):
        assert np.isfinite(table[column]).all() and table[column].between(-1, 1).all()
    assert (table.srcc > 0.5).all()  # every tap orders blur and JPEG levels of one image
    for name in ("alexnet.png", "curves.png"):
        assert (quick_out / name).stat().st_size > 0
    summary = (quick_out / "summary.md").read_text()
    assert "| alexnet | l2 |" in summary and "## Skipped backbones" in summary
    assert pd.read_csv(quick_out / "skipped.csv").empty


@ALEXNET
@pytest.mark.parametrize("cell", [("relu3", "wsd", "chelsea", "jpeg", 5), ("relu5", "l2", "astronaut",
                                                                         "gaussian_blur", 3)])
def test_scores_equal_deep_feature_metric(quick_out, cell):
    tap, distance, image, distortion, level = cell
    scores = read_scores(quick_out)
    row = scores[(scores.tap == tap) & (scores.distance == distance) & (scores.image == image)
                 & (scores.distortion == distortion) & (scores.level == level)]
    assert len(row) == 1
    ref = study.study_images(2, 224)[image]
    dist = study.distort(distortion, ref, level, seed=0)
    metric = DeepFeatureMetric("alexnet", distance, taps=[tap]).eval()
    with torch.no_grad():
        expected = float(metric(dist, ref)[0])
    assert row.score.iloc[0] == pytest.approx(expected, rel=1e-5, abs=1e-8)


@ALEXNET
def test_resume_recomputes_nothing(quick_out, count_passes, capsys):
    before = (quick_out / "scores.csv").read_bytes()
    assert study.main(["--quick", "--out", str(quick_out), "--device", "cpu"]) == 0
    assert "12 pairs; 0 of 72 scores to compute" in capsys.readouterr().out
    assert count_passes[0] == 0
    assert (quick_out / "scores.csv").read_bytes() == before


@ALEXNET
def test_truncated_last_line_is_scored_again(quick_out, tmp_path, count_passes):
    out = tmp_path / "cut"
    shutil.copytree(quick_out, out)
    path = out / "scores.csv"
    full = path.read_bytes()
    path.write_bytes(full[:-7])  # a kill in the middle of the last row's score
    assert study.main(["--quick", "--out", str(out), "--device", "cpu"]) == 0
    assert count_passes[0] == 2  # that pair's batch only: its reference, and its batch of distorted images
    again = pd.read_csv(path)
    original = pd.read_csv(quick_out / "scores.csv")
    assert len(again) == len(original)
    pd.testing.assert_frame_equal(again, original, rtol=1e-6)


@ALEXNET
def test_stopped_run_resumes_to_the_uninterrupted_rows(quick_out, tmp_path, capsys):
    """--stop-after 10 stops mid-pair (a pair writes 6 rows); the rerun ends with the uninterrupted run's rows."""
    split = tmp_path / "split"
    assert study.main(["--quick", "--out", str(split), "--device", "cpu", "--stop-after", "10"]) == 0
    assert "stopped after 10 new rows" in capsys.readouterr().out
    assert len(pd.read_csv(split / "scores.csv")) == 10 and not (split / "layer_srcc.csv").exists()
    assert study.main(["--quick", "--out", str(split), "--device", "cpu"]) == 0
    for name in ("scores.csv", "layer_srcc.csv", "all_taps_srcc.csv"):
        assert (split / name).read_bytes() == (quick_out / name).read_bytes(), name


@ALEXNET
def test_skipped_backbone_is_reported(tmp_path, monkeypatch, capsys, weights_dir):
    missing = "dinov1" if "dinov1" in list_backbones() else "vgg19"
    weights = tmp_path / "weights"  # AlexNet's weights only
    weights.mkdir()
    shutil.copy(weights_dir / "alexnet_features.pth", weights)
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("IQA_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    out = tmp_path / "out"
    assert study.main(["--quick", "--backbones", f"{missing},alexnet", "--images", "1", "--levels", "1,5",
                       "--out", str(out), "--device", "cpu"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("skipped")]
    assert len(lines) == 1 and lines[0].startswith(f"skipped {missing}: ") and ".pth" in lines[0]
    skipped = pd.read_csv(out / "skipped.csv")
    assert list(skipped.backbone) == [missing] and skipped.reason.iloc[0] == lines[0].split(": ", 1)[1]
    assert f"- {missing}: " in (out / "summary.md").read_text()
    assert set(pd.read_csv(out / "layer_srcc.csv").backbone) == {"alexnet"}


def test_only_missing_backbones_fail_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("IQA_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert study.main(["--quick", "--backbones", "vgg19", "--out", str(tmp_path / "out")]) == 2
    assert "no backbone could be built" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "out" / "skipped.csv").backbone) == ["vgg19"]


def test_checkpoints_option_and_its_former_name():
    assert study.parse_args(["--checkpoints", "dinov1=a.pth,vgg16=b.pth"]).checkpoints == "dinov1=a.pth,vgg16=b.pth"
    assert study.parse_checkpoints("dinov1=a.pth, vgg16=b.pth") == {"dinov1": "a.pth", "vgg16": "b.pth"}
    with pytest.warns(DeprecationWarning, match="--weights is deprecated.*use --checkpoints"):
        args = study.parse_args(["--weights", "dinov1=a.pth"])
    assert args.checkpoints == "dinov1=a.pth"
    with pytest.raises(ValueError, match="--checkpoints expects BACKBONE=PATH"):  # one line, exit 2 via run_main
        study.parse_checkpoints("dinov1")


@ALEXNET
def test_all_taps_row_is_the_registered_metric(tmp_path):
    out = tmp_path / "all"
    args = ["--backbones", "alexnet", "--distances", "l2,jsd", "--images", "1", "--distortions", "gaussian_noise",
            "--levels", "1,3,5", "--out", str(out), "--device", "cpu"]
    assert study.main(args) == 0
    whole = pd.read_csv(out / "all_taps_srcc.csv")
    assert list(whole.distance) == ["l2", "jsd"] and (whole.n == 3).all()
    scores = read_scores(out)
    summed = scores[(scores.level == 3) & (scores.distance == "jsd")].score.sum()
    ref = study.study_images(1, 224)["astronaut"]
    with torch.no_grad():
        expected = float(create_metric("zs-alexnet-jsd")(study.distort("gaussian_noise", ref, 3, seed=0), ref)[0])
    assert summed == pytest.approx(expected, rel=1e-5)


@ALEXNET
def test_dataset_mode_on_a_fixture(tmp_path):
    from fixtures_datasets import make_fixture

    root = make_fixture("TID2013", tmp_path / "TID2013", size=48)
    out = tmp_path / "fm_dataset"
    assert study.main(["--dataset", "TID2013", "--root", str(root), "--backbones", "alexnet", "--taps",
                       "relu1,relu2", "--distances", "l2,cos", "--limit", "15", "--out", str(out),
                       "--device", "cpu"]) == 0
    table = pd.read_csv(out / "layer_srcc.csv")
    assert list(table.columns) == LAYER_COLUMNS and len(table) == 2 * 2 and (table.n == 15).all()
    assert (table.srcc == table.srcc_pooled).all() and table.srcc.between(-1, 1).all()
    l2 = table[table.distance == "l2"].set_index("tap").srcc
    assert (l2 > 0.5).all()  # the fixture's MOS falls as its noise grows
    assert len(pd.read_csv(out / "scores.csv")) == 15 * 2 * 2
    assert "dataset TID2013" in (out / "summary.md").read_text()


# ------------------------------------------------------------------------------------------------------------
# iqa_core.resumable_csv
# ------------------------------------------------------------------------------------------------------------


def test_resumable_csv_round_trip_and_partial_line(tmp_path):
    path = tmp_path / "cache.csv"
    with ResumableCSV(path, ["a", "b", "score"], ["a", "b"]) as cache:
        cache.add(["x", 1, repr(0.125)])
        cache.add(["y", 2, repr(1 / 3)])
        cache.flush()
    path.write_bytes(path.read_bytes()[:-5])  # "0.333333" cut short: still a number, must not count
    with ResumableCSV(path, ["a", "b", "score"], ["a", "b"]) as cache:
        assert ("x", 1) in cache and ("y", "2") not in cache and len(cache) == 1
        cache.add(["y", 2, repr(1 / 3)])
    assert path.read_text() == f"a,b,score\nx,1,0.125\ny,2,{1 / 3!r}\n"
    with pytest.raises(ValueError, match="columns"):
        ResumableCSV(path, ["a", "c", "score"], ["a"])
