"""Input checks shared by every metric.

Each check raises :class:`IQAInputError` (a ``ValueError``) whose message names the
argument and the problem, so that a notebook user sees at once what to fix.
"""

from __future__ import annotations

import torch

__all__ = ["IQAInputError", "DeviceError", "check_image", "check_pair", "check_mask", "resolve_device"]

#: Absolute slack on the [0, 1] range check: values produced by resampling or by an
#: optimiser step can overshoot by float noise; 0..255 images overshoot by far more.
RANGE_TOLERANCE = 1e-3


class IQAInputError(ValueError):
    """An image or map given to a metric has the wrong type, shape, range or size."""


class DeviceError(ValueError):
    """A device that does not exist or is not available on this machine."""


def resolve_device(spec: str | torch.device) -> torch.device:
    """``spec`` as a torch device that exists here, or :class:`DeviceError` saying what to use instead."""
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {str(spec)!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(spec)!r}: CUDA is not available on this machine "
                              "(torch.cuda.is_available() is False); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(spec)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(spec)!r}: MPS is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {str(spec)!r} is not supported here: use cpu, cuda, cuda:N or mps")
    return device


def check_image(x: object, name: str = "image", min_size: int = 1) -> torch.Tensor:
    """Validate one batch of RGB images and return it as a (B, 3, H, W) float tensor.

    A single (3, H, W) image is promoted to a batch of one.
    """
    if not isinstance(x, torch.Tensor):
        raise IQAInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}; "
                            "use iqa_core.load_image(path) to read a file")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise IQAInputError(f"{name}: expected shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise IQAInputError(f"{name}: expected a float tensor with values in [0, 1], got dtype {x.dtype}; "
                            "convert uint8 images with x.float() / 255")
    if x.shape[1] != 3:
        raise IQAInputError(f"{name}: expected 3 (RGB) channels, got {x.shape[1]} in shape {tuple(x.shape)}; "
                            "grayscale and RGBA files are converted by load_image, tensors must be RGB")
    if x.numel() == 0:
        raise IQAInputError(f"{name}: empty tensor of shape {tuple(x.shape)}")
    _check_finite(x, name)
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = " (it looks like 0..255 values: divide by 255)" if hi > 2 else ""
        raise IQAInputError(f"{name}: values must lie in [0, 1], found min {lo:.4g} and max {hi:.4g}{hint}")
    h, w = x.shape[-2:]
    if min(h, w) < min_size:
        raise IQAInputError(f"{name}: image of {h}x{w} pixels is too small; this metric needs at least "
                            f"{min_size}x{min_size} pixels for the deepest feature tap of its backbone")
    return x


def check_pair(dist: object, ref: object, min_size: int = 1,
               same_size: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (dist, ref) pair; ``ref`` may hold one image for a whole batch of ``dist``."""
    dist = check_image(dist, "dist", min_size)
    ref = check_image(ref, "ref", min_size)
    if ref.shape[0] not in (1, dist.shape[0]):
        raise IQAInputError(f"batch sizes differ: dist has {dist.shape[0]} images, ref has {ref.shape[0]} "
                            "(ref may also hold a single image used for every dist)")
    if same_size and dist.shape[-2:] != ref.shape[-2:]:
        raise IQAInputError(f"this metric needs dist and ref of the same size, got dist "
                            f"{tuple(dist.shape[-2:])} and ref {tuple(ref.shape[-2:])}")
    return dist, ref


def check_mask(mask: object, image: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Validate a per-pixel map for ``image`` and return it as (B, 1, H, W) float."""
    if not isinstance(mask, torch.Tensor):
        raise IQAInputError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise IQAInputError(f"{name}: expected shape (B, 1, H, W), (B, H, W) or (H, W), got {tuple(mask.shape)}")
    if mask.shape[-2:] != image.shape[-2:]:
        raise IQAInputError(f"{name}: map of size {tuple(mask.shape[-2:])} does not match its image "
                            f"of size {tuple(image.shape[-2:])}")
    if mask.shape[0] not in (1, image.shape[0]):
        raise IQAInputError(f"{name}: {mask.shape[0]} maps given for {image.shape[0]} images")
    mask = mask.to(dtype=image.dtype if image.is_floating_point() else torch.float32)
    _check_finite(mask, name)
    return mask


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        raise IQAInputError(f"{name}: contains {n_bad} NaN or infinite values")
