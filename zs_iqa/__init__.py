"""Zero-shot foundation-model metrics from intermediate CLIP/DINO/ViT layers (ZS-IQA, Ghildyal, Barman,
Zadtootaghaj, ICASSP 2025): six backbones with their taps (zs_iqa.backbones, built with timm), six distances as
comparators (zs_iqa.distances) and the registered metrics (zs_iqa.metrics)."""

from zs_iqa import backbones, distances, metrics

__all__ = ["backbones", "distances", "metrics"]
