"""The factors of a (backbone, tap, comparator) cell and the figure of merit that aggregates them (IPRIA 2023).

Pure functions of scores (no files); n pairs, s = score, l = distortion level, q = MOS:

* **accuracy** = |SRCC(s, target)| over the aligned pairs, target = l (synthetic levels) or q (a rated
  dataset); 0 where the SRCC is undefined (constant scores). See :func:`accuracy`.
* **monotonicity** = the fraction of (image, distortion type) sequences whose scores are strictly ordered
  across the levels in the metric's declared direction (a distance strictly increases with the level, a
  similarity strictly decreases); ties count as unordered. See :func:`monotonicity`.
* **robustness** = 1 / (1 + median r) with, for every sequence g and misalignment m (1-4 px translation,
  1-2 degree rotation of the distorted image at the weakest level l1),
  r = |s(T_m(d_l1), ref) - s(d_l1, ref)| / |s(d_l2, ref) - s(d_l1, ref)| (l2 the second-weakest level;
  0/0 := 0, x/0 := inf). 1 when the score ignores the misalignment, 1/2 when the misalignment moves it as
  much as one step from the weakest to the next level, towards 0 beyond. See :func:`robustness`.
* **cost** = milliseconds per 512x384 pair (both images through the backbone up to the tap, then the
  comparator) and the peak memory, measured on the machine (:func:`dps.cost.cell_costs`); normalised across the cells
  as c_norm = 1 / (1 + log10(c / c_min)): 1 for the cheapest cell, 1/2 at 10x its cost, 1/3 at 100x.
* **merit** = the weighted geometric mean exp(sum_i w_i log f_i / sum_i w_i) of the factors f_i in [0, 1]
  (accuracy, robustness, monotonicity, c_norm), default weights :data:`DEFAULT_FACTOR_WEIGHTS`
  (0.4, 0.2, 0.2, 0.2). Equal factors give that value; any factor 0 with a positive weight gives 0. A factor
  that is undefined (NaN: e.g. no levels in a dataset) is left out and the other weights renormalised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from iqa_core.stats import direction_sign, spearman
from iqa_core.transforms import rotate, translate_pixels

__all__ = ["FACTORS", "DEFAULT_FACTOR_WEIGHTS", "ALIGNED", "MISALIGNMENTS", "misalign", "accuracy", "monotonicity",
           "robustness_ratios", "robustness", "normalised_cost", "merit", "parse_factor_weights", "cell_factors",
           "rank_cells"]

FACTORS = ("accuracy", "robustness", "monotonicity", "cost")
#: Default weights of the figure of merit (normalised to sum 1): accuracy counts twice as much as each other factor.
DEFAULT_FACTOR_WEIGHTS: dict[str, float] = {"accuracy": 0.4, "robustness": 0.2, "monotonicity": 0.2, "cost": 0.2}
#: Name of the aligned (not misaligned) pair.
ALIGNED = "none"
#: Misalignments of the robustness factor: name -> (kind, amount); translation in whole pixels (content moves
#: left), rotation in degrees clockwise; reflect borders, so the image keeps its size.
MISALIGNMENTS: dict[str, tuple[str, float]] = {"t1": ("translate", 1), "t2": ("translate", 2),
                                               "t3": ("translate", 3), "t4": ("translate", 4),
                                               "r1": ("rotate", 1), "r2": ("rotate", 2)}

def misalign(x: torch.Tensor, name: str, border: str = "reflect") -> torch.Tensor:
    """The image ``x`` under misalignment ``name`` (a key of :data:`MISALIGNMENTS`, or :data:`ALIGNED`)."""
    if name == ALIGNED:
        return x
    try:
        kind, amount = MISALIGNMENTS[name]
    except KeyError:
        raise KeyError(f"unknown misalignment {name!r}; known: {ALIGNED!r}, {', '.join(MISALIGNMENTS)}") from None
    out = translate_pixels(x, int(amount), border=border) if kind == "translate" else rotate(x, amount, border=border)
    return out.clamp(0, 1)


def _finite_pairs(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets, dtype=np.float64).ravel()
    if s.shape != t.shape:
        raise ValueError(f"scores and targets differ in length: {s.size} vs {t.size}")
    keep = np.isfinite(s) & np.isfinite(t)
    return s[keep], t[keep]


def accuracy(scores: Any, targets: Any) -> float:
    """|SRCC(scores, targets)| over the finite pairs; 0 where it is undefined (constant scores or targets)."""
    rho = spearman(*_finite_pairs(scores, targets), min_pairs=2)
    return 0.0 if math.isnan(rho) else abs(rho)


def _strictly_ordered(values: np.ndarray, increasing: bool) -> bool:
    steps = np.diff(values)
    return bool(np.all(steps > 0) if increasing else np.all(steps < 0))


def monotonicity(sequences: Iterable[Sequence[float]], increasing: bool = True) -> float:
    """Fraction of the sequences (each: scores in level order) that are strictly increasing (``increasing``,
    distances) or strictly decreasing (similarities). A sequence with a non-finite score counts as unordered;
    sequences of fewer than 2 scores are ignored. NaN if none is left."""
    flags = [bool(np.all(np.isfinite(seq))) and _strictly_ordered(seq, increasing)
             for seq in (np.asarray(s, dtype=np.float64) for s in sequences) if seq.size >= 2]
    return float(np.mean(flags)) if flags else math.nan


def robustness_ratios(shifted: Any, aligned: Any, level1: Any, level2: Any) -> np.ndarray:
    """r = |shifted - aligned| / |level2 - level1| elementwise (numpy broadcasting); 0/0 = 0, x/0 = inf."""
    num = np.abs(np.asarray(shifted, dtype=np.float64) - np.asarray(aligned, dtype=np.float64))
    den = np.abs(np.asarray(level2, dtype=np.float64) - np.asarray(level1, dtype=np.float64))
    num, den = np.broadcast_arrays(num, den)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where(num == 0, 0.0, np.where(den == 0, np.inf, r))


def robustness(ratios: Any) -> float:
    """1 / (1 + median r) over the non-NaN ratios (see the module docstring); NaN if there are none."""
    r = np.asarray(ratios, dtype=np.float64).ravel()
    r = r[~np.isnan(r)]
    if r.size == 0:
        return math.nan
    return float(1.0 / (1.0 + np.median(r)))


def normalised_cost(cost_ms: Any) -> np.ndarray:
    """c_norm = 1 / (1 + log10(c / c_min)) over the cells' costs c (ms): 1 for the cheapest, 1/2 at 10x."""
    c = np.asarray(cost_ms, dtype=np.float64)
    finite = c[np.isfinite(c) & (c > 0)]
    if finite.size == 0:
        return np.full_like(c, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / (1.0 + np.log10(np.maximum(c, finite.min()) / finite.min()))


def merit(factors: Mapping[str, Any], factor_weights: Mapping[str, float] | None = None) -> np.ndarray | float:
    """Weighted geometric mean exp(sum w_i log f_i / sum w_i) of the factors (scalars or arrays, clipped to
    [0, 1]), w = ``factor_weights`` (default :data:`DEFAULT_FACTOR_WEIGHTS`), over the factors with a positive
    weight; a NaN factor is left out (its weight dropped) for that cell. ``factors`` maps the names of
    :data:`FACTORS` (``cost`` already normalised) to values."""
    weights = dict(DEFAULT_FACTOR_WEIGHTS if factor_weights is None else factor_weights)
    used = [k for k, w in weights.items() if w > 0]
    missing = [k for k in used if k not in factors]
    if missing:
        raise KeyError(f"merit: no value for factor(s) {missing}")
    if not used:
        raise ValueError("merit: every weight is 0")
    values = np.stack([np.clip(np.asarray(factors[k], dtype=np.float64), 0, 1) for k in used])
    w = np.asarray([weights[k] for k in used], dtype=np.float64).reshape(-1, *([1] * (values.ndim - 1)))
    present = ~np.isnan(values)
    w = np.where(present, w, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(present, np.log(np.where(present, values, 1.0)), 0.0)
        total = w.sum(0)
        out = np.exp(np.where(w > 0, w * logs, 0.0).sum(0) / total)
    out = np.where(total > 0, out, np.nan)
    return float(out) if out.ndim == 0 else out


def parse_factor_weights(text: str | None, defaults: Mapping[str, float] | None = None) -> dict[str, float]:
    """``"accuracy=0.5,cost=0"`` -> the weights of every factor: the named ones as given, the others at
    ``defaults`` (:data:`DEFAULT_FACTOR_WEIGHTS`). Weights are non-negative and are not required to sum to 1 (the merit
    divides by their sum). Raises ValueError for an unknown factor, a malformed item, a negative weight or an
    all-zero result."""
    out = dict(DEFAULT_FACTOR_WEIGHTS if defaults is None else defaults)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        match = re.fullmatch(r"\s*([a-z_]+)\s*=\s*([-+0-9.eE]+)\s*", item)
        if not match:
            raise ValueError(f"factor weights: expected name=value items, got {item!r}")
        name, value = match.group(1), float(match.group(2))
        if name not in FACTORS:
            raise ValueError(f"factor weights: unknown factor {name!r}; factors are {', '.join(FACTORS)}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"factor weights: {name} must be a finite non-negative number, got {value}")
        out[name] = value
    if sum(out.values()) <= 0:
        raise ValueError("factor weights: at least one factor needs a positive weight")
    return out


def _level_sequences(aligned: pd.DataFrame) -> Iterable[tuple[Any, pd.DataFrame]]:
    """(group, rows sorted by level) for the groups that have at least two distinct levels."""
    rows = aligned[np.isfinite(aligned["level"].to_numpy(dtype=np.float64))]
    for group, part in rows.groupby("group", sort=True):
        part = part.groupby("level", as_index=False)["score"].mean().sort_values("level")
        if len(part) >= 2:
            yield group, part


def cell_factors(scores: pd.DataFrame, higher_is_better: bool, target: str = "level",
                 target_higher_is_better: bool = False) -> dict[str, float]:
    """Accuracy, monotonicity and robustness of one cell from its scored pairs.

    ``scores`` has one row per pair with columns ``group`` (the sequence: reference image and distortion type),
    ``level`` (distortion level, NaN where unknown), ``misalign`` (:data:`ALIGNED` or a misalignment name),
    ``score`` and, for ``target="mos"``, ``mos``. ``target_higher_is_better``: the target's direction (levels:
    False, more is worse; a MOS: True, a DMOS: False). Returns ``accuracy`` (|SRCC| with the target over the
    aligned pairs), ``srcc`` (that SRCC signed so that positive means "the metric agrees":
    raw x :func:`iqa_core.stats.direction_sign`), ``monotonicity``, ``robustness`` and the counts ``n_pairs``,
    ``n_sequences``, ``n_misaligned``.
    """
    aligned = scores[scores["misalign"] == ALIGNED]
    t = aligned["level"] if target == "level" else aligned[target]
    s_raw, t_raw = _finite_pairs(aligned["score"], t)
    rho = spearman(s_raw, t_raw, min_pairs=2)
    sign = direction_sign(higher_is_better, target_higher_is_better)
    sequences = dict(_level_sequences(aligned))
    mono = monotonicity((p["score"].to_numpy() for p in sequences.values()), increasing=not higher_is_better)
    ratios = []
    shifted = scores[scores["misalign"] != ALIGNED]
    for group, part in sequences.items():
        (l1, s1), (_, s2) = part[["level", "score"]].to_numpy()[:2]
        moved = shifted[(shifted["group"] == group) & (shifted["level"] == l1)]["score"].to_numpy(np.float64)
        if moved.size:
            ratios.append(robustness_ratios(moved, s1, s1, s2))
    r = np.concatenate(ratios) if ratios else np.array([])
    return {"accuracy": accuracy(s_raw, t_raw), "srcc": sign * rho,
            "monotonicity": mono, "robustness": robustness(r), "n_pairs": int(s_raw.size),
            "n_sequences": len(sequences), "n_misaligned": int(r.size)}


def rank_cells(grid: pd.DataFrame, factor_weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """``grid`` (columns accuracy, robustness, monotonicity, cost_ms) with ``cost_score`` (normalised cost),
    ``merit`` and ``rank`` added, sorted by merit (ties: higher accuracy, then lower cost first)."""
    out = grid.copy()
    out["cost_score"] = normalised_cost(out["cost_ms"].to_numpy(dtype=np.float64))
    factors = {k: out["cost_score" if k == "cost" else k].to_numpy(dtype=np.float64) for k in FACTORS}
    out["merit"] = np.atleast_1d(merit(factors, factor_weights)) if len(out) else []
    out = out.sort_values(["merit", "accuracy", "cost_ms"], ascending=[False, False, True], na_position="last",
                          kind="mergesort").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out
