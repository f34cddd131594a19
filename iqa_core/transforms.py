"""Geometric perturbations for the robustness experiments (GDR-IQA in experiments/gdr_robustness.py, ZS-IQA).

Two families live here.

1. :func:`zs_iqa_perturb` reproduces, pixel for pixel, the robustness transforms of the official
   ZS-IQA ``utils.load_img`` (abhijay9/ZS-IQA @ 1d8c1ce): ``"tra"`` (horizontal shift of ``pct`` % of the
   width, both images cropped), ``"sca"`` (zoom of ``pct`` %, distorted image only) and ``"rot"``
   (``pct`` degrees clockwise, distorted image only, black corners). It works on PIL images with the same
   PIL operations in the same order; the results are converted to RGB last, as the official code does.

2. Tensor transforms on ``(B, 3, H, W)`` (or ``(3, H, W)``) float images in [0, 1], each with a
   ``severity`` in a documented unit, deterministic (seeded where random) and differentiable with respect
   to the image (they can be used inside losses). Severity 0 returns an exact copy of the input.

Border handling (``border=``)
-----------------------------
In the robustness experiment the transformed *distorted* image is compared with the untouched
*reference*, so pixels that the transform pulls in from outside the frame must be handled explicitly:

* ``"reflect"`` (default): outside pixels are mirror images of the frame (reflection about the image
  edge), so no artificial black borders appear and the output keeps its shape.
* ``"zeros"``: outside pixels are black (0), as PIL ``rotate`` / torchvision's warps do; shape kept.
* ``"crop"``: the output is cut down to the region whose every pixel was sampled from inside the frame
  (no border pixels at all). The output is then smaller than the input and the reference must be cut
  to the same box: use :func:`apply_transform_pair`, which does that. Translation crops asymmetrically
  (exactly the ZS-IQA protocol: reference ``[:, :W-s]``, distorted ``[:, s:]``); the warps crop the
  largest centred box with the image's aspect ratio that is fully valid.

Scale (zoom in) never reaches outside the frame, so its border option only matters for negative
severities (zoom out).

Implementation: integer translation uses ``torchvision.transforms.v2.functional.pad`` / ``crop``; the
warps (scale, rotation, perspective, elastic) build an explicit sampling grid and call
``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``, rotation about the geometric
image centre, the same conventions as torchvision's tensor ``affine`` / ``rotate``), because
torchvision's warps only offer a constant fill and no reflection border.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as tvf
from PIL import Image

__all__ = [
    "ZS_IQA_KINDS",
    "BORDERS",
    "ELASTIC_SIGMA_PX",
    "GEOMETRIC_TRANSFORMS",
    "TransformSpec",
    "zs_iqa_perturb",
    "zs_iqa_load_pair",
    "translate",
    "translate_pixels",
    "scale",
    "rotate",
    "perspective",
    "elastic",
    "apply_transform",
    "apply_transform_pair",
]

ZS_IQA_KINDS = ("tra", "sca", "rot")
BORDERS = ("reflect", "zeros", "crop")
#: Smoothness of the elastic displacement field: Gaussian standard deviation in pixels (fixed).
ELASTIC_SIGMA_PX = 8.0

Box = tuple[int, int, int, int]  # (top, left, height, width), torchvision's crop convention


# ----------------------------------------------------------------------------------------------------
# 1. ZS-IQA official load_img, reproduced on PIL images
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


# ----------------------------------------------------------------------------------------------------
# 2. Tensor transforms
# ----------------------------------------------------------------------------------------------------


def _check(x: torch.Tensor, border: str) -> None:
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; expected one of {BORDERS}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected an image tensor (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError("expected a floating-point image tensor in [0, 1]")


def _full_box(x: torch.Tensor) -> Box:
    return 0, 0, x.shape[-2], x.shape[-1]


def _translate_px(width: int, severity: float) -> int:
    """Pixel shift for ``severity`` % of the width, rounded up as ZS-IQA does (``ceil``)."""
    shift = math.ceil((abs(severity) / 100.0) * width)
    if shift >= width:
        raise ValueError(f"translation of {severity}% shifts the whole {width}-px-wide image out of frame")
    return shift


def _translate(x: torch.Tensor, severity: float, border: str) -> tuple[torch.Tensor, Box]:
    """Integer horizontal shift by ``severity`` % of the width; the output and the reference crop box (crop mode)."""
    shift = _translate_px(x.shape[-1], severity)
    return _shift_px(x, shift if severity > 0 else -shift, border)


def _shift_px(x: torch.Tensor, shift: int, border: str) -> tuple[torch.Tensor, Box]:
    """Integer horizontal shift by ``shift`` pixels: positive moves the content left (output column j shows input
    column j + shift), negative moves it right. Returns the output and the reference crop box (crop mode)."""
    height, width = x.shape[-2:]
    if shift == 0:
        return x.clone(), _full_box(x)
    start, kept = max(shift, 0), width - abs(shift)
    if border == "crop":
        return tvf.crop(x, 0, start, height, kept), (0, max(-shift, 0), height, kept)
    padding = [0, 0, shift, 0] if shift > 0 else [-shift, 0, 0, 0]  # left, top, right, bottom
    return _pad(x, padding, border)[..., :, start : start + width], _full_box(x)


def _pad(x: torch.Tensor, padding: list[int], border: str) -> torch.Tensor:
    """Pad (left, top, right, bottom) by reflection (repeated when wider than the image) or zeros."""
    if border == "zeros":
        return tvf.pad(x, padding, fill=0.0, padding_mode="constant")
    remaining = list(padding)
    while any(remaining):  # torch's reflect padding must be narrower than the image: repeat if needed
        height, width = x.shape[-2:]
        limits = (width - 1, height - 1, width - 1, height - 1)
        step = [min(r, lim) for r, lim in zip(remaining, limits, strict=True)]
        x = tvf.pad(x, step, padding_mode="reflect")
        remaining = [r - s for r, s in zip(remaining, step, strict=True)]
    return x


def translate(x: torch.Tensor, severity: float, *, border: str = "reflect") -> torch.Tensor:
    """Horizontal translation by ``severity`` % of the width.

    The shift is ``ceil(|severity|/100 * W)`` whole pixels (no interpolation; ZS-IQA's rounding);
    positive severity moves the content left (output column ``j`` shows input column ``j + s``, the
    ZS-IQA direction), negative moves it right. Border: ``"reflect"`` mirrors the frame into the uncovered
    strip, ``"zeros"`` leaves it black, ``"crop"`` drops it (output width ``W - s``; crop the reference
    with :func:`apply_transform_pair`).
    """
    _check(x, border)
    if severity == 0:
        return x.clone()
    return _translate(x, severity, border)[0]


def translate_pixels(x: torch.Tensor, pixels: int, *, border: str = "reflect") -> torch.Tensor:
    """Horizontal translation by a whole number of ``pixels`` (no interpolation).

    The pixel-count counterpart of :func:`translate` (whose severity is a % of the width), for misalignments
    of a few pixels whatever the image size: positive ``pixels`` moves the content left (output column ``j``
    shows input column ``j + pixels``), negative moves it right. Border as in :func:`translate`:
    ``"reflect"`` mirrors the frame into the uncovered strip, ``"zeros"`` leaves it black, ``"crop"`` drops
    it (output width ``W - |pixels|``).
    """
    _check(x, border)
    shift = int(pixels)
    if shift != pixels:
        raise ValueError(f"pixels must be a whole number, got {pixels!r}")
    width = x.shape[-1]
    if abs(shift) >= width:
        raise ValueError(f"a shift of {shift} px moves the whole {width}-px-wide image out of frame")
    return _shift_px(x, shift, border)[0]


def _base_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates relative to the geometric image centre, in pixels, shapes (H, W)."""
    ys = torch.arange(height, dtype=dtype, device=device) + 0.5 - height / 2.0
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5 - width / 2.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return gx, gy


def _largest_valid_box(src_x: torch.Tensor, src_y: torch.Tensor) -> Box:
    """Largest centred box (image aspect ratio) whose pixels all sample from inside the frame."""
    height, width = src_x.shape
    tol = 1e-4
    inside = (src_x >= -width / 2.0 + 0.5 - tol) & (src_x <= width / 2.0 - 0.5 + tol)
    inside &= (src_y >= -height / 2.0 + 0.5 - tol) & (src_y <= height / 2.0 - 0.5 + tol)

    def box(m: int) -> Box:
        my = m
        mx = round(m * width / height)
        return my, mx, height - 2 * my, width - 2 * mx

    def ok(m: int) -> bool:
        top, left, h, w = box(m)
        return h > 0 and w > 0 and bool(inside[top : top + h, left : left + w].all())

    lo, hi = 0, (height - 1) // 2
    while hi > 0 and min(box(hi)[2:]) <= 0:
        hi -= 1
    if ok(lo):
        return box(lo)
    if not ok(hi):
        raise ValueError("the transform leaves no fully valid region to crop; lower the severity")
    while hi - lo > 1:  # ok(hi) and not ok(lo); validity is monotone in the margin
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return box(hi)


def _warp(x: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, border: str) -> tuple[torch.Tensor, Box]:
    """Bilinear resampling: output pixel (i, j) takes the input at centred pixel coords (src_x, src_y)."""
    height, width = x.shape[-2:]
    grid = torch.stack((src_x * (2.0 / width), src_y * (2.0 / height)), dim=-1).to(x.dtype)
    squeeze = x.ndim == 3
    batch = x.unsqueeze(0) if squeeze else x
    grid = grid.unsqueeze(0).expand(batch.shape[0], -1, -1, -1)
    padding_mode = "reflection" if border == "reflect" else "zeros"
    out = nnf.grid_sample(batch, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    out = out.squeeze(0) if squeeze else out
    if border != "crop":
        return out, _full_box(x)
    box = _largest_valid_box(src_x, src_y)
    return tvf.crop(out, *box), box


def _grid_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scale(x: torch.Tensor, severity: float, border: str) -> tuple[torch.Tensor, Box]:
    factor = 1.0 + severity / 100.0
    if factor <= 0:
        raise ValueError(f"scale severity {severity}% gives a non-positive zoom factor")
    gx, gy = _base_grid(*x.shape[-2:], _grid_dtype(x), x.device)
    return _warp(x, gx / factor, gy / factor, border)


def scale(x: torch.Tensor, severity: float, *, border: str = "reflect") -> torch.Tensor:
    """Zoom about the image centre by ``severity`` % (factor ``1 + severity/100``), same output size.

    Positive severity zooms in (the centre ``1/factor`` of the frame fills the output: a centre crop, no
    border pixels for any ``border``); negative zooms out and the uncovered frame is filled per ``border``.
    Bilinear interpolation.
    """
    _check(x, border)
    if severity == 0:
        return x.clone()
    return _scale(x, severity, border)[0]


def _rotate(x: torch.Tensor, severity: float, border: str) -> tuple[torch.Tensor, Box]:
    theta = math.radians(severity)
    cos, sin = math.cos(theta), math.sin(theta)
    gx, gy = _base_grid(*x.shape[-2:], _grid_dtype(x), x.device)
    # clockwise on screen (y down): the output at p shows the input at R(-theta) p
    return _warp(x, cos * gx + sin * gy, -sin * gx + cos * gy, border)


def rotate(x: torch.Tensor, severity: float, *, border: str = "reflect") -> torch.Tensor:
    """Rotation by ``severity`` degrees clockwise (ZS-IQA's ``rotate(-pct)`` direction) about the centre.

    Bilinear interpolation; same as ``torchvision...functional.rotate(x, -severity, BILINEAR)`` with
    ``border="zeros"``. The corners uncovered by the rotation are mirrored (``"reflect"``), black
    (``"zeros"``) or cut off (``"crop"``: the largest centred box of the image's aspect ratio).
    """
    _check(x, border)
    if severity == 0:
        return x.clone()
    return _rotate(x, severity, border)[0]


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 matrix mapping the four points ``src`` onto ``dst`` (float64)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    coeffs = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return np.append(coeffs, 1.0).reshape(3, 3)


def _perspective_corners(height: int, width: int, severity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Output frame corners and the source points they sample (centred pixel coordinates)."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [width / 2.0, height / 2.0]
    gen = torch.Generator().manual_seed(seed)
    angles = torch.rand(4, generator=gen, dtype=torch.float64).numpy() * 2.0 * math.pi
    direction = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    displacement = direction * (severity / 100.0) * np.array([width, height], dtype=np.float64)
    return corners, corners + displacement


def _perspective(x: torch.Tensor, severity: float, seed: int, border: str) -> tuple[torch.Tensor, Box]:
    height, width = x.shape[-2:]
    corners, sources = _perspective_corners(height, width, severity, seed)
    h = torch.as_tensor(_homography(corners, sources), device=x.device)
    gx, gy = _base_grid(height, width, torch.float64, x.device)
    den = h[2, 0] * gx + h[2, 1] * gy + h[2, 2]
    src_x = (h[0, 0] * gx + h[0, 1] * gy + h[0, 2]) / den
    src_y = (h[1, 0] * gx + h[1, 1] * gy + h[1, 2]) / den
    dtype = _grid_dtype(x)
    return _warp(x, src_x.to(dtype), src_y.to(dtype), border)


def perspective(x: torch.Tensor, severity: float, *, seed: int = 0, border: str = "reflect") -> torch.Tensor:
    """Perspective warp: each frame corner samples the input ``severity`` % of the size away.

    Corner ``k``'s source point is displaced by ``(severity/100) * (W cos a_k, H sin a_k)`` with the four
    directions ``a_k`` drawn uniformly from a ``torch.Generator`` seeded with ``seed`` (independent of
    severity, so the warp grows linearly along the severity axis). Bilinear; outside samples per ``border``.
    """
    _check(x, border)
    if severity == 0:
        return x.clone()
    return _perspective(x, severity, seed, border)[0]


@lru_cache(maxsize=32)
def _elastic_field(height: int, width: int, seed: int) -> torch.Tensor:
    """Seeded smooth displacement field (2, H, W), peak absolute component exactly 1 pixel. Cached: the
    49 x 49 float64 smoothing costs about a second, and sweeps reuse one field per image size and seed."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, height, width, generator=gen, dtype=torch.float64)
    radius = math.ceil(3.0 * ELASTIC_SIGMA_PX)
    kernel = 2 * radius + 1
    field = tvf.gaussian_blur(noise.unsqueeze(0), [kernel, kernel], [ELASTIC_SIGMA_PX, ELASTIC_SIGMA_PX])[0]
    return field / field.abs().max()


def _elastic(x: torch.Tensor, severity: float, seed: int, border: str) -> tuple[torch.Tensor, Box]:
    height, width = x.shape[-2:]
    field = _elastic_field(height, width, seed).to(x.device) * severity
    gx, gy = _base_grid(height, width, torch.float64, x.device)
    dtype = _grid_dtype(x)
    return _warp(x, (gx + field[0]).to(dtype), (gy + field[1]).to(dtype), border)


def elastic(x: torch.Tensor, severity: float, *, seed: int = 0, border: str = "reflect") -> torch.Tensor:
    """Elastic deformation with peak displacement ``severity`` pixels.

    The field is white Gaussian noise (two channels, ``torch.Generator`` seeded with ``seed``) smoothed by
    a Gaussian of standard deviation ``ELASTIC_SIGMA_PX`` = 8 px (fixed), then scaled so that its largest
    absolute x or y component equals ``severity`` pixels; one field for the whole batch. The output at
    ``p`` shows the input at ``p + d(p)`` (bilinear); samples outside the frame per ``border``.
    """
    _check(x, border)
    if severity == 0:
        return x.clone()
    return _elastic(x, severity, seed, border)[0]


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformSpec:
    """One geometric transform: its box-returning implementation, severity unit and default grid."""

    name: str
    impl: Callable[[torch.Tensor, float, int, str], tuple[torch.Tensor, Box]]
    public: Callable[..., torch.Tensor]
    unit: str
    severities: tuple[float, ...]
    seeded: bool


GEOMETRIC_TRANSFORMS: dict[str, TransformSpec] = {
    "translation": TransformSpec(
        "translation", lambda x, s, seed, b: _translate(x, s, b), translate,
        "% of image width (horizontal shift, whole pixels, ceil)", (0, 1, 2, 3, 4, 5), False,
    ),
    "scale": TransformSpec(
        "scale", lambda x, s, seed, b: _scale(x, s, b), scale,
        "% zoom about the centre (factor 1 + s/100)", (0, 1, 2, 3, 4, 5), False,
    ),
    "rotation": TransformSpec(
        "rotation", lambda x, s, seed, b: _rotate(x, s, b), rotate,
        "degrees clockwise", (0, 1, 2, 3, 4, 5), False,
    ),
    "perspective": TransformSpec(
        "perspective", lambda x, s, seed, b: _perspective(x, s, seed, b), perspective,
        "% of image size (corner displacement)", (0, 1, 2, 3, 4, 5), True,
    ),
    "elastic": TransformSpec(
        "elastic", lambda x, s, seed, b: _elastic(x, s, seed, b), elastic,
        f"pixels (peak displacement; smoothing sigma {ELASTIC_SIGMA_PX:g} px)", (0, 1, 2, 3, 4, 5), True,
    ),
}


def _spec(name: str) -> TransformSpec:
    try:
        return GEOMETRIC_TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; expected one of {sorted(GEOMETRIC_TRANSFORMS)}") from None


def apply_transform(
    name: str, x: torch.Tensor, severity: float, seed: int = 0, border: str = "reflect"
) -> torch.Tensor:
    """Apply the registered transform ``name`` at ``severity`` (unit: ``GEOMETRIC_TRANSFORMS[name].unit``).

    ``seed`` is used by the seeded transforms (perspective, elastic) and ignored by the others.
    With ``border="crop"`` the output is smaller; use :func:`apply_transform_pair` to crop the reference too.
    """
    spec = _spec(name)
    _check(x, border)
    if severity == 0:
        return x.clone()
    return spec.impl(x, severity, seed, border)[0]


def apply_transform_pair(
    name: str, ref: torch.Tensor, dist: torch.Tensor, severity: float, seed: int = 0, border: str = "reflect"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transform the distorted image; return ``(reference, transformed distorted)`` ready to be compared.

    The reference is left untouched, except with ``border="crop"`` where it is cut to the same box as the
    transformed distorted image (for translation: ``ref[..., :W-s]`` with ``dist[..., s:]``, the ZS-IQA
    protocol). Both tensors must have the same spatial size.
    """
    if ref.shape[-2:] != dist.shape[-2:]:
        raise ValueError(f"reference {tuple(ref.shape)} and distorted {tuple(dist.shape)} differ in size")
    spec = _spec(name)
    _check(dist, border)
    if severity == 0:
        return ref.clone(), dist.clone()
    out, box = spec.impl(dist, severity, seed, border)
    if border == "crop":
        return tvf.crop(ref, *box), out
    return ref.clone(), out
