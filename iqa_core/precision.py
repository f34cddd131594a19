"""The precision policy of scoring runs: ``fp64``, ``fp32`` (default), ``tf32``, ``bf16``, ``fp16``.

- ``fp32``: exact float32. PyTorch lets cuDNN use TF32 for convolutions by default (10-bit mantissa on Ampere and
  later GPUs); while scoring, TF32 is off for convolutions and matmuls, and the flags are restored afterwards.
- ``fp64``: the whole metric, backbone included, in float64 (DeepSSIM's recommended MATLAB version computes in
  double).
- ``tf32``: float32 with TF32 convolutions and matmuls allowed (GPU only; on the CPU it equals fp32).
- ``bf16`` / ``fp16``: the backbone's forward under ``torch.autocast`` with that dtype, its outputs cast back to
  float32, so the metric's own statistics (Gram matrices, distances, block statistics) stay in float32 with TF32 off.
  The backbone is the metric's ``backbone`` module, which every deep metric of the registry has (DeepSSIM-SC's
  saliency mask goes through it too); a metric whose scoring does not call it is refused (:func:`check_autocast_used`).

The measured deviation of each mode from fp32 is in the README ("Scoring datasets at scale").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "PrecisionError", "check_precision", "apply_precision",
           "precision_scope", "check_autocast_used", "precision_of_dtype"]

PRECISIONS = ("fp64", "fp32", "tf32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CALLS = "_iqa_autocast_calls"


class PrecisionError(ValueError):
    """A precision that does not exist, or that a metric cannot run in."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def precision_of_dtype(dtype: torch.dtype | None) -> str:
    """The precision a metric built with ``dtype=`` computes in (the CLI's ``--dtype``)."""
    return "fp64" if dtype == torch.float64 else DEFAULT_PRECISION


def _as_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(v) for v in value)
    return value


def _autocast_forward(module: nn.Module, dtype: torch.dtype) -> None:
    """Make ``module``'s forward run under autocast with ``dtype`` and return float32 tensors."""
    inner = type(module).forward.__get__(module)
    setattr(module, _CALLS, 0)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        setattr(module, _CALLS, getattr(module, _CALLS) + 1)
        with torch.autocast(x.device.type, dtype=dtype):
            out = inner(x, *args, **kwargs)
        return _as_float32(out)

    module.forward = forward


def apply_precision(metric: nn.Module, precision: str) -> nn.Module:
    """Convert ``metric`` (in place) for ``precision``; run its calls inside :func:`precision_scope`."""
    check_precision(precision)
    if precision == "fp64":
        return metric.to(torch.float64)
    metric = metric.to(torch.float32)
    if precision in AUTOCAST_DTYPES:
        backbone = getattr(metric, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise PrecisionError(f"{getattr(metric, 'name', '') or type(metric).__name__} has no backbone to run in "
                                 f"{precision} (pixel metrics compute in float32); use fp32 or fp64")
        _autocast_forward(backbone, AUTOCAST_DTYPES[precision])
    return metric


def check_autocast_used(metric: nn.Module, precision: str) -> None:
    """After a scoring call in bf16/fp16: the backbone module must have run (else the mode would be a no-op)."""
    if precision in AUTOCAST_DTYPES and getattr(metric.backbone, _CALLS, 0) == 0:
        raise PrecisionError(f"{getattr(metric, 'name', '') or type(metric).__name__} computes its features without "
                             f"calling its backbone module, so {precision} cannot be applied to it; use fp32 or fp64")


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(matmul: bool, conv: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = conv


@contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """TF32 on for ``tf32``, off for every other mode, for convolutions and matmuls; the previous flags after."""
    check_precision(precision)
    before = _tf32_flags()
    allow = precision == "tf32"
    _set_tf32(allow, allow)
    try:
        yield
    finally:
        _set_tf32(*before)
