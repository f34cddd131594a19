"""PSNR, SSIM, MS-SSIM, LPIPS v0.1 and DISTS (iqa_core.baselines).

LPIPS and DISTS are checked against the values of the authors' packages in the shared reference file;
PSNR / SSIM / MS-SSIM against piq 0.8.0 (photosynthesis-team/piq) on the TID2013 pair whose values piq's
own tests assert, and the MATLAB box-downsampling rule against a direct transcription of its definition.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import metric_params

import iqa_core.baselines as B  # importing registers the metrics
from iqa_core import IQAInputError, create_metric, list_metrics, load_image, metric_info
from iqa_core import weights as weights_module
from iqa_core.backbones import L2Pool
from iqa_core.cli import main as cli_main
from iqa_core.weights import InvalidWeightsError, WeightsNotFoundError, package_data_file

# The authors' packages' values are reproduced to <= 1.7e-7 relative (float32, 1 or 2 threads; measured).
REL = 1e-6
PAIRS = ["kadid_I47_03_05", "kadid_I47_22_02", "tid2013_i01_01_5"]
DEEP = {"lpips-alex": "lpips_alex", "lpips-vgg": "lpips_vgg", "dists": "dists"}
ALL = ["psnr", "ssim", "ms-ssim", "lpips-alex", "lpips-vgg", "dists"]

# piq 0.8.0 (pip install piq==0.8.0) on tid2013_piq_pair, dist = i01_01_5.bmp, ref = I01.BMP, float32 in [0, 1],
# data_range=1, reduction='none': piq.ssim / piq.multi_scale_ssim on the RGB tensor ("rgb") or on our
# 1-channel luminance (to_luminance(x, "y"/"ycbcr")), piq.psnr (convert_to_greyscale=True for "y").
PIQ_TID = {
    ("ssim", "rgb"): 0.7819602489471436,
    ("ssim", "y"): 0.8800263404846191,
    ("ssim", "ycbcr"): 0.8892210125923157,
    ("ms-ssim", "rgb"): 0.8799648880958557,
    ("ms-ssim", "y"): 0.9354294538497925,
    ("ms-ssim", "ycbcr"): 0.9400476217269897,
    ("psnr", "rgb"): 21.015684127807617,
    ("psnr", "y"): 24.49489974975586,
}
PIQ_REL = 1e-5  # piq filters with a 2-D kernel, we with two 1-D passes: float32 rounding only


class _Metrics(dict):
    """Metrics built on first use, so that a test of PSNR does not need LPIPS's weights."""

    def __missing__(self, name: str):
        self[name] = create_metric(name).eval()
        return self[name]


@pytest.fixture(scope="module")
def metrics():
    return _Metrics()


def _pair(reference_values, shared_data, name):
    spec = reference_values["baselines"]["pairs"][name]
    return spec, load_image(shared_data / spec["dist"]), load_image(shared_data / spec["ref"])


@pytest.fixture(scope="module")
def tid_pair(shared_data):
    folder = shared_data / "tid2013_piq_pair"
    return load_image(folder / "i01_01_5.bmp"), load_image(folder / "I01.BMP")


def test_registered():
    names = list_metrics()
    for name in ALL:
        assert name in names
    assert not metric_info("lpips-alex").higher_is_better and metric_info("psnr").higher_is_better


# ---------------------------------------------------------------------------------------------- LPIPS, DISTS

@pytest.mark.weights("vgg16", "alexnet")
@pytest.mark.parametrize("name", PAIRS)
def test_lpips_and_dists_match_official_packages(name, reference_values, shared_data, metrics, reference_threads):
    spec, dist, ref = _pair(reference_values, shared_data, name)
    for metric, key in DEEP.items():
        with torch.no_grad():
            score = metrics[metric](dist, ref)
        assert score.shape == (1,)
        assert score.item() == pytest.approx(spec[key], rel=REL), metric


@pytest.mark.parametrize("metric", metric_params(sorted(DEEP)))
def test_cli_reproduces_reference(metric, reference_values, shared_data, capsys, reference_threads):
    for name in PAIRS:
        spec = reference_values["baselines"]["pairs"][name]
        assert cli_main(["score", "--metric", metric, str(shared_data / spec["ref"]),
                         str(shared_data / spec["dist"]), "--json"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["metric"] == metric and out["higher_is_better"] is False
        assert out["score"] == pytest.approx(spec[DEEP[metric]], rel=REL)
        assert out["loss"] == out["score"]


@pytest.mark.weights("vgg16", "alexnet")
def test_reference_features_are_reusable(kadid, metrics):
    dist, ref = kadid
    for name in DEEP:
        metric = metrics[name]
        with torch.no_grad():
            direct = metric(dist, ref)
        cached = metric.score_against(dist, metric.reference_features(ref))
        assert torch.allclose(direct, cached, rtol=1e-6, atol=0), name


def test_l2pool_is_the_dists_filter():
    """DISTS's L2pooling: filter np.hanning(5)[1:-1] outer product, normalised; stride 2, padding 1,
    sqrt(conv(x^2) + 1e-12) (DISTS_pt.py of DISTS-pytorch==0.1)."""
    a = np.hanning(5)[1:-1]
    g = torch.tensor(np.outer(a, a) / np.outer(a, a).sum(), dtype=torch.float32)
    pool = L2Pool(4)
    assert torch.equal(pool.filter, g.expand(4, 1, 3, 3))
    x = torch.randn(2, 4, 13, 10, generator=torch.Generator().manual_seed(0))
    expected = (F.conv2d(x**2, g.expand(4, 1, 3, 3), stride=2, padding=1, groups=4) + 1e-12).sqrt()
    assert torch.allclose(pool(x), expected, rtol=0, atol=0)
    assert pool(x).shape[-2:] == (7, 5)


def test_l2pool_equals_official_class_when_installed():
    official = pytest.importorskip("DISTS_pytorch.DISTS_pt")
    x = torch.rand(1, 8, 17, 12, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(L2Pool(8)(x), official.L2pooling(channels=8)(x), rtol=0, atol=1e-7)


def test_heads_found_in_weights_dir_or_argument(tmp_path, monkeypatch):
    source = package_data_file("lpips", "weights", "v0.1", "alex.pth")
    if source is None:
        pytest.skip("lpips==0.1.4 not installed")
    assert hashlib.sha256(source.read_bytes()).hexdigest() == B.HEADS_SHA256["lpips_alex_v0.1.pth"]
    official = B.load_lpips_heads("alex")
    (tmp_path / B.lpips_heads_filename("alex")).write_bytes(source.read_bytes())
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(weights_module, "package_data_file", lambda *a: None)
    for got in (B.load_lpips_heads("alex"),
                B.load_lpips_heads("alex", heads=torch.load(source, map_location="cpu", weights_only=True)),
                B.load_lpips_heads("alex", heads=source)):
        assert all(torch.equal(a, b) for a, b in zip(got, official, strict=True))


def test_missing_heads_name_the_file_and_the_places(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(weights_module, "package_data_file", lambda *a: None)
    monkeypatch.setattr(B.sys, "prefix", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        B.load_lpips_heads("vgg")
    msg = str(err.value)
    assert "lpips_vgg_v0.1.pth" in msg and str(tmp_path) in msg and "lpips==0.1.4" in msg
    with pytest.raises(WeightsNotFoundError, match="dists_alpha_beta.pt"):
        B.load_dists_alpha_beta()
    with pytest.raises(WeightsNotFoundError, match="not found"):
        B.load_dists_alpha_beta(heads=tmp_path / "nope.pt")
    with pytest.raises(InvalidWeightsError, match="lin0"):
        B.load_lpips_heads("alex", heads={"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)})


# ---------------------------------------------------------------------------------------------- PSNR, SSIM

@pytest.mark.parametrize("key", sorted(PIQ_TID))
def test_pixel_metrics_match_piq(key, tid_pair):
    name, color = key
    dist, ref = tid_pair
    metric = create_metric(name, color=color)
    assert metric(dist, ref).item() == pytest.approx(PIQ_TID[key], rel=PIQ_REL)


def test_pixel_metrics_match_piq_live(tid_pair):
    """The same comparison against an installed piq (skipped without it), also without ssim downsampling."""
    piq = pytest.importorskip("piq")
    dist, ref = tid_pair
    for color in B.COLOR_MODES:
        yd, yr = B.to_luminance(dist, color), B.to_luminance(ref, color)
        for downsample in (True, False):
            ours = B.ssim(dist, ref, color, downsample)
            theirs = piq.ssim(yd, yr, data_range=1.0, reduction="none", downsample=downsample)
            assert torch.allclose(ours, theirs, rtol=PIQ_REL, atol=0)
        theirs = piq.multi_scale_ssim(yd, yr, data_range=1.0, reduction="none")
        assert torch.allclose(B.ms_ssim(dist, ref, color), theirs, rtol=PIQ_REL, atol=0)
    exponents = (0.2, 0.3, 0.5)  # fewer scales, other exponents: the same as piq's scale_weights
    theirs = piq.multi_scale_ssim(yd, yr, data_range=1.0, reduction="none", scale_weights=torch.tensor(exponents))
    assert torch.allclose(B.ms_ssim(dist, ref, color, exponents=exponents), theirs, rtol=PIQ_REL, atol=0)
    assert B.MS_SSIM_WEIGHTS is B.MS_SSIM_EXPONENTS  # the former name still imports


def test_ssim_rgb_agrees_with_matlab_value_recorded_by_piq(tid_pair):
    """piq tests/test_ssim.py (test_ssim_simmular_to_matlab_implementation, commit 9948a52) records
    0.7820 as the output of Zhou Wang's ssim.m for this pair (it asserts its own 0.7842 within 1e-2).
    An indirect check only: no MATLAB was run here."""
    dist, ref = tid_pair
    assert B.ssim(dist, ref, color="rgb").item() == pytest.approx(0.7820, abs=1e-4)


def test_psnr_matches_numpy(tid_pair):
    dist, ref = tid_pair
    d, r = dist.double().numpy(), ref.double().numpy()
    expected = 10 * np.log10(1.0 / np.mean((d - r) ** 2))
    assert create_metric("psnr", dtype=torch.float64)(dist, ref).item() == pytest.approx(expected, rel=1e-12)
    assert create_metric("psnr").loss(dist, ref).item() == pytest.approx(np.mean((d - r) ** 2), rel=1e-5)


def _matlab_box_downsample_reference(x: np.ndarray, f: int) -> np.ndarray:
    """imfilter(x, ones(f)/f^2, 'symmetric', 'same') then x(1:f:end, 1:f:end), by definition: imfilter
    correlates with the kernel anchored at c = floor((f+1)/2) (1-based), mirroring the borders."""
    c = (f + 1) // 2
    padded = np.pad(x, ((c - 1, f - c), (c - 1, f - c)), mode="symmetric")
    h, w = x.shape
    out = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = padded[i:i + f, j:j + f].mean()
    return out[::f, ::f]


@pytest.mark.parametrize("f,shape", [(2, (12, 16)), (2, (13, 11)), (3, (14, 17)), (4, (9, 22))])
def test_matlab_box_downsample(f, shape):
    x = np.random.default_rng(f).random(shape)
    got = B.matlab_box_downsample(torch.from_numpy(x)[None, None], f)[0, 0].numpy()
    np.testing.assert_allclose(got, _matlab_box_downsample_reference(x, f), rtol=1e-12, atol=0)
    if f == 2 and shape[0] % 2 == 0 and shape[1] % 2 == 0:
        pooled = F.avg_pool2d(torch.from_numpy(x)[None, None], 2)[0, 0].numpy()
        np.testing.assert_allclose(got, pooled, rtol=1e-12)


def test_ssim_downsample_factor_rounds_like_matlab():
    assert B.ssim_downsample_factor(383, 512) == 1
    assert B.ssim_downsample_factor(384, 512) == 2
    assert B.ssim_downsample_factor(640, 960) == 3  # MATLAB round(2.5) = 3; Python round(2.5) = 2
    assert B.ssim_downsample_factor(1080, 1920) == 4


# ---------------------------------------------------------------------------------------------- shared properties

@pytest.fixture(scope="module")
def kadid(example_dir):
    """Two distorted versions of one reference, cropped to 256 x 320 to keep the CPU time small."""
    folder = example_dir / "kadid10k_I47_sample"
    dists = torch.cat([load_image(folder / "I47_03_05.png"), load_image(folder / "I47_22_02.png")])
    crop = (slice(None), slice(None), slice(64, 320), slice(96, 416))
    return dists[crop].contiguous(), load_image(folder / "I47.png")[crop].contiguous()


@pytest.mark.parametrize("name", metric_params(ALL))
def test_batch_equals_single_calls(name, kadid, metrics):
    dists, ref = kadid
    metric = metrics[name]
    with torch.no_grad():
        single = torch.cat([metric(d[None], ref) for d in dists])
        broadcast = metric(dists, ref)
        paired = metric(dists, ref.expand(2, -1, -1, -1))
    assert broadcast.shape == (2,)
    assert torch.allclose(broadcast, single, rtol=1e-5, atol=1e-7)
    assert torch.allclose(paired, single, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", metric_params(ALL))
def test_identical_images_give_the_ideal_value(name, kadid, metrics):
    ref = kadid[1]
    metric = metrics[name]
    with torch.no_grad():
        value = metric(ref, ref).item()
        loss = metric.loss(ref, ref).item()
    if name == "psnr":
        assert value == float("inf")
    elif metric.higher_is_better:
        assert value == pytest.approx(1.0, abs=1e-6)
    else:
        assert value == pytest.approx(0.0, abs=1e-6)
    assert loss == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", metric_params(ALL))
def test_loss_is_differentiable(name, kadid, metrics):
    dists, ref = kadid
    dist = dists[:1, :, :192, :192].clone().requires_grad_(True)
    metrics[name].loss(dist, ref[:, :, :192, :192]).sum().backward()
    assert dist.grad is not None and torch.isfinite(dist.grad).all() and dist.grad.abs().sum() > 0


@pytest.mark.parametrize("name", metric_params(["psnr", "ssim", "ms-ssim", "lpips-alex", "dists"]))
def test_gradient_matches_finite_difference(name, kadid):
    """Directional derivative of the score in float64: autograd equals a central difference. DISTS needs a
    tiny step: L2 pooling's sqrt(x^2 + 1e-12) bends sharply where activations are near zero."""
    dists, ref = kadid
    size = 176 if name == "ms-ssim" else 48
    d = dists[:1, :, 40:40 + size, 100:100 + size].double().clamp(0.01, 0.99)
    r = ref[:, :, 40:40 + size, 100:100 + size].double()
    metric = create_metric(name).double() if name in DEEP else create_metric(name, dtype=torch.float64)
    direction = torch.randn(d.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-3
    x = d.clone().requires_grad_(True)
    metric(x, r).sum().backward()
    analytic = (x.grad * direction).sum().item()
    h = 1e-6 if name == "dists" else 1e-3
    with torch.no_grad():
        numeric = ((metric(d + h * direction, r) - metric(d - h * direction, r)) / (2 * h)).item()
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("name", metric_params(ALL))
def test_bad_inputs_raise(name, kadid, metrics):
    dists, ref = kadid
    metric = metrics[name]
    with pytest.raises(IQAInputError):
        metric(dists[:1] * 255, ref)
    with pytest.raises(IQAInputError):
        metric(dists[:1, :, :200, :200], ref)  # sizes differ
    with pytest.raises(IQAInputError):
        metric((dists[:1] * 255).to(torch.uint8), ref)
    with pytest.raises(IQAInputError):
        metric(dists, torch.cat([ref, ref, ref]))  # batch sizes differ
    if metric.min_size > 1:
        small = metric.min_size - 1
        with pytest.raises(IQAInputError, match="too small"):
            metric(dists[:1, :, :small, :small], ref[:, :, :small, :small])


def test_bad_options_raise():
    with pytest.raises(ValueError, match="color"):
        create_metric("ssim", color="lab")
    with pytest.raises(ValueError, match="no backbone"):
        create_metric("psnr", weights="vgg16.pth")
    with pytest.raises(ValueError, match="net"):
        B.LPIPS(net="squeeze")


# The authors' MATLAB values on the TID2013 pair, as recorded in piq's tests (piq @ 9948a52,
# tests/test_fsim.py, test_gmsd.py, test_vif.py, test_vsi.py), and the tolerance piq asserts them with.
MATLAB_TID_PAIR = {"fsim": (0.93674, 1e-5), "fsimc": (0.92587, 1e-4), "gmsd": (0.094124655829098, 1e-5),
                   "vif": (0.3147, 1e-4), "vsi": (0.96405, 1e-5)}


@pytest.mark.parametrize("name", sorted(MATLAB_TID_PAIR))
def test_classical_metrics_match_matlab_values(name, shared_data):
    import iqa_core.baselines  # noqa: F401  (registers the metrics)
    from iqa_core import create_metric, load_image

    expected, tol = MATLAB_TID_PAIR[name]
    ref = load_image(shared_data / "tid2013_piq_pair" / "I01.BMP")
    dist = load_image(shared_data / "tid2013_piq_pair" / "i01_01_5.bmp")
    metric = create_metric(name)
    with torch.no_grad():
        value = metric(dist, ref)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected, abs=tol, rel=1e-5)
    batch = metric(torch.cat([dist, ref]), torch.cat([ref, ref]))
    torch.testing.assert_close(batch[:1], value)
    torch.testing.assert_close(metric(torch.cat([dist, ref]), ref), batch)  # one reference for a batch
    ideal = 0.0 if name == "gmsd" else 1.0
    assert batch[1].item() == pytest.approx(ideal, abs=1e-4)
