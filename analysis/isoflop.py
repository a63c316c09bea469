"""Chinchilla Approach 2: IsoFLOP parabolas.

For each compute budget C, fit L = p0 + p1 u + p2 u^2 with u = log10 N to the runs of
that budget; the vertex u* = -p1 / (2 p2) gives N_opt(C) and D_opt(C) = C / (6 N_opt).
Then log N_opt = log k_N + a log C and log D_opt = log k_D + b log C by least squares
over budgets. Intervals: bootstrap resampling runs within each budget (the parabolas and
the lines refitted for every resample).

A vertex outside the sampled range of N (or a parabola that opens downwards) means the
budget did not bracket its optimum; such budgets are reported and left out of the
exponent fit. The parabola is an approximation of the IsoFLOP profile: it is exact only
near the vertex, so a grid placed asymmetrically around the optimum biases N_opt.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .result import LEVEL, AllocationFit, percentile_interval


def group_budgets(C, *, rel_tol: float = 0.1) -> np.ndarray:
    """Label rows by compute budget: values within ``rel_tol`` (relative gap between
    consecutive sorted values) share a label; the label is the group's geometric mean."""
    C = np.asarray(C, dtype=np.float64)
    out = np.full(C.shape, np.nan)
    ok = np.isfinite(C) & (C > 0)
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(C[idx])]
    lc = np.log(C[order])
    breaks = np.flatnonzero(np.diff(lc) > math.log1p(rel_tol))
    for grp in np.split(order, breaks + 1):
        out[grp] = math.exp(float(np.mean(np.log(C[grp]))))
    return out


def _parabola(u, L, w=None):
    """Weighted least squares for L = q0 + q1 (u - c) + q2 (u - c)^2 row by row, with c the
    row's weighted mean of u (centring keeps the normal equations well conditioned).

    u, L, w: (B, m). Returns (vertex u*, loss at the vertex, curvature q2), each (B,);
    NaN where the system is singular."""
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    w = np.ones_like(L) if w is None else np.atleast_2d(np.asarray(w, dtype=np.float64))
    u, L = np.broadcast_to(u, w.shape), np.broadcast_to(L, w.shape)
    sw = w.sum(axis=1, keepdims=True)
    c = (w * u).sum(axis=1, keepdims=True) / np.where(sw > 0, sw, 1.0)
    v = u - c
    X = np.stack([np.ones_like(v), v, v * v], axis=-1)  # (B, m, 3)
    XtW = X * w[..., None]
    A = np.einsum("bmi,bmj->bij", XtW, X)
    r = np.einsum("bmi,bm->bi", XtW, L)
    q = np.full(r.shape, np.nan)
    scale = np.abs(A).max(axis=(1, 2))
    good = np.abs(np.linalg.det(A)) > 1e-10 * np.maximum(scale, 1e-300) ** 3
    if good.any():
        q[good] = np.linalg.solve(A[good], r[good][..., None])[..., 0]
    with np.errstate(all="ignore"):
        vert = c[:, 0] - q[:, 1] / (2 * q[:, 2])
        lmin = q[:, 0] - q[:, 1] ** 2 / (4 * q[:, 2])
    return vert, lmin, q[:, 2]


class IsoFLOPFit(AllocationFit):
    """params: a, b, k_N, k_D (N_opt = k_N C^a, D_opt = k_D C^b). ``budgets``: per-budget
    table (C, n_runs, N_opt with interval, D_opt, loss_opt, vertex_in_range, used)."""

    budgets: pd.DataFrame


def _fit_lines(logC, logN, logD):
    """OLS slopes/intercepts of log N_opt and log D_opt on log C; rows (B, K) with NaNs."""
    out = np.full((logN.shape[0], 4), np.nan)
    for i in range(logN.shape[0]):
        m = np.isfinite(logN[i])
        if m.sum() < 2:
            continue
        a, kn = np.polyfit(logC[m], logN[i, m], 1)
        b, kd = np.polyfit(logC[m], logD[i, m], 1)
        out[i] = (a, math.exp(kn), b, math.exp(kd))
    return out


def fit_isoflop(
    C,
    loss,
    *,
    N=None,
    D=None,
    budget=None,
    rel_tol: float = 0.1,
    min_points: int = 3,
    n_boot: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> IsoFLOPFit:
    """Approach 2 on rows (C, loss) with N and/or D (the missing one from C = 6 N D).

    ``budget``: the budget label of each row (e.g. the planner's compute_budget); when
    None, rows are grouped by ``C`` with :func:`group_budgets`. Budgets with fewer than
    ``min_points`` distinct sizes are skipped.
    """
    C = np.asarray(C, dtype=np.float64)
    L = np.asarray(loss, dtype=np.float64)
    if N is None and D is None:
        raise ValueError("IsoFLOP fit needs N or D (the other is derived from C = 6 N D)")
    N = np.asarray(N, dtype=np.float64) if N is not None else C / (6.0 * np.asarray(D, dtype=np.float64))
    budget = group_budgets(C, rel_tol=rel_tol) if budget is None else np.asarray(budget, dtype=np.float64)
    keep = np.isfinite(N) & np.isfinite(L) & np.isfinite(budget) & (N > 0) & (L > 0) & (budget > 0)
    N, L, budget = N[keep], L[keep], budget[keep]
    rng = np.random.default_rng(seed)

    rows, boot_logN = [], []
    used_C = []
    for c in np.unique(budget):
        m = budget == c
        u = np.log10(N[m])
        Lc = L[m]
        n_sizes = np.unique(np.round(u, 6)).size
        row = {"C": float(c), "n_runs": int(m.sum()), "n_sizes": int(n_sizes)}
        if n_sizes < min_points:
            row.update({"N_opt": math.nan, "vertex_in_range": False, "used": False,
                        "note": f"only {n_sizes} distinct sizes (< {min_points})"})
            rows.append(row)
            continue
        vert, lmin, curv = (float(t[0]) for t in _parabola(u, Lc))
        ok_p = math.isfinite(curv) and curv > 0
        v = vert if ok_p else math.nan
        in_range = bool(ok_p and u.min() <= v <= u.max())
        n_opt = 10 ** v if ok_p else math.nan
        row.update({
            "N_opt": n_opt, "D_opt": c / (6 * n_opt) if ok_p else math.nan,
            "loss_opt": lmin if ok_p else math.nan,
            "curvature": curv, "vertex_in_range": in_range, "used": in_range,
            "note": "" if in_range else ("parabola opens downwards" if not ok_p
                                          else "vertex outside the sampled sizes"),
        })
        # bootstrap within this budget
        if n_boot > 0:
            k = u.size
            W = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(float)
            vb, _, cb = _parabola(u, Lc, W)
            # a resample must still see >= 3 sizes, open upwards and keep the vertex within
            # the sampled range (wider by half the grid span, so that a resample is not thrown
            # away just because its vertex moved a little past the last size)
            span = u.max() - u.min()
            nsz = np.array([np.unique(u[W[i] > 0]).size for i in range(n_boot)])
            okb = (cb > 0) & (nsz >= 3) & (vb >= u.min() - 0.5 * span) & (vb <= u.max() + 0.5 * span)
            vb = np.where(okb, vb, np.nan)
            lo, hi = percentile_interval(10 ** vb, level)
            row.update({"N_opt_low": lo, "N_opt_high": hi, "boot_failed": int((~okb).sum())})
            if in_range:
                boot_logN.append(vb * math.log(10))
        if in_range:
            used_C.append(c)
        rows.append(row)
    table = pd.DataFrame(rows)
    used = table[table["used"]] if len(table) else table
    if len(used) < 2:
        raise ValueError(
            f"IsoFLOP fit: {len(used)} budget(s) with a bracketed minimum (need >= 2); "
            + "; ".join(f"C={r.C:.3g}: {r.note}" for r in table.itertuples() if not r.used)
        )
    logC = np.log(used["C"].to_numpy())
    logN = np.log(used["N_opt"].to_numpy())
    logD = np.log(used["D_opt"].to_numpy())
    a, kn, b, kd = _fit_lines(logC, logN[None], logD[None])[0]
    params = {"a": a, "b": b, "k_N": kn, "k_D": kd}
    fit = IsoFLOPFit(kind="isoflop", params=params, n=int(keep.sum()), level=level)
    fit.budgets = table
    fit.info = {"n_budgets": int(len(table)), "n_budgets_used": int(len(used)),
                "budgets_skipped": [f"C={r.C:.3g}: {r.note}" for r in table.itertuples() if not r.used]}
    if len(used) >= 2:
        resid = logN - (math.log(kn) + a * logC)
        fit.info["ols_se_a"] = _ols_se(logC, resid)
    if n_boot > 0 and boot_logN:
        BN = np.stack(boot_logN, axis=1)  # (B, K)
        BD = logC[None, :] - math.log(6.0) - BN
        lines = _fit_lines(logC, BN, BD)
        fit.samples = pd.DataFrame(lines, columns=["a", "k_N", "b", "k_D"])
        fit.fill_intervals()
    return fit


def _ols_se(x, resid) -> float:
    n = x.size
    if n <= 2:
        return math.nan
    s2 = float(np.sum(resid**2) / (n - 2))
    return math.sqrt(s2 / float(np.sum((x - x.mean()) ** 2)))
