"""ZS-IQA distances and windows against the authors' code, and the backbone x comparator machinery.

Reference numbers: ../shared/reference/zs_iqa_reference.json (ZS-IQA @ 1d8c1ce run on CPU). The robustness
transforms of the same file are tested in test_transforms.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence

import pytest
import torch
from conftest import ROOT

from iqa_core import IQAInputError, create_metric, list_metrics, load_image
from iqa_core.backbones import TapBackbone, create_backbone
from iqa_core.comparators import create_comparator, list_comparators
from iqa_core.deep_features import DeepFeatureMetric, TapGrid
from zs_iqa.distances import DISTANCES
from zs_iqa.metrics import CNN_BACKBONES, EMBEDDING_BACKBONES, FOUNDATION_BACKBONES
from zs_iqa.protocol import window_grid, window_starts

KADID = ROOT / "data" / "examples" / "kadid10k_I47_sample"
RTOL = 1e-6  # measured: at most 6e-8 relative from the authors' distances.py (float32)
# Properties that do not depend on what a backbone learnt use torchvision's seeded random weights.
RANDOM = {"weights": "random"}


def formula_tensor(shape: Sequence[int], phase: float) -> torch.Tensor:
    """The reference file's deterministic features: t[j] = 2 sin(0.37 j + phase) + cos(0.011 j), row-major."""
    j = torch.arange(math.prod(shape), dtype=torch.float64)
    return (2 * torch.sin(0.37 * j + phase) + torch.cos(0.011 * j)).float().reshape(tuple(shape))


@pytest.fixture(scope="module")
def vit_taps() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The stacked (1, 12, 50, 768) tokens of the reference, as the 12 per-block taps a backbone returns."""
    dist, ref = formula_tensor((1, 12, 50, 768), 0.0), formula_tensor((1, 12, 50, 768), 0.3)
    return list(dist.unbind(1)), list(ref.unbind(1))


@pytest.mark.parametrize("distance, key", [("l2", "l2_sum_over_layers"), ("cos", "cos_sum_over_layers"),
                                           ("wsd", "wsd_logpow"), ("jsd", "jsd_logpow"), ("skld", "skld_logpow")])
def test_distances_on_vit_tokens_match_official(zs_reference, vit_taps, distance, key) -> None:
    dist, ref = vit_taps
    got = create_comparator(distance)(dist, ref)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(zs_reference["vit_tokens_1x12x50x768"][key], rel=RTOL)


@pytest.mark.parametrize("distance, key", [("l2", "l2_sum"), ("cos", "cos_sum_inf_handling")])
def test_distances_on_cnn_maps_match_official(zs_reference, distance, key) -> None:
    maps = zs_reference["cnn_maps"]
    dist = [formula_tensor(s, 0.0) for s in maps["shapes"]]
    ref = [formula_tensor(s, 0.3) for s in maps["shapes"]]
    assert create_comparator(distance)(dist, ref).item() == pytest.approx(maps[key], rel=RTOL)


def test_sliding_window_indices_match_official(zs_reference) -> None:
    indices = zs_reference["sliding_window_indices"]
    assert len(indices) >= 9
    for length, expected in indices.items():
        assert window_starts(int(length)) == expected, length
    assert window_grid(384, 512) == [(y, x) for y in (0, 160) for x in (0, 200, 288)]
    with pytest.raises(IQAInputError, match="smaller than"):
        window_starts(223)


def test_distances_are_zero_for_identical_taps(vit_taps) -> None:
    dist, _ = vit_taps
    for name in DISTANCES:
        assert create_comparator(name)(dist, dist).item() == pytest.approx(0.0, abs=1e-6), name


def test_swd_is_seeded_and_symmetric(vit_taps) -> None:
    dist, ref = vit_taps
    swd = create_comparator("swd")
    first, again = swd(dist, ref), swd(dist, ref)
    assert torch.equal(first, again)
    assert swd(ref, dist).item() == pytest.approx(first.item(), rel=1e-5)
    assert create_comparator("swd", seed=1)(dist, ref).item() != first.item()


def test_distribution_distances_refuse_embeddings() -> None:
    emb = [torch.rand(2, 512)]
    with pytest.raises(IQAInputError, match="token or map"):
        create_comparator("wsd")(emb, emb)
    assert create_comparator("cos")(emb, [torch.rand(2, 512)]).shape == (2,)


# ---------------------------------------------------------------------------------------------------------------
# Sliding windows: a tiny windowed backbone whose taps are simple functions of the crop
# ---------------------------------------------------------------------------------------------------------------


class PoolingBackbone(TapBackbone):
    """A fake ViT-like backbone with a 32-pixel window: tokens = 8x8 average-pooled patches (+ a CLS token)."""

    name = "pooling-test"
    taps = ("block1", "block2")
    layout = "tokens"
    window = 32

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def window_grid(self, height: int, width: int, stride: int | None = None) -> list[tuple[int, int]]:
        return window_grid(height, width, self.window, stride or 200)

    def forward(self, x: torch.Tensor, taps: Sequence[str] | None = None) -> list[torch.Tensor]:
        taps = self.check_taps(taps)
        self.calls.append(tuple(x.shape))
        tokens = torch.nn.functional.avg_pool2d(x, 8).flatten(2).transpose(1, 2)  # (B, 16, 3)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
        out = {"block1": tokens, "block2": tokens**2}
        return [out[t] for t in taps]


def test_windows_are_scored_separately_and_averaged() -> None:
    torch.manual_seed(0)
    dist, ref = torch.rand(2, 3, 40, 70), torch.rand(2, 3, 40, 70)
    backbone = PoolingBackbone()
    metric = DeepFeatureMetric(backbone, "l2", windows_per_pass=4)
    got = metric(dist, ref)
    # rows (0, 8) x cols (0, 32, 38), rows outer as the official double loop; with a window much smaller than
    # the stride (200) the official rule adds one window after the last stride step, then the flush one
    assert window_grid(40, 70, window=32) == [(0, 0), (0, 32), (0, 38), (8, 0), (8, 32), (8, 38)]
    l2 = create_comparator("l2")
    expected = torch.stack([l2(backbone(dist[..., y:y + 32, x:x + 32]), backbone(ref[..., y:y + 32, x:x + 32]))
                            for y, x in window_grid(40, 70, window=32)]).mean(0)
    torch.testing.assert_close(got, expected)
    assert metric.requires_same_size
    with pytest.raises(IQAInputError):
        metric(dist[..., :31, :], ref[..., :31, :])
    with pytest.raises(IQAInputError):
        metric(dist, ref[..., :, :60])


def test_windows_per_pass_bounds_the_backbone_batch() -> None:
    backbone = PoolingBackbone()
    metric = DeepFeatureMetric(backbone, "cos", windows_per_pass=3)
    x = torch.rand(2, 3, 40, 70)
    metric.reference_features(x)
    assert [c[0] for c in backbone.calls] == [6, 6]  # 6 windows x 2 images, 3 windows per pass


# ---------------------------------------------------------------------------------------------------------------
# Registry, batches, gradients, errors (VGG16 / AlexNet: real weights)
# ---------------------------------------------------------------------------------------------------------------


def test_registry_names() -> None:
    names = set(list_metrics())
    for backbone in FOUNDATION_BACKBONES + CNN_BACKBONES:
        for distance in DISTANCES:
            assert f"zs-{backbone}-{distance}" in names
    for backbone in EMBEDDING_BACKBONES:
        assert f"zs-embed-{backbone}-cos" in names
    assert {"zs-dinov1-l2", "zs-clip-vitb32-wsd", "zs-embed-clip-vitb32-cos"} <= names
    assert set(DISTANCES) | {"gram-ssim", "deepwsd", "lpips", "unit-l2", "cos-channel",
                             "dists-uniform"} <= set(list_comparators())


@pytest.fixture(scope="module")
def kadid_pair() -> tuple[torch.Tensor, torch.Tensor]:
    ref = load_image(KADID / "I47.png")[..., :96, :128]
    dist = load_image(KADID / "I47_03_05.png")[..., :96, :128]
    return dist, ref


@pytest.mark.weights("alexnet")  # on random features the distribution distances are too ill-conditioned (0.5 %)
@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_equals_single_calls_and_broadcast_reference(kadid_pair, distance) -> None:
    dist, ref = kadid_pair
    other = load_image(KADID / "I47_22_02.png")[..., :96, :128]
    metric = create_metric(f"zs-alexnet-{distance}").eval()
    with torch.no_grad():
        batch = metric(torch.cat([dist, other]), torch.cat([ref, ref]))
        single = torch.cat([metric(dist, ref), metric(other, ref)])
        broadcast = metric(torch.cat([dist, other]), ref)
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(broadcast, single, rtol=1e-5, atol=1e-7)
    assert (single > 0).all() and metric.higher_is_better is False


@pytest.mark.parametrize("name", ["zs-vgg16-wsd", "zs-alexnet-l2", "zs-alexnet-swd"])
def test_gradients_flow_to_the_distorted_image(kadid_pair, name) -> None:
    dist, ref = kadid_pair
    dist = dist.clone().requires_grad_(True)
    loss = create_metric(name, **RANDOM).loss(dist, ref).sum()
    loss.backward()
    assert dist.grad is not None and torch.isfinite(dist.grad).all() and dist.grad.abs().sum() > 0


def test_bad_taps_and_inputs_raise_clear_errors(kadid_pair) -> None:
    dist, ref = kadid_pair
    with pytest.raises(KeyError, match="has no tap"):
        create_metric("zs-alexnet-l2", taps=["block3"], **RANDOM)
    with pytest.raises(IQAInputError, match="0..255"):
        create_metric("zs-alexnet-l2", **RANDOM)(dist * 255, ref)
    with pytest.raises(IQAInputError):
        create_metric("zs-alexnet-l2", **RANDOM)(dist[..., :64, :], ref)
    with pytest.raises(KeyError, match="LPIPS has no head"):
        DeepFeatureMetric("vgg16", "lpips", taps=["relu5_1"], **RANDOM)


# ---------------------------------------------------------------------------------------------------------------
# Any backbone x any comparator: comparators equal the metrics they come from
# ---------------------------------------------------------------------------------------------------------------


def test_gram_ssim_on_relu5_1_equals_deepssim(kadid_pair) -> None:
    dist, ref = kadid_pair
    with torch.no_grad():
        expected = create_metric("deepssim", **RANDOM)(dist, ref)
        got = DeepFeatureMetric("vgg16", "gram-ssim", taps=["relu5_1"], **RANDOM)(dist, ref)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backbone, metric", [("vgg16", "lpips-vgg"), ("alexnet", "lpips-alex")])
def test_lpips_comparator_equals_lpips(kadid_pair, backbone, metric) -> None:
    dist, ref = kadid_pair
    taps = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"] if backbone == "vgg16" else None
    with torch.no_grad():
        expected = create_metric(metric, **RANDOM)(dist, ref)
        got = DeepFeatureMetric(backbone, "lpips", taps=taps, **RANDOM)(dist, ref)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_deepwsd_comparator_on_vgg19_l2pool_taps_equals_deepwsd_vgg(kadid_pair, formula_weights) -> None:
    state, _ = formula_weights("vgg19")
    dist, ref = kadid_pair
    backbone = create_backbone("vgg19", weights=state, l2_pooling=True, normalize=False)
    taps = ["image", "relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"]
    with torch.no_grad():
        for measure in ("wsd", "jsd", "skld"):
            expected = create_metric(f"deep{measure}-vgg", weights=state, resize=False)(dist, ref)
            got = DeepFeatureMetric(backbone, f"deep{measure}", taps=taps)(dist, ref)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)


def test_tap_grid_cells_equal_single_tap_metrics(kadid_pair) -> None:
    dist, ref = kadid_pair
    backbone = create_backbone("alexnet", **RANDOM)
    comparators = ["l2", "wsd", "gram-ssim", "lpips", "dists-uniform", "deepjsd"]
    grid = TapGrid(backbone, None, comparators)
    assert not grid.skipped and len(grid.cells) == 5 * len(comparators)
    with torch.no_grad():
        scores = grid(dist, ref)
        for (tap, name), value in scores.items():
            single = DeepFeatureMetric(backbone, name, taps=[tap])(dist, ref)
            torch.testing.assert_close(value, single, rtol=1e-6, atol=0)
    skipping = TapGrid(create_backbone("vgg16", **RANDOM), ["relu5_1", "relu5_3"], ["lpips"])
    assert list(skipping.cells) == [("relu5_3", "lpips")]
    assert "no head" in skipping.skipped[("relu5_1", "lpips")]


def test_generic_metric_and_image_tap(kadid_pair) -> None:
    dist, ref = kadid_pair
    metric = DeepFeatureMetric("alexnet", "cos-channel", taps=["relu2"], **RANDOM)
    assert metric.tap_names == ["relu2"] and not metric.higher_is_better
    assert create_backbone("vgg16", **RANDOM).default_taps[0] == "relu1_2"  # "image" is asked for explicitly
    image_only = DeepFeatureMetric(create_backbone("alexnet", normalize=False, **RANDOM), "l2", taps=["image"])
    with torch.no_grad():
        assert image_only(dist, ref).item() == pytest.approx(((dist - ref) ** 2).mean().item(), rel=1e-6)


def test_sizes_may_differ_for_statistics_comparators(kadid_pair) -> None:
    dist, ref = kadid_pair
    metric = DeepFeatureMetric("alexnet", "gram-ssim", **RANDOM)
    assert not metric.requires_same_size
    with torch.no_grad():
        assert torch.isfinite(metric(dist[..., :, :100], ref)).all()


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zs_iqa", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.weights("alexnet")
def test_cli_scores_a_pair_like_the_api() -> None:
    ref, dist = KADID / "I47.png", KADID / "I47_03_05.png"
    out = _run("score", str(ref), str(dist), "--backbone", "alexnet", "--comparator", "jsd",
               "--taps", "relu2,relu3", "--json")  # python -m zs_iqa: the alias of python -m iqa_core
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = DeepFeatureMetric("alexnet", "jsd", taps=["relu2", "relu3"])(load_image(dist), load_image(ref))
    assert result["score"] == pytest.approx(expected.item(), rel=1e-6)
    assert result["taps"] == ["relu2", "relu3"] and result["higher_is_better"] is False


@pytest.mark.weights("alexnet")
def test_cli_errors_exit_2() -> None:
    out = _run("score", str(KADID / "I47.png"), str(KADID / "missing.png"), "--backbone", "alexnet",
               "--comparator", "l2")
    assert out.returncode == 2 and "not found" in out.stderr
    out = _run("score", str(KADID / "I47.png"), str(KADID / "I47.png"), "--comparator", "nope",
               "--backbone", "alexnet")
    assert out.returncode == 2 and "unknown comparator" in out.stderr
