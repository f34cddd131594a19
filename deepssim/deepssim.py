"""DeepSSIM (Zhang, Chen, Zhao, Wang, "Structural Similarity in Deep Features: Unified Image
Quality Assessment Robust to Geometrically Disparate Reference", IEEE TPAMI 2025).

Official code: github.com/kekezhang112/DeepSSIM @ 1f0e908 (``DeepSSIM_pytorch/DeepSSIM_demo.py``,
``vgg_v16s5c1sal.py``, ``DeepSSIM-Lite/DeepSSIM_lite_loss.py``). What is computed:

1. ImageNet-normalised image at native resolution -> VGG16 ``features[:26]`` = relu5_1, F (C x N).
2. Gram matrix G = F F^T (C x C = 512 x 512). Its size does not depend on the image size, so the
   reference and the distorted image may differ in size (e.g. retargeted images).
3. G is cut into non-overlapping 4 x 4 blocks; per block, with population statistics over its 16
   entries, S = (2 cov + eps) / (var_ref + var_dist + eps), eps = 1e-6. The score is the mean of S
   over the 128 x 128 blocks: 1 for identical images, higher is better.

Saliency calibration multiplies the conv1_1 output (before its ReLU) by a binary saliency mask.
DeepSSIM-Lite (a training loss) normalises G by C*h*w and uses one structure term over the whole
Gram matrix: loss = 1 - S.

Deviation from the official code, as an explicit improvement: the official ``forward`` returns the
mean over the batch; every class here returns one score per image (B=1 equals the official value).
"""

from __future__ import annotations

from typing import Any

import torch

from iqa_core.backbones import BACKBONES, ImageNetNormalize, build_features
from iqa_core.comparators import Comparator, as_channel_map, register_comparator
from iqa_core.metric import FeatureMetric, register_metric
from iqa_core.validation import check_mask
from iqa_core.weights import WeightsSource

__all__ = ["DeepSSIM", "DeepSSIMSC", "DeepSSIMLite", "gram_matrix", "gram_block_similarity",
           "gram_structure_similarity", "deepssim", "EPS", "BLOCK", "GramBlockComparator"]

PAPER = ("K. Zhang, W. Chen, T. Zhao, Z. Wang, Structural Similarity in Deep Features: Unified Image "
         "Quality Assessment Robust to Geometrically Disparate Reference, IEEE TPAMI 2025")
EPS = 1e-6  # stabiliser of the structure term, official value
BLOCK = 4  # side of the Gram-matrix blocks, official value
TAP = "relu5_1"
STRIDE = 16  # relu5_1 of VGG16: four 2x2 max pools
#: Tile halo: relu5_1 sees 132 input pixels (16 i - 58 .. 16 i + 73 for position i), rounded up on the stride grid.
HALO = 80


def gram_matrix(features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """G = F F^T per image, (B, C, h, w) -> (B, C, C); divided by C*h*w when ``normalize`` (Lite)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    gram = torch.bmm(flat, flat.transpose(1, 2))
    return gram / (c * h * w) if normalize else gram


def _structure_term(x: torch.Tensor, y: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    """(2 cov + eps) / (var_x + var_y + eps), population statistics over ``dims``.

    The covariance is E[xy] - E[x]E[y] and the variances are E[(x - E[x])^2], as in the official
    code; keeping its exact form keeps float32 results equal to the authors'.
    """
    mean_x = x.mean(dim=dims, keepdim=True)
    mean_y = y.mean(dim=dims, keepdim=True)
    var_x = ((x - mean_x) ** 2).mean(dim=dims, keepdim=True)
    var_y = ((y - mean_y) ** 2).mean(dim=dims, keepdim=True)
    cov = (x * y).mean(dim=dims, keepdim=True) - mean_x * mean_y
    return ((2 * cov + eps) / (var_x + var_y + eps)).squeeze(dims)


def _blocks(gram: torch.Tensor, block: int) -> torch.Tensor:
    """(B, C, C) -> (B, C/b, C/b, b, b): the non-overlapping b x b blocks of each Gram matrix."""
    b, c, _ = gram.shape
    if c % block:
        raise ValueError(f"Gram matrix side {c} is not a multiple of the block size {block}")
    n = c // block
    return gram.reshape(b, n, block, n, block).permute(0, 1, 3, 2, 4)


def gram_block_similarity(gram_dist: torch.Tensor, gram_ref: torch.Tensor, block: int = BLOCK,
                          eps: float = EPS) -> torch.Tensor:
    """Map of per-block structure similarity, (B, C/block, C/block). Batches of 1 broadcast."""
    return _structure_term(_blocks(gram_dist, block), _blocks(gram_ref, block), dims=(3, 4), eps=eps)


def gram_structure_similarity(gram_dist: torch.Tensor, gram_ref: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """One structure term over each whole Gram matrix (DeepSSIM-Lite), shape (B,)."""
    return _structure_term(gram_dist, gram_ref, dims=(1, 2), eps=eps)


def tiles(length: int, tile: int, halo: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Along one side: (crop start, crop end, core start, core end) of each tile. Cores are consecutive runs of
    ``tile`` pixels (the last one shorter) starting on the backbone's stride grid; crops add ``halo`` pixels on both
    sides, clipped to the image. ``tile`` and ``halo`` are multiples of ``stride``, so every crop starts on the grid
    and its features are the whole image's, shifted by a whole number of positions."""
    out = []
    for core in range(0, length, tile):
        out.append((max(0, core - halo), min(length, core + tile + halo), core, min(length, core + tile)))
    return out


class _VGG16Relu51(FeatureMetric):
    """Shared part: VGG16 up to relu5_1, ImageNet normalisation, optional conv1_1 mask, optional tiling.

    ``tile`` (pixels, a multiple of 16; None: whole images) bounds the memory for large images, exactly: the Gram
    matrix is a sum over positions, G = sum_p f_p f_p^T, so it is the sum of the Gram matrices of the relu5_1
    features of overlapping crops, each crop contributing only its core. A crop is its core plus a halo of
    :data:`HALO` pixels (at least half the receptive field, 132 px) on every side, and starts on the stride grid, so the
    core's features are those of the whole image (zero padding at a crop's inner edges never reaches them).
    Equal to the untiled value up to float summation order (tested to 1e-5)."""

    paper = PAPER
    requires_same_size = False
    #: Divide the Gram matrix by C*h*w (DeepSSIM-Lite) or not (DeepSSIM).
    normalize_gram = False

    def __init__(self, weights: WeightsSource = None, dtype: torch.dtype | None = None,
                 tile: int | None = None) -> None:
        super().__init__()
        if tile is not None and (tile < STRIDE or tile % STRIDE):
            raise ValueError(f"tile must be a positive multiple of {STRIDE} pixels, got {tile}")
        self.tile = tile
        self.normalize = ImageNetNormalize()
        self.backbone = build_features("vgg16", weights, upto=TAP)
        self.min_size = BACKBONES["vgg16"].min_size((TAP,))
        self.set_dtype(dtype)

    def feature_map(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """relu5_1 of the normalised image; ``mask`` multiplies the conv1_1 output before its ReLU."""
        h = self.normalize(x)
        if mask is None:
            return self.backbone(h)
        return self.backbone[1:](self.backbone[0](h) * mask)

    def compare_feature_maps(self, dist_map: torch.Tensor, ref_map: torch.Tensor) -> torch.Tensor:
        """Everything after the backbone: Gram matrices and their comparison (timed by the benchmark)."""
        return self.compare(self.features_from_map(dist_map), self.features_from_map(ref_map))

    def features_from_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        return gram_matrix(feature_map, normalize=self.normalize_gram)

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.tile is None or max(x.shape[-2:]) <= self.tile:
            return self.features_from_map(self.feature_map(x, mask))
        return self.tiled_gram(x, mask)

    def tiled_gram(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The Gram matrix of the whole image's relu5_1 features, summed over tiles (class docstring)."""
        height, width = x.shape[-2:]
        gram, positions = None, 0
        for top, bottom, core_top, core_bottom in tiles(height, self.tile, HALO, STRIDE):
            for left, right, core_left, core_right in tiles(width, self.tile, HALO, STRIDE):
                crop = (..., slice(top, bottom), slice(left, right))
                features = self.feature_map(x[crop], None if mask is None else mask[crop])
                rows = slice((core_top - top) // STRIDE, (core_bottom - top) // STRIDE)
                cols = slice((core_left - left) // STRIDE, (core_right - left) // STRIDE)
                core = features[..., rows, cols]
                part = gram_matrix(core)
                gram = part if gram is None else gram + part
                positions += core.shape[-2] * core.shape[-1]
        return gram / (gram.shape[-1] * positions) if self.normalize_gram else gram


@register_metric("deepssim", description="DeepSSIM: SSIM structure term on 4x4 blocks of VGG16 relu5_1 Gram "
                 "matrices (TPAMI 2025)")
class DeepSSIM(_VGG16Relu51):
    """DeepSSIM without saliency calibration, the paper's default. Higher is better, 1 = identical."""

    name = "deepssim"
    higher_is_better = True

    def pair_features(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return self.features(dist), self.features(ref)

    def score(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.compare(*self.pair_features(dist, ref, **kwargs))

    def compare(self, dist_features: torch.Tensor, ref_features: torch.Tensor) -> torch.Tensor:
        return gram_block_similarity(dist_features, ref_features).mean(dim=(1, 2))

    def similarity_map(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The (B, 128, 128) map of block similarities whose mean is the score."""
        dist, ref = self.prepare_pair(dist, ref)
        return gram_block_similarity(*self.pair_features(dist, ref, **kwargs))

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return 1 - self(dist, ref, **kwargs)


@register_metric("deepssim-sc", description="DeepSSIM with saliency calibration (binary saliency mask on "
                 "conv1_1; GBVS maps estimated when none are given)")
class DeepSSIMSC(DeepSSIM):
    """DeepSSIM with saliency ("attention") calibration.

    Call ``metric(dist, ref, saliency_dist=..., saliency_ref=...)`` with saliency maps in [0, 1]
    of the images' sizes ((B,1,H,W), (B,H,W) or (H,W)); a map that is not given is estimated with
    :func:`deepssim.saliency.gbvs` (a reimplementation of the GBVS MATLAB code the authors used) and
    rounded to 8 bits, as the authors' maps were stored as PNG files. Maps are binarised as the authors
    do: 1 where map > threshold (default 0, the official rule on 8-bit maps divided by 255). The authors
    recommend this variant for retargeting and other quality tasks without loss of clarity.
    """

    name = "deepssim-sc"

    def __init__(self, weights: WeightsSource = None, dtype: torch.dtype | None = None,
                 threshold: float = 0.0, tile: int | None = None) -> None:
        super().__init__(weights=weights, dtype=dtype, tile=tile)
        self.threshold = threshold

    def saliency_mask(self, image: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Binary (B, 1, H, W) mask for ``image`` from a given or an estimated saliency map."""
        from deepssim.saliency import binarize_saliency, quantize_8bit, saliency_maps

        if saliency is None:
            saliency = quantize_8bit(saliency_maps(image.detach()))
        saliency = check_mask(saliency, image, "saliency map").to(image.device)
        return binarize_saliency(saliency, self.threshold)

    def features(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        return super().features(x, mask=self.saliency_mask(x, saliency))

    def pair_features(self, dist: torch.Tensor, ref: torch.Tensor, saliency_dist: torch.Tensor | None = None,
                      saliency_ref: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return self.features(dist, saliency_dist), self.features(ref, saliency_ref)


@register_metric("deepssim-lite", description="DeepSSIM-Lite training loss: 1 - global structure term of "
                 "normalised VGG16 relu5_1 Gram matrices")
class DeepSSIMLite(_VGG16Relu51):
    """DeepSSIM-Lite loss, 1 - S over the whole normalised Gram matrix. Lower is better, 0 = identical."""

    name = "deepssim-lite"
    higher_is_better = False
    normalize_gram = True

    def compare(self, dist_features: torch.Tensor, ref_features: torch.Tensor) -> torch.Tensor:
        return 1 - gram_structure_similarity(dist_features, ref_features)

    def loss(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self(dist, ref)


def deepssim(dist: torch.Tensor, ref: torch.Tensor, weights: WeightsSource = None) -> torch.Tensor:
    """Functional form: per-image DeepSSIM scores (builds the network on each call; keep a
    :class:`DeepSSIM` module for repeated use)."""
    return DeepSSIM(weights=weights).to(dist.device)(dist, ref)


@register_comparator("gram-ssim", "DeepSSIM's structure term on 4x4 blocks of each tap's Gram matrix, averaged")
class GramBlockComparator(Comparator):
    """DeepSSIM on any tap: Gram matrix of the channels (tokens: of the D features over the T tokens), mean
    block structure similarity, averaged over taps. Higher is better. On VGG16 ``relu5_1`` (ImageNet-normalised
    input) it equals the registered ``deepssim``."""

    higher_is_better = True
    requires_same_size = False

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = [as_channel_map(t) for t in taps]
        return [gram_matrix(f.unsqueeze(-1)) for f in flat]

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([gram_block_similarity(d, r).mean(dim=(1, 2)) for d, r in zip(dist, ref, strict=True)]
                           ).mean(0)
