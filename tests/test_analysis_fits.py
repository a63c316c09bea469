"""Fits recover known laws from synthetic data (power laws, IsoFLOP, frontier, Approach 1
and 3, Kaplan's L(N, D)), and the batched optimiser behaves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.fits._lbfgs import CONVERGED, STALLED, minimize_batched
from analysis.fits.chinchilla import fit_approach3, fit_kaplan
from analysis.fits.frontier import fit_approach1, fit_frontier
from analysis.fits.isoflop import fit_isoflop, group_budgets
from analysis.load import load_results
from analysis.fits.powerlaw import fit_power_law
from analysis.synthetic import TRUE_LAW, law_loss, make_scaling_sweep, true_optimum

AL, BE = TRUE_LAW["alpha"], TRUE_LAW["beta"]
TRUE_A = BE / (AL + BE)


def _inside(fit, name, truth):
    lo, hi = fit.interval(name)
    assert lo <= truth <= hi, f"{name}: true {truth} outside [{lo}, {hi}] (estimate {fit.params[name]})"


# ------------------------------------------------------------------ batched L-BFGS


def test_batched_lbfgs_rosenbrock_and_quadratics():
    def fg(x, rows):
        a, b = x[:, 0], x[:, 1]
        f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
        g = np.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)], axis=1)
        return f, g

    x0 = np.array([[-1.2, 1.0], [0.0, 0.0], [2.0, -1.0], [-3.0, 5.0]])
    res = minimize_batched(fg, x0, max_iter=2000)
    assert np.isin(res.status, (CONVERGED, STALLED)).all()
    assert np.allclose(res.x, 1.0, atol=1e-5)

    # scale invariance: the same problem times 1e-8 stops at the same point
    res2 = minimize_batched(lambda x, r: tuple(v * 1e-8 for v in fg(x, r)), x0, max_iter=2000)
    assert np.allclose(res2.x, res.x, atol=1e-5)


# ------------------------------------------------------------------ power laws


@pytest.mark.parametrize("irreducible", [True, False])
def test_power_law_recovers_exponent(irreducible):
    rng = np.random.default_rng(3)
    x = np.geomspace(1e6, 1e10, 25)
    E, xc, alpha = (1.7 if irreducible else 0.0), 3e8, 0.3
    L = (E + (xc / x) ** alpha) * np.exp(0.004 * rng.standard_normal(x.size))
    fit = fit_power_law(x, L, irreducible=irreducible, n_boot=200, seed=1)
    _inside(fit, "alpha", alpha)
    assert fit.params["alpha"] == pytest.approx(alpha, rel=0.1)
    if irreducible:
        _inside(fit, "E", E)
    assert fit.samples["alpha"].notna().mean() > 0.95
    # prediction and inverse are consistent
    assert fit.inverse(fit.predict(1e9)) == pytest.approx(1e9, rel=1e-6)


def test_power_law_needs_enough_points():
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([1, 2, 3], [3.0, 2.5, 2.2], irreducible=True)


# ------------------------------------------------------------------ IsoFLOP (Approach 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_scaling_sweep(tmp_path_factory.mktemp("sweep") / "scaling", seed=0)


def test_isoflop_recovers_exponents(sweep):
    df = load_results(sweep)
    d = df[df["status"] == "done"]
    fit = fit_isoflop(d["C"], d["loss"], N=d["N"], budget=d["compute_budget"], n_boot=300, seed=0)
    assert fit.info["n_budgets_used"] == 5
    _inside(fit, "a", TRUE_A)
    _inside(fit, "b", 1 - TRUE_A)
    assert fit.params["a"] + fit.params["b"] == pytest.approx(1.0)
    # per-budget optima close to the true ones
    n_true, _ = true_optimum(fit.budgets["C"].to_numpy())
    assert np.allclose(np.log10(fit.budgets["N_opt"]), np.log10(n_true), atol=0.12)
    assert (fit.budgets["N_opt_low"] < fit.budgets["N_opt"]).all()


def test_isoflop_groups_budgets_and_derives_N_from_D(sweep):
    d = load_results(sweep)
    d = d[d["status"] == "done"]
    # no budget column, and only D: budgets from grouping C, N = C / (6 D)
    fit = fit_isoflop(d["C"] * np.exp(0.01 * np.sin(np.arange(len(d)))), d["loss"], D=d["D"],
                      n_boot=100)
    assert fit.info["n_budgets"] == 5
    _inside(fit, "a", TRUE_A)
    labels = group_budgets([1e18, 1.02e18, 0.99e18, 3e18, 3.1e18])
    assert len(np.unique(labels)) == 2


def test_isoflop_flags_unbracketed_budget():
    N = np.geomspace(1e6, 1e7, 5)
    rows = []
    for C in (1e17, 1e18, 1e19):  # optima far above the sampled sizes for the largest budgets
        for n in N:
            rows.append((C, n, law_loss(n, C / (6 * n))))
    C, N_, L = map(np.array, zip(*rows))
    fit = fit_isoflop(C, L, N=N_, budget=C, n_boot=0)
    assert not fit.determined and np.isnan(fit.params["a"])
    assert fit.info["n_budgets_used"] < 3
    assert "not determined" in fit.info["not_determined"]
    assert any("not bracketed" in s for s in fit.info["budgets_skipped"])


# ------------------------------------------------------------------ frontier and Approach 1


@pytest.fixture(scope="module")
def curves():
    rng = np.random.default_rng(0)
    parts, sizes = [], {}
    for i, N in enumerate(np.geomspace(1e6, 1e9, 16)):
        t = np.geomspace(1e6, 200 * N, 60)
        L = law_loss(N, t) * np.exp(0.003 * rng.standard_normal(t.size))
        parts.append(pd.DataFrame({"point_id": f"r{i}", "tokens": t, "flops": 6 * N * t, "loss": L}))
        sizes[f"r{i}"] = N
    return pd.concat(parts, ignore_index=True), sizes


def test_frontier_recovers_compute_law(curves):
    cv, sizes = curves
    fit = fit_frontier(cv, sizes=sizes, n_boot=100, seed=0)
    gamma = AL * BE / (AL + BE)  # envelope of E + A/N^alpha + B/D^beta under C = 6ND
    assert fit.params["alpha"] == pytest.approx(gamma, rel=0.03)
    assert fit.params["E"] == pytest.approx(TRUE_LAW["E"], abs=0.03)
    # the frontier lies below every curve and is non-increasing
    fr = fit.frontier
    assert (np.diff(fr["loss"]) <= 1e-2).all()
    assert fr["N"].nunique() >= 8


def test_approach1_recovers_allocation(curves):
    cv, sizes = curves
    fit = fit_approach1(cv, sizes, n_boot=100, seed=0)
    _inside(fit, "a", TRUE_A)
    assert fit.params["a"] == pytest.approx(TRUE_A, abs=0.03)


# ------------------------------------------------------------------ Approach 3 and Kaplan


@pytest.mark.slow  # 7.5 s; Approach 3 on Epoch's runs (test_analysis_chinchilla) stays in the fast tier
def test_approach3_recovers_synthetic_law(sweep):
    d = load_results(sweep)
    d = d[d["status"] == "done"]
    fit = fit_approach3(d["N"], d["D"], d["loss"], n_boot=100, seed=0)
    for k in ("alpha", "beta", "a"):
        _inside(fit, k, {"alpha": AL, "beta": BE, "a": TRUE_A}[k])


def test_kaplan_joint_law():
    rng = np.random.default_rng(0)
    N = np.repeat(np.geomspace(1e6, 1e9, 8), 6)
    D = np.tile(np.geomspace(1e8, 1e11, 6), 8)
    aN, aD, Nc, Dc = 0.076, 0.095, 8.8e13, 5.4e13
    L = ((Nc / N) ** (aN / aD) + Dc / D) ** aD * np.exp(0.002 * rng.standard_normal(N.size))
    fit = fit_kaplan(N, D, L, n_boot=100)
    assert fit.params["alpha_N"] == pytest.approx(aN, rel=0.1)
    assert fit.params["alpha_D"] == pytest.approx(aD, rel=0.1)
    _inside(fit, "alpha_N", aN)
    _inside(fit, "alpha_D", aD)
    assert np.allclose(fit.predict(N, D), L, rtol=0.01)


def test_load_results_csv_derives_missing_column(tmp_path):
    p = tmp_path / "runs.csv"
    pd.DataFrame({"params": [1e6, 2e6], "flops": [6e15, 2.4e16], "val": [3.0, 2.9]}).to_csv(p, index=False)
    df = load_results(p, n_col="params", c_col="flops", loss_col="val")
    assert np.allclose(df["D"], [1e9, 2e9])
    assert df.attrs["derived"] == ["D = C / (6 N)"]
    assert (df["status"] == "done").all()
    with pytest.raises(KeyError, match="closest"):
        load_results(p, n_col="param")
    assert math.isfinite(df["loss"].iloc[0])
