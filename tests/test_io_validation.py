"""Image loading from files and the input checks every metric applies."""

from __future__ import annotations

import warnings
from pathlib import Path

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


# ------------------------------------------------------------------------------------------------ the file rules

def test_16bit_colour_png_and_tiff_keep_full_precision(tmp_path):
    """Pillow reads these at 8 bits; the loader decodes them with OpenCV (which stores BGR) at 16."""
    cv2 = pytest.importorskip("cv2")
    rgb16 = RNG.integers(0, 65536, size=(6, 5, 3), dtype=np.uint16)
    for suffix in ("png", "tiff"):
        path = tmp_path / f"c16.{suffix}"
        assert cv2.imwrite(str(path), rgb16[:, :, ::-1])
        x = load_image(path, dtype=torch.float64)
        np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), rgb16 / 65535.0)
        assert len(np.unique((x * 65535).round() % 257)) > 1  # not 8-bit values scaled up


def test_exif_orientation_is_applied_unless_ignored(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise to view), as cameras write it."""
    image = Image.fromarray(RGB)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    upright = load_image(path)
    assert upright.shape == (1, 3, 10, 12)
    expected = np.rot90(RGB, -1)
    np.testing.assert_array_equal((upright[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)
    stored = load_image(path, exif_orientation=False)
    assert stored.shape == (1, 3, 12, 10)


@pytest.mark.parametrize("scale, warns", [(1.0, False), (255.0, True), (65535.0, True)])
def test_float_tiffs_follow_the_documented_rule(tmp_path, scale, warns):
    values = RNG.random((8, 9)).astype(np.float32)
    path = tmp_path / "f.tiff"
    Image.fromarray(values * np.float32(scale)).save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = load_image(path, dtype=torch.float64)
    np.testing.assert_allclose(x[0, 0].numpy(), values, rtol=1e-6)
    assert any("divided by" in str(w.message) for w in caught) == warns


@pytest.mark.parametrize("values, problem", [(-0.5, "down to -0.5"), (1e6, "HDR")])
def test_float_tiffs_out_of_every_range_are_refused(tmp_path, values, problem):
    path = tmp_path / "hdr.tiff"
    Image.fromarray(np.full((4, 4), values, np.float32)).save(path)
    with pytest.raises(ImageReadError, match=problem):
        load_image(path)


def test_multi_frame_files_warn_and_give_the_first_frame(tmp_path):
    from iqa_core.io import MultiFrameWarning

    frames = [Image.fromarray(np.full((4, 4, 3), v, np.uint8)) for v in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.warns(MultiFrameWarning, match="2 frames; the first is used"):
        x = load_image(path)
    assert abs(float(x.mean()) * 255 - 10) < 1.5


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (its image data is empty): cheap to write, huge to decode."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def test_pixel_limit_refuses_before_decoding_and_can_be_raised(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    _png_header_only(big, 30000, 30000)
    with pytest.raises(ImageReadError, match="30000x30000 = 900.0 megapixels exceeds the limit of 64.0"):
        load_image(big)
    Image.fromarray(RGB).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="max_pixels="):
        load_image(tmp_path / "small.png", max_pixels=100)
    monkeypatch.setenv("IQA_MAX_PIXELS", "100")
    with pytest.raises(ImageReadError, match="exceeds the limit of 0.0"):
        load_image(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=120).shape == (1, 3, 12, 10)
    monkeypatch.setenv("IQA_MAX_PIXELS", str(10**9))
    with pytest.raises(ImageReadError, match="cannot read"):  # allowed now: the (empty) data itself is unreadable
        load_image(big)


def test_files_are_closed(tmp_path):
    import gc

    Image.fromarray(RGB).save(tmp_path / "x.png")
    before = len(list(Path("/proc/self/fd").iterdir())) if Path("/proc/self/fd").is_dir() else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for _ in range(50):
            load_image(tmp_path / "x.png")
        gc.collect()
    if before is not None:
        assert len(list(Path("/proc/self/fd").iterdir())) <= before
