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
lpips          low   the same weighted by LPIPS v0.1's learned linear heads (VGG16 and AlexNet taps only)
cos-channel    low   1 - cosine of the channel vectors at each position, spatial mean; summed over taps
dists-uniform  low   DISTS's texture (mean) and structure terms with uniform weights over all channels of all taps
============== ===== ============================================================================================

The paper packages register theirs: ``gram-ssim`` (deepssim), ``deepwsd``/``deepjsd``/``deepskld``
(distribution_measures) and ``l2``, ``cos``, ``wsd``, ``jsd``, ``skld``, ``swd`` (zs_iqa).
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
           "comparator_info", "as_channel_map", "UnitL2", "LPIPSHeads", "CosineChannel", "DISTSUniform"]

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


def _unit_normalize(taps: list[torch.Tensor]) -> list[torch.Tensor]:
    from iqa_core.baselines import unit_normalize

    return [unit_normalize(as_channel_map(t), dim=1) for t in taps]


@register_comparator("unit-l2", "LPIPS without learned heads: unit-normalised channels, squared difference")
class UnitL2(Comparator):
    """sum_taps mean_positions sum_channels (f_d/|f_d| - f_r/|f_r|)^2: LPIPS with all head weights 1."""

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return _unit_normalize(taps)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum(((d - r) ** 2).sum(1).mean(-1) for d, r in zip(dist, ref, strict=True))


@register_comparator("lpips", "LPIPS v0.1 learned linear heads on unit-normalised channels (VGG16, AlexNet taps)")
class LPIPSHeads(UnitL2):
    """LPIPS v0.1: the squared differences of :class:`UnitL2` weighted per channel by the learned heads. On
    the five LPIPS taps of VGG16/AlexNet (ImageNet-normalised input) it equals ``lpips-vgg``/``lpips-alex``."""

    #: backbone -> (lpips net name, the taps that carry heads, in the heads' order)
    NETS = {"vgg16": "vgg", "alexnet": "alex"}

    def __init__(self, heads: Any = None) -> None:
        super().__init__()
        self.heads_source = heads
        self.weights: list[torch.Tensor] = []

    def bind(self, backbone: str, taps: Sequence[str]) -> None:
        from iqa_core.baselines import LPIPS_TAPS, load_lpips_heads

        net = self.NETS.get(backbone)
        if net is None:
            raise KeyError(f"LPIPS heads exist for {sorted(self.NETS)} only, not {backbone!r}")
        head_taps = LPIPS_TAPS[net][1]
        missing = [t for t in taps if t not in head_taps]
        if missing:
            raise KeyError(f"LPIPS has no head for {backbone} tap(s) {missing}; heads exist for {list(head_taps)}")
        heads = load_lpips_heads(net, self.heads_source)
        for k, tap in enumerate(taps):
            self.register_buffer(f"lin{k}", heads[head_taps.index(tap)].flatten(), persistent=False)
        self.n_taps = len(taps)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for k, (d, r) in enumerate(zip(dist, ref, strict=True)):
            w = getattr(self, f"lin{k}").to(d.dtype)
            total = total + (((d - r) ** 2) * w[:, None]).sum(1).mean(-1)
        return total


@register_comparator("cos-channel", "1 - cosine similarity of the channel vectors at each position")
class CosineChannel(Comparator):
    """sum_taps mean_positions (1 - cos(f_d, f_r)) with the cosine over channels (over D for tokens)."""

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return _unit_normalize(taps)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum((1 - (d * r).sum(1)).mean(-1) for d, r in zip(dist, ref, strict=True))


@register_comparator("dists-uniform", "DISTS-style texture + structure terms with uniform weights")
class DISTSUniform(Comparator):
    """1 - mean over every channel of every tap of (l + s) / 2, DISTS's terms (c1 = c2 = 1e-6) with the learned
    alpha/beta replaced by uniform weights. Tokens count as channels D at T positions."""

    requires_same_size = False
    tap_requirement = TapRequirement(min_positions=2)  # statistics over positions

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [as_channel_map(t).unsqueeze(-1) for t in taps]  # (B, C, N, 1) for dists_terms

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        from iqa_core.baselines import dists_terms

        l_term, s_term = dists_terms(dist, ref)
        return 1 - (l_term + s_term).mean(1) / 2
