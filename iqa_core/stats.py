"""Correlation statistics for IQA evaluation: SRCC, KRCC, PLCC (raw and after the 5-parameter
logistic mapping), RMSE, bootstrap confidence intervals and per-distortion-type breakdowns.

The definitions follow ``data/published/README.md`` §5, the recipe with which the project's
``published_correlations.csv`` was computed, so that :func:`correlations` reproduces that file:

* ``srcc`` = ``scipy.stats.spearmanr(x, y)[0]`` (ties get average ranks),
* ``krcc`` = ``scipy.stats.kendalltau(x, y)[0]`` (tau-b),
* ``plcc`` = ``scipy.stats.pearsonr(x, y)[0]``,
* ``plcc_logistic`` = Pearson correlation between the labels and the 5-parameter logistic
  (VQEG / Sheikh et al. 2006) fitted to them, see :func:`fit_logistic5`,
* ``rmse`` = root mean square error of that fitted curve, in label units.

**Signs.** :func:`correlations` always returns the *raw signed* coefficients of the score against
the label as given, as the published table does (a distance against a MOS gives a negative SRCC).
If the caller states the directions (``higher_is_better`` for the metric, ``mos_higher_is_better``
for the labels), the result also holds ``srcc_oriented``, ``krcc_oriented`` and ``plcc_oriented``,
the raw values multiplied by :func:`direction_sign`: positive means "the metric orders the images
as the subjects do". ``plcc_logistic`` needs no orientation: the fitted curve absorbs the direction
(b1 takes the sign of the raw correlation), so it is positive for any fit that helps at all.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["STATS", "bootstrap_ci", "correlations", "direction_sign", "fit_logistic5", "logistic5", "per_group",
           "spearman"]

#: Statistics that :func:`bootstrap_ci` accepts (keys of the :func:`correlations` result).
STATS = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse")

_MIN_PAIRS = 3


class _OnFirstUse:
    """A module imported when first used: scipy.stats costs most of a second of every process's start-up (the
    package imports this module), and scoring never needs it."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


stats = _OnFirstUse("scipy.stats")


def _optimize_warning() -> type[Warning]:
    from scipy.optimize import OptimizeWarning

    return OptimizeWarning


def curve_fit(*args: Any, **kwargs: Any) -> Any:
    """``scipy.optimize.curve_fit``, imported on first use."""
    from scipy.optimize import curve_fit as fit

    return fit(*args, **kwargs)
_MAXFEV = 100000


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """The 5-parameter logistic of VQEG / Sheikh et al. (2006):
    ``f(x) = b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5``."""
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(b2 * (x - b3)))) + b4 * x + b5


def _as_pairs(pred: Any, mos: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"pred and mos differ in length: {x.size} vs {y.size}")
    bad = int((~np.isfinite(x) | ~np.isfinite(y)).sum())
    if bad:
        raise ValueError(f"{bad} of {x.size} pairs are not finite (NaN or inf); drop them before computing statistics")
    if x.size < _MIN_PAIRS:
        raise ValueError(f"need at least {_MIN_PAIRS} pairs, got {x.size}")
    return x, y


def fit_logistic5(pred: Any, mos: Any) -> dict[str, Any]:
    """Fit the 5-parameter logistic of ``mos`` on ``pred`` with the recipe of
    ``data/published/README.md`` §5 (the recipe behind ``plcc_logistic5`` of the published table)::

        z  = (x - mean(x)) / std(x)                       # numpy std, ddof = 0
        s  = +1 if pearsonr(x, y) >= 0 else -1
        p0 = [s * (max(y) - min(y)), 1, 0, 0, mean(y)]    # parameters on the z scale
        popt = curve_fit(logistic5, z, y, p0=p0, method="lm", maxfev=100000)
        betas = [b1, b2 / sd, m + sd * b3, b4 / sd, b5 - b4 * m / sd]   # back on the raw-x scale

    Returns a dict with ``params`` (b1..b5 on the raw-x scale, so ``logistic5(pred, *params)``
    is the fitted curve), ``fitted`` (that curve at ``pred``), ``ok`` and ``message``.

    A failed fit is reported, never replaced: ``ok`` is False, ``params`` and ``fitted`` are NaN
    and ``message`` says why. Failures are: ``curve_fit`` raising (no convergence within
    ``maxfev``, improper input), a constant ``pred`` (z undefined), a non-finite fitted curve or
    non-finite parameters. scipy's ``OptimizeWarning`` "covariance of the parameters could not be
    estimated" concerns only the covariance matrix, which is not used here; the fit itself is
    valid (the published table keeps such fits too), so it is noted in ``message`` but leaves
    ``ok`` True. Any other ``OptimizeWarning`` marks the fit as failed.

    Reproducibility: for ill-conditioned fits (b1 and b5 of order 1e5 that nearly cancel) the
    result depends on floating-point details below the recipe's control (with numpy 2.4.6 and
    scipy 1.17.1, repeating the identical call in one process gave PLCCs differing by up to 4e-7
    on LIVE-982 deepskld_vgg, and the raw betas by up to 40 %). The rank and raw coefficients are
    exact; compare logistic PLCCs to about 1e-4, and compare curves by their values, not by betas.
    """
    x, y = _as_pairs(pred, mos)
    nan5 = [math.nan] * 5
    failed = {"params": nan5, "fitted": np.full_like(y, np.nan), "ok": False}
    m, sd = float(np.mean(x)), float(np.std(x))
    if not (np.isfinite(sd) and sd > 0):
        return {**failed, "message": "fit failed: pred is constant (standard deviation 0)"}
    z = (x - m) / sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        r = stats.pearsonr(x, y)[0]
    s = 1.0 if r >= 0 else -1.0
    p0 = [s * (float(np.max(y)) - float(np.min(y))), 1.0, 0.0, 0.0, float(np.mean(y))]
    notes: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
            warnings.simplefilter("always")
            popt, _ = curve_fit(logistic5, z, y, p0=p0, method="lm", maxfev=_MAXFEV)
            fitted = logistic5(z, *popt)
    except (RuntimeError, ValueError, TypeError) as exc:  # no convergence / improper input
        return {**failed, "message": f"fit failed: {type(exc).__name__}: {exc}"}
    for w in caught:
        if issubclass(w.category, _optimize_warning()):
            if "covariance" in str(w.message).lower():
                notes.append(f"note: {w.message}")
            else:
                return {**failed, "message": f"fit failed: OptimizeWarning: {w.message}"}
    if not (np.all(np.isfinite(popt)) and np.all(np.isfinite(fitted))):
        return {**failed, "message": "fit failed: non-finite parameters or fitted values"}
    b1, b2, b3, b4, b5 = (float(v) for v in popt)
    params = [b1, b2 / sd, m + sd * b3, b4 / sd, b5 - b4 * m / sd]
    return {"params": params, "fitted": fitted, "ok": True, "message": "; ".join(["ok", *notes])}


def direction_sign(higher_is_better: bool, mos_higher_is_better: bool = True) -> int:
    """+1 if the metric and the labels point the same way, else -1. Multiplying a raw correlation
    by it gives the oriented value (positive = the metric agrees with the subjects).

    Examples: a distance (``higher_is_better=False``) against a DMOS (``mos_higher_is_better=False``)
    gives +1; the same distance against a MOS gives -1."""
    return 1 if bool(higher_is_better) == bool(mos_higher_is_better) else -1


def spearman(x: Any, y: Any, min_pairs: int = _MIN_PAIRS) -> float:
    """``scipy.stats.spearmanr(x, y)[0]``, or NaN where it is undefined: fewer than ``min_pairs`` points, or a
    constant side (where scipy would warn)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < min_pairs or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y)[0])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.pearsonr(a, b)[0])


def correlations(pred: Any, mos: Any, higher_is_better: bool | None = None,
                 mos_higher_is_better: bool = True, fit: bool = True) -> dict[str, Any]:
    """SRCC, KRCC, PLCC (raw and after the logistic fit) and RMSE of ``pred`` against ``mos``.

    Keys: ``n``, ``srcc``, ``krcc``, ``plcc`` (raw), ``plcc_logistic``, ``rmse`` (of the fitted
    logistic, in label units), ``logistic_params`` (b1..b5, raw-x scale; see :func:`fit_logistic5`),
    ``fit_ok`` and ``fit_message``. All coefficients are raw and signed, exactly as in
    ``published_correlations.csv`` (columns srcc, krcc, plcc_raw, plcc_logistic5, logistic5_b1..b5).

    A failed logistic fit gives ``fit_ok=False``, its reason in ``fit_message`` and NaN for
    ``plcc_logistic``, ``rmse`` and the parameters; the rank and raw coefficients are still given.

    With ``higher_is_better`` (the metric's direction) the dict also has ``srcc_oriented``,
    ``krcc_oriented`` and ``plcc_oriented`` = raw x :func:`direction_sign` (``mos_higher_is_better``
    is the direction of the labels: False for DMOS). Constant inputs give NaN coefficients.

    ``fit=False`` skips the logistic fit (the slow part): ``plcc_logistic``, ``rmse`` and the
    parameters are NaN, ``fit_ok`` is False and ``fit_message`` says "not fitted".

    Raises ValueError for non-finite values, unequal lengths or fewer than 3 pairs.
    """
    x, y = _as_pairs(pred, mos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        srcc = float(stats.spearmanr(x, y)[0])
        krcc = float(stats.kendalltau(x, y)[0])
    out: dict[str, Any] = {"n": int(x.size), "srcc": srcc, "krcc": krcc, "plcc": _pearson(x, y)}
    if fit:
        lf = fit_logistic5(x, y)
    else:
        lf = {"ok": False, "params": [math.nan] * 5, "message": "not fitted (fit=False)"}
    if lf["ok"]:
        plcc_log = _pearson(lf["fitted"], y)
        rmse = float(np.sqrt(np.mean((lf["fitted"] - y) ** 2)))
        if not np.isfinite(plcc_log):
            lf = {**lf, "ok": False, "message": "fit failed: fitted curve is constant (PLCC undefined)"}
            plcc_log = rmse = math.nan
    else:
        plcc_log = rmse = math.nan
    params = lf["params"] if lf["ok"] else [math.nan] * 5
    out.update(plcc_logistic=plcc_log, rmse=rmse, logistic_params=[float(p) for p in params],
               fit_ok=bool(lf["ok"]), fit_message=lf["message"])
    if higher_is_better is not None:
        sign = direction_sign(higher_is_better, mos_higher_is_better)
        out.update(srcc_oriented=sign * srcc, krcc_oriented=sign * krcc, plcc_oriented=sign * out["plcc"])
    return out


# ------------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------------

def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def _bootstrap_values(x: np.ndarray, y: np.ndarray, stat: str, idx: np.ndarray) -> np.ndarray:
    """The statistic on each resample ``x[idx[i]], y[idx[i]]`` (idx: n_resamples x n)."""
    if stat == "plcc":
        return _rowwise_pearson(x[idx], y[idx])
    if stat == "srcc":  # Spearman = Pearson of average ranks, as scipy.stats.spearmanr
        return _rowwise_pearson(stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1))
    out = np.empty(idx.shape[0])
    for i, row in enumerate(idx):
        if stat == "krcc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                out[i] = stats.kendalltau(x[row], y[row])[0]
        else:  # plcc_logistic / rmse: one logistic fit per resample
            c = correlations(x[row], y[row])
            out[i] = c[stat]
    return out


def bootstrap_ci(pred: Any, mos: Any, stat: str = "srcc", n_boot: int = 1000, alpha: float = 0.05,
                 seed: int | None = 0, chunk_elements: int = 1 << 22) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``stat`` (one of :data:`STATS`), resampling the
    (pred, mos) pairs with replacement ``n_boot`` times with ``numpy.random.default_rng(seed)``.

    Returns ``(low, high)`` = the ``alpha/2`` and ``1 - alpha/2`` quantiles of the bootstrap
    distribution (raw signed values, like :func:`correlations`). The same seed gives the same
    interval. ``srcc`` and ``plcc`` are vectorised over resamples (in chunks of about
    ``chunk_elements`` values); ``krcc`` loops; ``plcc_logistic`` and ``rmse`` run one logistic
    fit per resample (slow on large sets). Resamples whose statistic is undefined (constant
    resample, failed fit) are dropped; if more than half are, ValueError is raised.
    """
    if stat not in STATS:
        raise ValueError(f"unknown stat {stat!r}; choose one of {STATS}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    x, y = _as_pairs(pred, mos)
    rng = np.random.default_rng(seed)
    n = x.size
    per_chunk = max(1, chunk_elements // n)
    values = []
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, n_boot - start), n))
        values.append(_bootstrap_values(x, y, stat, idx))
    v = np.concatenate(values)
    v = v[np.isfinite(v)]
    if v.size < n_boot / 2:
        raise ValueError(f"{stat} undefined in {n_boot - v.size} of {n_boot} bootstrap resamples")
    low, high = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------------
# per-group breakdown
# ------------------------------------------------------------------------------------------------

def per_group(pred: Any, mos: Any, groups: Sequence[Hashable] | np.ndarray, higher_is_better: bool | None = None,
              mos_higher_is_better: bool = True) -> dict[Hashable, dict[str, Any]]:
    """:func:`correlations` for each group (e.g. distortion type), in sorted group order.

    A group with fewer than 3 pairs cannot be evaluated: its entry has ``n``, NaN coefficients,
    ``fit_ok=False`` and ``fit_message`` starting with "skipped". Non-finite pairs raise as in
    :func:`correlations`.
    """
    x, y = _as_pairs(pred, mos)
    g = np.asarray(groups, dtype=object).ravel()
    if g.size != x.size:
        raise ValueError(f"groups has {g.size} entries, pred has {x.size}")
    out: dict[Hashable, dict[str, Any]] = {}
    for key in sorted(set(g.tolist()), key=lambda k: (str(type(k)), k)):
        mask = g == key
        k = int(mask.sum())
        if k < _MIN_PAIRS:
            nan = math.nan
            out[key] = {"n": k, "srcc": nan, "krcc": nan, "plcc": nan, "plcc_logistic": nan, "rmse": nan,
                        "logistic_params": [nan] * 5, "fit_ok": False,
                        "fit_message": f"skipped: {k} pairs, need at least {_MIN_PAIRS}"}
            if higher_is_better is not None:
                out[key].update(srcc_oriented=nan, krcc_oriented=nan, plcc_oriented=nan)
            continue
        out[key] = correlations(x[mask], y[mask], higher_is_better, mos_higher_is_better)
    return out
