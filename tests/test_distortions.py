"""Synthetic distortions (iqa_core.distortions) and the bundled samples (iqa_core.samples)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_core.distortions import DISTORTIONS, MAX_LEVEL, distort, jpeg2000_available, list_distortions
from iqa_core.samples import SAMPLES_DIR, load_samples, sample_images, shrink
from iqa_core.validation import IQAInputError

NAMES = list_distortions()
LEVELS = range(1, MAX_LEVEL + 1)


@pytest.fixture(scope="module")
def samples() -> dict[str, torch.Tensor]:
    return load_samples()


@pytest.fixture(scope="module")
def small() -> torch.Tensor:
    """A two-image batch cut from the samples (fast checks)."""
    images = load_samples()
    return torch.cat([images["astronaut"][..., :64, :80], images["coffee"][..., :64, :80]])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a.double() - b.double()) ** 2).mean()))


# --------------------------------------------------------------------------- registry / API


def test_registry_levels():
    assert {"gaussian_blur", "gaussian_noise", "jpeg"} <= set(DISTORTIONS)
    assert len(DISTORTIONS) >= 5
    for name, spec in DISTORTIONS.items():
        assert spec.name == name and spec.parameter and spec.description
        assert len(spec.levels) == MAX_LEVEL
    assert DISTORTIONS["jpeg"].levels == (43, 36, 24, 7, 2)
    assert ("jpeg2000" in NAMES) == jpeg2000_available()


@pytest.mark.parametrize("name", NAMES)
def test_level0_identity(name, small):
    out = distort(name, small, 0)
    assert torch.equal(out, small)
    assert out.data_ptr() != small.data_ptr()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("level", LEVELS)
def test_shape_range_dtype(name, level, small):
    out = distort(name, small.double(), level)
    assert out.shape == small.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, small)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name, small):
    for level in LEVELS:
        assert torch.equal(distort(name, small, level, seed=3), distort(name, small, level, seed=3))


def test_noise_seed():
    x = torch.full((1, 3, 32, 32), 0.5)
    a, b = distort("gaussian_noise", x, 2, seed=0), distort("gaussian_noise", x, 2, seed=1)
    assert not torch.equal(a, b)
    assert torch.equal(a, distort("gaussian_noise", x, 2))  # default seed is 0
    assert abs(float((a - x).std()) - DISTORTIONS["gaussian_noise"].value(2)) < 0.005


def test_input_errors(small):
    with pytest.raises(KeyError):
        distort("no_such_distortion", small, 1)
    for level in (-1, 6, 1.5, True):
        with pytest.raises(IQAInputError):
            distort("gaussian_blur", small, level)
    with pytest.raises(IQAInputError):
        distort("gaussian_blur", small[0], 1)
    with pytest.raises(IQAInputError):
        distort("gaussian_blur", small * 255, 1)


# --------------------------------------------------------------------------- strength grows with level


@pytest.mark.parametrize("name", NAMES)
def test_psnr_decreases_with_level(name, samples):
    for image_name, x in samples.items():
        values = [psnr(distort(name, x, level), x) for level in LEVELS]
        assert all(a > b for a, b in zip(values[:-1], values[1:], strict=True)), (image_name, values)


# --------------------------------------------------------------------------- real encoder


def test_jpeg_matches_pillow(samples):
    x = samples["chelsea"]
    array = (x[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    for level in (3, 5):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=DISTORTIONS["jpeg"].value(level))
        buffer.seek(0)
        expected = np.asarray(Image.open(buffer).convert("RGB"))
        out = distort("jpeg", x, level)
        got = (out[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        assert np.array_equal(got, expected)


def test_blur_kernel_sum():
    x = torch.full((1, 3, 40, 50), 0.3)
    for level in LEVELS:
        assert torch.allclose(distort("gaussian_blur", x, level), x, atol=1e-6)


# --------------------------------------------------------------------------- bundled samples


def test_samples_load():
    paths = sample_images()
    assert len(paths) >= 6
    assert sum(p.stat().st_size for p in SAMPLES_DIR.iterdir() if p.is_file()) < 1.5e6
    images = load_samples()
    assert set(images) == {p.stem for p in paths}
    for name, image in images.items():
        assert image.shape[:2] == (1, 3) and image.dtype == torch.float32, name
        assert max(image.shape[-2:]) == 256, name
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    shrunk = load_samples(max_side=64)
    assert all(max(image.shape[-2:]) == 64 for image in shrunk.values())


def test_shrink_only_downscales():
    image = torch.rand(2, 3, 40, 100)
    assert shrink(image, None) is image and shrink(image, 100) is image and shrink(image, 400) is image
    small = shrink(image, 50)
    assert small.shape == (2, 3, 20, 50) and 0 <= float(small.min()) and float(small.max()) <= 1


def test_samples_readme_licences():
    readme = (SAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = cells
    files = {p.name for p in sample_images()}
    assert set(table) == files
    for name, cells in table.items():
        file_, content, skimage_name, size, licence, source = cells
        assert content and skimage_name and source, name
        assert re.search(r"public domain|CC0|no known copyright", licence, re.IGNORECASE), name
        with Image.open(SAMPLES_DIR / name) as image:
            assert size == f"{image.width} x {image.height}", name
            assert image.mode == "RGB"
