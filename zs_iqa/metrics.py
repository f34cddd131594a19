"""The registered ZS-IQA metrics: ``zs-<backbone>-<distance>`` and the final-embedding baselines
``zs-embed-<backbone>-cos``.

Backbones (zs_iqa.backbones): clip-vitb32, clip-rn50, dinov1, dinov2, imagenet-vit, clip-convnext-b, every
intermediate tap, 224-pixel sliding windows (stride 200), no input normalisation (all as the official code).
Extensions (not in the paper, runnable everywhere because their weights are): the same distances on the taps of
VGG16 and AlexNet (``zs-vgg16-l2``, ...; ImageNet-normalised input, whole image, no windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iqa_core.backbones import EMBEDDING
from iqa_core.deep_features import DeepFeatureMetric
from iqa_core.metric import register_metric
from iqa_core.weights import WeightsSource
from zs_iqa.distances import DISTANCES

__all__ = ["ZSIQAMetric", "FOUNDATION_BACKBONES", "EMBEDDING_BACKBONES", "CNN_BACKBONES", "PAPER"]

PAPER = ("A. Ghildyal, N. Barman, S. Zadtootaghaj, Foundation Models Boost Low-Level Perceptual Similarity "
         "Metrics, ICASSP 2025")
FOUNDATION_BACKBONES = ("clip-vitb32", "clip-rn50", "dinov1", "dinov2", "imagenet-vit", "clip-convnext-b")
#: the official embedding baselines (embed_clip_vitb32, embed_clip_rn50, embed_dinov1, embed_dinov2,
#: embed_openclip_convnext_base)
EMBEDDING_BACKBONES = ("clip-vitb32", "clip-rn50", "dinov1", "dinov2", "clip-convnext-b")
CNN_BACKBONES = ("vgg16", "alexnet")


class ZSIQAMetric(DeepFeatureMetric):
    """A ZS-IQA distance on a backbone's taps. Lower is better, 0 for identical images.

    ``taps``: a subset of the backbone's taps (default: all intermediate taps, or the embedding for the
    ``zs-embed-*`` metrics); ``weights``: the backbone's checkpoint (see zs_iqa.backbones for the formats).
    """

    paper = PAPER
    higher_is_better = False
    requires_same_size = True
    backbone_name = ""
    distance = ""
    default_taps: tuple[str, ...] | None = None

    def __init__(self, weights: WeightsSource = None, taps: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(self.backbone_name, self.distance, taps=taps if taps is not None else self.default_taps,
                         weights=weights, **kwargs)


def _register(backbone: str, distance: str, embedding: bool = False) -> None:
    name = f"zs-embed-{backbone}-{distance}" if embedding else f"zs-{backbone}-{distance}"
    what = "final embedding" if embedding else "intermediate taps"
    note = " (extension: not in the paper)" if backbone in CNN_BACKBONES else ""
    cls = type(name.replace("-", "_"), (ZSIQAMetric,), {
        "__doc__": f"ZS-IQA {distance} on {backbone} {what}{note}. Lower is better.", "name": name,
        "backbone_name": backbone, "distance": distance, "default_taps": (EMBEDDING,) if embedding else None})
    register_metric(name, description=f"ZS-IQA (ICASSP 2025): {distance} on {backbone} {what}{note}")(cls)


for _backbone in FOUNDATION_BACKBONES + CNN_BACKBONES:
    for _distance in DISTANCES:
        _register(_backbone, _distance)
for _backbone in EMBEDDING_BACKBONES:
    _register(_backbone, "cos", embedding=True)
