"""Deep perceptual similarity (DPS) analysis, after Khatami & Mahmoudi-Aznaveh, "Deep perceptual similarity and
Quality Assessment" (IPRIA 2023), of which only the abstract is public: compare (backbone, tap, comparator) cells
by several desired factors, aggregate them into one figure of merit, and look at the outliers' spectral content.

The factors and the merit (:mod:`dps.factors`), the outlier measures (:mod:`dps.outliers`) and the cost of a cell
(:mod:`dps.cost`) are pure functions of scores, images or a :class:`~iqa_core.deep_features.TapGrid` (no files);
``experiments/dps_analysis.py`` composes them. Every formula is in the docstring of its module.
"""

from dps.cost import COST_SIZE, cell_costs, peak_memory_mib, synthetic_pair, time_ms
from dps.factors import (
    ALIGNED,
    DEFAULT_FACTOR_WEIGHTS,
    FACTORS,
    MISALIGNMENTS,
    accuracy,
    cell_factors,
    merit,
    misalign,
    monotonicity,
    normalised_cost,
    parse_factor_weights,
    rank_cells,
    robustness,
    robustness_ratios,
)
from dps.outliers import (
    BAND_EDGES,
    HF_CUTOFF,
    band_energy_shares,
    hf_energy_share,
    logistic_disagreement,
    luminance,
    power_spectrum,
    rank_disagreement,
)

__all__ = ["FACTORS", "DEFAULT_FACTOR_WEIGHTS", "HF_CUTOFF", "BAND_EDGES", "ALIGNED", "MISALIGNMENTS", "misalign",
           "accuracy", "monotonicity", "robustness_ratios", "robustness", "normalised_cost", "merit",
           "parse_factor_weights", "cell_factors", "rank_cells", "luminance", "power_spectrum", "band_energy_shares",
           "hf_energy_share", "rank_disagreement", "logistic_disagreement",
           "synthetic_pair", "time_ms", "peak_memory_mib", "cell_costs", "COST_SIZE"]
