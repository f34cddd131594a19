"""ZS-IQA's evaluation protocol (Ghildyal, Barman, Zadtootaghaj, ICASSP 2025; abhijay9/ZS-IQA @ 1d8c1ce):
the robustness perturbations of ``utils.load_img`` and the sliding-window rule of ``utils.get_indxs_sliding_window``.

:func:`zs_iqa_perturb` reproduces, pixel for pixel, ``"tra"`` (horizontal shift of ``pct`` % of the width, both
images cropped), ``"sca"`` (zoom of ``pct`` %, distorted image only) and ``"rot"`` (``pct`` degrees clockwise,
distorted image only, black corners), with the same PIL operations in the same order; the results are converted
to RGB last, as the official code does. :func:`window_grid` places the 224-pixel windows the foundation backbones
see (stride 200).
"""

from __future__ import annotations

import math
from os import PathLike

import numpy as np
from PIL import Image

from iqa_core.validation import IQAInputError

__all__ = ["zs_iqa_perturb", "zs_iqa_load_pair", "window_starts", "window_grid", "ZS_IQA_KINDS", "STRIDE", "WINDOW"]

ZS_IQA_KINDS = ("tra", "sca", "rot")
STRIDE = 200  # the sliding-window stride
WINDOW = 224  # the backbones' input side


def window_starts(length: int, window: int = WINDOW, stride: int = STRIDE) -> list[int]:
    """Start offsets of the windows along one side, ZS-IQA's rule (utils.get_indxs_sliding_window):
    0, stride, 2 stride, ... below ``length - window``, then a last window flush with the far edge (or, if a
    whole window still fits between them, one more window and then the flush one). A side of exactly
    ``window`` gets one window; a shorter side cannot be scored."""
    if length < window:
        raise IQAInputError(f"image side {length} is smaller than the backbone's {window}-pixel window")
    starts = np.arange(0, length - window, stride)
    if starts.size == 0:
        return [length - window]
    if starts[-1] + 2 * window > length:
        return [*starts.tolist(), length - window]
    return [*starts.tolist(), int(starts[-1]) + window, length - window]


def window_grid(height: int, width: int, window: int = WINDOW, stride: int = STRIDE) -> list[tuple[int, int]]:
    """(top, left) of every window, rows outer, as the official double loop."""
    return [(y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)]


# ----------------------------------------------------------------------------------------------------
# The official load_img, reproduced on PIL images
# ----------------------------------------------------------------------------------------------------


def _round_up_to_even(value: float) -> int:
    """Smallest even integer >= value (the official helper's rule)."""
    return int(math.ceil(value / 2.0) * 2)


def _zs_tra(ref: Image.Image, dist: Image.Image, pct: int) -> tuple[Image.Image, Image.Image]:
    """Translation: shift of ceil(pct/100 * W) px; reference keeps the left part, distorted the right."""
    width, height = ref.size
    offset = math.ceil((pct / 100.0) * width)
    ref_out = ref.crop((0, 0, width - offset, height))
    dwidth, dheight = dist.size
    doffset = math.ceil((pct / 100.0) * dwidth)
    dist_out = dist.crop((doffset, 0, dwidth, dheight))
    return ref_out, dist_out


def _zs_sca(dist: Image.Image, pct: int) -> Image.Image:
    """Scale: bilinear upsize by pct % (offsets rounded up to even), centre crop, bilinear resize back."""
    width, height = dist.size
    new_w = width + _round_up_to_even((pct / 100.0) * width)
    new_h = height + _round_up_to_even((pct / 100.0) * height)
    cx, cy = new_w // 2, new_h // 2
    half_w, half_h = math.ceil(width / 2), math.ceil(height / 2)
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    up = dist.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return up.crop(box).resize((width, height), Image.Resampling.BILINEAR)


def zs_iqa_perturb(
    ref: Image.Image, dist: Image.Image, kind: str | None, pct: int = 1
) -> tuple[Image.Image, Image.Image]:
    """The ZS-IQA robustness perturbation of a (reference, distorted) pair, pixel for pixel.

    ``kind``: ``"tra"`` (translation by ``ceil(pct/100 * W)`` pixels: the reference is cropped to
    ``(0, 0, W - s, H)``, the distorted image to ``(s, 0, W, H)``), ``"sca"`` (the distorted image is
    resized bilinearly to ``W + e(pct% W)`` x ``H + e(pct% H)`` with ``e`` = round up to even, centre-cropped
    to ``2*ceil(W/2)`` x ``2*ceil(H/2)`` and resized bilinearly back to ``W x H``), ``"rot"`` (the
    distorted image gets PIL ``rotate(-pct)``: ``pct`` degrees clockwise, nearest neighbour, same size,
    black corners) or ``None`` (no perturbation). ``pct`` is a percentage for ``tra``/``sca`` and degrees
    for ``rot``. The reference is unchanged for ``sca``/``rot``.

    Pass images as opened (``Image.open``) to match the official code exactly: it applies the geometric
    operation in the file's own mode and converts to RGB last (done here too).
    """
    if kind is None:
        return ref.convert("RGB"), dist.convert("RGB")
    if kind not in ZS_IQA_KINDS:
        raise ValueError(f"unknown ZS-IQA perturbation {kind!r}; expected one of {ZS_IQA_KINDS} or None")
    if kind == "tra":
        ref_out, dist_out = _zs_tra(ref, dist, pct)
    elif kind == "sca":
        ref_out, dist_out = ref, _zs_sca(dist, pct)
    else:
        ref_out, dist_out = ref, dist.rotate(-pct)
    return ref_out.convert("RGB"), dist_out.convert("RGB")


def zs_iqa_load_pair(
    ref_path: str | PathLike, dist_path: str | PathLike, kind: str | None, pct: int = 1
) -> tuple[Image.Image, Image.Image]:
    """Open two image files and apply :func:`zs_iqa_perturb` (the official ``load_img`` calls of ``run.py``)."""
    with Image.open(ref_path) as ref, Image.open(dist_path) as dist:
        ref.load()
        dist.load()
        return zs_iqa_perturb(ref, dist, kind, pct)
