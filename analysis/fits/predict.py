"""Predictions with intervals: compute-optimal N, D and loss for compute budgets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.result import percentile_interval


def _band_from_samples(samples: pd.DataFrame | None, fn, C: np.ndarray, level: float):
    if samples is None or samples.empty:
        nan = np.full(C.shape, np.nan)
        return nan, nan
    vals = np.array([fn(row) for _, row in samples.dropna().iterrows()])
    if vals.ndim != 2 or len(vals) < 10:
        nan = np.full(C.shape, np.nan)
        return nan, nan
    ci = [percentile_interval(vals[:, j], level) for j in range(C.size)]
    return np.array([c[0] for c in ci]), np.array([c[1] for c in ci])


def compute_optimal(C, *, chinchilla=None, isoflop=None, approach1=None, loss_law=None,
                    level: float = 0.95) -> pd.DataFrame:
    """One row per (budget, method): N_opt, D_opt and, where the method gives one, the loss,
    each with a bootstrap percentile interval.

    ``chinchilla``: ChinchillaFit (N, D and loss). ``isoflop`` / ``approach1``: N and D
    power laws in C; their loss comes from ``loss_law`` (a PowerLawFit of L(C), e.g. the
    compute frontier) when given.
    """
    C = np.atleast_1d(np.asarray(C, dtype=np.float64))
    rows = []
    if chinchilla is not None:
        t = chinchilla.optimal_table(C, level)
        for i in range(C.size):
            r = {"C": C[i], "method": "Approach 3 (parametric L(N, D))"}
            for k in ("N_opt", "D_opt", "loss_opt"):
                r[k] = t[k].iloc[i]
                r[k + "_low"] = t[k + "_low"].iloc[i] if k + "_low" in t else math.nan
                r[k + "_high"] = t[k + "_high"].iloc[i] if k + "_high" in t else math.nan
            rows.append(r)
    for fit, name in ((isoflop, "Approach 2 (IsoFLOP)"), (approach1, "Approach 1 (frontier)")):
        if fit is None:
            continue
        n, d = fit.predict(C)
        nlo, nhi = _band_from_samples(fit.samples, lambda p: fit.predict(C, p)[0], C, level)
        dlo, dhi = _band_from_samples(fit.samples, lambda p: fit.predict(C, p)[1], C, level)
        if loss_law is not None:
            lv = loss_law.predict(C)
            llo, lhi = loss_law.band(C, level)
        else:
            lv = llo = lhi = np.full(C.shape, np.nan)
        for i in range(C.size):
            rows.append({"C": C[i], "method": name, "N_opt": n[i], "N_opt_low": nlo[i],
                         "N_opt_high": nhi[i], "D_opt": d[i], "D_opt_low": dlo[i],
                         "D_opt_high": dhi[i], "loss_opt": lv[i], "loss_opt_low": llo[i],
                         "loss_opt_high": lhi[i]})
    return pd.DataFrame(rows)
