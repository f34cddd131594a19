"""Geometric robustness transforms: ZS-IQA's load_img reproduced exactly, and the tensor transforms."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvf
from conftest import EXAMPLES
from PIL import Image

from iqa_core.transforms import (
    BORDERS,
    GEOMETRIC_TRANSFORMS,
    apply_transform,
    apply_transform_pair,
    elastic,
    perspective,
    rotate,
    scale,
    translate,
)
from zs_iqa.protocol import zs_iqa_load_pair, zs_iqa_perturb

I47 = EXAMPLES / "kadid10k_I47_sample" / "I47.png"
NAMES = sorted(GEOMETRIC_TRANSFORMS)


def _smooth_image(batch: int = 2, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """A deterministic natural-like (spatially correlated) test image in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, height, width, generator=gen)
    return tvf.gaussian_blur(noise, [9, 9], [3.0, 3.0]).clamp(0, 1)


@pytest.fixture(scope="module")
def robustness_reference(zs_reference) -> dict:
    return zs_reference["robustness_load_img_pct1_on_I47"]


# ---------------------------------------------------------------------------------------------------- ZS-IQA


def _entries(reference: dict) -> list[tuple[str, str]]:
    keys = [key for key in reference if not key.startswith("_")]
    assert keys, "no reference entries"
    return [tuple(key.rsplit("_", 1)) for key in keys]


def test_zs_iqa_load_img_matches_official_exactly(robustness_reference: dict) -> None:
    checked = 0
    for kind, role in _entries(robustness_reference):
        ref_img, dist_img = zs_iqa_load_pair(I47, I47, kind, 1)
        arr = np.asarray(ref_img if role == "ref" else dist_img, dtype=np.uint8)
        expected = robustness_reference[f"{kind}_{role}"]
        assert list(arr.shape) == expected["shape"], (kind, role)
        assert hashlib.sha256(arr.tobytes()).hexdigest() == expected["sha256"], (kind, role)
        assert float(arr.mean()) == expected["mean"], (kind, role)
        checked += 1
    assert checked == 6


def test_zs_iqa_perturb_on_open_images(robustness_reference: dict) -> None:
    with Image.open(I47) as img:
        img.load()
        for kind in ("tra", "sca", "rot"):
            ref_img, dist_img = zs_iqa_perturb(img, img, kind, 1)
            for role, out in (("ref", ref_img), ("dis", dist_img)):
                digest = hashlib.sha256(np.asarray(out, dtype=np.uint8).tobytes()).hexdigest()
                assert digest == robustness_reference[f"{kind}_{role}"]["sha256"]


def test_zs_iqa_geometry_for_larger_pct() -> None:
    img = Image.fromarray(np.arange(37 * 51 * 3, dtype=np.uint32).reshape(37, 51, 3).astype(np.uint8))
    for pct in range(1, 6):
        shift = math.ceil(pct / 100.0 * 51)
        ref_img, dist_img = zs_iqa_perturb(img, img, "tra", pct)
        arr = np.asarray(img)
        np.testing.assert_array_equal(np.asarray(ref_img), arr[:, : 51 - shift])
        np.testing.assert_array_equal(np.asarray(dist_img), arr[:, shift:])
        for kind in ("sca", "rot"):
            ref_img, dist_img = zs_iqa_perturb(img, img, kind, pct)
            assert ref_img.size == dist_img.size == (51, 37)
            np.testing.assert_array_equal(np.asarray(ref_img), arr)
    ref_img, dist_img = zs_iqa_perturb(img, img, None, 1)
    np.testing.assert_array_equal(np.asarray(dist_img), np.asarray(img))
    with pytest.raises(ValueError):
        zs_iqa_perturb(img, img, "shear", 1)


def test_translation_crop_is_zs_iqa_protocol() -> None:
    x = _smooth_image(1, 40, 120)
    ref, dist = apply_transform_pair("translation", x, x, 3, border="crop")
    shift = math.ceil(0.03 * 120)
    torch.testing.assert_close(ref, x[..., : 120 - shift], rtol=0, atol=0)
    torch.testing.assert_close(dist, x[..., shift:], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("border", BORDERS)
def test_severity_zero_is_identity(name: str, border: str) -> None:
    x = _smooth_image()
    out = apply_transform(name, x, 0, border=border)
    assert torch.equal(out, x)
    ref, dist = apply_transform_pair(name, x, x, 0, border=border)
    assert torch.equal(ref, x) and torch.equal(dist, x)
    assert torch.equal(GEOMETRIC_TRANSFORMS[name].public(x, 0), x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("border", ["reflect", "zeros"])
def test_shape_dtype_range_kept(name: str, border: str) -> None:
    x = _smooth_image()
    for severity in GEOMETRIC_TRANSFORMS[name].severities:
        out = apply_transform(name, x, severity, border=border)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    single = apply_transform(name, x[0], 3, border=border)
    torch.testing.assert_close(single, apply_transform(name, x, 3, border=border)[0])


@pytest.mark.parametrize("name", NAMES)
def test_crop_border_shrinks_consistently(name: str) -> None:
    x = _smooth_image()
    ref, dist = apply_transform_pair(name, x, x, 4, border="crop")
    assert ref.shape == dist.shape
    assert dist.shape[-2] <= 64 and dist.shape[-1] <= 96
    if name != "scale":  # zooming in never leaves the frame, so nothing is cut
        assert dist.shape[-2:] != x.shape[-2:]
    # the cropped output is exactly the valid interior of the zeros-border output: no black border inside
    ones = torch.ones_like(x)
    _, valid = apply_transform_pair(name, ones, ones, 4, border="crop")
    torch.testing.assert_close(valid, torch.ones_like(valid), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name: str) -> None:
    x = _smooth_image()
    for border in BORDERS:
        assert torch.equal(apply_transform(name, x, 3, seed=5, border=border),
                           apply_transform(name, x, 3, seed=5, border=border))


@pytest.mark.parametrize("name", ["elastic", "perspective"])
def test_seed_changes_random_transforms(name: str) -> None:
    x = _smooth_image()
    assert not torch.allclose(apply_transform(name, x, 3, seed=0), apply_transform(name, x, 3, seed=1))


def test_seed_ignored_by_deterministic_transforms() -> None:
    x = _smooth_image()
    for name in ("translation", "scale", "rotation"):
        assert torch.equal(apply_transform(name, x, 3, seed=0), apply_transform(name, x, 3, seed=1))


def _mean_abs_diffs(name: str, x: torch.Tensor, border: str) -> list[float]:
    severities = GEOMETRIC_TRANSFORMS[name].severities
    return [float((apply_transform(name, x, s, border=border) - x).abs().mean()) for s in severities]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("border", ["reflect", "zeros"])
def test_effect_grows_with_severity(name: str, border: str) -> None:
    diffs = _mean_abs_diffs(name, _smooth_image(), border)
    assert diffs[0] == 0.0
    assert all(b > a for a, b in zip(diffs, diffs[1:], strict=False)), diffs


@pytest.mark.parametrize("name", NAMES)
def test_effect_grows_with_severity_on_natural_image(name: str) -> None:
    if not I47.exists():
        pytest.skip(f"{I47} not present")
    with Image.open(I47) as img:
        x = tvf.to_dtype(tvf.pil_to_tensor(img.convert("RGB")), torch.float32, scale=True)[None]
    diffs = _mean_abs_diffs(name, x, "reflect")
    assert all(b > a for a, b in zip(diffs, diffs[1:], strict=False)), diffs


def test_translation_by_hand() -> None:
    x = _smooth_image(1, 30, 100)
    shift = 4  # 4 % of 100 px
    out = translate(x, 4, border="zeros")
    expected = torch.zeros_like(x)
    expected[..., : 100 - shift] = x[..., shift:]
    assert torch.equal(out, expected)
    # content moves right for negative severity
    out = translate(x, -4, border="zeros")
    expected = torch.zeros_like(x)
    expected[..., shift:] = x[..., : 100 - shift]
    assert torch.equal(out, expected)
    # reflect: the uncovered strip mirrors the frame about its last column (edge not repeated)
    out = translate(x, 4, border="reflect")
    assert torch.equal(out[..., : 100 - shift], x[..., shift:])
    assert torch.equal(out[..., 100 - shift :], torch.flip(x[..., 100 - shift - 1 : 99], dims=[-1]))
    # crop
    assert torch.equal(translate(x, 4, border="crop"), x[..., shift:])
    # the shift is rounded up to whole pixels, as ZS-IQA does
    assert torch.equal(translate(x, 3.2, border="zeros"), out_zeros_shift(x, 4))


def out_zeros_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    expected = torch.zeros_like(x)
    expected[..., : x.shape[-1] - shift] = x[..., shift:]
    return expected


def test_rotation_matches_torchvision_and_direction() -> None:
    x = _smooth_image()
    for degrees in (1, 3, 5):
        expected = tvf.rotate(x, -degrees, interpolation=tvf.InterpolationMode.BILINEAR)
        torch.testing.assert_close(rotate(x, degrees, border="zeros"), expected, rtol=0, atol=1e-4)
    # 90 degrees clockwise on a square image is an exact rotation of the array
    sq = _smooth_image(1, 32, 32)
    torch.testing.assert_close(rotate(sq, 90, border="zeros"), torch.rot90(sq, k=-1, dims=(-2, -1)),
                               rtol=0, atol=1e-5)


def test_border_modes_differ_where_documented() -> None:
    x = _smooth_image() * 0.5 + 0.25  # no black pixels in the image itself
    for name in ("rotation", "perspective", "elastic", "translation"):
        zeros = apply_transform(name, x, 5, seed=0, border="zeros")
        reflect = apply_transform(name, x, 5, seed=0, border="reflect")
        assert (zeros < 0.2).any(), name  # black border pixels appear
        assert reflect.min() > 0.2, name  # mirrored content instead: no black pixels
    # zooming in stays inside the frame: all border modes agree
    torch.testing.assert_close(scale(x, 5, border="zeros"), scale(x, 5, border="reflect"))
    # zooming out uncovers the frame
    assert (scale(x, -10, border="zeros") < 0.2).any()


def test_scale_zooms_about_centre() -> None:
    x = _smooth_image(1, 64, 64)
    out = scale(x, 100, border="zeros")  # factor 2: the central half fills the frame
    expected = tvf.resize(x[..., 16:48, 16:48], [64, 64], interpolation=tvf.InterpolationMode.BILINEAR,
                          antialias=False)
    # the outermost output pixels sample just outside the 32 x 32 crop (real content there, not the
    # crop's replicated edge that resize uses), so compare the interior
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=0, atol=1e-5)


def test_elastic_peak_displacement_and_perspective_magnitude() -> None:
    # a horizontal ramp shows the x-displacement directly: output - input = d_x / (W - 1) inside the frame
    width = 200
    ramp = torch.linspace(0, 1, width).expand(1, 3, 80, width).contiguous()
    out = elastic(ramp, 3, seed=2, border="zeros")
    interior = (out - ramp)[..., 10:-10, 10:-10] * (width - 1)
    assert interior.abs().max() <= 3 + 1e-3
    assert interior.abs().max() > 1.0
    small = perspective(ramp, 1, border="reflect")
    large = perspective(ramp, 4, border="reflect")
    assert (large - ramp).abs().mean() > (small - ramp).abs().mean()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("border", BORDERS)
def test_gradients_flow(name: str, border: str) -> None:
    x = _smooth_image().double().requires_grad_(True)
    out = apply_transform(name, x, 2.5, seed=0, border=border)
    assert out.dtype == torch.float64
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_registry_metadata_and_errors() -> None:
    assert set(GEOMETRIC_TRANSFORMS) == {"translation", "scale", "rotation", "perspective", "elastic"}
    for spec in GEOMETRIC_TRANSFORMS.values():
        assert spec.unit and spec.severities[0] == 0 and list(spec.severities) == sorted(spec.severities)
    x = _smooth_image()
    with pytest.raises(ValueError):
        apply_transform("shear", x, 1)
    with pytest.raises(ValueError):
        apply_transform("rotation", x, 1, border="wrap")
    with pytest.raises(ValueError):
        apply_transform_pair("rotation", x, x[..., :10], 1)
    with pytest.raises(ValueError):
        translate(x, 100)
