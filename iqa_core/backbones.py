"""Backbones and their feature taps, declared once for every paper package.

A tap is named after the layer whose output it is (``relu5_1``) and stored as the number
of modules of torchvision's ``features`` Sequential that produce it, so ``features[:n]``
computes exactly that tap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from iqa_core.weights import WeightsSource, resolve_weights

__all__ = ["BackboneSpec", "BACKBONES", "build_features", "ImageNetNormalize", "TapExtractor",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    taps: dict[str, int]  # tap name -> len(features[:n]) that ends at it
    min_input: dict[str, int]  # tap name -> smallest input side that leaves a 1x1 map there

    def min_size(self, tap: str) -> int:
        return self.min_input[tap]


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "vgg16",
        taps={"relu1_2": 4, "relu2_2": 9, "relu3_3": 16, "relu4_3": 23, "relu5_1": 26, "relu5_3": 30},
        min_input={"relu1_2": 1, "relu2_2": 2, "relu3_3": 4, "relu4_3": 8, "relu5_1": 16, "relu5_3": 16},
    ),
    "alexnet": BackboneSpec(
        "alexnet",
        taps={"relu1": 2, "relu2": 5, "relu3": 8, "relu4": 10, "relu5": 12},
        # conv1 is 11x11 stride 4 (pad 2), then 3x3 stride-2 max pools without padding.
        min_input={"relu1": 7, "relu2": 15, "relu3": 31, "relu4": 31, "relu5": 31},
    ),
}


def build_features(arch: str, weights: WeightsSource = None, upto: str | int | None = None) -> nn.Sequential:
    """torchvision ``<arch>().features`` with resolved pretrained weights, frozen, in eval mode.

    ``upto`` cuts the Sequential after a tap (name) or after that many modules.
    """
    model = getattr(torchvision.models, arch)(weights=None)
    state = resolve_weights(arch, weights)
    features: nn.Sequential = model.features
    prefix = "features."
    local = {k[len(prefix):]: v for k, v in state.items()}
    missing, unexpected = features.load_state_dict(local, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights for {arch} do not fit torchvision's {arch}().features: "
                         f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    if upto is not None:
        n = BACKBONES[arch].taps[upto] if isinstance(upto, str) else int(upto)
        features = features[:n]
    features.eval()
    features.requires_grad_(False)
    return features


class ImageNetNormalize(nn.Module):
    """(x - mean) / std with torchvision's ImageNet statistics, as buffers so they follow .to()."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TapExtractor(nn.Module):
    """Runs ``features`` once and returns the outputs at the requested taps, in order.

    Taps must end at ReLU or pooling modules: a tap ending at a convolution would be
    overwritten by the in-place ReLU that follows it.
    """

    def __init__(self, features: nn.Sequential, ends: list[int]) -> None:
        super().__init__()
        if sorted(ends) != list(ends) or len(set(ends)) != len(ends):
            raise ValueError(f"tap ends must be strictly increasing, got {ends}")
        self.features = features[: ends[-1]]
        self.ends = list(ends)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.ends:
            x = self.features[start:end](x)
            outs.append(x)
            start = end
        return outs
