"""Deep distribution measures (DeepWSD / DeepJSD / DeepSKLD, Liao et al., IEEE TIP 2024)."""

from distribution_measures.distances import (
    columns,
    fit_to_window,
    js_divergence,
    l2_weight,
    symmetric_kl,
    wasserstein_grid,
    wasserstein_grid_reference,
)
from distribution_measures.measures import (
    VARIANTS,
    DistributionMeasure,
    Recipe,
    Variant,
    downsample,
    downsample_factor,
)

__all__ = ["DistributionMeasure", "Variant", "Recipe", "VARIANTS", "downsample", "downsample_factor", "columns",
           "fit_to_window", "wasserstein_grid", "wasserstein_grid_reference", "js_divergence", "symmetric_kl",
           "l2_weight"]
