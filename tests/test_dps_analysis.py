"""DPS analysis (IPRIA 2023): the factors and merit on synthetic cases with known answers, the grid's comparators
against the registered metrics they come from, the spectral measures, and experiments/dps_analysis.py --quick
(outputs' contents, resume after an interruption, skipped backbones, dataset mode on a fixture)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import hermetic_env
from scipy import ndimage

import dps
from iqa_core import create_metric
from iqa_core.backbones import create_backbone
from iqa_core.deep_features import DeepFeatureMetric, TapGrid
from iqa_core.distortions import distort
from iqa_core.samples import load_samples
from iqa_core.transforms import translate, translate_pixels

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "dps_analysis.py"
LEVELS = np.arange(1, 6, dtype=float)


def _image(side: int = 96, name: str = "astronaut") -> torch.Tensor:
    return load_samples(max_side=side)[name]


# ---------------------------------------------------------------------------------------------------- equivalences


def test_gram_ssim_through_the_grid_equals_deepssim():
    ref = _image(96)
    dists = torch.cat([distort("gaussian_blur", ref, 2), distort("jpeg", ref, 4)])
    grid = TapGrid(create_backbone("vgg16", weights="random"), ["relu5_1"], ["gram-ssim"])
    expected = create_metric("deepssim", weights="random")(dists, ref)
    with torch.no_grad():
        via_grid = grid(dists, ref)[("relu5_1", "gram-ssim")]
        prepared = grid.prepare(grid.tap_outputs(ref))  # the script's path: reference prepared once
        via_script = grid.score_prepared(grid.tap_outputs(dists), prepared)[("relu5_1", "gram-ssim")]
    torch.testing.assert_close(via_grid, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(via_script, expected, rtol=1e-5, atol=0)


def test_wsd_comparator_on_vgg19_l2pool_taps_equals_deepwsd_vgg(formula_weights):
    state, _ = formula_weights("vgg19")
    ref = _image(128)  # 128 px: the official resize factor max(1, round(128 / 256)) = 1 is a no-op
    dists = torch.cat([distort("gaussian_noise", ref, 3), distort("gaussian_blur", ref, 2)])
    backbone = create_backbone("vgg19", weights=state, l2_pooling=True, normalize=False)
    taps = ["image", "relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4"]
    composed = DeepFeatureMetric(backbone, "deepwsd", taps=taps)
    with torch.no_grad():
        ours = composed(dists, ref)
        official = create_metric("deepwsd-vgg", weights=state)(dists, ref)
        no_resize = create_metric("deepwsd-vgg", weights=state, resize=False)(dists, ref)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours, no_resize, rtol=1e-5, atol=0)


def test_score_prepared_equals_tap_grid():
    ref = _image(96)
    dists = torch.cat([distort("gaussian_blur", ref, 1), distort("gaussian_noise", ref, 3),
                       dps.misalign(distort("jpeg", ref, 2), "r1")])
    comparators = ["unit-l2", "lpips", "cos-channel", "dists-uniform", "gram-ssim", "deepwsd", "deepjsd", "deepskld"]
    grid = TapGrid(create_backbone("alexnet", weights="random"), None, comparators)
    with torch.no_grad():
        expected = grid(dists, ref)
        got = grid.score_prepared(grid.tap_outputs(dists), grid.prepare(grid.tap_outputs(ref)))
    assert set(got) == set(expected) and len(got) == 5 * len(comparators)
    for cell in expected:
        torch.testing.assert_close(got[cell], expected[cell], rtol=1e-5, atol=1e-7, msg=str(cell))
    # a tap too small for the 8x8 windows of the distribution measures: reported per cell, the others scored
    small = _image(64)
    errors: dict = {}
    with torch.no_grad():
        prepared = grid.prepare(grid.tap_outputs(small), errors)
        scored = grid.score_prepared(grid.tap_outputs(small), prepared, errors)
    assert ("relu5", "deepwsd") in errors and "8x8" in errors[("relu5", "deepwsd")]
    assert ("relu5", "deepwsd") not in scored and ("relu5", "unit-l2") in scored


# ---------------------------------------------------------------------------------------------------- factors


def _cell_frame(score_of_level, shifted=None, groups: int = 4) -> pd.DataFrame:
    """Synthetic pairs: `groups` sequences at levels 1..5, plus 6 misalignments of level 1 scored `shifted`."""
    rows = []
    for g in range(groups):
        rows += [{"group": f"g{g}", "level": lv, "misalign": dps.ALIGNED, "score": score_of_level(lv)}
                 for lv in LEVELS]
        rows += [{"group": f"g{g}", "level": 1.0, "misalign": m,
                  "score": score_of_level(1.0) if shifted is None else shifted}
                 for m in dps.MISALIGNMENTS]
    return pd.DataFrame(rows)


def test_score_equal_to_level_has_accuracy_1_monotonicity_1_robustness_1():
    one = pytest.approx(1.0, abs=1e-12)
    f = dps.cell_factors(_cell_frame(lambda lv: lv), higher_is_better=False)
    assert f["accuracy"] == one and f["srcc"] == one and f["monotonicity"] == 1 and f["robustness"] == 1
    assert (f["n_pairs"], f["n_sequences"], f["n_misaligned"]) == (20, 4, 24)
    similarity = dps.cell_factors(_cell_frame(lambda lv: -lv), higher_is_better=True)
    assert similarity["accuracy"] == one and similarity["srcc"] == one and similarity["monotonicity"] == 1
    assert dps.accuracy(LEVELS, LEVELS) == one and dps.monotonicity([LEVELS, LEVELS]) == 1


def test_constant_score_has_accuracy_0():
    f = dps.cell_factors(_cell_frame(lambda lv: 0.3), higher_is_better=False)
    assert f["accuracy"] == 0 and f["monotonicity"] == 0
    assert f["robustness"] == 1  # it ignores misalignment too (0/0 := 0): the merit's accuracy factor catches it
    assert dps.accuracy(np.full(5, 2.0), LEVELS) == 0


def test_score_ignoring_translation_has_robustness_1_and_a_level_step_gives_one_half():
    assert dps.robustness(dps.robustness_ratios([0.1, 0.1], 0.1, 0.1, 0.2)) == 1
    # a misalignment that moves the score exactly as far as level 1 -> 2 gives r = 1, robustness 1/2
    f = dps.cell_factors(_cell_frame(lambda lv: lv, shifted=2.0), higher_is_better=False)
    assert f["robustness"] == pytest.approx(0.5)
    # ten times that step: 1/11
    assert dps.cell_factors(_cell_frame(lambda lv: lv, shifted=11.0), False)["robustness"] == pytest.approx(1 / 11)
    assert dps.robustness_ratios(0.5, 0.1, 0.3, 0.3) == np.inf  # a moved score with no level step: x/0 = inf
    assert math.isnan(dps.robustness([]))


def test_monotonicity_counts_strictly_ordered_sequences():
    seqs = [[1, 2, 3], [1, 3, 2], [1, 1, 2], [0.1, 0.2, 0.9]]
    assert dps.monotonicity(seqs) == 0.5  # a swap and a tie are not ordered
    assert dps.monotonicity([[3, 2, 1], [1, 2, 3]], increasing=False) == 0.5
    assert dps.monotonicity([[1.0, np.nan, 3.0]]) == 0
    assert math.isnan(dps.monotonicity([[1.0]]))


def test_merit_geometric_mean():
    w = dps.DEFAULT_FACTOR_WEIGHTS
    assert dps.merit({k: 0.7 for k in dps.FACTORS}, w) == pytest.approx(0.7)
    assert dps.merit({"accuracy": 0.9, "robustness": 0.0, "monotonicity": 1, "cost": 1}, w) == 0
    assert dps.merit({"accuracy": 0.9, "robustness": 0.0, "monotonicity": 1, "cost": 1},
                     {**w, "robustness": 0}) == pytest.approx(0.9 ** (0.4 / 0.8))
    assert dps.merit({"accuracy": 0.25, "robustness": 1, "monotonicity": 1, "cost": 1},
                     {"accuracy": 1, "robustness": 1, "monotonicity": 0, "cost": 0}) == pytest.approx(0.5)
    # an undefined factor is left out for that cell; arrays are handled cell by cell
    got = dps.merit({"accuracy": np.array([0.64, 0.64]), "robustness": np.array([np.nan, 1.0]),
                     "monotonicity": np.array([1.0, 1.0]), "cost": np.array([1.0, 1.0])},
                    {"accuracy": 1, "robustness": 1, "monotonicity": 0, "cost": 0})
    np.testing.assert_allclose(got, [0.64, 0.8])


def test_parse_factor_weights():
    assert dps.parse_factor_weights("") == dps.DEFAULT_FACTOR_WEIGHTS
    assert dps.parse_factor_weights("accuracy=1, cost=0") == {"accuracy": 1.0, "robustness": 0.2,
                                                              "monotonicity": 0.2, "cost": 0.0}
    for bad in ("speed=1", "accuracy", "accuracy=-1", "accuracy=0,robustness=0,monotonicity=0,cost=0"):
        with pytest.raises(ValueError, match="^factor weights: "):
            dps.parse_factor_weights(bad)


def _load_script():
    spec = importlib.util.spec_from_file_location("dps_analysis_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    return script


def test_factor_weights_option_and_its_former_name():
    script = _load_script()
    wanted = {"accuracy": 1.0, "robustness": 0.2, "monotonicity": 0.2, "cost": 0.0}
    assert script.parse_args(["--factor-weights", "accuracy=1,cost=0"]).factor_weight_map == wanted
    with pytest.warns(DeprecationWarning, match="--weights is deprecated.*use --factor-weights"):
        args = script.parse_args(["--weights", "accuracy=1,cost=0"])
    assert args.factor_weight_map == wanted and not hasattr(args, "renamed_options")
    with contextlib.redirect_stdout(io.StringIO()) as shown, pytest.raises(SystemExit):
        script.parse_args(["--help"])
    assert "--factor-weights" in shown.getvalue() and "--weights" not in shown.getvalue()


def test_cost_normalisation_and_ranking():
    np.testing.assert_allclose(dps.normalised_cost([10.0, 100.0, 1000.0]), [1, 1 / 2, 1 / 3])
    grid = pd.DataFrame({"backbone": ["a", "a", "b"], "tap": ["t1", "t2", "t1"], "comparator": ["c"] * 3,
                         "accuracy": [0.5, 0.9, 0.9], "robustness": [1.0, 1.0, 1.0], "monotonicity": [1.0] * 3,
                         "cost_ms": [10.0, 10.0, 100.0]})
    ranked = dps.rank_cells(grid)
    assert list(ranked["rank"]) == [1, 2, 3] and ranked.merit.is_monotonic_decreasing
    assert list(zip(ranked.backbone, ranked.tap, strict=True)) == [("a", "t2"), ("b", "t1"), ("a", "t1")]


def test_disagreement():
    groups = ["blur"] * 5 + ["noise"] * 5
    levels = np.r_[LEVELS, LEVELS]
    assert np.all(dps.rank_disagreement(levels, levels, groups, higher_is_better=False) == 0)
    assert np.all(dps.rank_disagreement(-levels, levels, groups, higher_is_better=True) == 0)
    swapped = dps.rank_disagreement([1, 2, 3, 5, 4], LEVELS, ["x"] * 5, False)
    np.testing.assert_allclose(swapped, [0, 0, 0, 0.2, 0.2])
    rng = np.random.default_rng(0)
    s = np.linspace(0, 1, 40)
    mos = 5 - 4 * s + rng.normal(0, 0.1, 40)
    values, message = dps.logistic_disagreement(s, mos)
    assert values is not None and message.startswith("ok") and values.mean() < 0.2
    assert dps.logistic_disagreement(np.ones(10), np.arange(10.0))[0] is None  # a failed fit is reported


# ---------------------------------------------------------------------------------------------------- spectra


def test_hf_energy_share_on_synthetic_images():
    assert dps.hf_energy_share(np.full((64, 80), 0.4)) == 0
    assert np.all(dps.band_energy_shares(torch.full((1, 3, 32, 32), 0.5)) == 0)
    noise = np.random.default_rng(0).random((128, 160))
    assert dps.hf_energy_share(noise) == pytest.approx(1 - math.pi / 16, abs=0.02)  # the band-area fraction
    bands = dps.band_energy_shares(noise)
    assert bands.sum() == pytest.approx(1) and len(bands) == len(dps.BAND_EDGES) - 1
    assert dps.hf_energy_share(ndimage.gaussian_filter(noise, 3.0, mode="wrap")) < 0.01  # low-pass noise
    image = _image(128)
    assert dps.hf_energy_share(distort("gaussian_blur", image, 4)) < dps.hf_energy_share(image) \
        < dps.hf_energy_share(distort("gaussian_noise", image, 5))


# ---------------------------------------------------------------------------------------------------- transforms


def test_translate_pixels():
    x = torch.rand(2, 3, 20, 100)
    for border in ("reflect", "zeros", "crop"):
        for shift in (3, -3):
            torch.testing.assert_close(translate_pixels(x, shift, border=border), translate(x, shift, border=border))
    out = translate_pixels(x, 2)
    torch.testing.assert_close(out[..., :-2], x[..., 2:])
    torch.testing.assert_close(out[..., -2:], x[..., -3:-1].flip(-1))  # mirrored about the edge
    assert translate_pixels(x, 0).data_ptr() != x.data_ptr() and torch.equal(translate_pixels(x, 0), x)
    with pytest.raises(ValueError):
        translate_pixels(x, 1.5)
    with pytest.raises(ValueError):
        translate_pixels(x, 100)
    assert dps.misalign(x, "t4").shape == x.shape and torch.equal(dps.misalign(x, dps.ALIGNED), x)
    with pytest.raises(KeyError):
        dps.misalign(x, "t9")


# ---------------------------------------------------------------------------------------------------- cost


def test_cell_costs_and_peak_memory(monkeypatch):
    """How the costs are composed; what they are on a shared machine is the benchmark's business, not a test's."""
    grid = TapGrid(create_backbone("alexnet", weights="random"), ["relu2"], ["unit-l2", "gram-ssim"])
    costs = dps.cell_costs(grid, height=96, width=128, repeats=1)
    assert list(costs.comparator) == ["unit-l2", "gram-ssim"]
    assert (costs.cost_ms > costs.compare_ms).all() and (costs.compare_ms > 0).all()
    assert np.allclose(costs.cost_ms, 2 * costs.backbone_ms + costs.compare_ms)
    assert (costs.peak_mib.isna() | (costs.peak_mib >= 0)).all()
    assert dps.time_ms(lambda: None, repeats=2) >= 0
    # the peak is the high-water mark after the call minus the resident size before it, in MiB
    monkeypatch.setattr(dps.cost, "_reset_peak_rss", lambda: 100 * 1024)
    monkeypatch.setattr(dps.cost, "_status_kib", lambda field: {"VmHWM": 164 * 1024}[field])
    assert dps.peak_memory_mib(lambda: None) == 64.0
    monkeypatch.setattr(dps.cost, "_reset_peak_rss", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    assert math.isnan(dps.peak_memory_mib(lambda: None))


# ---------------------------------------------------------------------------------------------------- the script


def _env(tmp_path: Path, weights_dir: Path) -> dict:
    return hermetic_env(tmp_path, weights_dir)  # AlexNet's pretrained weights resolve, VGG19's do not


def _run(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--quick", "--backbones", "alexnet,vgg19", "--out", str(out),
                           "--device", "cpu", "--repeats", "1", "--n-boot", "200", *extra],
                          capture_output=True, text=True, check=True, env=env)


@pytest.mark.weights("alexnet")
def test_quick_outputs_resume_and_skipped(tmp_path, weights_dir):
    out = tmp_path / "dps"
    env = _env(tmp_path, weights_dir)
    first = _run(out, env)
    assert "44 of 44 pairs to score" in first.stdout

    grid = pd.read_csv(out / "grid.csv")
    assert list(grid.columns[:8]) == ["backbone", "tap", "comparator", "accuracy", "robustness", "monotonicity",
                                      "cost_ms", "merit"]
    assert len(grid) == 3 * 2 and set(grid.tap) == {"relu1", "relu3", "relu5"}
    assert set(grid.comparator) == {"unit-l2", "gram-ssim"} and set(grid.backbone) == {"alexnet"}
    for col in ("accuracy", "robustness", "monotonicity", "merit", "cost_score"):
        assert grid[col].between(0, 1).all(), col
    assert (grid.cost_ms > 0).all() and np.isfinite(grid.cost_ms).all()
    assert (grid.n_pairs == 20).all() and (grid.n_misaligned == 24).all()
    assert (grid.accuracy > 0.5).all()  # every cell follows blur and noise levels on two images

    ranking = pd.read_csv(out / "ranking.csv")
    assert ranking.merit.is_monotonic_decreasing and list(ranking["rank"]) == list(range(1, 7))
    assert "| rank | backbone |" in (out / "ranking.md").read_text()
    assert "\\begin{tabular}" in (out / "ranking.tex").read_text()

    skipped = pd.read_csv(out / "skipped.csv")
    vgg19 = skipped[skipped.backbone == "vgg19"]
    assert list(vgg19.kind) == ["backbone"] and "weights" in vgg19.reason.iloc[0]

    hf = pd.read_csv(out / "hf_energy.csv")
    assert sorted(hf.image) == ["astronaut", "chelsea"] and hf.hf_share.between(0, 1).all()
    outliers = pd.read_csv(out / "outliers.csv")
    assert set(outliers["rank"]) == {1, 2, 3} and outliers.disagreement.between(0, 1).all()
    top1 = pd.read_csv(out / "top1_vs_accuracy.csv")
    assert top1.backbone.tolist() == ["alexnet"] and top1.top1.iloc[0] == pytest.approx(56.522)
    summary = (out / "summary.md").read_text()
    for text in ("top-1", "not informative", "Kumar", "high-frequency", "outliers", "vgg19"):
        assert text in summary, text
    for name in ("heatmap_alexnet", "top1_vs_accuracy", "outliers", "hf_disagreement"):
        assert (out / f"{name}.png").stat().st_size > 1000, name

    # rerun: nothing is recomputed
    before = (out / "scores.csv").read_bytes()
    second = _run(out, env)
    assert "0 of 44 pairs to score" in second.stdout and "costs cached" in second.stdout
    assert (out / "scores.csv").read_bytes() == before

    # an interruption that left half a line: that pair alone is scored again
    (out / "scores.csv").write_bytes(before[:-7])
    third = _run(out, env)
    assert "1 of 44 pairs to score" in third.stdout
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores.drop_duplicates(["metric", "pair"])) == 44 * 6
    pd.testing.assert_frame_equal(pd.read_csv(out / "grid.csv").drop(columns=["cost_ms", "cost_score", "merit",
                                                                              "peak_mib"]),
                                  grid.drop(columns=["cost_ms", "cost_score", "merit", "peak_mib"]))

    # stopped at a known row (mid-batch of a reference) and resumed: the uninterrupted run's scores and factors
    split = tmp_path / "split"
    stopped = _run(split, env, "--stop-after", "100")
    assert "stopped after 100 new rows" in stopped.stdout and not (split / "grid.csv").exists()
    assert len(pd.read_csv(split / "scores.csv")) == 100
    _run(split, env)
    key = ["metric", "pair"]
    resumed = pd.read_csv(split / "scores.csv").sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(resumed, pd.read_csv(out / "scores.csv").drop_duplicates(key, keep="last")
                                  .sort_values(key, ignore_index=True), check_exact=True)
    factors = ["backbone", "tap", "comparator", "accuracy", "robustness", "monotonicity", "srcc"]
    pd.testing.assert_frame_equal(pd.read_csv(split / "grid.csv")[factors], grid[factors], check_exact=True)


def test_settings_that_change_the_pixels_are_in_the_pair_key():
    """Another --max-side or --seed in the same --out is scored anew (the store's key), never answered from the
    rows of the first settings; the window fit of a windowed backbone is part of it too."""
    analysis = _load_script()
    with pytest.warns(DeprecationWarning, match="use --batch-size"):
        assert analysis.parse_args(["--batch", "4"]).batch_size == 4

    def keys(*argv: str, window: int | None = None) -> set[tuple[str, ...]]:
        args = analysis.parse_args(["--quick", *argv])
        source = analysis.pair_source(analysis.SampleSource(args), args, window)
        return {pair.key for group in source.groups for pair in group.pairs}

    base = keys()
    assert len(base) == 44 and {k[1] for k in base} == {"dataset=-;max_side=128;seed=0;window=None"}
    for other in (keys("--max-side", "96"), keys("--seed", "1"), keys(window=224)):
        assert len(other) == 44 and not other & base


@pytest.mark.weights("alexnet")
def test_dataset_mode_on_a_fixture(tmp_path, weights_dir):
    from fixtures_datasets import make_fixture

    root = make_fixture("TID2013", tmp_path / "TID2013", size=64)
    out = tmp_path / "dps_dataset"
    subprocess.run([sys.executable, str(SCRIPT), "--dataset", "TID2013", "--root", str(root), "--backbones",
                    "alexnet", "--taps", "relu2", "--comparators", "unit-l2,cos-channel", "--misalignments", "t1,r1",
                    "--out", str(out), "--device", "cpu", "--repeats", "1", "--n-boot", "200"],
                   capture_output=True, text=True, check=True, env=_env(tmp_path, weights_dir))
    grid = pd.read_csv(out / "grid.csv")
    assert len(grid) == 2 and (grid.accuracy > 0.5).all()  # the fixture's MOS falls with its noise level
    assert grid.robustness.between(0, 1).all() and grid.monotonicity.between(0, 1).all()
    outliers = pd.read_csv(out / "outliers.csv")
    assert "mos" in outliers.columns and (outliers.disagreement >= 0).all()
    assert "MOS" in (out / "summary.md").read_text()
