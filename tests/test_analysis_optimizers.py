"""Optimizer comparison on a synthetic learning-rate x size x seed sweep with known truth."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq

from analysis.load import load_results
from analysis.optimizers import (EdgeOfGridWarning, best_lr, compute_laws, compute_multiplier,
                                 lr_scaling, lr_sensitivity, seed_spread)
from analysis.synthetic import OPTIMIZERS, TRUE_LAW, law_loss, make_optimizer_sweep


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return load_results(make_optimizer_sweep(tmp_path_factory.mktemp("opt") / "opt"))


@pytest.fixture(scope="module")
def sens(table):
    return lr_sensitivity(table)


def test_sensitivity_table(sens, table):
    assert set(sens["optimizer"]) == set(OPTIMIZERS)
    assert (sens["n_seeds"] + sens["n_diverged"] == 3).all()
    assert sens["n_diverged"].sum() == (table["status"] == "diverged").sum()
    assert 0.002 < seed_spread(sens) < 0.01


def test_best_lr_and_scaling(sens):
    with warnings.catch_warnings():
        warnings.simplefilter("error", EdgeOfGridWarning)
        best = best_lr(sens)  # the synthetic grid brackets every optimum
    assert not best["edge"].any()
    scal = lr_scaling(best).set_index("optimizer")
    for name, (_, _, gamma) in OPTIMIZERS.items():
        assert scal.loc[name, "gamma"] == pytest.approx(gamma, abs=0.05)
        assert scal.loc[name, "gamma_low"] < scal.loc[name, "gamma"] < scal.loc[name, "gamma_high"]


def test_edge_of_grid_warning(sens):
    # drop every lr above each size's best: the best is now the highest lr tried
    b = best_lr(sens, warn=False)
    cut = sens.merge(b[["optimizer", "N", "lr_best"]], on=["optimizer", "N"])
    cut = cut[cut["lr"] <= cut["lr_best"]].drop(columns="lr_best")
    with pytest.warns(EdgeOfGridWarning, match="highest lr tried"):
        b2 = best_lr(cut)
    assert b2["edge"].all()
    assert (lr_scaling(b2)["n_sizes"] == 0).all()  # edge points are not fitted


def _true_multiplier(eta_x, eta_y, C_ref, tpp=20.0):
    """Compute x needs to reach y's loss at C_ref, at the true best lr (C = 6 * tpp * N^2)."""
    def loss(C, eta):
        N = np.sqrt(C / (6 * tpp))
        return law_loss(N, eta * tpp * N, TRUE_LAW)

    target = loss(C_ref, eta_y)
    lc = brentq(lambda v: loss(np.exp(v), eta_x) - target, np.log(C_ref) - 5, np.log(C_ref) + 10)
    return float(np.exp(lc) / C_ref)


def test_compute_laws_and_multiplier(table, sens):
    best = best_lr(sens, warn=False)
    laws = compute_laws(table, best, n_boot=200, seed=0)
    assert set(laws) == set(OPTIMIZERS)
    for law in laws.values():
        assert law.irreducible  # 5 sizes
        lo, hi = law.interval("alpha")
        assert lo < law.params["alpha"] < hi
    C_ref = float(table["C"].max())
    for x in ("lamb", "momentum"):
        m = compute_multiplier(laws, x, "adamw", at_compute=C_ref)
        truth = _true_multiplier(OPTIMIZERS[x][0], OPTIMIZERS["adamw"][0], C_ref)
        assert m["low"] < m["multiplier"] < m["high"]
        assert m["multiplier"] > 1
        assert m["multiplier"] == pytest.approx(truth, rel=0.1)
    # and the other way round: adamw needs less compute than momentum
    assert compute_multiplier(laws, "adamw", "momentum", at_compute=C_ref)["multiplier"] < 1


def test_multiplier_unreachable_is_infinite(table, sens):
    best = best_lr(sens, warn=False)
    laws = compute_laws(table, best, n_boot=0)
    law = laws["momentum"]
    # a target below momentum's irreducible loss can never be reached
    assert np.isinf(law.inverse(law.params["E"] * 0.99))
    assert isinstance(pd.DataFrame(best), pd.DataFrame)
