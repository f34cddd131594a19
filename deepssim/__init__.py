"""DeepSSIM (TPAMI 2025): structural similarity of deep-feature Gram matrices."""

from deepssim.deepssim import (
    BLOCK,
    EPS,
    DeepSSIM,
    DeepSSIMLite,
    DeepSSIMSC,
    deepssim,
    gram_block_similarity,
    gram_matrix,
    gram_structure_similarity,
)

__all__ = ["DeepSSIM", "DeepSSIMSC", "DeepSSIMLite", "deepssim", "gram_matrix", "gram_block_similarity",
           "gram_structure_similarity", "EPS", "BLOCK"]
