"""The one path from pixels to a score for every deep metric: a backbone's taps, compared by a comparator.

::

    create_metric("deepssim")  ->  PresetMetric built from its Preset (backbone, taps, comparator, options)
    metric(dist, ref)
      prepare_pair     validation (IQAInputError), device and dtype
      tap_outputs      backbone(x, taps): resize by size? -> normalise -> layers -> the requested taps,
                       per window for backbones with a fixed input side (ViTs), or in tiles (tile=)
      prepare          comparator.prepare(taps): what is compared (Gram matrices, 64-atom columns, ...),
                       computed once for a reference that serves many distorted images
      compare          comparator.compare (the score) or comparator.compare_loss (the training loss),
                       averaged over windows

A :class:`Preset` names the backbone (with its preprocessing options: normalisation, L2 pooling, resizing by the
image size), the taps, the comparator (with its options) and the output form. The paper packages register their
comparators and a presets table; ``DeepFeatureMetric("vgg16", "wsd", taps=["relu3_3"])`` composes any pair
directly, and :class:`TapGrid` scores every (tap, comparator) cell of one backbone from one backbone pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from iqa_core.backbones import TapBackbone, create_backbone
from iqa_core.comparators import Comparator, comparator_info, create_comparator, mean_of
from iqa_core.metric import FeatureMetric, register_metric
from iqa_core.validation import IQAInputError, check_image
from iqa_core.weights import WeightsSource

__all__ = ["Preset", "DeepFeatureMetric", "PresetMetric", "register_preset", "TapGrid", "windowed_taps",
           "OUTPUTS"]

OUTPUTS = ("score", "loss")


@dataclass(frozen=True)
class Preset:
    """A deep metric as data: ``backbone`` (a registered name) built with ``backbone_options``, its ``taps``
    (``None``: the backbone's default taps), ``comparator`` (a registered name) built with ``comparator_options``,
    and the ``output`` a call returns: ``"score"`` (the evaluation score) or ``"loss"`` (the training loss)."""

    backbone: str
    comparator: str
    taps: tuple[str, ...] | None = None
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    comparator_options: Mapping[str, Any] = field(default_factory=dict)
    output: str = "score"

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "backbone_options": dict(self.backbone_options),
                "taps": list(self.taps) if self.taps is not None else "default", "comparator": self.comparator,
                "comparator_options": dict(self.comparator_options), "output": self.output}


def windowed_taps(backbone: TapBackbone, x: torch.Tensor, taps: Sequence[str], stride: int | None = None,
                  windows_per_pass: int = 16, **inputs: Any) -> list[list[torch.Tensor]]:
    """``backbone``'s taps of ``x``, one list of (B, ...) tensors per window: one window for backbones without a
    fixed input side; otherwise the windows of ``backbone.window_grid`` (the ZS-IQA rule for its backbones), which
    go through the backbone ``windows_per_pass`` at a time, stacked in the batch."""
    window = backbone.window
    if window is None:
        return [backbone(x, taps, **inputs)]
    if inputs:
        raise IQAInputError(f"{backbone.name} takes no per-image inputs ({', '.join(inputs)})")
    grid = backbone.window_grid(x.shape[-2], x.shape[-1], stride)
    per_window: list[list[torch.Tensor]] = []
    b = x.shape[0]
    for start in range(0, len(grid), windows_per_pass):
        chunk = grid[start:start + windows_per_pass]
        crops = torch.cat([x[:, :, top:top + window, left:left + window] for top, left in chunk])
        outs = backbone(crops, taps)
        per_window += [[t[k * b:(k + 1) * b] for t in outs] for k in range(len(chunk))]
    return per_window


def tiles(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """Along one side: (crop start, crop end, core start, core end) of each tile. Cores are consecutive runs of
    ``tile`` pixels (the last one shorter); crops add ``halo`` pixels on both sides, clipped to the image. With
    ``tile`` and ``halo`` multiples of the backbone's stride, every crop starts on the stride grid and its features
    are the whole image's, shifted by a whole number of positions."""
    return [(max(0, core - halo), min(length, core + tile + halo), core, min(length, core + tile))
            for core in range(0, length, tile)]


class DeepFeatureMetric(FeatureMetric):
    """A comparator applied to a backbone's taps (per window for windowed backbones, then averaged).

    ``backbone``/``comparator``: registered names or built instances. ``taps``: the backbone's taps to compare
    (default: its default taps). ``stride``: the sliding-window stride of windowed backbones (default: the
    backbone's). ``windows_per_pass`` bounds how many windows go through the backbone at once. ``output``:
    ``"score"`` or ``"loss"`` (what a call returns; :meth:`loss` always gives the loss). ``tile`` (pixels, a
    multiple of the tap's stride): for comparators whose prepared form is a sum over positions (Gram matrices),
    compute it in tiles with a halo covering the receptive field: the same value with bounded memory.
    """

    paper = "composition of a tap backbone and a comparator (iqa_core.deep_features)"

    def __init__(self, backbone: str | TapBackbone, comparator: str | Comparator, taps: Sequence[str] | None = None,
                 weights: WeightsSource = None, stride: int | None = None, windows_per_pass: int = 16,
                 backbone_kwargs: Mapping[str, Any] | None = None, comparator_kwargs: Mapping[str, Any] | None = None,
                 dtype: torch.dtype | None = None, output: str = "score", tile: int | None = None) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, weights=weights, **(backbone_kwargs or {}))
        if isinstance(comparator, str):
            comparator = create_comparator(comparator, **(comparator_kwargs or {}))
        self.backbone = backbone
        self.tap_names = backbone.check_taps(list(taps) if taps is not None else None)
        self.comparator = comparator
        comparator.bind(backbone.name, self.tap_names)
        self.output = output
        self.higher_is_better = comparator.higher_is_better and output == "score"
        self.requires_same_size = backbone.window is not None or comparator.requires_same_size
        self.min_size = backbone.min_size_for(self.tap_names, comparator.tap_requirement)
        self.stride = stride
        self.windows_per_pass = windows_per_pass
        self.tile = self._checked_tile(tile)
        self.set_dtype(dtype)

    def _checked_tile(self, tile: int | None) -> int | None:
        if tile is None:
            return None
        if not self.comparator.additive or self.backbone.window is not None or len(self.tap_names) != 1:
            raise ValueError(f"tile= needs a comparator summed over positions ({self.comparator.name!r} is not) on "
                             "one tap of a backbone without windows")
        stride, _ = self.backbone.tile_geometry(self.tap_names[0])
        if tile < stride or tile % stride:
            raise ValueError(f"tile must be a positive multiple of {stride} pixels, got {tile}")
        return tile

    def extra_repr(self) -> str:
        return (f"backbone={self.backbone.name!r}, comparator={self.comparator.name!r}, taps={self.tap_names}, "
                f"output={self.output!r}")

    def image_inputs(self, x: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        """Per-image inputs of the backbone (DeepSSIM-SC: the conv1_1 mask); none by default."""
        if kwargs:
            raise TypeError(f"{self.name or type(self).__name__} takes no per-image options {sorted(kwargs)}")
        return {}

    def tap_outputs(self, x: torch.Tensor, **kwargs: Any) -> list[list[torch.Tensor]]:
        """The requested taps of ``x``, per window: a list (one entry per window) of lists of (B, ...) taps."""
        return windowed_taps(self.backbone, x, self.tap_names, self.stride, self.windows_per_pass,
                             **self.image_inputs(x, **kwargs))

    def prepare_taps(self, outputs: list[list[torch.Tensor]]) -> list[Any]:
        """The comparator's prepared form of each window's taps."""
        return [self.comparator.prepare(taps) for taps in outputs]

    def features(self, x: torch.Tensor, **kwargs: Any) -> list[Any]:
        if self.tile is not None and max(x.shape[-2:]) > self.tile:
            return [self.tiled_prepare(x, **kwargs)]
        return self.prepare_taps(self.tap_outputs(x, **kwargs))

    def tiled_prepare(self, x: torch.Tensor, **kwargs: Any) -> Any:
        """The comparator's prepared form of the whole image's tap, summed over tiles: each crop is a core plus the
        halo, starts on the stride grid, and contributes only its core's positions."""
        inputs = self.image_inputs(x, **kwargs)
        stride, halo = self.backbone.tile_geometry(self.tap_names[0])
        height, width = x.shape[-2:]
        total, positions = None, 0
        for top, bottom, core_top, core_bottom in tiles(height, self.tile, halo):
            for left, right, core_left, core_right in tiles(width, self.tile, halo):
                crop = (..., slice(top, bottom), slice(left, right))
                crop_inputs = {k: v[crop] if torch.is_tensor(v) else v for k, v in inputs.items()}
                (tap,) = self.backbone(x[crop], self.tap_names, **crop_inputs)
                core = tap[..., (core_top - top) // stride:(core_bottom - top) // stride,
                           (core_left - left) // stride:(core_right - left) // stride]
                part = self.comparator.partial_sums([core])
                total = part if total is None else [t + p for t, p in zip(total, part, strict=True)]
                positions += core.shape[-2] * core.shape[-1]
        return self.comparator.finish(total, [positions])

    def _per_window(self, dist_features: list[Any], ref_features: list[Any], loss: bool) -> torch.Tensor:
        if len(dist_features) != len(ref_features):
            raise IQAInputError("the distorted image and the reference give different numbers of windows; "
                                "windowed backbones need images of the same size")
        compare = self.comparator.compare_loss if loss else self.comparator.compare
        return mean_of([compare(d, r) for d, r in zip(dist_features, ref_features, strict=True)])

    def compare(self, dist_features: list[Any], ref_features: list[Any]) -> torch.Tensor:
        return self._per_window(dist_features, ref_features, loss=self.output == "loss")

    def compare_taps(self, dist_outputs: list[list[torch.Tensor]],
                     ref_outputs: list[list[torch.Tensor]]) -> torch.Tensor:
        """Everything after the backbone (timed on its own by the benchmark)."""
        return self.compare(self.prepare_taps(dist_outputs), self.prepare_taps(ref_outputs))

    def pair_features(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> tuple[list[Any], list[Any]]:
        """Both images' prepared features; options ending in ``_dist`` / ``_ref`` go to that image
        (``saliency_dist=`` -> ``saliency=`` of the distorted image)."""
        own = {"_dist": {}, "_ref": {}}
        for key, value in kwargs.items():
            suffix = key[-5:] if key.endswith("_dist") else key[-4:]
            if suffix not in own:
                raise TypeError(f"{self.name or type(self).__name__}: unknown option {key!r} (per-image options "
                                "end in _dist or _ref)")
            own[suffix][key[:-len(suffix)]] = value
        return self.features(dist, **own["_dist"]), self.features(ref, **own["_ref"])

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.compare(*self.pair_features(dist, ref, **kwargs))

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        dist, ref = self.prepare_pair(dist, ref)
        return self._per_window(*self.pair_features(dist, ref, **kwargs), loss=True)


class PresetMetric(DeepFeatureMetric):
    """A registered deep metric: the one path run with the class's :attr:`preset`. ``taps``, ``stride``,
    ``windows_per_pass``, ``tile``, ``output`` and ``dtype`` as in :class:`DeepFeatureMetric`;
    ``backbone_options`` / ``comparator_options`` update the preset's; ``preset`` replaces the class's (for classes
    covering several presets, e.g. ``LPIPS(net=...)``)."""

    preset: ClassVar[Preset]

    def __init__(self, weights: WeightsSource = None, dtype: torch.dtype | None = None,
                 taps: Sequence[str] | None = None, output: str | None = None, tile: int | None = None,
                 stride: int | None = None, windows_per_pass: int = 16,
                 backbone_options: Mapping[str, Any] | None = None,
                 comparator_options: Mapping[str, Any] | None = None, preset: Preset | None = None) -> None:
        p = preset or self.preset
        super().__init__(p.backbone, p.comparator, taps=taps if taps is not None else p.taps, weights=weights,
                         stride=stride, windows_per_pass=windows_per_pass,
                         backbone_kwargs={**p.backbone_options, **(backbone_options or {})},
                         comparator_kwargs={**p.comparator_options, **(comparator_options or {})},
                         dtype=dtype, output=output or p.output, tile=tile)


def register_preset(name: str, preset: Preset, description: str, paper: str, doc: str = "",
                    base: type[PresetMetric] = PresetMetric, **attributes: Any) -> type[PresetMetric]:
    """Register ``preset`` as the metric ``name``: a :class:`PresetMetric` subclass (of ``base``) whose direction
    and size rule come from the comparator, returned for packages that export it under a class name."""
    info = comparator_info(preset.comparator)
    higher = info.higher_is_better and preset.output == "score"
    cls = type(name.replace("-", "_"), (base,), {
        "__doc__": doc or f"{description}. {'Higher' if higher else 'Lower'} is better.", "name": name,
        "preset": preset, "paper": paper, "higher_is_better": higher,
        "requires_same_size": info.factory.requires_same_size, **attributes})
    return register_metric(name, description=description)(cls)


class TapGrid(nn.Module):
    """Every (tap, comparator) cell of one backbone, each tap compared on its own, from ONE backbone pass per image.

    ``grid.tap_outputs(x)`` validates ``x`` like every metric (:class:`IQAInputError`), then runs the backbone (per
    window) once; ``grid.score_outputs(dist_outs, ref_outs)`` (or ``grid.score_prepared(dist_outs,
    grid.prepare(ref_outs))``, the reference prepared once for many pairs) returns ``{(tap, comparator): (B,)
    scores}``, equal to ``DeepFeatureMetric(backbone, comparator, taps=[tap])`` for each cell: the same backbone
    call, the same comparator objects. Cells a comparator cannot score (e.g. LPIPS heads on a tap that has none)
    are left out and listed in ``grid.skipped`` with the reason.
    """

    def __init__(self, backbone: TapBackbone, taps: Sequence[str] | None, comparators: Sequence[str],
                 stride: int | None = None, windows_per_pass: int = 16) -> None:
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
        #: the smallest image side some cell can score; a cell that needs more refuses its taps in prepare /
        #: score_prepared (IQAInputError, or a reason in ``errors``)
        self.min_size = min([backbone.min_size_for([tap], c.tap_requirement) for (tap, _), c in self.cells.items()]
                            or [1])

    @staticmethod
    def higher_is_better(comparator: str) -> bool:
        return comparator_info(comparator).higher_is_better

    def check(self, x: torch.Tensor, name: str = "image") -> torch.Tensor:
        """``x`` validated as every metric validates its input (:attr:`min_size`), on the backbone's device and
        dtype."""
        x = check_image(x, name, self.min_size)
        anchor = next(iter(self.backbone.parameters()), None)
        if anchor is None:
            anchor = next(iter(self.backbone.buffers()), None)
        return x if anchor is None else x.to(anchor.device, anchor.dtype)

    def tap_outputs(self, x: torch.Tensor, name: str = "image") -> list[dict[str, torch.Tensor]]:
        x = self.check(x, name)
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
            scores[cell] = mean_of(per_window)
        return scores

    def score_outputs(self, dist_outs: list[dict[str, torch.Tensor]], ref_outs: list[dict[str, torch.Tensor]]
                      ) -> dict[tuple[str, str], torch.Tensor]:
        return self.score_prepared(dist_outs, self.prepare(ref_outs))

    def forward(self, dist: torch.Tensor, ref: torch.Tensor) -> dict[tuple[str, str], torch.Tensor]:
        return self.score_outputs(self.tap_outputs(dist, "dist"), self.tap_outputs(ref, "ref"))
