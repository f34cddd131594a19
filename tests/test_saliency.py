"""Tests of the GBVS saliency estimator used by DeepSSIM's saliency calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES

from deepssim.saliency import binarize_saliency, gbvs, quantize_8bit, saliency_maps

DATA_DIR = EXAMPLES / "deepssim_butterfly"  # the authors' demo pair and their GBVS maps (8-bit PNG)
IMAGE_NAMES = ["butterfly.png", "butterfly_shif_0.50.png"]
# Measured: Pearson 0.99998789 and 0.99998760, every pixel within one grey level of the authors' map.
MIN_CORRELATION = 0.99998


def _load_pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The demo image (uint8 RGB) and the authors' GBVS map for it (float in [0, 1])."""
    from PIL import Image

    image_path, map_path = DATA_DIR / name, DATA_DIR / "saliency_maps" / name
    if not (image_path.is_file() and map_path.is_file()):
        pytest.skip(f"DeepSSIM demo data not available under {DATA_DIR}")
    image = np.asarray(Image.open(image_path).convert("RGB"))
    authors_map = np.asarray(Image.open(map_path).convert("L"), dtype=np.float64) / 255.0
    return image, authors_map


def _random_image(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    """A smooth-ish random RGB image with some structure, uint8."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3)).astype(np.float64)
    img[h // 3: h // 2, w // 4: w // 2] = [250, 20, 20]  # a salient red block
    return img.astype(np.uint8)


# (a) agreement with the authors' maps -------------------------------------------------------------

@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_correlates_with_authors_gbvs_map(name: str) -> None:
    image, authors_map = _load_pair(name)
    ours = gbvs(image)
    assert ours.shape == authors_map.shape
    cc = float(np.corrcoef(ours.ravel(), authors_map.ravel())[0, 1])
    assert cc >= MIN_CORRELATION, f"Pearson CC with the authors' map for {name} is {cc:.8f}"
    rounded = quantize_8bit(torch.from_numpy(ours)).numpy()
    assert np.abs(rounded - authors_map).max() <= 1 / 255 + 1e-12  # at most one grey level apart


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_binary_mask_matches_authors_after_8bit_quantisation(name: str) -> None:
    image, authors_map = _load_pair(name)
    ours = quantize_8bit(torch.from_numpy(gbvs(image)))
    ours_mask = binarize_saliency(ours)
    authors_mask = binarize_saliency(torch.from_numpy(authors_map))
    agreement = float((ours_mask == authors_mask).double().mean())
    # measured: 24 and 10 of 716,800 / 358,400 pixels differ (0.99997), where the maps sit one grey level apart at 0
    assert agreement >= 0.99995, f"binary-mask agreement for {name} is {agreement:.6f}"


# (b) output contract --------------------------------------------------------------------------------

def test_output_shape_dtype_and_range() -> None:
    image = _random_image()
    sal = gbvs(image)
    assert sal.shape == image.shape[:2]
    assert sal.dtype == np.float64
    assert np.isfinite(sal).all()
    assert sal.min() == pytest.approx(0.0) and sal.max() == pytest.approx(1.0)


def test_salient_block_is_salient() -> None:
    image = _random_image(seed=3)
    image[:] = 128
    image[60:90, 80:120] = [250, 20, 20]
    sal = gbvs(image)
    assert sal[60:90, 80:120].mean() > 2 * sal.mean()


def test_deterministic() -> None:
    image = _random_image(seed=1)
    np.testing.assert_array_equal(gbvs(image), gbvs(image.copy()))


def test_input_layouts_agree() -> None:
    image = _random_image(seed=2)
    reference = gbvs(image)
    as_float = image.astype(np.float64) / 255.0
    chw = torch.from_numpy(as_float).permute(2, 0, 1)
    np.testing.assert_allclose(gbvs(as_float), reference, atol=1e-12)
    np.testing.assert_allclose(gbvs(chw), reference, atol=1e-12)
    np.testing.assert_allclose(gbvs(chw[None]), reference, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(140, 180, 3), (16, 16, 3), (128, 200)])
def test_constant_image_gives_finite_map(value: float, shape: tuple[int, ...]) -> None:
    sal = gbvs(np.full(shape, value))
    assert sal.shape == shape[:2]
    assert np.isfinite(sal).all()
    assert sal.min() >= 0.0 and sal.max() <= 1.0


# (c) batched maps --------------------------------------------------------------------------------------

def test_saliency_maps_batch_equals_per_image_calls() -> None:
    images = torch.stack([
        torch.from_numpy(_random_image(seed=s)).permute(2, 0, 1).to(torch.float64) / 255.0
        for s in (4, 5)
    ])
    batch = saliency_maps(images)
    assert batch.shape == (2, 1, 150, 200)
    assert batch.dtype == images.dtype and batch.device == images.device
    for i in range(2):
        np.testing.assert_allclose(batch[i, 0].numpy(), gbvs(images[i]), atol=1e-12)


def test_saliency_maps_keeps_float32() -> None:
    images = torch.from_numpy(_random_image(seed=6)).permute(2, 0, 1)[None].float() / 255.0
    out = saliency_maps(images)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 150, 200)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


# (d) binarisation rule ------------------------------------------------------------------------------

def test_binarize_saliency_threshold_rule() -> None:
    maps = torch.tensor([[0.0, 1e-6, 0.5], [0.2, 0.0, 1.0]])
    assert torch.equal(binarize_saliency(maps), torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    above_02 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert torch.equal(binarize_saliency(maps, threshold=0.2), above_02)
    assert binarize_saliency(maps).dtype == maps.dtype


def test_binarize_saliency_on_8bit_levels() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    mask = binarize_saliency(levels)
    assert mask[0] == 0 and bool((mask[1:] == 1).all())
    assert torch.equal(quantize_8bit(torch.tensor([0.4 / 255, 0.6 / 255])), torch.tensor([0.0, 1 / 255]))
