"""Reading images and per-pixel maps from files into float tensors in [0, 1]."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["load_image", "load_map", "ImageReadError"]


class ImageReadError(OSError):
    """A file could not be read as an image."""


def _open(path: str | PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read {path} as an image ({err})") from err
    return img


def _scale_of(array: np.ndarray) -> float:
    """Largest value of the array's storage type: 255 for 8-bit, 65535 for 16-bit files."""
    if array.dtype == np.uint8 or array.dtype == bool:
        return 255.0 if array.dtype == np.uint8 else 1.0
    if array.dtype in (np.uint16, np.int32) or array.dtype == np.dtype(">u2"):
        # Pillow reads 16-bit grayscale as I;16 (uint16) or I (int32) holding 0..65535.
        return 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return 1.0
    raise ImageReadError(f"unsupported pixel type {array.dtype}")


def _to_array01(img: Image.Image) -> np.ndarray:
    """Pixel values of ``img`` as float64 in [0, 1], shape (H, W) or (H, W, C), bit depth kept."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        img = img.convert("RGB")
    array = np.asarray(img)
    scale = _scale_of(array)
    return np.clip(array.astype(np.float64) / scale, 0.0, 1.0)


def load_image(path: str | PathLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Read an image file as a (1, 3, H, W) RGB tensor with values in [0, 1].

    PNG, BMP, JPEG, TIFF and whatever else Pillow reads. Grayscale is replicated to three
    channels; the alpha channel of RGBA/LA images is dropped (as ``PIL.Image.convert("RGB")``
    does, which is what the official DeepSSIM and DeepWSD loaders use). 16-bit grayscale
    files keep their full precision; Pillow reads 16-bit colour PNGs at 8-bit precision.
    """
    array = _to_array01(_open(path))
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 2:  # LA
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif array.shape[2] >= 4:  # RGBA, RGBX
        array = array[:, :, :3]
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(dtype)
    return tensor.unsqueeze(0)


def load_map(path: str | PathLike, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Read a per-pixel map (e.g. a saliency map) as a (1, 1, H, W) tensor in [0, 1].

    For colour files the first channel is used, as the official DeepSSIM code does with
    its GBVS maps.
    """
    array = _to_array01(_open(path))
    if array.ndim == 3:
        array = array[:, :, 0]
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)[None, None]
