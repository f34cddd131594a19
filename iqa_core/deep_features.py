"""Any backbone x any comparator: one metric class composing a tap backbone and a comparator.

``DeepFeatureMetric("vgg16", "wsd", taps=["relu3_3"])`` scores images with the ZS-IQA Wasserstein distance on
one VGG16 tap; ``DeepFeatureMetric("dinov1", "l2")`` is ZS-IQA's DINO metric. Backbones with a fixed input side
(``backbone.window``, the ViTs' 224) see the image in sliding windows placed by ZS-IQA's index rule
(:func:`window_starts`); each window is scored on its own and the scores are averaged, as the official code
does. Other backbones see the whole image at native resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from iqa_core.backbones import TapBackbone, create_backbone
from iqa_core.comparators import Comparator, comparator_info, create_comparator
from iqa_core.metric import FeatureMetric
from iqa_core.validation import IQAInputError
from iqa_core.weights import WeightsSource

__all__ = ["DeepFeatureMetric", "TapGrid", "windowed_taps", "window_starts", "window_grid", "STRIDE"]

STRIDE = 200  # ZS-IQA's sliding-window stride (224-pixel windows)


def window_starts(length: int, window: int = 224, stride: int = STRIDE) -> list[int]:
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


def window_grid(height: int, width: int, window: int = 224, stride: int = STRIDE) -> list[tuple[int, int]]:
    """(top, left) of every window, rows outer, as the official double loop."""
    return [(y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)]


def windowed_taps(backbone: TapBackbone, x: torch.Tensor, taps: Sequence[str], stride: int = STRIDE,
                  windows_per_pass: int = 16) -> list[list[torch.Tensor]]:
    """``backbone``'s taps of ``x``, one list of (B, ...) tensors per window (one window for backbones without a
    fixed input side). Windows go through the backbone ``windows_per_pass`` at a time, stacked in the batch."""
    window = backbone.window
    if window is None:
        return [backbone(x, taps)]
    grid = window_grid(x.shape[-2], x.shape[-1], window, stride)
    per_window: list[list[torch.Tensor]] = []
    b = x.shape[0]
    for start in range(0, len(grid), windows_per_pass):
        chunk = grid[start:start + windows_per_pass]
        crops = torch.cat([x[:, :, top:top + window, left:left + window] for top, left in chunk])
        outs = backbone(crops, taps)
        per_window += [[t[k * b:(k + 1) * b] for t in outs] for k in range(len(chunk))]
    return per_window


class DeepFeatureMetric(FeatureMetric):
    """A comparator applied to a backbone's taps (per window for windowed backbones, then averaged).

    ``backbone``/``comparator``: registered names or built instances. ``taps``: the backbone's taps to compare
    (default: all its intermediate taps). ``windows_per_pass`` bounds how many windows go through the backbone
    at once. The score's direction is the comparator's; :meth:`loss` is the score (lower-is-better
    comparators) or 1 - score.
    """

    paper = "composition of a tap backbone and a comparator (iqa_core.deep_features)"

    def __init__(self, backbone: str | TapBackbone, comparator: str | Comparator, taps: Sequence[str] | None = None,
                 weights: WeightsSource = None, stride: int = STRIDE, windows_per_pass: int = 16,
                 backbone_kwargs: dict[str, Any] | None = None, comparator_kwargs: dict[str, Any] | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, weights=weights, **(backbone_kwargs or {}))
        if isinstance(comparator, str):
            comparator = create_comparator(comparator, **(comparator_kwargs or {}))
        self.backbone = backbone
        self.tap_names = backbone.check_taps(list(taps) if taps is not None else None)
        self.comparator = comparator
        comparator.bind(backbone.name, self.tap_names)
        self.higher_is_better = comparator.higher_is_better
        self.requires_same_size = backbone.window is not None or comparator.requires_same_size
        self.min_size = backbone.min_size_for(self.tap_names, comparator.tap_requirement)
        self.stride = stride
        self.windows_per_pass = windows_per_pass
        self.set_dtype(dtype)

    def extra_repr(self) -> str:
        return f"backbone={self.backbone.name!r}, comparator={self.comparator.name!r}, taps={self.tap_names}"

    def tap_outputs(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """The requested taps, per window: a list (one entry per window) of lists of (B, ...) taps."""
        return windowed_taps(self.backbone, x, self.tap_names, self.stride, self.windows_per_pass)

    def features(self, x: torch.Tensor, **kwargs: Any) -> list[Any]:
        return [self.comparator.prepare(taps) for taps in self.tap_outputs(x)]

    def compare(self, dist_features: list[Any], ref_features: list[Any]) -> torch.Tensor:
        if len(dist_features) != len(ref_features):
            raise IQAInputError("the distorted image and the reference give different numbers of windows; "
                                "windowed backbones need images of the same size")
        scores = [self.comparator.compare(d, r) for d, r in zip(dist_features, ref_features, strict=True)]
        return torch.stack(scores).mean(0)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        value = self(dist, ref)
        return 1 - value if self.higher_is_better else value


class TapGrid(nn.Module):
    """Every (tap, comparator) cell of one backbone, each tap compared on its own, from ONE backbone pass per image.

    ``grid.tap_outputs(x)`` runs the backbone (per window) once; ``grid.score_outputs(dist_outs, ref_outs)``
    (or ``grid.score_prepared(dist_outs, grid.prepare(ref_outs))``, the reference prepared once for many pairs)
    returns ``{(tap, comparator): (B,) scores}``, equal to ``DeepFeatureMetric(backbone, comparator, taps=[tap])``
    for each cell. Cells a comparator cannot score (e.g. LPIPS heads on a tap that has none) are left out and
    listed in ``grid.skipped`` with the reason.
    """

    def __init__(self, backbone: TapBackbone, taps: Sequence[str] | None, comparators: Sequence[str],
                 stride: int = STRIDE, windows_per_pass: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.tap_names = backbone.check_taps(list(taps) if taps is not None else None)
        self.stride, self.windows_per_pass = stride, windows_per_pass
        self.cells: dict[tuple[str, str], Comparator] = {}
        self.skipped: dict[tuple[str, str], str] = {}
        self._modules_by_cell = nn.ModuleDict()
        for tap in self.tap_names:
            for name in comparators:
                comparator = create_comparator(name)
                try:
                    comparator.bind(backbone.name, [tap])
                except (KeyError, FileNotFoundError) as err:
                    self.skipped[(tap, name)] = str(err.args[0] if err.args else err).splitlines()[0]
                    continue
                self.cells[(tap, name)] = comparator
                self._modules_by_cell[f"{tap}|{name}"] = comparator

    @staticmethod
    def higher_is_better(comparator: str) -> bool:
        return comparator_info(comparator).higher_is_better

    def tap_outputs(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        outs = windowed_taps(self.backbone, x, self.tap_names, self.stride, self.windows_per_pass)
        return [dict(zip(self.tap_names, window, strict=True)) for window in outs]

    def prepare(self, outs: list[dict[str, torch.Tensor]], errors: dict[tuple[str, str], str] | None = None
                ) -> dict[tuple[str, str], list[Any]]:
        """Each cell's comparator ``prepare`` of one image's taps (per window), reusable for many pairs.

        With ``errors`` (a dict), a cell whose comparator refuses the taps (:class:`IQAInputError`, e.g. a tap too
        small for the distribution measures' 8x8 windows) is left out and its reason stored there; without, it
        raises."""
        prepared = {}
        for cell, comparator in self.cells.items():
            try:
                prepared[cell] = [comparator.prepare([window[cell[0]]]) for window in outs]
            except IQAInputError as err:
                if errors is None:
                    raise
                errors[cell] = str(err).splitlines()[0]
        return prepared

    def score_prepared(self, dist_outs: list[dict[str, torch.Tensor]], ref_prepared: dict[tuple[str, str], list[Any]],
                       errors: dict[tuple[str, str], str] | None = None) -> dict[tuple[str, str], torch.Tensor]:
        """``{cell: (B,) scores}`` of distorted taps against a reference prepared once (:meth:`prepare`); only the
        cells in ``ref_prepared`` are scored, ``errors`` as in :meth:`prepare`."""
        if any(len(refs) != len(dist_outs) for refs in ref_prepared.values()):
            raise IQAInputError("the two images give different numbers of windows; use images of the same size")
        scores = {}
        for cell, refs in ref_prepared.items():
            comparator = self.cells[cell]
            try:
                per_window = [comparator.compare(comparator.prepare([d[cell[0]]]), r)
                              for d, r in zip(dist_outs, refs, strict=True)]
            except IQAInputError as err:
                if errors is None:
                    raise
                errors[cell] = str(err).splitlines()[0]
                continue
            scores[cell] = torch.stack(per_window).mean(0)
        return scores

    def score_outputs(self, dist_outs: list[dict[str, torch.Tensor]], ref_outs: list[dict[str, torch.Tensor]]
                      ) -> dict[tuple[str, str], torch.Tensor]:
        return self.score_prepared(dist_outs, self.prepare(ref_outs))

    def forward(self, dist: torch.Tensor, ref: torch.Tensor) -> dict[tuple[str, str], torch.Tensor]:
        return self.score_outputs(self.tap_outputs(dist), self.tap_outputs(ref))
