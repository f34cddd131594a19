"""DeepWSD, DeepJSD and DeepSKLD (Liao, Wei, Zhou, Li, Kwong, "Image Quality Assessment: Measuring
Perceptual Degradation via Distribution Measures in Deep Feature Spaces", IEEE TIP 33, 2024).

Official code: Buka-Xing/Deep-network-based-distribution-measures-for-full-reference-image-quality-
assessment @ b2c8993 (``Deep{WSD,JSD,KLD}_{VGG,Squeeze,MobileNet,Efficient}.py``; the paper's DeepSKLD is
``DeepKLD`` there) with ``utils.py`` of Buka-Xing/DeepWSD @ 532c7287. What every variant computes:

1. ``resize=True``: both images average-pooled by f = max(1, round(max(H, W) / 256)) (half to even).
2. Taps: the (pooled) image itself, then consecutive stages of a torchvision backbone, all without
   ImageNet normalisation (the MobileNet and EfficientNet files register mean/std but never use them).
3. Per tap: fit to multiples of 8, read each image's memory as 64 x L columns, compare the two images'
   columns (WSD / JSD / symmetric KL), add an L2 term weighted by 1 / (sqrt(exp(-1/(d+c))) (d+c)^2),
   average the columns; average the taps.
4. Score log(mean + 1) ** 0.25; the loss is the mean itself. Lower is better, 0 for identical images.

The variants differ in details that the official files hard-code; each is reproduced (table below).

Deviation from the official code, as an explicit improvement: the official code mixes the images of a
batch into shared columns and returns one number; here every image gets its own columns and its own
score, and a batch of one equals the official value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from distribution_measures.distances import (
    WINDOW,
    columns,
    fit_to_window,
    js_divergence,
    l2_weight,
    symmetric_kl,
    wasserstein_grid,
)
from iqa_core.backbones import BACKBONES, TapRequirement, downsample_by_size, size_downsample_factor
from iqa_core.comparators import Comparator, register_comparator
from iqa_core.deep_features import Preset, PresetMetric
from iqa_core.metric import register_metric
from iqa_core.validation import IQAInputError
from iqa_core.weights import WeightsSource

__all__ = ["Recipe", "Variant", "VARIANTS", "DistributionMeasure", "DistributionComparator", "downsample_factor",
           "downsample", "tap_distance", "column_distance", "wsd_weights", "tap_columns", "log_pow"]

PAPER = ("X. Liao, X. Wei, M. Zhou, Z. Li, S. Kwong, Image Quality Assessment: Measuring Perceptual Degradation "
         "via Distribution Measures in Deep Feature Spaces, IEEE TIP 33:4044-4059, 2024")
EPS_LOG = 1e-17

#: the resizing rule of step 1 (a backbone option, iqa_core.backbones)
downsample_factor = size_downsample_factor
downsample = downsample_by_size


@dataclass(frozen=True)
class Recipe:
    """How one tap's columns of the two images are compared (one official file's choices, or ZS-IQA's)."""

    measure: str  # "wsd", "jsd" or "skld"
    rounding: str = "round"  # window fitting: Python round (half to even) or ceil (MobileNet files)
    wsd_weights: str = "squared_over_sum"  # "squared_over_sum", "raw" (MobileNet), "softmax_columns" (EfficientNet)
    wsd_p: int = 2
    l2_c: float | None = 10.0  # None: no L2 term (DeepJSD-EfficientNet)
    jsd_eps_inside: float = 0.0  # log((P + Q + eps_inside) / 2 + eps_outside)
    jsd_eps_outside: float = 0.0
    kld_eps: float = 0.0  # log(Q + eps)
    pdf_eps: float = 0.0  # softmax pdfs + eps, floored at eps (ZS-IQA)
    drop_inf: bool = False  # infinite column values counted as 0 (ZS-IQA)


@dataclass(frozen=True)
class Variant:
    """One official file (or a documented extension): a recipe on a backbone's taps."""

    arch: str  # torchvision architecture
    taps: tuple[str, ...]  # backbone taps after the image itself (iqa_core.backbones tap names)
    recipe: Recipe = field(default_factory=lambda: Recipe("wsd"))
    l2_pooling: bool = False  # VGG: max pools replaced by L2 pooling
    official: bool = True  # False for the extensions on backbones with weights available here

    @property
    def measure(self) -> str:
        return self.recipe.measure


def _stages(arch: str) -> tuple[str, ...]:
    return BACKBONES[arch].stage_taps


def _official(measure: str, arch: str, l2_pooling: bool = False, **recipe: Any) -> Variant:
    return Variant(arch, _stages(arch), Recipe(measure, **recipe), l2_pooling)


VARIANTS: dict[str, Variant] = {
    "deepwsd-vgg": _official("wsd", "vgg19", l2_pooling=True),
    "deepjsd-vgg": _official("jsd", "vgg19", l2_pooling=True),
    "deepskld-vgg": _official("skld", "vgg19", l2_pooling=True),
    "deepwsd-squeeze": _official("wsd", "squeezenet1_1"),
    "deepjsd-squeeze": _official("jsd", "squeezenet1_0", jsd_eps_inside=EPS_LOG),
    "deepskld-squeeze": _official("skld", "squeezenet1_0", kld_eps=EPS_LOG),
    "deepwsd-mobilenet": _official("wsd", "mobilenet_v3_small", rounding="ceil", wsd_weights="raw"),
    "deepjsd-mobilenet": _official("jsd", "mobilenet_v3_small", rounding="ceil", l2_c=100.0, jsd_eps_inside=EPS_LOG),
    "deepskld-mobilenet": _official("skld", "mobilenet_v3_small", rounding="ceil", kld_eps=EPS_LOG),
    "deepwsd-efficientnet": _official("wsd", "efficientnet_b7", wsd_weights="softmax_columns", wsd_p=1),
    "deepjsd-efficientnet": _official("jsd", "efficientnet_b7", l2_c=None, jsd_eps_outside=EPS_LOG),
    "deepskld-efficientnet": _official("skld", "efficientnet_b7", kld_eps=EPS_LOG),
    # Extensions (not in the paper): the VGG recipe on the backbones whose ImageNet weights are available
    # everywhere (see iqa_core.weights), so that the measures can be run for real on any machine.
    **{f"deep{m}-vgg16": Variant("vgg16", _stages("vgg16"), Recipe(m), l2_pooling=True, official=False)
       for m in ("wsd", "jsd", "skld")},
    **{f"deep{m}-alexnet": Variant("alexnet", _stages("alexnet"), Recipe(m), official=False)
       for m in ("wsd", "jsd", "skld")},
}


#: Elements of the largest tap compared in one piece (see DistributionComparator.raw_distance).
CHUNK_ELEMENTS = 1 << 22


def _rows(columns_: torch.Tensor, part: slice) -> torch.Tensor:
    """The images ``part`` of a batch of columns; a single reference serves every image."""
    return columns_ if columns_.shape[0] == 1 else columns_[part]


def log_pow(x: torch.Tensor) -> torch.Tensor:
    """The official evaluation transform log(x + 1) ** 0.25."""
    return torch.log(x + 1) ** 0.25


def tap_distance(mx: torch.Tensor, my: torch.Tensor, recipe: Recipe,
                 wasserstein: Callable[..., torch.Tensor] = wasserstein_grid) -> torch.Tensor:
    """(B, 64, L) columns of the two images' tap -> (B,): the recipe's column distance plus its weighted L2
    term, averaged over the columns. A batch of one broadcasts against a batch of B."""
    if mx.shape[0] != my.shape[0]:  # one reference for a batch of distorted images
        mx, my = torch.broadcast_tensors(mx, my)
        mx, my = mx.contiguous(), my.contiguous()
    d = column_distance(mx, my, recipe, wasserstein)
    if recipe.l2_c is not None:
        d = d + ((mx - my) ** 2).sum(-2) * l2_weight(d, recipe.l2_c)
    return d.mean(-1)


def _atom_pdfs(m: torch.Tensor, eps: float) -> torch.Tensor:
    """Softmax over the 64 atoms of each column; with ``eps``, + eps and floored at eps (ZS-IQA's KL_div/js_div)."""
    p = torch.softmax(m, dim=-2)
    return torch.clamp(p + eps, min=eps) if eps else p


def column_distance(mx: torch.Tensor, my: torch.Tensor, recipe: Recipe,
                    wasserstein: Callable[..., torch.Tensor] = wasserstein_grid) -> torch.Tensor:
    """(B, 64, L) -> (B, L): WSD, JSD or symmetric KL of each pair of columns, as the recipe's file computes it."""
    if recipe.measure == "wsd":
        # Only the raw MobileNet features can be negative; the other weightings skip the sign check.
        return wasserstein(wsd_weights(mx, recipe), wsd_weights(my, recipe), recipe.wsd_p,
                           nonnegative=recipe.wsd_weights != "raw" or None)
    p, q = _atom_pdfs(mx, recipe.pdf_eps), _atom_pdfs(my, recipe.pdf_eps)
    if recipe.measure == "jsd":
        d = js_divergence(p, q, recipe.jsd_eps_inside, recipe.jsd_eps_outside)
    else:
        d = symmetric_kl(p, q, recipe.kld_eps)
    return torch.where(torch.isinf(d), torch.zeros_like(d), d) if recipe.drop_inf else d


def wsd_weights(m: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Masses put on the 64 grid atoms of each column (never normalised per column, as official)."""
    kind = recipe.wsd_weights
    if kind == "squared_over_sum":  # M * (M / (sum of the whole fitted tap + 1e-6)), per image
        return m * (m / (m.sum(dim=(-2, -1), keepdim=True) + 1e-6))
    if kind == "softmax_columns":  # softmax across the L columns, separately for each atom
        return torch.softmax(m, dim=-1)
    return m


def tap_columns(tap: torch.Tensor, rounding: str = "round") -> torch.Tensor:
    """A (B, C, H, W) tap (token taps (B, T, D): one channel) fitted to the window and read as (B, 64, L) columns."""
    if tap.dim() == 3:
        tap = tap.unsqueeze(1)
    fitted = fit_to_window(tap, WINDOW, rounding) if tap.dim() == 4 else tap
    if tap.dim() != 4 or fitted.shape[-1] == 0 or fitted.shape[-2] == 0:
        raise IQAInputError(f"a tap of shape {tuple(tap.shape)} has no {WINDOW}x{WINDOW}-window columns (the "
                            f"window fitting rule, {rounding}, empties it); use a larger image")
    return columns(fitted, WINDOW)


class DistributionComparator(Comparator):
    """A distribution measure on any backbone's taps: each tap fitted to the window and read as 64-atom columns,
    the ``variant``'s column distance + L2 term, averaged over the columns, then over the taps (the official loss,
    :meth:`compare_loss`), scored as log(mean + 1) ** 0.25 (:meth:`compare`). Lower is better.

    With the default recipes (the VGG files') on the taps ``[image, relu1_2, relu2_2, relu3_4, relu4_4, relu5_4]``
    of the L2-pooled VGG19 without ImageNet normalisation, ``deepwsd`` is the registered ``deepwsd-vgg`` without its
    resizing (and ``deepjsd``/``deepskld`` likewise); the registered metrics are such presets."""

    higher_is_better = False
    measure = ""

    def __init__(self, variant: str | None = None) -> None:
        super().__init__()
        variant = variant or f"deep{self.measure}-vgg"
        if variant not in VARIANTS:
            raise KeyError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        self.recipe = VARIANTS[variant].recipe
        if self.recipe.measure != self.measure:
            raise ValueError(f"variant {variant!r} is a {self.recipe.measure} recipe, not {self.measure}")
        #: the 1-D Wasserstein implementation (swap in ``wasserstein_grid_pot`` to cross-check or time POT)
        self.wasserstein = wasserstein_grid

    @property
    def tap_requirement(self) -> TapRequirement:  # type: ignore[override]
        """Every tap must keep columns after the window fitting."""
        return TapRequirement(fit_window=WINDOW, fit_rounding=self.recipe.rounding)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, recipe={self.recipe}"

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tap_columns(t, self.recipe.rounding) for t in taps]

    def tap_distance(self, mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
        """(B, 64, L) columns of one tap of the two images -> (B,) mean per-column value."""
        return tap_distance(mx, my, self.recipe, self.wasserstein)

    def column_distance(self, mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
        """(B, 64, L) -> (B, L): the recipe's distance of each pair of columns (no L2 term)."""
        return column_distance(mx, my, self.recipe, self.wasserstein)

    def wsd_weights(self, m: torch.Tensor) -> torch.Tensor:
        """The masses this recipe's WSD puts on the 64 grid atoms of each column."""
        return wsd_weights(m, self.recipe)

    def raw_distance(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        """Mean over taps of the mean over columns: the official loss, one value per image.

        Large batches are compared a few images at a time: the distances' temporaries grow with the
        batch, and past the caches that costs more than the loop (a batch of 8 at 512x384 ran 2.4x
        slower per image in one piece on a 2-core CPU).
        """
        batch = max(d.shape[0] for d in dist + ref)
        largest = max(d[:1].numel() for d in dist)
        step = max(1, CHUNK_ELEMENTS // largest)
        chunks = []
        for start in range(0, batch, step):
            part = slice(start, start + step)
            per_tap = [self.tap_distance(_rows(d, part), _rows(r, part)) for d, r in zip(dist, ref, strict=True)]
            chunks.append(torch.stack(per_tap).mean(0))
        return torch.cat(chunks)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return log_pow(self.raw_distance(dist, ref))

    def compare_loss(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return self.raw_distance(dist, ref)


for _measure in ("wsd", "jsd", "skld"):
    register_comparator(f"deep{_measure}", f"Deep{_measure.upper()} (TIP 2024; variant=: the recipe of one official "
                        "file, default VGG's) on each tap, averaged")(
        type(f"Deep{_measure.upper()}Comparator", (DistributionComparator,), {"measure": _measure}))


class DistributionMeasure(PresetMetric):
    """A deep distribution measure: lower is better, 0 for identical images. The preset of ``variant``: its
    backbone without ImageNet normalisation (L2 pooling for VGG; both images average-pooled by their size first
    unless ``resize=False``), the taps ``[image, *variant.taps]`` and the ``deep<measure>`` comparator with the
    variant's recipe.

    ``metric(dist, ref)`` returns log(D + 1) ** 0.25 per image (the official evaluation output);
    ``metric.loss(dist, ref)`` (or ``as_loss=True``) returns D itself, the official training loss.
    """

    higher_is_better = False
    paper = PAPER
    requires_same_size = True
    variant_name = ""

    def __init__(self, variant: str | None = None, weights: WeightsSource = None, as_loss: bool = False,
                 resize: bool = True, dtype: torch.dtype | None = None, **options: Any) -> None:
        variant = variant or self.variant_name
        if variant not in VARIANTS:
            raise KeyError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        super().__init__(weights=weights, dtype=dtype, preset=variant_preset(variant, resize),
                         output="loss" if as_loss else None, **options)
        self.variant = VARIANTS[variant]
        self.as_loss = as_loss
        self.resize = resize


def variant_preset(name: str, resize: bool = True) -> Preset:
    v = VARIANTS[name]
    return Preset(v.arch, f"deep{v.measure}", ("image", *v.taps),
                  backbone_options={"normalize": False, "l2_pooling": v.l2_pooling, "resize": resize},
                  comparator_options={"variant": name})


def _register(name: str, variant: Variant) -> None:
    kind = {"wsd": "Wasserstein", "jsd": "Jensen-Shannon", "skld": "symmetric KL"}[variant.measure]
    note = "" if variant.official else " (extension: the VGG recipe on a backbone with weights available here)"
    cls = type(name.replace("-", "_").title().replace("_", ""), (DistributionMeasure,),
               {"__doc__": f"{kind} distance of deep feature distributions on {variant.arch}{note}.", "name": name,
                "variant_name": name, "preset": variant_preset(name)})
    register_metric(name, description=f"{kind} distance of {variant.arch} feature distributions (TIP 2024)"
                    f"{note}")(cls)


for _name, _variant in VARIANTS.items():
    _register(_name, _variant)
