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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from distribution_measures.distances import (
    WINDOW,
    columns,
    fit_to_window,
    js_divergence,
    l2_weight,
    symmetric_kl,
    wasserstein_grid,
)
from iqa_core.backbones import BACKBONES, TapExtractor, TapRequirement, build_features
from iqa_core.comparators import Comparator, register_comparator
from iqa_core.metric import FeatureMetric, register_metric
from iqa_core.validation import IQAInputError
from iqa_core.weights import WeightsSource

__all__ = ["Variant", "VARIANTS", "DistributionMeasure", "downsample_factor", "downsample", "tap_distance",
           "column_distance", "wsd_weights", "DistributionComparator"]

PAPER = ("X. Liao, X. Wei, M. Zhou, Z. Li, S. Kwong, Image Quality Assessment: Measuring Perceptual Degradation "
         "via Distribution Measures in Deep Feature Spaces, IEEE TIP 33:4044-4059, 2024")
EPS_LOG = 1e-17


@dataclass(frozen=True)
class Variant:
    """One official file's choices (or a documented extension's)."""

    measure: str  # "wsd", "jsd" or "skld"
    arch: str  # torchvision architecture
    taps: tuple[str, ...]  # backbone taps after the image itself (iqa_core.backbones tap names)
    l2_pooling: bool = False  # VGG: max pools replaced by L2 pooling
    rounding: str = "round"  # window fitting: Python round (half to even) or ceil (MobileNet files)
    wsd_weights: str = "squared_over_sum"  # "squared_over_sum", "raw" (MobileNet), "softmax_columns" (EfficientNet)
    wsd_p: int = 2
    l2_c: float | None = 10.0  # None: no L2 term (DeepJSD-EfficientNet)
    jsd_eps_inside: float = 0.0  # log((P + Q + eps_inside) / 2 + eps_outside)
    jsd_eps_outside: float = 0.0
    kld_eps: float = 0.0  # log(Q + eps)
    official: bool = True  # False for the extensions on backbones with weights available here


_VGG19 = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
_SQUEEZE_1_1 = ("relu1", "fire3", "fire5", "fire9")
_SQUEEZE_1_0 = ("relu1", "fire4", "fire8", "fire9")
_MOBILENET = ("block3", "block6", "block8", "block11", "conv_last")
_EFFICIENTNET = ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7")
_VGG16 = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
_ALEXNET = ("relu1", "relu2", "relu3", "relu4", "relu5")

VARIANTS: dict[str, Variant] = {
    "deepwsd-vgg": Variant("wsd", "vgg19", _VGG19, l2_pooling=True),
    "deepjsd-vgg": Variant("jsd", "vgg19", _VGG19, l2_pooling=True),
    "deepskld-vgg": Variant("skld", "vgg19", _VGG19, l2_pooling=True),
    "deepwsd-squeeze": Variant("wsd", "squeezenet1_1", _SQUEEZE_1_1),
    "deepjsd-squeeze": Variant("jsd", "squeezenet1_0", _SQUEEZE_1_0, jsd_eps_inside=EPS_LOG),
    "deepskld-squeeze": Variant("skld", "squeezenet1_0", _SQUEEZE_1_0, kld_eps=EPS_LOG),
    "deepwsd-mobilenet": Variant("wsd", "mobilenet_v3_small", _MOBILENET, rounding="ceil", wsd_weights="raw"),
    "deepjsd-mobilenet": Variant("jsd", "mobilenet_v3_small", _MOBILENET, rounding="ceil", l2_c=100.0,
                                 jsd_eps_inside=EPS_LOG),
    "deepskld-mobilenet": Variant("skld", "mobilenet_v3_small", _MOBILENET, rounding="ceil", kld_eps=EPS_LOG),
    "deepwsd-efficientnet": Variant("wsd", "efficientnet_b7", _EFFICIENTNET, wsd_weights="softmax_columns",
                                    wsd_p=1),
    "deepjsd-efficientnet": Variant("jsd", "efficientnet_b7", _EFFICIENTNET, l2_c=None,
                                    jsd_eps_outside=EPS_LOG),
    "deepskld-efficientnet": Variant("skld", "efficientnet_b7", _EFFICIENTNET, kld_eps=EPS_LOG),
    # Extensions (not in the paper): the VGG recipe on the backbones whose ImageNet weights are available
    # everywhere (see iqa_core.weights), so that the measures can be run for real on any machine.
    **{f"deep{m}-vgg16": Variant(m, "vgg16", _VGG16, l2_pooling=True, official=False) for m in ("wsd", "jsd", "skld")},
    **{f"deep{m}-alexnet": Variant(m, "alexnet", _ALEXNET, official=False) for m in ("wsd", "jsd", "skld")},
}


#: Elements of the largest tap compared in one piece (see DistributionMeasure.raw_distance).
CHUNK_ELEMENTS = 1 << 22


def _rows(columns_: torch.Tensor, part: slice) -> torch.Tensor:
    """The images ``part`` of a batch of columns; a single reference serves every image."""
    return columns_ if columns_.shape[0] == 1 else columns_[part]


def downsample_factor(height: int, width: int) -> int:
    """f = max(1, round(max(H, W) / 256)), rounding half to even as numpy does in the official utils."""
    return max(1, round(max(height, width) / 256))


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Average pooling by f x f with stride f (the official depthwise box filter; f = 1 is the identity)."""
    f = downsample_factor(*x.shape[-2:])
    return F.avg_pool2d(x, f, f) if f > 1 else x


def tap_distance(mx: torch.Tensor, my: torch.Tensor, variant: Variant,
                 wasserstein: Callable[..., torch.Tensor] = wasserstein_grid) -> torch.Tensor:
    """(B, 64, L) columns of the two images' tap -> (B,): the variant's column distance plus its weighted L2
    term, averaged over the columns. A batch of one broadcasts against a batch of B."""
    if mx.shape[0] != my.shape[0]:  # one reference for a batch of distorted images
        mx, my = torch.broadcast_tensors(mx, my)
        mx, my = mx.contiguous(), my.contiguous()
    d = column_distance(mx, my, variant, wasserstein)
    if variant.l2_c is not None:
        d = d + ((mx - my) ** 2).sum(-2) * l2_weight(d, variant.l2_c)
    return d.mean(-1)


def column_distance(mx: torch.Tensor, my: torch.Tensor, variant: Variant,
                    wasserstein: Callable[..., torch.Tensor] = wasserstein_grid) -> torch.Tensor:
    """(B, 64, L) -> (B, L): WSD, JSD or symmetric KL of each pair of columns, as the variant's file computes it."""
    if variant.measure == "wsd":
        # Only the raw MobileNet features can be negative; the other weightings skip the sign check.
        return wasserstein(wsd_weights(mx, variant), wsd_weights(my, variant), variant.wsd_p,
                           nonnegative=variant.wsd_weights != "raw" or None)
    p, q = torch.softmax(mx, dim=-2), torch.softmax(my, dim=-2)  # over the 64 atoms
    if variant.measure == "jsd":
        return js_divergence(p, q, variant.jsd_eps_inside, variant.jsd_eps_outside)
    return symmetric_kl(p, q, variant.kld_eps)


def wsd_weights(m: torch.Tensor, variant: Variant) -> torch.Tensor:
    """Masses put on the 64 grid atoms of each column (never normalised per column, as official)."""
    kind = variant.wsd_weights
    if kind == "squared_over_sum":  # M * (M / (sum of the whole fitted tap + 1e-6)), per image
        return m * (m / (m.sum(dim=(-2, -1), keepdim=True) + 1e-6))
    if kind == "softmax_columns":  # softmax across the L columns, separately for each atom
        return torch.softmax(m, dim=-1)
    return m


class DistributionMeasure(FeatureMetric):
    """A deep distribution measure: lower is better, 0 for identical images.

    ``metric(dist, ref)`` returns log(D + 1) ** 0.25 per image (the official evaluation output);
    ``metric.loss(dist, ref)`` (or ``as_loss=True``) returns D itself, the official training loss.
    """

    higher_is_better = False
    paper = PAPER
    requires_same_size = True

    def __init__(self, variant: str, weights: WeightsSource = None, as_loss: bool = False,
                 resize: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise KeyError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
        self.variant = VARIANTS[variant]
        self.as_loss = as_loss
        self.resize = resize
        spec = BACKBONES[self.variant.arch]
        ends = spec.ends(self.variant.taps)
        features = build_features(self.variant.arch, weights, upto=ends[-1], l2_pooling=self.variant.l2_pooling)
        self.backbone = TapExtractor(features, ends)
        #: The 1-D Wasserstein implementation (swap in ``wasserstein_grid_pot`` to cross-check or time POT).
        self.wasserstein = wasserstein_grid
        self.min_size = spec.min_size(("image", *self.variant.taps), self.variant.l2_pooling, self.tap_requirement)
        self.set_dtype(dtype)  # float64: the whole computation, as the authors' code with .double()

    @property
    def tap_requirement(self) -> TapRequirement:
        """Every tap, the image included, must keep columns after the window fitting."""
        return TapRequirement(fit_window=WINDOW, fit_rounding=self.variant.rounding)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, as_loss={self.as_loss}, resize={self.resize}"

    def feature_map(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The taps, image first: what the backbone computes (timed by the benchmark)."""
        x = downsample(x) if self.resize else x
        return [x, *self.backbone(x)]

    def features_from_map(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tap fitted to the window and read as (B, 64, L) columns."""
        fitted = [fit_to_window(t, WINDOW, self.variant.rounding) for t in taps]
        for name, tap, fit in zip(("image", *self.variant.taps), taps, fitted, strict=True):
            if fit.shape[-1] == 0 or fit.shape[-2] == 0:
                raise IQAInputError(
                    f"{self.name}: the image is too small: tap {name!r} is {tap.shape[-2]}x{tap.shape[-1]}, "
                    f"which the window-{WINDOW} fitting rule ({self.variant.rounding}) empties; use a larger "
                    "image")
        return [columns(t, WINDOW) for t in fitted]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features_from_map(self.feature_map(x))

    def compare_feature_maps(self, dist_taps: list[torch.Tensor], ref_taps: list[torch.Tensor]) -> torch.Tensor:
        """Everything after the backbone (timed on its own by the benchmark)."""
        return self.compare(self.features_from_map(dist_taps), self.features_from_map(ref_taps))

    def raw_distance(self, dist_columns: list[torch.Tensor], ref_columns: list[torch.Tensor]) -> torch.Tensor:
        """Mean over taps of the mean over columns: the official loss, one value per image.

        Large batches are compared a few images at a time: the distances' temporaries grow with the
        batch, and past the caches that costs more than the loop (a batch of 8 at 512x384 ran 2.4x
        slower per image in one piece on a 2-core CPU).
        """
        batch = max(d.shape[0] for d in dist_columns + ref_columns)
        largest = max(d[:1].numel() for d in dist_columns)
        step = max(1, CHUNK_ELEMENTS // largest)
        chunks = []
        for start in range(0, batch, step):
            part = slice(start, start + step)
            per_tap = [self.tap_distance(_rows(d, part), _rows(r, part))
                       for d, r in zip(dist_columns, ref_columns, strict=True)]
            chunks.append(torch.stack(per_tap).mean(0))
        return torch.cat(chunks)

    def tap_distance(self, mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
        """(B, 64, L) columns of the two images -> (B,) mean per-column value of one tap."""
        return tap_distance(mx, my, self.variant, self.wasserstein)

    def column_distance(self, mx: torch.Tensor, my: torch.Tensor) -> torch.Tensor:
        """(B, 64, L) -> (B, L): this variant's distance of each pair of columns (no L2 term)."""
        return column_distance(mx, my, self.variant, self.wasserstein)

    def wsd_weights(self, m: torch.Tensor) -> torch.Tensor:
        """The masses this variant's WSD puts on the 64 grid atoms of each column."""
        return wsd_weights(m, self.variant)

    def compare(self, dist_features: list[torch.Tensor], ref_features: list[torch.Tensor]) -> torch.Tensor:
        raw = self.raw_distance(dist_features, ref_features)
        return raw if self.as_loss else torch.log(raw + 1) ** 0.25

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        dist, ref = self.prepare_pair(dist, ref)
        return self.raw_distance(self.features(dist), self.features(ref))


def _register(name: str, variant: Variant) -> None:
    kind = {"wsd": "Wasserstein", "jsd": "Jensen-Shannon", "skld": "symmetric KL"}[variant.measure]
    note = "" if variant.official else " (extension: the VGG recipe on a backbone with weights available here)"
    cls = type(name.replace("-", "_").title().replace("_", ""), (DistributionMeasure,),
               {"__doc__": f"{kind} distance of deep feature distributions on {variant.arch}{note}.", "name": name})
    register_metric(name, description=f"{kind} distance of {variant.arch} feature distributions (TIP 2024)"
                    f"{note}", variant=name)(cls)


for _name, _variant in VARIANTS.items():
    _register(_name, _variant)


class DistributionComparator(Comparator):
    """A distribution measure on any backbone's taps (iqa_core.comparators): each tap fitted to the window and
    read as 64-atom columns, the official VGG files' column distance + L2 term, averaged over the columns, then
    over the taps, scored as log(mean + 1) ** 0.25. Token taps (B, T, D) count as one-channel (B, 1, T, D) maps.

    On the taps ``[image, relu1_2, relu2_2, relu3_4, relu4_4, relu5_4]`` of the L2-pooled VGG19 without ImageNet
    normalisation (``create_backbone("vgg19", l2_pooling=True, normalize=False)``), ``deepwsd`` equals the
    registered ``deepwsd-vgg`` without its resizing (and ``deepjsd``/``deepskld`` likewise).
    """

    recipe = ""

    @property
    def tap_requirement(self) -> TapRequirement:  # type: ignore[override]
        return TapRequirement(fit_window=WINDOW, fit_rounding=VARIANTS[self.recipe].rounding)

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for tap in taps:
            if tap.dim() == 3:
                tap = tap.unsqueeze(1)
            fitted = fit_to_window(tap, WINDOW, VARIANTS[self.recipe].rounding)
            if tap.dim() != 4 or fitted.shape[-1] == 0 or fitted.shape[-2] == 0:
                raise IQAInputError(f"{self.name}: a tap of shape {tuple(tap.shape)} has no 8x8-window columns")
            out.append(columns(fitted, WINDOW))
        return out

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        variant = VARIANTS[self.recipe]
        raw = torch.stack([tap_distance(d, r, variant) for d, r in zip(dist, ref, strict=True)]).mean(0)
        return torch.log(raw + 1) ** 0.25


for _measure in ("wsd", "jsd", "skld"):
    register_comparator(f"deep{_measure}", f"Deep{_measure.upper()} (TIP 2024, VGG recipe) on each tap, averaged")(
        type(f"Deep{_measure.upper()}Comparator", (DistributionComparator,), {"recipe": f"deep{_measure}-vgg"}))
