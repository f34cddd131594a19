"""Reading images and per-pixel maps from files into float tensors in [0, 1].

What :func:`load_image` does with each kind of file (the README's "Images" table lists the same):

- 8-bit files (PNG, BMP, JPEG, TIFF, WebP, GIF, ...) are decoded by Pillow, as the authors' loaders do (their JPEG
  decoder fixes the pixels), and divided by 255.
- 16-bit colour PNG and TIFF, which Pillow reads at 8 bits, are decoded by OpenCV at full precision and divided
  by 65535; 16-bit grayscale keeps its precision too.
- Float files (32/64-bit TIFF): values in [0, 1] are kept (overshoots of at most 1e-3, from resampling, clipped);
  a file whose maximum is above that but at most 255 holds 8-bit-scaled values and is divided by 255, one up to
  65535 is divided by 65535 (each with a warning that says so); anything else (negative values, HDR radiance
  above 65535) is refused with :class:`ImageReadError`: such data must be tone-mapped or scaled by the caller.
- EXIF orientation is applied as image viewers do (``exif_orientation=False`` reads the stored pixels as they are).
- Grayscale is replicated to RGB, alpha dropped, palette images expanded. A file with several frames (animated
  GIF, multi-page TIFF) gives its first frame, with a warning.
- Images larger than ``max_pixels`` (default 64 megapixels, or ``$IQA_MAX_PIXELS``) are refused before they are
  decoded, so that a small compressed file cannot take gigabytes; raise the limit to read them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["load_image", "load_map", "ImageReadError", "MultiFrameWarning", "DEFAULT_MAX_PIXELS", "pixel_limit"]

#: Largest image (width x height) read by default: 64 megapixels (8192 x 7812), e.g. 8K UHD frames pass.
DEFAULT_MAX_PIXELS = 64_000_000
#: Slack on the [0, 1] range of float files (values produced by resampling overshoot by float noise).
FLOAT_TOLERANCE = 1e-3
_EXIF_ORIENTATION = 0x0112


class ImageReadError(OSError):
    """A file could not be read as an image (missing, unreadable, too large, or holding values out of range)."""


class MultiFrameWarning(UserWarning):
    """An image file holds several frames; the first one is used."""


def pixel_limit() -> int:
    """The pixel limit in force: ``$IQA_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get("IQA_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(float(value))
    except ValueError:
        raise ImageReadError(f"IQA_MAX_PIXELS={value!r} is not a number of pixels") from None


def _check_pixels(path: Path, width: int, height: int, limit: int | None) -> None:
    limit = pixel_limit() if limit is None else int(limit)
    if width * height > limit:
        raise ImageReadError(f"{path}: image of {width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the "
                             f"limit of {limit / 1e6:.1f}; pass max_pixels= (CLI --max-pixels, or set IQA_MAX_PIXELS) "
                             "to read it")


def _png_is_16bit_colour(path: Path) -> bool:
    """PNG header: bit depth 16 with colour type RGB (2) or RGBA (6)."""
    with path.open("rb") as fh:
        header = fh.read(26)
    return header[:8] == b"\x89PNG\r\n\x1a\n" and header[24] == 16 and header[25] in (2, 6)


def _tiff_needs_opencv(img: Image.Image) -> bool:
    """Colour TIFFs of more than 8 bits per sample, or float samples, which Pillow cannot read at full precision."""
    tags = getattr(img, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = int(tags.get(277, 1))
    return samples >= 3 and max(bits) > 8


def _opencv_array(path: Path) -> np.ndarray:
    """The stored samples decoded by OpenCV (no orientation applied), RGB(A) order, at their own bit depth."""
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(f"cannot read {path} as an image (OpenCV could not decode it)")
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    return np.ascontiguousarray(array)


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 1-8 applied to an (H, W[, C]) array, as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](array)) if orientation in ops else array


def _pillow_array(img: Image.Image, exif_orientation: bool) -> np.ndarray:
    if exif_orientation:
        img = ImageOps.exif_transpose(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        img = img.convert("RGB")
    return np.asarray(img)


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Pillow refuses images above its own limit before we can name ours: ours applies instead."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _decode(path: Path, exif_orientation: bool, limit: int | None) -> np.ndarray:
    """The samples of the file's first frame, orientation applied, at their stored type."""
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        with _own_pixel_limit(), Image.open(path) as img:
            _check_pixels(path, img.width, img.height, limit)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{path} holds {frames} frames; the first is used", MultiFrameWarning,
                              stacklevel=4)
            if (img.format == "PNG" and _png_is_16bit_colour(path)) or (
                    img.format == "TIFF" and _tiff_needs_opencv(img)):
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if exif_orientation else 1
                return _apply_orientation(_opencv_array(path), orientation)
            img.load()
            return _pillow_array(img, exif_orientation)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read {path} as an image ({err})") from err


def _to_unit_range(array: np.ndarray, path: Path, dtype: torch.dtype) -> np.ndarray:
    """Samples as floats in [0, 1] (computed in ``dtype``'s precision, float32 by default)."""
    work = np.float64 if dtype == torch.float64 else np.float32
    if array.dtype == bool:
        return array.astype(work)
    if array.dtype == np.uint8:
        return _divided(array.astype(work), 255)
    if array.dtype in (np.uint16, np.int32) or array.dtype == np.dtype(">u2"):
        # Pillow reads 16-bit grayscale as I;16 (uint16) or I (int32) holding 0..65535
        return _divided(array.astype(work), 65535)
    if np.issubdtype(array.dtype, np.floating):
        return _float_samples(array.astype(work), path)
    raise ImageReadError(f"{path}: unsupported pixel type {array.dtype}")


def _divided(array: np.ndarray, scale: int) -> np.ndarray:
    """In place: a large image is not copied once more (IEEE division, so the same values as ``array / scale``)."""
    array /= scale
    return array


def _float_samples(array: np.ndarray, path: Path) -> np.ndarray:
    """The rule for float files (module docstring)."""
    if not np.isfinite(array).all():
        raise ImageReadError(f"{path}: the float image holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < -FLOAT_TOLERANCE:
        raise ImageReadError(f"{path}: float image with values down to {lo:.4g}; scale it to [0, 1] first")
    if hi <= 1 + FLOAT_TOLERANCE:
        return np.clip(array, 0, 1)
    for scale in (255, 65535):
        if hi <= scale:
            warnings.warn(f"{path}: float image with values up to {hi:.4g}, read as 0..{scale} data and divided by "
                          f"{scale}", UserWarning, stacklevel=4)
            return np.clip(array / scale, 0, 1)
    raise ImageReadError(f"{path}: float image with values up to {hi:.4g} (HDR data?); tone-map or scale it to [0, 1]")


def load_image(path: str | PathLike, dtype: torch.dtype = torch.float32, exif_orientation: bool = True,
               max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file as a (1, 3, H, W) RGB tensor with values in [0, 1] (the rules: module docstring).

    ``exif_orientation``: apply the file's EXIF orientation (as viewers show it); ``max_pixels``: refuse images with
    more pixels (default ``$IQA_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`). Raises :class:`ImageReadError`.
    """
    path = Path(path)
    array = _to_unit_range(_decode(path, exif_orientation, max_pixels), path, dtype)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 2:  # LA
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.shape[2] >= 4:  # RGBA, RGBX
        array = array[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(dtype).unsqueeze(0)


def load_map(path: str | PathLike, dtype: torch.dtype = torch.float32, exif_orientation: bool = True,
             max_pixels: int | None = None) -> torch.Tensor:
    """Read a per-pixel map (e.g. a saliency map) as a (1, 1, H, W) tensor in [0, 1].

    For colour files the first channel is used, as the official DeepSSIM code does with its GBVS maps.
    """
    path = Path(path)
    array = _to_unit_range(_decode(path, exif_orientation, max_pixels), path, dtype)
    if array.ndim == 3:
        array = array[:, :, 0]
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)[None, None]
