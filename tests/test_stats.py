"""iqa_core.stats reproduces data/published/published_correlations.csv (README §5 of that folder),
reports failed logistic fits, and gives seeded bootstrap intervals and per-group breakdowns."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.optimize import OptimizeWarning

import iqa_core.stats as st
from iqa_core.published import DDM_TABLE, load_tables, read_published, row_inputs
from iqa_core.stats import bootstrap_ci, correlations, direction_sign, fit_logistic5, logistic5, per_group

PUBLISHED = Path(__file__).resolve().parents[1] / "data" / "published"
RAW_TOL = 1e-10  # srcc, krcc, plcc_raw: deterministic
# plcc_logistic5 of a least-squares fit whose last digits follow numpy's exp (its SIMD path differs by CPU). Rows whose
# fit is well posed: measured <= 3.7e-7 on an AVX-512 CPU, <= 3.6e-6 on an AVX2 AMD EPYC. Rows flagged
# logistic5_start_sensitive (other starts find other optima, data/published/README.md §5): the optimum reached moves
# with those digits, measured <= 1.7e-3 (TID2013 psnr_rot1 on the AMD EPYC); their published betas are checked
# exactly by test_published_betas_reproduce_published_plcc.
LOGISTIC_TOL = 1e-5
START_SENSITIVE_TOL = 5e-3

@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return load_tables(PUBLISHED)


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    c = read_published(PUBLISHED / "published_correlations.csv")
    return c[c.in_table == 1]


def _inputs(tables, r) -> tuple[np.ndarray, np.ndarray]:
    return row_inputs(tables, r.table, r.dataset, r.subset, r.method)


def _check_logistic(tables, rows: pd.DataFrame) -> None:
    bad = []
    for r in rows.itertuples(index=False):
        x, y = _inputs(tables, r)
        c = correlations(x, y)
        assert c["fit_ok"], (r.dataset, r.method, c["fit_message"])
        with np.errstate(all="ignore"):
            via_betas = sps.pearsonr(logistic5(x, *c["logistic_params"]), y)[0]
        diff = max(abs(c["plcc_logistic"] - r.plcc_logistic5), abs(via_betas - r.plcc_logistic5))
        if diff > (START_SENSITIVE_TOL if r.logistic5_start_sensitive else LOGISTIC_TOL):
            bad.append((r.table, r.dataset, r.subset, r.method, c["plcc_logistic"], via_betas, r.plcc_logistic5))
    assert not bad, bad


def test_published_rank_and_raw_every_row(tables, published):
    assert len(published) == 498
    worst = {"srcc": 0.0, "krcc": 0.0, "plcc": 0.0}
    for r in published.itertuples(index=False):
        x, y = _inputs(tables, r)
        assert len(x) == r.n
        c = correlations(x, y, fit=False)
        for key, col in (("srcc", "srcc"), ("krcc", "krcc"), ("plcc", "plcc_raw")):
            worst[key] = max(worst[key], abs(c[key] - getattr(r, col)))
    assert max(worst.values()) <= RAW_TOL, worst


def test_published_betas_reproduce_published_plcc(tables, published):
    """The logistic function and the raw-x parametrisation are the published ones."""
    for r in published.itertuples(index=False):
        x, y = _inputs(tables, r)
        with np.errstate(all="ignore"):
            p = sps.pearsonr(logistic5(x, *(getattr(r, f"logistic5_b{i}") for i in range(1, 6))), y)[0]
        assert abs(p - r.plcc_logistic5) < 1e-12, (r.dataset, r.method)


def test_published_logistic_every_row(tables, published):
    """plcc_logistic5 of every in_table row (1e-5, start-sensitive fits 5e-3), and our fitted betas evaluate to it
    (~30 s)."""
    _check_logistic(tables, published)


def test_fit_recipe_and_rmse():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, 300)
    y = logistic5(x, 40.0, 0.9, 5.0, 0.5, 50.0) + rng.normal(0, 0.5, x.size)
    c = correlations(x, y)
    assert c["fit_ok"] and c["fit_message"] == "ok"
    yhat = logistic5(x, *c["logistic_params"])
    assert c["rmse"] == pytest.approx(np.sqrt(np.mean((yhat - y) ** 2)), rel=1e-9)
    assert 0.3 < c["rmse"] < 0.7
    assert c["plcc_logistic"] == pytest.approx(sps.pearsonr(yhat, y)[0], abs=1e-12)
    assert c["plcc_logistic"] > c["plcc"] > 0


@pytest.mark.parametrize("pred, reason", [
    ([1.0, 2.0, 3.0, 4.0], "TypeError"),  # 4 pairs, 5 parameters: curve_fit refuses
    ([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], "constant"),
])
def test_failed_fit_is_reported(pred, reason):
    mos = np.arange(len(pred), dtype=float) ** 2
    c = correlations(pred, mos)
    assert c["fit_ok"] is False and reason in c["fit_message"] and c["fit_message"].startswith("fit failed")
    assert math.isnan(c["plcc_logistic"]) and math.isnan(c["rmse"]) and all(map(math.isnan, c["logistic_params"]))
    if reason == "TypeError":
        assert c["srcc"] == pytest.approx(1.0) and c["krcc"] == pytest.approx(1.0)  # the rest is still there


def test_failed_fit_no_convergence(monkeypatch):
    monkeypatch.setattr(st, "_MAXFEV", 2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    c = correlations(x, x + rng.normal(size=50))
    assert not c["fit_ok"] and "RuntimeError" in c["fit_message"] and math.isnan(c["plcc_logistic"])
    assert np.isfinite(c["srcc"])


def test_failed_fit_nonfinite_and_optimize_warning(monkeypatch):
    x = np.linspace(0, 1, 20)
    monkeypatch.setattr(st, "curve_fit", lambda *a, **k: (np.array([np.nan, 1, 0, 0, 0]), None))
    assert "non-finite" in fit_logistic5(x, x)["message"]

    def warns(*a, **k):
        warnings.warn("something else went wrong", OptimizeWarning, stacklevel=1)
        return np.array([1.0, 1, 0, 0, 0]), None

    monkeypatch.setattr(st, "curve_fit", warns)
    f = fit_logistic5(x, x)
    assert not f["ok"] and "OptimizeWarning" in f["message"]

    def cov_warns(*a, **k):
        warnings.warn("Covariance of the parameters could not be estimated", OptimizeWarning, stacklevel=1)
        return np.array([1.0, 1, 0, 0.5, 0]), None

    monkeypatch.setattr(st, "curve_fit", cov_warns)
    f = fit_logistic5(x, x)
    assert f["ok"] and "Covariance" in f["message"]


def test_input_errors():
    with pytest.raises(ValueError, match="not finite"):
        correlations([1, 2, np.nan, 4], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="length"):
        correlations([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        correlations([1, 2], [1, 2])


def test_orientation(tables):
    d = tables[DDM_TABLE]
    csiq, tid = d[d.dataset == "CSIQ"], d[d.dataset == "TID2013"]
    assert direction_sign(False, False) == 1 and direction_sign(False, True) == -1 and direction_sign(True) == 1
    c = correlations(csiq.deepwsd_vgg, csiq.mos, higher_is_better=False, mos_higher_is_better=False, fit=False)
    assert c["srcc"] > 0.9 and c["srcc_oriented"] == c["srcc"]
    t = correlations(tid.deepwsd_vgg, tid.mos, higher_is_better=False, mos_higher_is_better=True)
    assert t["srcc"] < -0.8 and t["srcc_oriented"] == -t["srcc"] and t["krcc_oriented"] == -t["krcc"]
    assert t["plcc_oriented"] == -t["plcc"] and t["plcc_logistic"] > 0  # the fit absorbs the direction
    assert "srcc_oriented" not in correlations(tid.deepwsd_vgg, tid.mos, fit=False)


def test_bootstrap_ci():
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    y = x + rng.normal(size=400)
    for stat in ("srcc", "plcc", "krcc"):
        lo, hi = bootstrap_ci(x, y, stat=stat, n_boot=300, seed=7)
        point = correlations(x, y, fit=False)[stat]
        assert lo < point < hi and hi - lo < 0.25, stat
        assert (lo, hi) == bootstrap_ci(x, y, stat=stat, n_boot=300, seed=7)
        assert (lo, hi) != bootstrap_ci(x, y, stat=stat, n_boot=300, seed=8)
    xs = rng.uniform(0, 10, 80)
    ys = logistic5(xs, 40.0, 0.9, 5.0, 0.5, 50.0) + rng.normal(0, 2.0, xs.size)
    for stat in ("plcc_logistic", "rmse"):
        lo, hi = bootstrap_ci(xs, ys, stat=stat, n_boot=20, seed=0)
        assert lo < correlations(xs, ys)[stat] < hi, stat
    # chunking does not change the result
    assert bootstrap_ci(x, y, n_boot=300, seed=7) == bootstrap_ci(x, y, n_boot=300, seed=7, chunk_elements=1000)
    with pytest.raises(ValueError, match="unknown stat"):
        bootstrap_ci(x, y, stat="nope")


def test_bootstrap_vectorised_matches_scipy():
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=80), 1)  # ties, as in KADID-10k
    y = x + rng.normal(size=80)
    idx = rng.integers(0, 80, size=(20, 80))
    srcc = st._bootstrap_values(x, y, "srcc", idx)
    plcc = st._bootstrap_values(x, y, "plcc", idx)
    for i, row in enumerate(idx):
        assert srcc[i] == pytest.approx(sps.spearmanr(x[row], y[row])[0], abs=1e-12)
        assert plcc[i] == pytest.approx(sps.pearsonr(x[row], y[row])[0], abs=1e-12)


def test_per_group(tables):
    csiq = tables[DDM_TABLE][lambda d: d.dataset == "CSIQ"]
    kind = csiq.dist_image.str.split("/").str[1]
    res = per_group(csiq.deepwsd_vgg, csiq.mos, kind, higher_is_better=False, mos_higher_is_better=False)
    assert list(res) == ["awgn", "blur", "fnoise", "jpeg", "jpeg2000"]
    for k, v in res.items():
        sub = csiq[kind == k]
        assert v["n"] == 150 and v["fit_ok"]
        assert v["srcc"] == pytest.approx(sps.spearmanr(sub.deepwsd_vgg, sub.mos)[0], abs=1e-12)
        assert v["srcc_oriented"] > 0.9
    small = per_group([1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 6], ["a", "a", "a", "a", "b", "b"])
    assert small["a"]["n"] == 4 and small["b"]["fit_message"].startswith("skipped") and math.isnan(small["b"]["srcc"])
    with pytest.raises(ValueError, match="groups"):
        per_group([1, 2, 3], [1, 2, 3], ["a"])


def test_spearman_is_scipys_and_nan_where_undefined():
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    assert st.spearman(x, y) == pytest.approx(sps.spearmanr(x, y)[0], abs=1e-15)
    assert math.isnan(st.spearman(x, np.full(4, 2.0)))  # a constant side
    assert math.isnan(st.spearman(x[:2], y[:2]))  # fewer than 3 pairs by default
    assert st.spearman(x[:2], y[:2], min_pairs=2) == pytest.approx(1.0)
