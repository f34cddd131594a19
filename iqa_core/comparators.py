"""Comparators: how two images' backbone taps become one score, independent of the backbone.

A comparator turns the taps of the distorted image and of the reference (lists of tensors, one per tap, in
the same order) into one value per image. Taps come in three shapes: (B, C, H, W) feature maps,
(B, T, D) token sequences and (B, E) embeddings; each comparator documents what it does with each.
Combined with any backbone of :mod:`iqa_core.backbones` through :class:`iqa_core.deep_features.DeepFeatureMetric`.

Registered here (generic, no paper package needed):

============== ===== ============================================================================================
name           best  per tap, then over taps
============== ===== ============================================================================================
unit-l2        low   LPIPS without learned heads: channels unit-normalised, squared difference summed over channels,
                     spatial mean; summed over taps
cos-channel    low   1 - cosine of the channel vectors at each position, spatial mean; summed over taps
============== ===== ============================================================================================

The packages register theirs: ``lpips``, ``dists``, ``dists-uniform`` (iqa_core.baselines), ``gram-ssim`` and
``gram-ssim-lite`` (deepssim), ``deepwsd``/``deepjsd``/``deepskld`` (distribution_measures) and ``l2``, ``cos``,
``wsd``, ``jsd``, ``skld``, ``swd`` (zs_iqa).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from iqa_core.backbones import TapRequirement
from iqa_core.registry import Registry

__all__ = ["Comparator", "ComparatorInfo", "register_comparator", "create_comparator", "list_comparators",
           "comparator_info", "mean_of", "as_channel_map", "unit_normalize", "unit_channel_maps", "UnitL2",
           "CosineChannel"]

class Comparator(nn.Module):
    """Base class. ``prepare`` maps one image's taps to what ``compare`` needs (it can be computed once for a
    reference and reused); ``compare`` returns (B,) scores. Batches of one broadcast against batches of B."""

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False
    #: whether the two images' taps must have the same shape (False: only per-channel statistics are compared)
    requires_same_size: ClassVar[bool] = True
    #: what each tap's spatial size must allow (it sets the metric's smallest image, iqa_core.backbones)
    tap_requirement: ClassVar[TapRequirement] = TapRequirement()

    def bind(self, backbone: str, taps: Sequence[str]) -> None:
        """Called once with the backbone name and tap names (comparators with per-tap parameters use it)."""

    def prepare(self, taps: list[torch.Tensor]) -> Any:
        return taps

    def compare(self, dist: Any, ref: Any) -> torch.Tensor:
        raise NotImplementedError

    def compare_loss(self, dist: Any, ref: Any) -> torch.Tensor:
        """The training-loss form of :meth:`compare` (lower is better): the score of lower-is-better comparators,
        1 - score otherwise; comparators whose loss is another quantity override it."""
        score = self.compare(dist, ref)
        return 1 - score if self.higher_is_better else score

    #: whether :meth:`prepare` is a sum over positions, so that tiles' :meth:`partial_sums` add up to it
    additive: ClassVar[bool] = False

    def partial_sums(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The per-position sums :meth:`prepare` is made of (additive comparators)."""
        raise NotImplementedError(f"{self.name} is not a sum over positions")

    def finish(self, sums: list[torch.Tensor], positions: list[int]) -> Any:
        """:meth:`prepare`'s value from the summed :meth:`partial_sums` over ``positions`` positions per tap."""
        raise NotImplementedError(f"{self.name} is not a sum over positions")

    def forward(self, dist_taps: list[torch.Tensor], ref_taps: list[torch.Tensor]) -> torch.Tensor:
        return self.compare(self.prepare(dist_taps), self.prepare(ref_taps))

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


@dataclass(frozen=True)
class ComparatorInfo:
    name: str
    factory: Callable[..., Comparator]
    higher_is_better: bool
    description: str


_REGISTRY: Registry[ComparatorInfo] = Registry("comparator")


def register_comparator(name: str, description: str = "") -> Callable[[type], type]:
    """Class decorator registering a :class:`Comparator` subclass under ``name``."""

    def decorate(cls: type) -> type:
        cls.name = name
        doc = description or (cls.__doc__ or "").strip().splitlines()[0]
        _REGISTRY.add(name, ComparatorInfo(name, cls, cls.higher_is_better, doc))
        return cls

    return decorate


def list_comparators() -> list[str]:
    return _REGISTRY.names()


def comparator_info(name: str) -> ComparatorInfo:
    return _REGISTRY.get(name)


def create_comparator(name: str, **kwargs: Any) -> Comparator:
    return comparator_info(name).factory(**kwargs)


def mean_of(scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean of per-image score tensors (over taps or windows); one tensor is returned as it is (a mean of one
    value is that value, without the stack)."""
    return scores[0] if len(scores) == 1 else torch.stack(list(scores)).mean(0)


def as_channel_map(tap: torch.Tensor) -> torch.Tensor:
    """Any tap as (B, C, N) channel vectors at N positions: maps (B,C,H,W) -> (B,C,HW); tokens (B,T,D) -> (B,D,T)
    (each token a position, its D features the channels); embeddings (B,E) -> (B,E,1)."""
    if tap.dim() == 4:
        return tap.flatten(2)
    if tap.dim() == 3:
        return tap.transpose(1, 2)
    if tap.dim() == 2:
        return tap.unsqueeze(-1)
    raise ValueError(f"a tap must be (B,C,H,W), (B,T,D) or (B,E), got shape {tuple(tap.shape)}")


#: LPIPS's normalize_tensor eps (official code)
UNIT_EPS = 1e-10


def unit_normalize(features: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Each position's feature vector divided by its norm + 1e-10 (LPIPS's normalize_tensor).

    vector_norm rather than sqrt(sum of squares): the same value, and a zero (not NaN) gradient where a
    location's features are all zero.
    """
    return features / (torch.linalg.vector_norm(features, dim=dim, keepdim=True) + UNIT_EPS)


def unit_channel_maps(taps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every tap as (B, C, N) channel vectors, each unit-normalised."""
    return [unit_normalize(as_channel_map(t), dim=1) for t in taps]


@register_comparator("unit-l2", "LPIPS without learned heads: unit-normalised channels, squared difference")
class UnitL2(Comparator):
    """sum_taps mean_positions sum_channels (f_d/|f_d| - f_r/|f_r|)^2: LPIPS with all head weights 1."""

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return unit_channel_maps(taps)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum(((d - r) ** 2).sum(1).mean(-1) for d, r in zip(dist, ref, strict=True))


@register_comparator("cos-channel", "1 - cosine similarity of the channel vectors at each position")
class CosineChannel(Comparator):
    """sum_taps mean_positions (1 - cos(f_d, f_r)) with the cosine over channels (over D for tokens)."""

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return unit_channel_maps(taps)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum((1 - (d * r).sum(1)).mean(-1) for d, r in zip(dist, ref, strict=True))
