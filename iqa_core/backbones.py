"""Backbones and their feature taps, declared once for every paper package.

A tap is named after the layer whose output it is (``relu5_1``) and stored as the number
of modules of torchvision's ``features`` Sequential that produce it, so ``features[:n]``
computes exactly that tap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn

from iqa_core.weights import WeightsSource, resolve_weights

__all__ = ["BackboneSpec", "BACKBONES", "build_features", "ImageNetNormalize", "TapExtractor", "L2Pool",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    taps: dict[str, int]  # tap name -> len(features[:n]) that ends at it
    min_input: dict[str, int] = field(default_factory=dict)  # tap -> smallest input side leaving 1x1 there

    def min_size(self, tap: str) -> int:
        return self.min_input.get(tap, 1)

    def ends(self, taps: list[str] | tuple[str, ...]) -> list[int]:
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise KeyError(f"{self.arch} has no tap {unknown}; its taps are {list(self.taps)}")
        return [self.taps[t] for t in taps]


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
    # The taps below are the stage cuts of the deep distribution measures' official code (TIP 2024).
    "vgg19": BackboneSpec(
        "vgg19",
        taps={"relu1_2": 4, "relu2_2": 9, "relu3_4": 18, "relu4_4": 27, "relu5_4": 36},
        min_input={"relu1_2": 1, "relu2_2": 2, "relu3_4": 4, "relu4_4": 8, "relu5_4": 16},
    ),
    # squeezenet1_1: conv 3x3/2 + ReLU | pool, fire2, fire3 | pool, fire4, fire5 | pool, fire6..fire9
    "squeezenet1_1": BackboneSpec("squeezenet1_1", taps={"relu1": 2, "fire3": 5, "fire5": 8, "fire9": 13}),
    # squeezenet1_0: conv 7x7/2 + ReLU | pool, fire2..fire4 | pool, fire5..fire8 | pool, fire9
    "squeezenet1_0": BackboneSpec("squeezenet1_0", taps={"relu1": 2, "fire4": 6, "fire8": 11, "fire9": 13}),
    # mobilenet_v3_small: features[0..3], [4..6], [7..8], [9..11], [12] (the last 1x1 conv, 576 channels)
    "mobilenet_v3_small": BackboneSpec(
        "mobilenet_v3_small", taps={"block3": 4, "block6": 7, "block8": 9, "block11": 12, "conv_last": 13}),
    # efficientnet_b7: stem + stage 1, then stages 2..7 (features[8], the 1x1 head conv, is not a tap)
    "efficientnet_b7": BackboneSpec(
        "efficientnet_b7",
        taps={"stage1": 2, "stage2": 3, "stage3": 4, "stage4": 5, "stage5": 6, "stage6": 7, "stage7": 8}),
}


class L2Pool(nn.Module):
    """L2 pooling (Henaff & Simoncelli 2016, as used by DISTS and the distribution measures):
    sqrt(conv(x^2, g) + 1e-12) with g the normalised outer product of the 3-tap Hanning window
    [0.5, 1, 0.5], depthwise, stride 2, zero padding 1; output size ceil(H/2) x ceil(W/2)."""

    def __init__(self, channels: int, eps: float = 1e-12) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])
        g = a[:, None] * a[None, :]
        self.register_buffer("filter", (g / g.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.conv2d(x**2, self.filter, stride=2, padding=1, groups=self.channels)
        return (out + self.eps).sqrt()

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def _with_l2_pooling(features: nn.Sequential) -> nn.Sequential:
    """Replace every max pool with L2 pooling over the channels of the preceding convolution."""
    channels = None
    for i, module in enumerate(features):
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
        elif isinstance(module, nn.MaxPool2d):
            if channels is None:
                raise ValueError("a max pool before any convolution cannot become an L2 pool")
            features[i] = L2Pool(channels)
    return features


def build_features(arch: str, weights: WeightsSource = None, upto: str | int | None = None,
                   l2_pooling: bool = False) -> nn.Sequential:
    """torchvision ``<arch>().features`` with resolved pretrained weights, frozen, in eval mode.

    ``upto`` cuts the Sequential after a tap (name) or after that many modules; ``l2_pooling``
    replaces its max pools with :class:`L2Pool`. Eval mode matters: BatchNorm layers use their
    running statistics and stochastic depth is off.
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
    if l2_pooling:
        features = _with_l2_pooling(features)
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

    A tap must not end right before a module that works in place on its input (a tap ending at a
    convolution of VGG would be overwritten by the in-place ReLU after it); every tap table here
    ends at ReLUs, pools or whole blocks.
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
