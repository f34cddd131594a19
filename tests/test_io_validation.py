"""Image loading from files and the input checks every metric applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_core import ImageReadError, IQAInputError, load_image, load_map
from iqa_core.validation import check_image, check_mask, check_pair

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["png", "bmp", "tiff"])
def test_lossless_rgb_formats_roundtrip(tmp_path, suffix):
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(RGB).save(path)
    x = load_image(path)
    assert x.shape == (1, 3, 12, 10) and x.dtype == torch.float32
    np.testing.assert_array_equal((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), RGB)


def test_jpeg_is_read_in_range(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(RGB).save(path, quality=90)
    x = load_image(path)
    assert x.shape == (1, 3, 12, 10) and 0 <= x.min() and x.max() <= 1


def test_grayscale_is_replicated(tmp_path):
    gray = RGB[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png")
    assert x.shape == (1, 3, 12, 10)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(gray / 255.0).float())
    torch.testing.assert_close(x[0, 0], x[0, 2])


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([RGB, np.full((12, 10, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    torch.testing.assert_close(x[0].permute(1, 2, 0), torch.from_numpy(RGB / 255.0).float())


def test_16bit_grayscale_keeps_precision(tmp_path):
    values = np.array([[0, 1, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png", dtype=torch.float64)
    np.testing.assert_allclose(x[0, 0, 0].numpy(), values[0] / 65535.0)


def test_palette_image(tmp_path):
    Image.fromarray(RGB).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (1, 3, 12, 10)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageReadError, match="cannot read"):
        load_image(bad)
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.png")


def test_load_map_uses_first_channel(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "m.png")
    m = load_map(tmp_path / "m.png")
    assert m.shape == (1, 1, 12, 10)
    torch.testing.assert_close(m[0, 0], torch.from_numpy(RGB[..., 0] / 255.0).float())


def test_check_image_errors():
    with pytest.raises(IQAInputError, match="torch.Tensor"):
        check_image(np.zeros((1, 3, 8, 8)))
    with pytest.raises(IQAInputError, match="float tensor"):
        check_image(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(IQAInputError, match="\\(B, 3, H, W\\)"):
        check_image(torch.zeros(8, 8))
    with pytest.raises(IQAInputError, match="4 in shape"):
        check_image(torch.zeros(1, 4, 8, 8))
    with pytest.raises(IQAInputError, match="divide by 255"):
        check_image(torch.full((1, 3, 8, 8), 200.0))
    with pytest.raises(IQAInputError, match="min -0.5"):
        check_image(torch.full((1, 3, 8, 8), -0.5))
    with pytest.raises(IQAInputError, match="infinite"):
        check_image(torch.full((1, 3, 8, 8), float("inf")))
    with pytest.raises(IQAInputError, match="too small"):
        check_image(torch.zeros(1, 3, 8, 8), min_size=16)
    assert check_image(torch.zeros(3, 8, 8)).shape == (1, 3, 8, 8)


def test_check_pair_sizes_and_batches():
    a, b = torch.rand(2, 3, 8, 8), torch.rand(1, 3, 9, 8)
    assert check_pair(a, b)[1].shape == (1, 3, 9, 8)
    with pytest.raises(IQAInputError, match="same size"):
        check_pair(a, b, same_size=True)
    with pytest.raises(IQAInputError, match="batch sizes differ"):
        check_pair(a, torch.rand(3, 3, 8, 8))


def test_check_mask_shapes():
    img = torch.rand(2, 3, 8, 8)
    assert check_mask(torch.ones(8, 8), img).shape == (1, 1, 8, 8)
    assert check_mask(torch.ones(2, 8, 8), img).shape == (2, 1, 8, 8)
    with pytest.raises(IQAInputError, match="3 maps given for 2 images"):
        check_mask(torch.ones(3, 1, 8, 8), img)
