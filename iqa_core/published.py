"""The authors' published per-image predictions (data/published/, a copy of the shared folder's tables):
where they are, how to read them, which rows of ``published_correlations.csv`` they stand behind, and
which of our metric names each published column belongs to. See data/published/README.md."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["PUBLISHED_DIR", "DDM_TABLE", "ZS_TABLE", "TABLE_FILES", "DDM_METRIC_COLUMNS", "ZS_METRIC_COLUMNS",
           "read_published", "load_tables", "row_inputs", "published_correlations"]

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "data" / "published"
DDM_TABLE = "deepwsd_tip2024"
ZS_TABLE = "zs_iqa_icassp2025"
TABLE_FILES = {DDM_TABLE: "deepwsd_tip2024.csv.gz", ZS_TABLE: "zs_iqa_icassp2025.csv.gz"}

# Our metric names (iqa_core registry) -> published column. DeepWSD family: the TIP 2024 table.
DDM_METRIC_COLUMNS = {f"deep{m}-{b}": f"deep{m}_{b}" for m in ("wsd", "jsd", "skld")
                      for b in ("vgg", "squeeze", "mobilenet", "efficientnet")}
# ZS-IQA metrics: filled in when they are registered; until then a metric whose name with "-" -> "_"
# is a ZS-IQA column (e.g. "dinov1-l2" -> dinov1_l2) is matched to that column.
ZS_METRIC_COLUMNS: dict[str, str] = {}


def read_published(path: Path) -> pd.DataFrame:
    """Read a published table as its README says: only empty cells are NaN."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def load_tables(published_dir: Path = PUBLISHED_DIR,
                tables: Iterable[str] = (DDM_TABLE, ZS_TABLE)) -> dict[str, pd.DataFrame]:
    return {t: read_published(published_dir / TABLE_FILES[t]) for t in tables}


def published_correlations(published_dir: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """published_correlations.csv: the authors' SRCC/KRCC/PLCC per (table, dataset, subset, method)."""
    return pd.read_csv(published_dir / "published_correlations.csv")


def row_inputs(tables: dict[str, pd.DataFrame], table: str, dataset: str, subset: str,
               method: str) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``x`` and labels ``y`` (the ``mos`` column as stored) behind one row of
    published_correlations.csv, selected as its README §5 defines the subsets."""
    t = tables[table]
    mask = (t.dataset == dataset).to_numpy()
    if table == DDM_TABLE and subset == "distorted_779":
        mask = mask & (t.is_reference_copy == 0).to_numpy()
    return t[method].to_numpy(dtype=np.float64)[mask], t.mos.to_numpy(dtype=np.float64)[mask]
