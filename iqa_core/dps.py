"""Deep perceptual similarity (DPS) analysis: the factors, the figure of merit and the spectral outlier measures.

After Khatami & Mahmoudi-Aznaveh, "Deep perceptual similarity and Quality Assessment" (IPRIA 2023), of which
only the abstract is public: compare (backbone, tap, comparator) cells by several desired factors, aggregate
them into one figure of merit, and look at the outliers' spectral content. Everything here is a pure function
of scores, images or a :class:`~iqa_core.deep_features.TapGrid` (no files); ``experiments/dps_analysis.py``
composes it. Formulas (n pairs; s = score, l = distortion level, q = MOS):

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
  comparator) and the peak memory, measured on the machine (:func:`cell_costs`); normalised across the cells
  as c_norm = 1 / (1 + log10(c / c_min)): 1 for the cheapest cell, 1/2 at 10x its cost, 1/3 at 100x.
* **merit** = the weighted geometric mean exp(sum_i w_i log f_i / sum_i w_i) of the factors f_i in [0, 1]
  (accuracy, robustness, monotonicity, c_norm), default weights :data:`DEFAULT_WEIGHTS`
  (0.4, 0.2, 0.2, 0.2). Equal factors give that value; any factor 0 with a positive weight gives 0. A factor
  that is undefined (NaN: e.g. no levels in a dataset) is left out and the other weights renormalised.

Outliers:

* **high-frequency energy share** of an image: luminance Y = 0.299 R + 0.587 G + 0.114 B, mean removed,
  2-D Hann window, power spectrum P = |FFT2|^2 on the frequency grid (cycles/pixel, |f_x|, |f_y| <= 1/2),
  radial frequency rho = sqrt(f_x^2 + f_y^2); share = sum P[rho >= 1/4] / sum P[rho > 0] (the top octave
  below Nyquist and the corners beyond it; the DC bin excluded). Radial octave bands :data:`BAND_EDGES`.
  White noise gives the band-area fraction 1 - pi/16 = 0.80; a flat image 0.
* **disagreement** of a pair, without MOS: the rank error |R(s~) - R(l)| / n among the n aligned pairs of the
  same distortion type (pooled over images; s~ = s for distances, -s for similarities; average ranks for
  ties), in [0, 1); it is large when a content's scores sit too high or too low for their level. With MOS:
  |q - f(s)| / std(q), the absolute residual after the 5-parameter logistic f fitted to the MOS
  (:func:`iqa_core.stats.fit_logistic5`), in MOS standard deviations.
"""

from __future__ import annotations

import ctypes
import gc
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from iqa_core.deep_features import TapGrid, windowed_taps
from iqa_core.stats import direction_sign, fit_logistic5, spearman
from iqa_core.timing import time_ms
from iqa_core.transforms import rotate, translate_pixels

__all__ = ["FACTORS", "DEFAULT_WEIGHTS", "HF_CUTOFF", "BAND_EDGES", "ALIGNED", "MISALIGNMENTS", "misalign",
           "accuracy", "monotonicity", "robustness_ratios", "robustness", "normalised_cost", "merit",
           "parse_weights", "cell_factors", "rank_cells", "luminance", "power_spectrum", "band_energy_shares",
           "hf_energy_share", "rank_disagreement", "logistic_disagreement",
           "synthetic_pair", "time_ms", "peak_memory_mib", "cell_costs", "COST_SIZE"]

FACTORS = ("accuracy", "robustness", "monotonicity", "cost")
#: Default weights of the figure of merit (normalised to sum 1): accuracy counts twice as much as each other factor.
DEFAULT_WEIGHTS: dict[str, float] = {"accuracy": 0.4, "robustness": 0.2, "monotonicity": 0.2, "cost": 0.2}
#: Radial cut-off of the high-frequency band, cycles/pixel (Nyquist is 1/2): the top octave.
HF_CUTOFF = 0.25
#: Radial octave band edges, cycles/pixel; the last edge is the corner of the frequency grid, sqrt(2)/2.
BAND_EDGES = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, math.sqrt(0.5))
#: Name of the aligned (not misaligned) pair.
ALIGNED = "none"
#: Misalignments of the robustness factor: name -> (kind, amount); translation in whole pixels (content moves
#: left), rotation in degrees clockwise; reflect borders, so the image keeps its size.
MISALIGNMENTS: dict[str, tuple[str, float]] = {"t1": ("translate", 1), "t2": ("translate", 2),
                                               "t3": ("translate", 3), "t4": ("translate", 4),
                                               "r1": ("rotate", 1), "r2": ("rotate", 2)}
#: (height, width) of the synthetic pair on which costs are measured.
COST_SIZE = (384, 512)


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


# ---------------------------------------------------------------------------------------------------------------
# The factors
# ---------------------------------------------------------------------------------------------------------------

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


def merit(factors: Mapping[str, Any], weights: Mapping[str, float] | None = None) -> np.ndarray | float:
    """Weighted geometric mean exp(sum w_i log f_i / sum w_i) of the factors (scalars or arrays, clipped to
    [0, 1]), over the factors with a positive weight; a NaN factor is left out (its weight dropped) for that
    cell. ``factors`` maps the names of :data:`FACTORS` (``cost`` already normalised) to values."""
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
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


def parse_weights(text: str | None, defaults: Mapping[str, float] | None = None) -> dict[str, float]:
    """``"accuracy=0.5,cost=0"`` -> the weights of every factor: the named ones as given, the others at
    ``defaults`` (:data:`DEFAULT_WEIGHTS`). Weights are non-negative and are not required to sum to 1 (the merit
    divides by their sum). Raises ValueError for an unknown factor, a malformed item, a negative weight or an
    all-zero result."""
    out = dict(DEFAULT_WEIGHTS if defaults is None else defaults)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        match = re.fullmatch(r"\s*([a-z_]+)\s*=\s*([-+0-9.eE]+)\s*", item)
        if not match:
            raise ValueError(f"weights: expected name=value items, got {item!r}")
        name, value = match.group(1), float(match.group(2))
        if name not in FACTORS:
            raise ValueError(f"weights: unknown factor {name!r}; factors are {', '.join(FACTORS)}")
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"weights: {name} must be a finite non-negative number, got {value}")
        out[name] = value
    if sum(out.values()) <= 0:
        raise ValueError("weights: at least one factor needs a positive weight")
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


def rank_cells(grid: pd.DataFrame, weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """``grid`` (columns accuracy, robustness, monotonicity, cost_ms) with ``cost_score`` (normalised cost),
    ``merit`` and ``rank`` added, sorted by merit (ties: higher accuracy, then lower cost first)."""
    out = grid.copy()
    out["cost_score"] = normalised_cost(out["cost_ms"].to_numpy(dtype=np.float64))
    factors = {k: out["cost_score" if k == "cost" else k].to_numpy(dtype=np.float64) for k in FACTORS}
    out["merit"] = np.atleast_1d(merit(factors, weights)) if len(out) else []
    out = out.sort_values(["merit", "accuracy", "cost_ms"], ascending=[False, False, True], na_position="last",
                          kind="mergesort").reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Spectra and disagreement
# ---------------------------------------------------------------------------------------------------------------

def luminance(image: Any) -> np.ndarray:
    """BT.601 luma 0.299 R + 0.587 G + 0.114 B of a (1, 3, H, W) / (3, H, W) tensor or an (H, W, 3) array
    (a 2-D input is taken as the luminance itself), float64 (H, W)."""
    if isinstance(image, torch.Tensor):
        x = image.detach().to("cpu", torch.float64)
        x = x[0] if x.dim() == 4 else x
        if x.dim() == 2:
            return x.numpy()
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        return a
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def power_spectrum(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """(P, rho): the power spectrum |FFT2(w (Y - mean Y))|^2 of the luminance with a 2-D Hann window w, and the
    radial frequency of each bin in cycles/pixel (numpy's FFT layout, DC at [0, 0])."""
    y = luminance(image)
    h, w = y.shape
    window = np.outer(np.hanning(h), np.hanning(w)) if min(h, w) > 2 else np.ones((h, w))
    centred = y - y.mean() if np.ptp(y) > 0 else np.zeros_like(y)  # a flat image has no energy (not round-off)
    power = np.abs(np.fft.fft2(centred * window)) ** 2
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return power, np.sqrt(fx**2 + fy**2)


def band_energy_shares(image: Any, edges: Sequence[float] = BAND_EDGES) -> np.ndarray:
    """Share of the (non-DC) spectral energy in each radial band [edges[k], edges[k+1]) (the last band closed);
    zeros for a flat image."""
    power, rho = power_spectrum(image)
    total = power[rho > 0].sum()
    shares = []
    for k in range(len(edges) - 1):
        upper = rho <= edges[k + 1] if k == len(edges) - 2 else rho < edges[k + 1]
        shares.append(power[(rho >= edges[k]) & upper & (rho > 0)].sum())
    return np.asarray(shares) / total if total > 0 else np.zeros(len(edges) - 1)


def hf_energy_share(image: Any, cutoff: float = HF_CUTOFF) -> float:
    """sum P[rho >= cutoff] / sum P[rho > 0] (see :func:`power_spectrum`); 0 for a flat image."""
    power, rho = power_spectrum(image)
    total = power[rho > 0].sum()
    return float(power[rho >= cutoff].sum() / total) if total > 0 else 0.0


def rank_disagreement(scores: Any, levels: Any, groups: Any, higher_is_better: bool) -> np.ndarray:
    """|R(s~) - R(l)| / n within each group (distortion type) of n pairs: R = average ranks, s~ = s for
    distances, -s for similarities. 0 where the metric orders the pairs exactly as the levels."""
    s = np.asarray(scores, dtype=np.float64) * (-1.0 if higher_is_better else 1.0)
    lv = np.asarray(levels, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    out = np.full(s.shape, np.nan)
    for key in pd.unique(g):
        m = g == key
        out[m] = np.abs(stats.rankdata(s[m]) - stats.rankdata(lv[m])) / m.sum()
    return out


def logistic_disagreement(scores: Any, mos: Any) -> tuple[np.ndarray | None, str]:
    """(|q - f(s)| / std(q), message) with f the 5-parameter logistic fitted to the MOS; (None, reason) when the
    fit fails (the caller reports it)."""
    q = np.asarray(mos, dtype=np.float64)
    fit = fit_logistic5(scores, q)
    if not fit["ok"]:
        return None, fit["message"]
    sd = float(np.std(q))
    return np.abs(q - fit["fitted"]) / (sd if sd > 0 else 1.0), fit["message"]


# ---------------------------------------------------------------------------------------------------------------
# Cost: time and peak memory of a cell on a 512x384 pair
# ---------------------------------------------------------------------------------------------------------------

def synthetic_pair(height: int = COST_SIZE[0], width: int = COST_SIZE[1], seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(dist, ref): a seeded smooth random RGB image (noise upsampled from 1/8 size) and a noisy copy, (1,3,H,W)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 8), max(1, width // 8), generator=gen)
    ref = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    dist = (ref + 0.05 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    return dist.to(device), ref.to(device)


_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if not match:
        raise OSError(f"{field} not in {_STATUS}")
    return int(match.group(1))


def _reset_peak_rss() -> int:
    """Give freed heap memory back (glibc malloc_trim), reset the peak RSS (Linux: ``5`` to /proc/self/clear_refs)
    and return the current RSS in KiB. Raises OSError where that is not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_memory_mib(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Peak memory that ``fn()`` adds, in MiB: on CUDA the peak allocation above the allocation before the call
    (``torch.cuda.max_memory_allocated``); on the CPU the peak resident set above the RSS before the call (Linux:
    VmHWM after resetting it through /proc/self/clear_refs); NaN where neither is available. The value returned
    by ``fn`` is kept alive until the peak is read."""
    device = torch.device(device)
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = fn()
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            del result
            return float(peak)
        try:
            base = _reset_peak_rss()
        except OSError:
            return math.nan
        result = fn()
        peak = (_status_kib("VmHWM") - base) / 1024
        del result
        return float(max(peak, 0.0))


def _tap_bytes(outs: list[list[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for window in outs for t in window)


def cell_costs(grid: TapGrid, height: int = COST_SIZE[0], width: int = COST_SIZE[1], repeats: int = 3,
               warmup: int = 1, seed: int = 0, progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Cost of every cell of ``grid`` on a synthetic ``height`` x ``width`` pair (:func:`synthetic_pair`).

    Per tap, ``backbone_ms`` = median time of one image's pass up to that tap (windows included); per cell,
    ``compare_ms`` = median time of the comparator on the two images' taps (both ``prepare`` and ``compare``),
    and ``cost_ms = 2 backbone_ms + compare_ms``: the time to score one pair from scratch. ``peak_mib`` = the
    larger of the peak memory of the two passes (:func:`peak_memory_mib`) and the two images' taps plus the
    comparator's peak: what scoring the pair needs above the loaded backbone. Returns one row per cell
    (tap, comparator, cost_ms, backbone_ms, compare_ms, peak_mib)."""
    device = next((p.device for p in grid.backbone.parameters()), torch.device("cpu"))
    dist, ref = synthetic_pair(height, width, seed, device)
    rows = []
    for tap in grid.tap_names:
        cells = [(name, comp) for (t, name), comp in grid.cells.items() if t == tap]
        if cells:
            if progress:
                progress(tap)
            rows += _tap_costs(grid, tap, cells, dist, ref, repeats, warmup, device)
    return pd.DataFrame(rows, columns=["tap", "comparator", "cost_ms", "backbone_ms", "compare_ms", "peak_mib"])


def _tap_costs(grid: TapGrid, tap: str, cells: list[tuple[str, Any]], dist: torch.Tensor, ref: torch.Tensor,
               repeats: int, warmup: int, device: torch.device) -> list[dict[str, Any]]:
    """The rows of :func:`cell_costs` for the cells of one tap."""

    def run(x: torch.Tensor) -> list[list[torch.Tensor]]:
        return windowed_taps(grid.backbone, x, [tap], grid.stride, grid.windows_per_pass)

    backbone_ms = time_ms(lambda: run(dist), repeats, warmup, device)
    peak_passes = peak_memory_mib(lambda: (run(dist), run(ref)), device)
    with torch.no_grad():
        d_outs, r_outs = run(dist), run(ref)
    taps_mib = (_tap_bytes(d_outs) + _tap_bytes(r_outs)) / 2**20
    rows = []
    for name, comp in cells:
        def compare(comp: Any = comp) -> list[torch.Tensor]:
            return [comp(d, r) for d, r in zip(d_outs, r_outs, strict=True)]

        compare_ms = time_ms(compare, repeats, warmup, device)
        peak = max(peak_passes, taps_mib + peak_memory_mib(compare, device))
        rows.append({"tap": tap, "comparator": name, "cost_ms": 2 * backbone_ms + compare_ms,
                     "backbone_ms": backbone_ms, "compare_ms": compare_ms, "peak_mib": peak})
    return rows
