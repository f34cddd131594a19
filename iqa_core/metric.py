"""The one metric interface and the registry every experiment iterates over.

A metric is an ``nn.Module`` called as ``metric(dist, ref)`` on float RGB tensors in
[0, 1] of shape (B, 3, H, W); it returns B scores, one per image. ``ref`` may hold one
image for the whole batch. Class attributes declare the direction of the score, the
paper it comes from and whether dist and ref must have the same size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from iqa_core.registry import Registry
from iqa_core.validation import IQAInputError, check_pair

__all__ = ["Metric", "FeatureMetric", "MetricInfo", "register_metric", "create_metric", "list_metrics",
           "metric_info", "create_available_metrics"]

class Metric(nn.Module):
    """Base class: validation, device and dtype placement and metadata; subclasses implement :meth:`score`.

    Inputs of any float dtype (float16, bfloat16, float32, float64) are cast to the metric's own dtype, float32
    unless the metric was built with ``dtype=`` or converted with ``.to(dtype)`` / ``.double()``: then the whole
    computation, backbone included, runs in that dtype, and so do the scores.
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    requires_same_size: ClassVar[bool] = False
    #: Smallest image side the metric accepts (set from the deepest backbone tap).
    min_size: int = 1

    def __init__(self) -> None:
        super().__init__()
        # An empty buffer that .to() moves and casts like every other: the metric's device and dtype, also for
        # metrics without parameters (PSNR, SSIM), for which .to("cuda") would otherwise change nothing.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    def forward(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        dist, ref = self.prepare_pair(dist, ref)
        return self.score(dist, ref, **kwargs)

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True) -> Metric:
        """Metrics stay in eval mode: their backbones' BatchNorm must use running statistics and
        stochastic depth must stay off, also when a metric is part of a model being trained."""
        return super().train(False)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Per-image training loss (lower is better), differentiable w.r.t. ``dist``."""
        raise NotImplementedError(f"{self.name or type(self).__name__} has no loss form")

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the metric computes in (float32 unless built with ``dtype=`` or converted)."""
        return self._anchor.dtype

    def set_dtype(self, dtype: torch.dtype | None) -> Metric:
        """Convert the whole metric (``None``: keep float32); constructors taking ``dtype=`` end with this."""
        if dtype is not None:
            if not dtype.is_floating_point:
                raise IQAInputError(f"dtype must be a floating-point type, got {dtype}")
            self.to(dtype)
        return self

    def prepare_pair(self, dist: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the pair and move it to the metric's device and dtype (gradients flow through the move)."""
        dist, ref = check_pair(dist, ref, min_size=self.min_size, same_size=self.requires_same_size)
        return dist.to(self.device, self.dtype), ref.to(self.device, self.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, higher_is_better={self.higher_is_better}"


class FeatureMetric(Metric):
    """A metric that compares one representation per image.

    The reference's representation can be computed once with :meth:`reference_features`
    and reused for many distorted images with :meth:`score_against`.
    """

    def features(self, x: torch.Tensor, **kwargs: Any) -> Any:
        raise NotImplementedError

    def compare(self, dist_features: Any, ref_features: Any) -> torch.Tensor:
        raise NotImplementedError

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.compare(self.features(dist), self.features(ref))

    def reference_features(self, ref: torch.Tensor, **kwargs: Any) -> Any:
        ref, _ = self.prepare_pair(ref, ref)
        with torch.no_grad():
            return self.features(ref, **kwargs)

    def score_against(self, dist: torch.Tensor, ref_features: Any, **kwargs: Any) -> torch.Tensor:
        dist, _ = self.prepare_pair(dist, dist)
        return self.compare(self.features(dist, **kwargs), ref_features)


@dataclass(frozen=True)
class MetricInfo:
    name: str
    factory: Callable[..., Metric]
    higher_is_better: bool
    paper: str
    requires_same_size: bool
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    #: deep metrics: the iqa_core.deep_features.Preset (backbone, taps, comparator, options, output) it runs
    preset: Any = None

    def describe(self) -> dict[str, Any]:
        """Plain values for listings: direction, paper, size rule and, for deep metrics, the preset."""
        out = {"name": self.name, "higher_is_better": self.higher_is_better, "paper": self.paper,
               "requires_same_size": self.requires_same_size, "description": self.description}
        if self.preset is not None:
            out.update(self.preset.describe())
        return out


_REGISTRY: Registry[MetricInfo] = Registry("metric")


def register_metric(name: str, description: str = "", **defaults: Any) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name``; ``defaults`` are constructor arguments."""

    def decorate(cls: type) -> type:
        doc = description or (cls.__doc__ or "").strip().splitlines()[0]
        _REGISTRY.add(name, MetricInfo(name, cls, cls.higher_is_better, cls.paper, cls.requires_same_size,
                                       doc, dict(defaults), getattr(cls, "preset", None)))
        return cls

    return decorate


def list_metrics() -> list[str]:
    """Names of every registered metric, sorted."""
    return _REGISTRY.names()


def metric_info(name: str) -> MetricInfo:
    return _REGISTRY.get(name)


def create_metric(name: str, **kwargs: Any) -> Metric:
    """Build a registered metric, e.g. ``create_metric("deepssim", weights="vgg16.pth")``."""
    info = metric_info(name)
    metric = info.factory(**{**info.defaults, **kwargs})
    return metric


def create_available_metrics(names: list[str], device: str | torch.device = "cpu") -> tuple[dict[str, Metric],
                                                                                          dict[str, str]]:
    """Build every named metric whose weights resolve, on ``device``, in eval mode.

    Returns ``(metrics, skipped)``: ``skipped`` maps each metric that could not be built to the first line
    of the reason (missing weights), so that experiments can report it. Unknown names still raise.
    """
    from iqa_core.weights import WeightsNotFoundError

    metrics, skipped = {}, {}
    for name in names:
        try:
            metrics[name] = create_metric(name).to(device).eval()
        except WeightsNotFoundError as err:
            skipped[name] = str(err).splitlines()[0]
    return metrics, skipped
