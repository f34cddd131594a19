"""ZS-IQA's six distances (Ghildyal, Barman, Zadtootaghaj, ICASSP 2025), as comparators on any backbone's taps.

Official code: abhijay9/ZS-IQA @ 1d8c1ce (``distances.py``, the scoring loop of ``run.py``). Per 224-pixel window
(the windowing is :class:`iqa_core.deep_features.DeepFeatureMetric`'s):

========= ==================================================================================================
l2        sum over taps of mean((f_d - f_r)^2) over each tap's elements
cos       sum over taps of the mean of 1 - cos(f_d, f_r), the cosine along the LAST dimension (the token
          features D; for (B, C, H, W) maps the official code's dim=-1 is the width); non-finite cosines are
          dropped (nanmean, inf -> 0) as the official RN50 path does (it only matters in half precision)
wsd       the DeepWSD machinery on the stacked tap tensor: fit to multiples of 8, 64-atom columns, pdfs by a
          softmax ACROSS the columns, 1-D Wasserstein with p = 1, plus the L2 term weighted by
          1 / (sqrt(exp(-1/(d+10))) (d+10)^2), mean over columns, then log(x + 1) ** 0.25
jsd       softmax over the 64 atoms (+1e-10), Jensen-Shannon with log((p+q)/2 + 1e-17), no L2 term, mean
          over columns, log(x + 1) ** 0.25
skld      the same pdfs, symmetric KL, plus the L2 term (c = 10), mean over columns, log(x + 1) ** 0.25
swd       sliced Wasserstein: the stacked tensor's L layers as dimensions of T*D points, L random unit
          directions, sorted projections, squared differences averaged over directions and summed over points
========= ==================================================================================================

The stacked tap tensor is the official one: token taps (B, T, D) of equal shape stacked into (B, L, T, D)
(L layers as channels, T tokens as rows, D features as columns). Taps that are feature maps (CLIP RN50,
ConvNeXt, VGG) are not stacked: for ``l2`` and ``cos`` the official code sums per-tap values; for the other
four (which the official code never ran on maps) each map is scored as its own (B, C, H, W) tensor and the
values are summed over taps, the same rule.

Deviations, all explicit: ``swd``'s directions come from a generator seeded with ``seed`` (default 0) for every
window, so a score does not depend on what ran before (the official code draws them from the global RNG);
inputs are float32 (the official CLIP models run in float16 on the GPU).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from distribution_measures.distances import WINDOW, wasserstein_grid
from distribution_measures.measures import DistributionComparator, Recipe, log_pow, tap_columns
from iqa_core.backbones import TapRequirement
from iqa_core.comparators import Comparator, register_comparator
from iqa_core.validation import IQAInputError

__all__ = ["ZSL2", "ZSCosine", "ZSWasserstein", "ZSJensenShannon", "ZSSymmetricKL", "ZSSlicedWasserstein",
           "stacked_taps", "log_pow", "DISTANCES", "RECIPES", "PDF_EPS", "LOG_EPS", "L2_C"]

PDF_EPS = 1e-10  # added to the softmax pdfs and their clamp floor (official KL_div, js_div)
LOG_EPS = 1e-17  # inside the log of the JSD mixture (official js_div)
L2_C = 10.0  # shift of the L2-term weight (official ws_distance, KL_distance)
DISTANCES = ("l2", "cos", "wsd", "jsd", "skld", "swd")
#: ZS-IQA's choices in the distribution measures' terms (distribution_measures.measures.Recipe)
RECIPES = {
    "wsd": Recipe("wsd", wsd_weights="softmax_columns", wsd_p=1, l2_c=L2_C),
    "jsd": Recipe("jsd", l2_c=None, pdf_eps=PDF_EPS, jsd_eps_outside=LOG_EPS, drop_inf=True),
    "skld": Recipe("skld", l2_c=L2_C, pdf_eps=PDF_EPS, drop_inf=True),
}


def stacked_taps(taps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors the distribution distances see: equal-shape token taps stacked to one (B, L, T, D) tensor
    (the official layout); feature maps (B, C, H, W) one by one. Embedding vectors (B, E) have no distribution."""
    if all(t.dim() == 3 for t in taps) and len({t.shape for t in taps}) == 1:
        return [torch.stack(taps, dim=1)]
    out = []
    for t in taps:
        if t.dim() == 3:
            out.append(t.unsqueeze(1))
        elif t.dim() == 4:
            out.append(t)
        else:
            raise IQAInputError(f"the distribution distances need token or map taps, got shape {tuple(t.shape)}")
    return out


class _PerTap(Comparator):
    """Sum over the (stacked) taps of a per-tensor distance."""

    tap_requirement = TapRequirement(fit_window=WINDOW)

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return stacked_taps(taps)

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum(self.tensor_distance(d, r) for d, r in zip(dist, ref, strict=True))

    def tensor_distance(self, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_comparator("l2", "ZS-IQA l2: mean squared difference per tap, summed over taps")
class ZSL2(Comparator):
    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum(((d - r) ** 2).flatten(1).mean(1) for d, r in zip(dist, ref, strict=True))


@register_comparator("cos", "ZS-IQA cos: mean 1 - cosine along the last dimension per tap, summed over taps")
class ZSCosine(Comparator):
    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for d, r in zip(dist, ref, strict=True):
            distance = 1 - F.cosine_similarity(d, r, dim=-1)
            distance = torch.where(torch.isinf(distance), torch.zeros_like(distance), distance)
            total = total + (distance.flatten(1).nanmean(1) if distance.dim() > 1 else distance)
        return total


class _ZSDistribution(DistributionComparator):
    """A distribution measure as ZS-IQA computes it: the deep distribution measures' tap distance with ZS-IQA's
    recipe (:data:`RECIPES`) on each stacked tap tensor, log(x + 1) ** 0.25 of each, summed. The loss is the
    score."""

    zs_distance: ClassVar[str] = ""

    def __init__(self) -> None:
        Comparator.__init__(self)
        self.recipe = RECIPES[self.zs_distance]
        self.wasserstein = wasserstein_grid

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tap_columns(t) for t in stacked_taps(taps)]

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return sum(log_pow(self.tap_distance(d, r)) for d, r in zip(dist, ref, strict=True))

    def compare_loss(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return self.compare(dist, ref)


@register_comparator("wsd", "ZS-IQA wsd: 1-D Wasserstein (p=1) of softmax-across-columns pdfs + L2 term")
class ZSWasserstein(_ZSDistribution):
    zs_distance = "wsd"


@register_comparator("jsd", "ZS-IQA jsd: Jensen-Shannon divergence of softmax pdfs over the 64 atoms")
class ZSJensenShannon(_ZSDistribution):
    zs_distance = "jsd"


@register_comparator("skld", "ZS-IQA skld: symmetric KL of softmax pdfs over the 64 atoms + L2 term")
class ZSSymmetricKL(_ZSDistribution):
    zs_distance = "skld"


@register_comparator("swd", "ZS-IQA swd: sliced Wasserstein over the layers/channels, seeded directions")
class ZSSlicedWasserstein(_PerTap):
    tap_requirement = TapRequirement()  # projections of any number of points

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def tensor_distance(self, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        dim = d.shape[1]
        generator = torch.Generator().manual_seed(self.seed)
        directions = torch.randn(dim, dim, generator=generator).to(device=d.device, dtype=d.dtype)
        directions = directions / directions.pow(2).sum(1, keepdim=True).sqrt()
        proj_d = torch.einsum("bdn,md->bmn", d.flatten(2), directions).sort(dim=2).values
        proj_r = torch.einsum("bdn,md->bmn", r.flatten(2), directions).sort(dim=2).values
        return ((proj_d - proj_r) ** 2).mean(1).sum(-1)
