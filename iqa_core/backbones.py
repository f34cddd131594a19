"""Backbones and their feature taps, declared once for every paper package.

A tap is named after the layer whose output it is (``relu5_1``) and stored as the number
of modules of torchvision's ``features`` Sequential that produce it, so ``features[:n]``
computes exactly that tap.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torchvision
from torch import nn

from iqa_core.registry import Registry
from iqa_core.weights import InvalidWeightsError, WeightsSource, resolve_weights, torchvision_query

__all__ = ["BackboneSpec", "BACKBONES", "TapRequirement", "tap_sizes", "min_input_side", "build_features",
           "ImageNetNormalize", "LPIPSScaling", "NORMALIZATIONS", "L2Pool", "size_downsample_factor",
           "downsample_by_size", "receptive_geometry",
           "IMAGENET_MEAN", "IMAGENET_STD", "TapBackbone", "TorchvisionBackbone", "BackboneInfo", "register_backbone",
           "create_backbone", "list_backbones", "backbone_info", "torchvision_top1", "EMBEDDING"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    taps: dict[str, int]  # tap name -> len(features[:n]) that ends at it
    #: the stage outputs (the last tap before each downsampling, and the last one): what LPIPS, DISTS and the
    #: distribution measures compare; None: every tap
    stages: tuple[str, ...] | None = None

    @property
    def stage_taps(self) -> tuple[str, ...]:
        return self.stages or tuple(self.taps)

    def ends(self, taps: list[str] | tuple[str, ...]) -> list[int]:
        unknown = [t for t in taps if t not in self.taps]
        if unknown:
            raise KeyError(f"{self.arch} has no tap {unknown}; its taps are {list(self.taps)}")
        return [self.taps[t] for t in taps]

    def min_size(self, taps: Sequence[str], l2_pooling: bool = False,
                 requirement: TapRequirement | None = None) -> int:
        """The smallest square input side for which every tap in ``taps`` exists and meets ``requirement``."""
        return min_input_side(self.arch, tuple(taps), l2_pooling, requirement or TapRequirement())


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "vgg16",
        taps={"relu1_2": 4, "relu2_2": 9, "relu3_3": 16, "relu4_3": 23, "relu5_1": 26, "relu5_3": 30},
        stages=("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
    ),
    "alexnet": BackboneSpec(
        "alexnet",
        taps={"relu1": 2, "relu2": 5, "relu3": 8, "relu4": 10, "relu5": 12},
    ),
    # The taps below are the stage cuts of the deep distribution measures' official code (TIP 2024).
    "vgg19": BackboneSpec(
        "vgg19",
        taps={"relu1_2": 4, "relu2_2": 9, "relu3_4": 18, "relu4_4": 27, "relu5_4": 36},
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


@dataclass(frozen=True)
class TapRequirement:
    """What a comparator needs of each tap's spatial size (h, w): at least ``min_positions`` positions, and, with
    ``fit_window``, columns left after the distribution measures' window fitting (``R(side / window) >= 1`` with
    ``R`` = Python's round, half to even, or ceil)."""

    min_positions: int = 1
    fit_window: int | None = None
    fit_rounding: str = "round"

    def ok(self, height: int, width: int) -> bool:
        if height < 1 or width < 1 or height * width < self.min_positions:
            return False
        if self.fit_window is None:
            return True
        rnd = {"round": round, "ceil": math.ceil}[self.fit_rounding]
        return rnd(height / self.fit_window) >= 1 and rnd(width / self.fit_window) >= 1


@functools.cache
def _meta_features(arch: str, l2_pooling: bool) -> nn.Sequential:
    """The architecture's ``features`` on the meta device: shapes without memory or arithmetic."""
    with torch.device("meta"):
        features = getattr(torchvision.models, arch)(weights=None).features
        return (_with_l2_pooling(features) if l2_pooling else features).eval()


def tap_sizes(arch: str, taps: Sequence[str], side: int, l2_pooling: bool = False) -> dict[str, tuple[int, int]] | None:
    """Spatial size of each tap (``image``: the input) for a ``side`` x ``side`` input; None where a layer of the
    architecture cannot process it (an output that would be empty)."""
    spec = BACKBONES[arch]
    features = _meta_features(arch, l2_pooling)
    ends = {t: spec.taps[t] for t in taps if t != "image"}
    sizes = {"image": (side, side)} if "image" in taps else {}
    x = torch.empty(1, 3, side, side, device="meta")
    start = 0
    for tap, end in sorted(ends.items(), key=lambda item: item[1]):
        try:
            x = features[start:end](x)
        except (RuntimeError, ValueError):  # "output size is too small"
            return None
        if x.shape[-1] < 1 or x.shape[-2] < 1:
            return None
        sizes[tap] = (int(x.shape[-2]), int(x.shape[-1]))
        start = end
    return sizes


@functools.cache
def min_input_side(arch: str, taps: tuple[str, ...], l2_pooling: bool = False,
                   requirement: TapRequirement = TapRequirement(), limit: int = 4096) -> int:
    """The smallest square input side at which every tap exists and meets ``requirement``, found by bisection over
    the architecture's own shape arithmetic (it only grows with the input)."""

    def feasible(side: int) -> bool:
        sizes = tap_sizes(arch, taps, side, l2_pooling)
        return sizes is not None and all(requirement.ok(*hw) for hw in sizes.values())

    if not feasible(limit):
        raise ValueError(f"{arch} taps {list(taps)} do not meet {requirement} even at {limit} px")
    low, high = 0, limit  # feasible(high), not feasible(low)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if feasible(mid) else (mid, high)
    return high


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


def _empty_features(arch: str) -> nn.Sequential:
    """``<arch>().features`` with uninitialised memory, for weights that overwrite every tensor: built on the meta
    device, so the classifier's random initialisation (1.3 s of start-up for VGG16 on a CPU) never runs. An
    architecture with tensors a state dict does not hold (non-persistent buffers) is built normally."""
    with torch.device("meta"):
        features: nn.Sequential = getattr(torchvision.models, arch)(weights=None).features
    held = set(features.state_dict())
    if any(name not in held for name, _ in [*features.named_parameters(), *features.named_buffers()]):
        return getattr(torchvision.models, arch)(weights=None).features
    return features.to_empty(device="cpu")


def build_features(arch: str, weights: WeightsSource = None, upto: str | int | None = None,
                   l2_pooling: bool = False) -> nn.Sequential:
    """torchvision ``<arch>().features`` with resolved pretrained weights, frozen, in eval mode.

    ``upto`` cuts the Sequential after a tap (name) or after that many modules; ``l2_pooling``
    replaces its max pools with :class:`L2Pool`. Eval mode matters: BatchNorm layers use their
    running statistics and stochastic depth is off.
    """
    state = resolve_weights(arch, weights)
    features = _empty_features(arch)
    prefix = "features."
    local = {k[len(prefix):]: v for k, v in state.items()}
    own = features.state_dict()
    missing = [k for k in own if k not in local]
    unexpected = [k for k in local if k not in own]
    shapes = [f"{k} {tuple(local[k].shape)} (expected {tuple(own[k].shape)})" for k in own
              if k in local and local[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise InvalidWeightsError(f"weights for {arch} do not fit torchvision's {arch}().features: "
                                  + "; ".join(f"{what} {items[:3]}" for what, items in (
                                      ("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if items)
                                  + "; are they weights of another architecture?")
    features.load_state_dict(local)
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


#: LPIPS v0.1's ScalingLayer constants (lpips/pretrained_networks.py), applied to images in [-1, 1]
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPSScaling(nn.Module):
    """LPIPS's input scaling, in the official order of operations: ((2x - 1) - shift) / scale."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((2 * x - 1) - self.shift) / self.scale


#: ``normalize=`` of :class:`TorchvisionBackbone`: what the first layer sees
NORMALIZATIONS: dict[str, Callable[[], nn.Module]] = {"imagenet": ImageNetNormalize, "lpips": LPIPSScaling,
                                                     "none": nn.Identity}


def size_downsample_factor(height: int, width: int) -> int:
    """f = max(1, round(max(H, W) / 256)), rounding half to even as numpy does (the distribution measures'
    official utils, after the DISTS/SSIM-style 'resize by the image size' rule)."""
    return max(1, round(max(height, width) / 256))


def downsample_by_size(x: torch.Tensor) -> torch.Tensor:
    """Average pooling by f x f with stride f, f = :func:`size_downsample_factor` (f = 1 is the identity)."""
    f = size_downsample_factor(*x.shape[-2:])
    return torch.nn.functional.avg_pool2d(x, f, f) if f > 1 else x


def receptive_geometry(layers: Sequence[nn.Module]) -> tuple[int, int, int]:
    """(stride, left, right) of the output positions of ``layers`` (convolutions and pools in sequence): position i
    depends on input pixels ``stride * i - left`` to ``stride * i + right``."""
    stride, left, right = 1, 0, 0
    for layer in layers:
        kernel = getattr(layer, "kernel_size", None)
        if isinstance(layer, L2Pool):
            kernel, step, pad = 3, 2, 1
        elif kernel is None:
            if any(True for _ in layer.children()):
                raise ValueError(f"no receptive-field rule for {type(layer).__name__} blocks; tiles need plain "
                                 "convolutions and pools")
            continue
        else:
            step, pad = getattr(layer, "stride", 1), getattr(layer, "padding", 0)
        k, st, pd = (v[0] if isinstance(v, tuple) else v for v in (kernel, step, pad))
        dil = getattr(layer, "dilation", 1)
        dil = dil[0] if isinstance(dil, tuple) else dil
        left += pd * stride
        right += ((k - 1) * dil - pd) * stride
        stride *= st
    return stride, left, right


# ---------------------------------------------------------------------------------------------------------------
# Named backbones with named taps: one interface for torchvision CNNs and foundation models (zs_iqa registers
# those), so that any backbone can be combined with any comparator (iqa_core.comparators).
# ---------------------------------------------------------------------------------------------------------------

EMBEDDING = "embedding"  # tap name of a backbone's final embedding (where it has one)


class TapBackbone(nn.Module):
    """A frozen backbone returning named intermediate outputs ("taps") of images in [0, 1].

    ``taps`` lists the intermediate taps in forward order (``embedding``, where a backbone has one, is
    asked for by name but not listed; ``image``, where listed, is the input as the first layer sees it).
    ``layout`` is ``"map"`` for (B, C, H, W) taps or ``"tokens"`` for
    (B, T, D) token sequences. ``window`` is the fixed input side of backbones that need one (ViTs: 224):
    images are then scored in sliding windows (iqa_core.deep_features); ``None`` means any size.
    """

    name: str = ""
    taps: tuple[str, ...] = ()
    layout: str = "map"
    window: int | None = None
    has_embedding: bool = False
    min_size: int = 1

    @property
    def default_taps(self) -> tuple[str, ...]:
        """What ``taps=None`` means: every intermediate tap (torchvision backbones: all but ``image``)."""
        return tuple(t for t in self.taps if t != "image")

    def check_taps(self, taps: Sequence[str] | None) -> list[str]:
        taps = list(self.default_taps if taps is None else taps)
        known = set(self.taps) | ({EMBEDDING} if self.has_embedding else set())
        unknown = [t for t in taps if t not in known]
        if unknown or not taps:
            raise KeyError(f"backbone {self.name!r} has no tap {unknown or '(none asked)'}; its taps are "
                           f"{list(self.taps)}{' and ' + repr(EMBEDDING) if self.has_embedding else ''}")
        return taps

    def forward(self, x: torch.Tensor, taps: Sequence[str] | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def min_size_for(self, taps: Sequence[str], requirement: TapRequirement | None = None) -> int:
        """The smallest image side at which ``taps`` exist and meet ``requirement`` (windowed backbones: the
        window, which fixes the taps' sizes)."""
        return self.window or self.min_size

    def window_grid(self, height: int, width: int, stride: int | None = None) -> list[tuple[int, int]]:
        """(top, left) of the ``window`` x ``window`` crops an image is scored in (backbones with a fixed input
        side define their rule; zs_iqa's is the official ZS-IQA one)."""
        raise NotImplementedError(f"{self.name} has a {self.window}-pixel window but no window rule")

    def tile_geometry(self, tap: str) -> tuple[int, int]:
        """(stride, halo) for computing ``tap`` exactly in tiles (:class:`iqa_core.deep_features.DeepFeatureMetric`
        ``tile=``); backbones that cannot say raise ``ValueError``."""
        raise ValueError(f"{self.name} cannot compute its taps in tiles")

    def train(self, mode: bool = True) -> TapBackbone:
        return super().train(False)  # frozen feature extractors: BatchNorm statistics and dropout stay off


class TorchvisionBackbone(TapBackbone):
    """torchvision ``<arch>().features`` with the taps of :data:`BACKBONES`, plus ``pixels`` (the image in [0, 1],
    after ``resize``) and ``image`` (the image as the first layer sees it, after ``normalize``).

    ``normalize``: ``"imagenet"`` (``True``; DeepSSIM, DISTS), ``"lpips"`` (LPIPS's scaling layer) or ``"none"``
    (``False``; the distribution measures). ``l2_pooling``: max pools replaced by :class:`L2Pool` (DISTS, the
    distribution measures' VGG). ``resize``: both images average-pooled by :func:`size_downsample_factor` first
    (the distribution measures). ``forward(x, taps, mask=...)`` multiplies the first convolution's output, before
    its ReLU, by ``mask`` (DeepSSIM's saliency calibration on conv1_1).
    """

    def __init__(self, arch: str, weights: WeightsSource = None, normalize: bool | str = True,
                 l2_pooling: bool = False, resize: bool = False) -> None:
        super().__init__()
        spec = BACKBONES[arch]
        kind = {True: "imagenet", False: "none", None: "none"}.get(normalize, normalize)  # type: ignore[arg-type]
        if kind not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZATIONS)} (or True/False), got {normalize!r}")
        self.name = arch + ("-l2pool" if l2_pooling else "")
        self.arch = arch
        self.taps = ("pixels", "image", *spec.taps)
        self.spec = spec
        self.normalization = kind
        self.normalize = NORMALIZATIONS[kind]()
        self.features = build_features(arch, weights, l2_pooling=l2_pooling)
        self.l2_pooling = l2_pooling
        self.resize = resize
        self.min_size = spec.min_size(tuple(spec.taps), l2_pooling)

    @property
    def default_taps(self) -> tuple[str, ...]:
        return tuple(self.spec.taps)

    def min_size_for(self, taps: Sequence[str], requirement: TapRequirement | None = None) -> int:
        return self.spec.min_size(["image" if t == "pixels" else t for t in taps], self.l2_pooling, requirement)

    def tile_geometry(self, tap: str) -> tuple[int, int]:
        """(stride, halo) for computing ``tap`` in tiles: tile origins on the stride grid, and a halo (a multiple of
        the stride) covering every input pixel a core position depends on, so that the core's features are exact."""
        if self.resize:
            raise ValueError(f"{self.name}: tiles are not exact when the image is resized by its size")
        stride, left, right = receptive_geometry(self.features[:self.spec.taps[tap]])
        reach = max(left, right - (stride - 1))
        return stride, stride * math.ceil(reach / stride)

    def forward(self, x: torch.Tensor, taps: Sequence[str] | None = None,
                mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        taps = self.check_taps(taps)
        x = downsample_by_size(x) if self.resize else x
        outs: dict[str, torch.Tensor] = {"pixels": x}
        x = self.normalize(x)
        outs["image"] = x
        ends = sorted({self.spec.taps[t] for t in taps if t not in outs})
        start = 0
        if mask is not None and ends:
            x = self.features[0](x) * mask
            start = 1
        by_end: dict[int, torch.Tensor] = {}
        for end in ends:
            x = self.features[start:end](x)
            by_end[end] = x
            start = end
        return [outs[t] if t in outs else by_end[self.spec.taps[t]] for t in taps]

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, normalize={self.normalization!r}, l2_pooling={self.l2_pooling}, "
                f"resize={self.resize}")


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    factory: Callable[..., TapBackbone]
    description: str
    #: ImageNet-1k top-1 accuracy (%) of the weights the backbone is meant to carry, and where it comes from
    top1: float | None = None
    top1_source: str = ""
    #: what a user must provide for real weights (file names, formats)
    weights_hint: str = ""


_BACKBONE_REGISTRY: Registry[BackboneInfo] = Registry("backbone")


def register_backbone(name: str, factory: Callable[..., TapBackbone], description: str, top1: float | None = None,
                      top1_source: str = "", weights_hint: str = "") -> None:
    _BACKBONE_REGISTRY.add(name, BackboneInfo(name, factory, description, top1, top1_source, weights_hint))


def list_backbones() -> list[str]:
    """Names of every registered backbone (torchvision CNNs and the foundation models of zs_iqa)."""
    return _BACKBONE_REGISTRY.names()


def backbone_info(name: str) -> BackboneInfo:
    return _BACKBONE_REGISTRY.get(name)


def create_backbone(name: str, weights: WeightsSource = None, **kwargs: Any) -> TapBackbone:
    """Build a registered backbone, frozen and in eval mode, e.g. ``create_backbone("vgg16")``."""
    backbone = backbone_info(name).factory(weights=weights, **kwargs)
    backbone.requires_grad_(False)
    return backbone.eval()


def torchvision_top1(arch: str) -> float | None:
    """ImageNet-1k top-1 (%) that torchvision's metadata records for the IMAGENET1K_V1 weights (offline)."""
    enum = torchvision.models.get_model_weights(arch)
    return float(enum.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"])


def _register_torchvision_backbones() -> None:
    for arch in BACKBONES:
        register_backbone(
            arch, partial(TorchvisionBackbone, arch),
            description=f"torchvision {arch} features, ImageNet-normalised input; taps {list(BACKBONES[arch].taps)}",
            top1=torchvision_top1(arch), top1_source="torchvision weight metadata (IMAGENET1K_V1, acc@1)",
            weights_hint=torchvision_query(arch).advice())


_register_torchvision_backbones()
