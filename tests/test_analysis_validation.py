"""Issue 11: fits that say when they are not identified, noise-aware intervals, and IsoFLOP
minima validated on synthetic grids from a known L(N, D) (fixed seeds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from analysis.fits.chinchilla import fit_approach3
from analysis.fits.isoflop import DEFAULT_ESTIMATOR, fit_isoflop
from analysis.fits.isoflop_minima import ESTIMATORS
from analysis.fits.laws import ChinchillaLaw
from analysis.fits.multistart import make_objective
from analysis.noise import loss_noise, noise_replicates

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
cov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cov)


def test_log_sum_exp_is_stable_and_its_gradient_matches():
    """No clip: at ln E = -800 the value and the gradient still agree with finite differences,
    and the gradient in e is (correctly) ~0 rather than pointing at a clip."""
    rng = np.random.default_rng(0)
    law = ChinchillaLaw(rng.normal(18, 2, 20), rng.normal(22, 2, 20))
    fg = make_objective(law, rng.normal(1, 0.1, 20), loss="l2")
    x = np.array([[3.0, 4.0, -800.0, 0.3, 0.3], [3.0, 4.0, 0.5, 0.3, 0.3], [900.0, 4.0, 0.5, 0.3, 0.3]])
    f, g = fg(x, None)
    assert np.isfinite(f).all() and np.isfinite(g).all()
    for j in range(5):
        d = np.zeros_like(x)
        d[:, j] = 1e-6
        num = (fg(x + d, None)[0] - fg(x - d, None)[0]) / 2e-6
        assert np.allclose(g[:, j], num, rtol=1e-5, atol=1e-5 * np.abs(f).max()), j
    assert abs(g[0, 2]) < 1e-300 or abs(g[0, 2]) < 1e-12


def _grid_nd(floor: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e6, 1e9, 6), 6)
    D = np.tile(np.geomspace(1e8, 1e11, 6), 6)
    L = (floor + 406.4 / N**0.34 + 410.7 / D**0.28) * np.exp(0.005 * rng.standard_normal(N.size))
    return N, D, L


@pytest.mark.slow
def test_no_floor_E_not_identified():
    N, D, L = _grid_nd(0.0)
    fit = fit_approach3(N, D, L, n_boot=60, noise=0.005 * L, seed=0)
    d = fit.to_dict()
    assert d["identified"]["E"] is False and "E" in d["not_identified"]
    assert "E" not in fit.ci  # no percentile interval for a parameter at its bound
    op, upper = fit.bounds["E"]
    assert op == "<=" and 0 < upper < 0.2
    red = fit.info["reduced_model"]
    assert red["form"].startswith("A/N^alpha") and red["objective"] >= red["objective_full"] * (1 - 1e-9)
    assert red["a"] == pytest.approx(0.28 / 0.62, abs=0.02)
    assert "conditional" in fit.info and "a, b" in fit.info["conditional"]
    assert "NOT IDENTIFIED" in fit.describe()


@pytest.mark.slow
def test_floor_E_identified_with_noise_bootstrap():
    N, D, L = _grid_nd(1.69)
    fit = fit_approach3(N, D, L, n_boot=60, noise=0.005 * L, seed=0)
    assert fit.info["identified"] and not fit.unidentified
    lo, hi = fit.interval("E")
    assert lo < 1.69 < hi
    assert fit.to_dict()["n_boot_failed"] == 0
    assert "given by the caller" in fit.info["noise_source"]
    assert fit.info["bootstrap"].startswith("noise")


def test_noise_sources():
    import pandas as pd

    rows = pd.DataFrame({"loss": [3.0, 3.1, 2.9], "n_seeds": [3, 1, 3], "seed_std": [0.03, np.nan, 0.0]})
    nz = loss_noise(rows)
    assert "seed spread" in nz.source
    assert nz.sigma[1] == pytest.approx(0.005 * 3.1)  # pooled median of (1 %, 0 %)
    rows = pd.DataFrame({"loss": [3.0, 3.1], "eval_loss_stderr": [0.01, 0.02]})
    assert np.allclose(loss_noise(rows).sigma, [0.01, 0.02])
    nz = loss_noise(pd.DataFrame({"loss": [3.0, 3.1]}))
    assert nz.source.startswith("assumed 0.5 % relative noise")
    R = noise_replicates(np.array([2.0, 3.0]), np.array([0.02, 0.0]), 4000, np.random.default_rng(0))
    assert np.std(np.log(R[:, 0])) == pytest.approx(0.01, rel=0.05) and np.all(R[:, 1] == 3.0)


@pytest.mark.parametrize("kind", list(cov.GRIDS))
def test_isoflop_default_estimator_recovers_a(kind):
    """Fixed seed per grid: the default estimator's a within 0.02 of the truth on the issue's
    grids (centred, off-centre, wide; 0.05 on the harder drifting ladder, whose RMS error is
    0.026 in benchmarks/coverage.py), inside its interval; all three estimators reported."""
    C, N, D, L, se = cov.isoflop_grid(kind, np.random.default_rng(7))
    fit = fit_isoflop(C, L, N=N, D=D, budget=C, noise=se, n_boot=200, seed=0)
    assert DEFAULT_ESTIMATOR == "auto" and fit.info["estimator_requested"] == "auto"
    assert fit.info["estimator"] in ESTIMATORS and fit.info["estimator_choice"].startswith("auto -> ")
    assert fit.params["a"] == pytest.approx(cov.TRUE_A, abs=0.05 if kind == "drifting" else 0.02)
    lo, hi = fit.interval("a")
    assert lo <= cov.TRUE_A <= hi
    assert set(fit.estimators) == set(ESTIMATORS)
    assert fit.to_dict()["estimators"]["akima"]["a"] == fit.estimators["akima"]["a"]
    assert fit.info["n_budgets_used"] == 5
    # the grid has C = 6 N D exactly here, so b = 1 - a
    assert fit.params["b"] == pytest.approx(1 - fit.params["a"], abs=1e-9)


def test_isoflop_two_budgets_not_determined_and_cases_bootstrap_counts_failures():
    C, N, D, L, se = cov.isoflop_grid("centred", np.random.default_rng(1))
    m = C <= 3e17
    fit = fit_isoflop(C[m], L[m], N=N[m], budget=C[m], noise=se[m], n_boot=50)
    assert not fit.determined and "not determined" in fit.info["not_determined"]
    fit = fit_isoflop(C, L, N=N, budget=C, n_boot=200, bootstrap="cases", estimator="akima")
    assert fit.info["bootstrap"] == "cases"
    assert fit.to_dict()["n_boot_failed"] == fit.samples["a"].isna().sum()
    assert fit.info["noise_source"].startswith("assumed")


@pytest.mark.slow
def test_isoflop_coverage_of_default_estimator():
    """50 draws per design (benchmarks/coverage.py; its README table has 100): on issue 25's
    sparse narrow and dense wide grids with asymmetric profiles, the default (auto) has
    |bias| <= 0.01 in a and coverage of the 95 % noise-bootstrap interval >= 90 %."""
    for kind in cov.DESIGNS:
        law = cov.LAWS["asymmetric"]
        res = cov.summary(cov.run(kind, 50, 200, law=law), cov.true_exponent(law))[DEFAULT_ESTIMATOR]
        assert abs(res["bias"]) <= 0.01, (kind, res)
        assert res["coverage"] >= 0.90, (kind, res)
        assert res["n_nan"] == 0, kind
