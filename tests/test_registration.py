"""Adding a backbone or a comparator is one registration: a toy backbone and a toy comparator, registered once,
work through create_metric (as a preset), DeepFeatureMetric, TapGrid and the layer study, with the same validation
and errors as every registered metric."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from iqa_core import IQAInputError, create_metric, list_metrics, metric_info
from iqa_core.backbones import TapBackbone, create_backbone, list_backbones, register_backbone
from iqa_core.comparators import Comparator, create_comparator, list_comparators, register_comparator
from iqa_core.deep_features import DeepFeatureMetric, Preset, TapGrid, register_preset

TOY_BACKBONE, TOY_COMPARATOR, TOY_METRIC = "toy-pool", "toy-abs", "toy-pool-abs"


class ToyPoolBackbone(TapBackbone):
    """Taps: the image average-pooled by 2 and by 4 (no parameters; weights ignored)."""

    name = TOY_BACKBONE
    taps = ("pool2", "pool4")
    min_size = 4

    def __init__(self, weights: object = None) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, taps: Sequence[str] | None = None) -> list[torch.Tensor]:
        self.calls += 1
        out = {"pool2": F.avg_pool2d(x, 2), "pool4": F.avg_pool2d(x, 4)}
        return [out[t] for t in self.check_taps(taps)]


class ToyAbsComparator(Comparator):
    """Mean absolute difference per tap, summed: lower is better."""

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum((d - r).abs().flatten(1).mean(1) for d, r in zip(dist, ref, strict=True))


def _register_once() -> None:
    if TOY_BACKBONE not in list_backbones():
        register_backbone(TOY_BACKBONE, ToyPoolBackbone, "test backbone: average pools by 2 and 4")
    if TOY_COMPARATOR not in list_comparators():
        register_comparator(TOY_COMPARATOR, "test comparator: mean absolute difference")(ToyAbsComparator)
    if TOY_METRIC not in list_metrics():
        register_preset(TOY_METRIC, Preset(TOY_BACKBONE, TOY_COMPARATOR), "toy preset", "tests")


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    _register_once()


def _pair(side: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, side, side, generator=g)
    return (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1), ref


def _expected(dist: torch.Tensor, ref: torch.Tensor, factors: Sequence[int] = (2, 4)) -> torch.Tensor:
    return sum((F.avg_pool2d(dist, f) - F.avg_pool2d(ref, f)).abs().flatten(1).mean(1) for f in factors)


def test_a_registered_preset_is_a_metric_like_any_other():
    dist, ref = _pair()
    metric = create_metric(TOY_METRIC)
    torch.testing.assert_close(metric(dist, ref), _expected(dist, ref), rtol=1e-6, atol=0)
    assert not metric.higher_is_better and metric.min_size == 4
    info = metric_info(TOY_METRIC)
    assert info.preset.backbone == TOY_BACKBONE and info.preset.comparator == TOY_COMPARATOR
    assert info.describe()["taps"] == "default"
    with pytest.raises(IQAInputError, match="dist"):
        metric(dist[..., :3, :3], ref[..., :3, :3])  # below the backbone's min_size, named like every metric
    feats = metric.reference_features(ref)
    torch.testing.assert_close(metric.score_against(dist, feats), metric(dist, ref), rtol=0, atol=0)


def test_the_toy_backbone_composes_with_every_path():
    dist, ref = _pair()
    composed = DeepFeatureMetric(TOY_BACKBONE, TOY_COMPARATOR, taps=["pool4"])
    torch.testing.assert_close(composed(dist, ref), _expected(dist, ref, (4,)), rtol=1e-6, atol=0)
    backbone = create_backbone(TOY_BACKBONE)
    grid = TapGrid(backbone, None, [TOY_COMPARATOR, "l2"])
    cells = grid(dist, ref)
    assert backbone.calls == 2  # one pass per image for every cell
    for (tap, comparator), value in cells.items():
        alone = DeepFeatureMetric(TOY_BACKBONE, comparator, taps=[tap])(dist, ref)
        torch.testing.assert_close(value, alone, rtol=0, atol=0)
    with pytest.raises(IQAInputError, match="ref"):
        grid(dist, ref.mul(255))  # the same validation as the metrics


def test_the_toy_comparator_works_on_a_real_backbone():
    dist, ref = _pair()
    metric = DeepFeatureMetric("alexnet", TOY_COMPARATOR, taps=["relu1"], weights="random")
    expected = create_comparator(TOY_COMPARATOR)(metric.backbone(dist, ["relu1"]), metric.backbone(ref, ["relu1"]))
    torch.testing.assert_close(metric(dist, ref), expected, rtol=0, atol=0)


def test_the_layer_study_runs_a_registered_backbone(tmp_path):
    study = importlib.import_module("experiments.fm_layer_study")
    assert study.main(["--quick", "--backbones", TOY_BACKBONE, "--taps", "pool2,pool4",
                       "--distances", f"{TOY_COMPARATOR},l2", "--out", str(tmp_path), "--device", "cpu"]) == 0
    scores = pd.read_csv(tmp_path / "scores.csv")  # the engine's store: one key per backbone/tap/distance cell
    assert set(scores["metric"]) == {f"{TOY_BACKBONE}/{t}/{d}" for t in ("pool2", "pool4")
                                     for d in (TOY_COMPARATOR, "l2")}
    table = pd.read_csv(tmp_path / "layer_srcc.csv")
    assert len(table) == 4 and table["srcc"].notna().all()


def _png(path, seed: int) -> str:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    array = (torch.rand(48, 64, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array).save(path)
    return str(path)


def test_one_command_line_scores_compositions_and_lists_presets(tmp_path, capsys):
    import json
    import subprocess
    import sys

    from iqa_core.cli import main
    from iqa_core.io import load_image

    ref, dist = _png(tmp_path / "ref.png", 0), _png(tmp_path / "dist.png", 1)
    assert main(["score", ref, dist, "--backbone", "alexnet", "--comparator", "l2", "--taps", "relu2",
                 "--weights", "random", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    api = DeepFeatureMetric("alexnet", "l2", taps=["relu2"], weights="random")
    assert result["score"] == pytest.approx(float(api(load_image(dist), load_image(ref))[0]), rel=1e-6)
    assert main(["score", ref, dist, "--metric", "deepssim", "--backbone", "vgg16", "--comparator", "l2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["score", ref, dist, "--backbone", "vgg16"]) == 2
    assert "--comparator" in capsys.readouterr().err
    assert main(["list", "--verbose"]) == 0
    listing = capsys.readouterr().out
    assert "backbone vgg16  taps relu5_1  comparator gram-ssim  output score" in listing
    assert "backbone vgg16  taps image,relu1_2,relu2_2,relu3_3,relu4_3,relu5_3  comparator deepwsd" in listing
    alias = subprocess.run([sys.executable, "-m", "zs_iqa", "list", "--comparators"], capture_output=True, text=True,
                           check=True)
    assert "gram-ssim" in alias.stdout and "wsd" in alias.stdout
