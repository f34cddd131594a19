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

from typing import Any, ClassVar

import torch

from iqa_core.comparators import Comparator, as_channel_map, mean_of, register_comparator
from iqa_core.deep_features import Preset, PresetMetric
from iqa_core.metric import register_metric
from iqa_core.validation import check_mask
from iqa_core.weights import WeightsSource

__all__ = ["DeepSSIM", "DeepSSIMSC", "DeepSSIMLite", "gram_matrix", "gram_block_similarity",
           "gram_structure_similarity", "deepssim", "EPS", "BLOCK", "GramBlockComparator", "GramGlobalComparator",
           "PRESETS"]

PAPER = ("K. Zhang, W. Chen, T. Zhao, Z. Wang, Structural Similarity in Deep Features: Unified Image "
         "Quality Assessment Robust to Geometrically Disparate Reference, IEEE TPAMI 2025")
EPS = 1e-6  # stabiliser of the structure term, official value
BLOCK = 4  # side of the Gram-matrix blocks, official value
TAP = "relu5_1"


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


@register_comparator("gram-ssim", "DeepSSIM's structure term on 4x4 blocks of each tap's Gram matrix, averaged")
class GramBlockComparator(Comparator):
    """DeepSSIM on any taps: Gram matrix of the channels (tokens: of the D features over the T tokens), mean
    block structure similarity (4 x 4 blocks, eps = 1e-6), averaged over taps. Higher is better; the loss is
    1 - score. The Gram matrix is a sum over positions, so it can be computed in tiles (``additive``)."""

    higher_is_better = True
    requires_same_size = False
    additive = True
    #: divide the Gram matrix by C * positions (DeepSSIM-Lite)
    normalize_gram: ClassVar[bool] = False

    def partial_sums(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [gram_matrix(as_channel_map(t).unsqueeze(-1)) for t in taps]

    def finish(self, sums: list[torch.Tensor], positions: list[int]) -> list[torch.Tensor]:
        if not self.normalize_gram:
            return sums
        return [g / (g.shape[-1] * n) for g, n in zip(sums, positions, strict=True)]

    def prepare(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.finish(self.partial_sums(taps), [as_channel_map(t).shape[-1] for t in taps])

    def block_map(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        """(B, C/4, C/4) block similarities of the first tap (the map whose mean is DeepSSIM)."""
        return gram_block_similarity(dist[0], ref[0])

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return mean_of([gram_block_similarity(d, r).mean(dim=(1, 2)) for d, r in zip(dist, ref, strict=True)])


@register_comparator("gram-ssim-lite", "DeepSSIM-Lite: 1 - one structure term over each normalised Gram matrix")
class GramGlobalComparator(GramBlockComparator):
    """DeepSSIM-Lite on any taps: the Gram matrix divided by C * positions, 1 - one structure term over the whole
    matrix, averaged over taps. Lower is better; the loss is the score."""

    higher_is_better = False
    normalize_gram = True

    def compare(self, dist: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        return mean_of([1 - gram_structure_similarity(d, r) for d, r in zip(dist, ref, strict=True)])


#: The presets: VGG16 relu5_1 of the ImageNet-normalised image at native resolution (step 1 of the module doc)
PRESETS = {
    "deepssim": Preset("vgg16", "gram-ssim", (TAP,)),
    "deepssim-sc": Preset("vgg16", "gram-ssim", (TAP,)),
    "deepssim-lite": Preset("vgg16", "gram-ssim-lite", (TAP,)),
}


class _DeepSSIMPreset(PresetMetric):
    """``tile`` (pixels, a multiple of 16; None: whole images) bounds the memory for large images, exactly: the Gram
    matrix is a sum over positions, G = sum_p f_p f_p^T, so it is the sum of the Gram matrices of the relu5_1
    features of overlapping crops, each crop contributing only its core. A crop is its core plus a halo covering
    relu5_1's receptive field (132 px: 16 i - 58 .. 16 i + 73 for position i, so 64 px on the 16-pixel grid) and
    starts on the stride grid, so the core's features are those of the whole image. Equal to the untiled value up
    to float summation order (tested to 1e-5)."""

    paper = PAPER
    requires_same_size = False

    def __init__(self, weights: WeightsSource = None, dtype: torch.dtype | None = None,
                 tile: int | None = None, **options: Any) -> None:
        super().__init__(weights=weights, dtype=dtype, tile=tile, **options)

    def similarity_map(self, dist: torch.Tensor, ref: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The (B, 128, 128) map of block similarities whose mean is DeepSSIM."""
        dist, ref = self.prepare_pair(dist, ref)
        dist_features, ref_features = self.pair_features(dist, ref, **kwargs)
        return gram_block_similarity(dist_features[0][0], ref_features[0][0])


@register_metric("deepssim", description="DeepSSIM: SSIM structure term on 4x4 blocks of VGG16 relu5_1 Gram "
                 "matrices (TPAMI 2025)")
class DeepSSIM(_DeepSSIMPreset):
    """DeepSSIM without saliency calibration, the paper's default. Higher is better, 1 = identical."""

    name = "deepssim"
    higher_is_better = True
    preset = PRESETS["deepssim"]


@register_metric("deepssim-sc", description="DeepSSIM with saliency calibration (binary saliency mask on "
                 "conv1_1; GBVS maps estimated when none are given)")
class DeepSSIMSC(DeepSSIM):
    """DeepSSIM with saliency ("attention") calibration.

    Call ``metric(dist, ref, saliency_dist=..., saliency_ref=...)`` with saliency maps in [0, 1]
    of the images' sizes ((B,1,H,W), (B,H,W) or (H,W)); a map that is not given is estimated with
    :func:`deepssim.saliency.gbvs` (a reimplementation of the GBVS MATLAB code the authors used) and
    rounded to 8 bits, as the authors' maps were stored as PNG files. Maps are binarised as the authors
    do: 1 where map > threshold (default 0, the official rule on 8-bit maps divided by 255), and the binary
    mask multiplies the conv1_1 output before its ReLU. The authors recommend this variant for retargeting and
    other quality tasks without loss of clarity.
    """

    name = "deepssim-sc"
    preset = PRESETS["deepssim-sc"]

    def __init__(self, weights: WeightsSource = None, dtype: torch.dtype | None = None,
                 threshold: float = 0.0, tile: int | None = None, **options: Any) -> None:
        super().__init__(weights=weights, dtype=dtype, tile=tile, **options)
        self.threshold = threshold

    def saliency_mask(self, image: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Binary (B, 1, H, W) mask for ``image`` from a given or an estimated saliency map."""
        from deepssim.saliency import binarize_saliency, quantize_8bit, saliency_maps

        if saliency is None:
            saliency = quantize_8bit(saliency_maps(image.detach()))
        saliency = check_mask(saliency, image, "saliency map").to(image.device)
        return binarize_saliency(saliency, self.threshold)

    def image_inputs(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> dict[str, Any]:
        return {"mask": self.saliency_mask(x, saliency).to(x.dtype)}


@register_metric("deepssim-lite", description="DeepSSIM-Lite training loss: 1 - global structure term of "
                 "normalised VGG16 relu5_1 Gram matrices")
class DeepSSIMLite(_DeepSSIMPreset):
    """DeepSSIM-Lite loss, 1 - S over the whole normalised Gram matrix. Lower is better, 0 = identical."""

    name = "deepssim-lite"
    higher_is_better = False
    preset = PRESETS["deepssim-lite"]


def deepssim(dist: torch.Tensor, ref: torch.Tensor, weights: WeightsSource = None) -> torch.Tensor:
    """Functional form: per-image DeepSSIM scores (builds the network on each call; keep a
    :class:`DeepSSIM` module for repeated use)."""
    return DeepSSIM(weights=weights).to(dist.device)(dist, ref)
