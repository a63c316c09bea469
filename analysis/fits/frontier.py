"""Learning curves: the compute-efficient frontier (Kaplan et al. 2020, Fig. 1) and
Chinchilla Approach 1 (Hoffmann et al. 2022, Section 3.1).

Each run's curve (loss against FLOPs = 6 N tokens) is interpolated, in log-log space,
on a common log-spaced FLOP grid within the range the run covers. The frontier is the
lower envelope over runs at each grid point; the run attaining it gives N_opt(C) and
its tokens there give D_opt(C) (Approach 1). The frontier is fitted with a power law
L(C) = E + (C_c / C)^alpha (or without E), N_opt and D_opt with straight lines in log-log.

Intervals: bootstrap over *runs* (resample the runs with replacement and rebuild the
envelope). The grid points of one envelope are not independent observations, so
resampling them would overstate the precision; resampling runs asks how much the
result depends on which models happened to be trained.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.fits.powerlaw import PowerLawFit, fit_power_law
from analysis.result import LEVEL, AllocationFit, FitResult, percentile_interval


def curve_matrix(curves: pd.DataFrame, *, run: str = "point_id", x: str = "flops",
                 y: str = "loss", n_grid: int = 120, skip_fraction: float = 0.05,
                 grid: np.ndarray | None = None):
    """Interpolate every run on a shared log grid of ``x``.

    Returns (grid, runs, logL (R, G) with NaN outside each run's range, tokens (R, G) or
    None). The first ``skip_fraction`` of each run's points (by x) are dropped: warm-up
    transients are not part of any scaling law.
    """
    df = curves[[run, x, y] + (["tokens"] if "tokens" in curves else [])].copy()
    df = df[np.isfinite(df[x]) & np.isfinite(df[y]) & (df[x] > 0) & (df[y] > 0)]
    runs = list(pd.unique(df[run]))
    per = []
    for r in runs:
        c = df[df[run] == r].sort_values(x)
        if skip_fraction > 0 and len(c) > 4:
            cut = c[x].iloc[-1] * skip_fraction
            c = c[c[x] >= cut]
        per.append(c)
    lo = min(c[x].min() for c in per)
    hi = max(c[x].max() for c in per)
    if grid is None:
        grid = np.geomspace(lo, hi, n_grid)
    lg = np.log(grid)
    R = np.full((len(runs), grid.size), np.nan)
    T = np.full((len(runs), grid.size), np.nan) if "tokens" in df else None
    for i, c in enumerate(per):
        lx = np.log(c[x].to_numpy())
        ly = np.log(c[y].to_numpy())
        inside = (lg >= lx[0]) & (lg <= lx[-1])
        if lx.size == 1:
            inside = np.isclose(lg, lx[0])
            R[i, inside] = ly[0]
        else:
            R[i, inside] = np.interp(lg[inside], lx, ly)
        if T is not None:
            lt = np.log(c["tokens"].to_numpy())
            T[i, inside] = np.exp(np.interp(lg[inside], lx, lt)) if lx.size > 1 else np.exp(lt[0])
    return grid, runs, R, T


def envelope(R: np.ndarray, subset: np.ndarray | None = None):
    """Lower envelope (min log loss) and argmin run index per grid column.

    The envelope is the lowest loss reached with at most that compute, so it never
    rises: where the best run at some C is worse than one seen at a smaller C (a single
    run's noisy last point past the others' ends, say), the earlier run stands.
    """
    M = R if subset is None else R[subset]
    filled = np.where(np.isfinite(M), M, np.inf)
    arg = np.argmin(filled, axis=0)
    val = filled[arg, np.arange(M.shape[1])]
    for j in range(1, val.size):
        if val[j - 1] < val[j]:
            val[j], arg[j] = val[j - 1], arg[j - 1]
    val = np.where(np.isfinite(val), val, np.nan)
    if subset is not None:
        arg = np.asarray(subset)[arg]
    return val, arg


class FrontierFit(FitResult):
    """``frontier``: DataFrame (C, loss, point_id, N, tokens); ``law``: PowerLawFit of L(C)."""

    frontier: pd.DataFrame
    law: PowerLawFit


def fit_frontier(
    curves: pd.DataFrame,
    *,
    run: str = "point_id",
    x: str = "flops",
    y: str = "loss",
    sizes: dict | None = None,
    irreducible: bool = True,
    n_grid: int = 120,
    skip_fraction: float = 0.05,
    n_boot: int = 200,
    seed: int = 0,
    level: float = LEVEL,
    loss_fn: str = "huber",
) -> FrontierFit:
    """Compute-efficient frontier of learning curves and its power-law fit L(C).

    ``sizes``: run -> N (to label which size attains the frontier); optional.
    """
    grid, runs, R, T = curve_matrix(curves, run=run, x=x, y=y, n_grid=n_grid,
                                    skip_fraction=skip_fraction)
    if len(runs) < 2:
        raise ValueError(f"frontier needs curves of at least 2 runs, got {len(runs)}")
    val, arg = envelope(R)
    ok = np.isfinite(val)
    fr = pd.DataFrame({"C": grid, "loss": np.exp(val), "run": [runs[i] for i in arg]})
    if sizes is not None:
        fr["N"] = [sizes.get(r, math.nan) for r in fr["run"]]
    if T is not None:
        fr["tokens"] = T[arg, np.arange(grid.size)]
    fr = fr[ok].reset_index(drop=True)
    boot_y = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        BY = np.full((n_boot, grid.size), np.nan)
        for b in range(n_boot):
            sub = np.unique(rng.integers(0, len(runs), len(runs)))
            BY[b] = np.exp(envelope(R, sub)[0])
        boot_y = BY[:, ok]
    law = fit_power_law(fr["C"].to_numpy(), fr["loss"].to_numpy(), irreducible=irreducible,
                        n_boot=n_boot, boot_y=boot_y, seed=seed, level=level, loss_fn=loss_fn,
                        name="C")
    fit = FrontierFit(kind="frontier", params=dict(law.params), ci=dict(law.ci),
                      samples=law.samples, n=len(runs), level=level,
                      info={"n_runs": len(runs), "n_grid": int(ok.sum()),
                            "skip_fraction": skip_fraction, **law.info})
    fit.frontier = fr
    fit.law = law
    return fit


class Approach1Fit(AllocationFit):
    """params: a, b, k_N, k_D with N_opt = k_N C^a, D_opt = k_D C^b; ``points``: the
    frontier's (C, N_opt, D_opt) at each grid point used."""

    points: pd.DataFrame


def _line(logC, logV):
    m = np.isfinite(logV)
    if m.sum() < 2 or np.ptp(logC[m]) == 0:
        return math.nan, math.nan
    s, i = np.polyfit(logC[m], logV[m], 1)
    return s, math.exp(i)


def fit_approach1(
    curves: pd.DataFrame,
    sizes: dict,
    *,
    run: str = "point_id",
    x: str = "flops",
    y: str = "loss",
    n_grid: int = 120,
    skip_fraction: float = 0.05,
    n_boot: int = 200,
    seed: int = 0,
    level: float = LEVEL,
) -> Approach1Fit:
    """Approach 1: at each FLOP value the run with the lowest loss gives N_opt(C), its
    tokens there D_opt(C); straight-line fits in log-log give a and b.

    ``sizes``: run -> N. Grid points are restricted to the FLOP range where at least two
    distinct sizes have curves (below it the envelope is one model's curve by default).
    """
    grid, runs, R, T = curve_matrix(curves, run=run, x=x, y=y, n_grid=n_grid,
                                    skip_fraction=skip_fraction)
    Ns = np.array([sizes.get(r, math.nan) for r in runs], dtype=np.float64)
    if np.unique(Ns[np.isfinite(Ns)]).size < 3:
        raise ValueError("Approach 1 needs learning curves of at least 3 model sizes")
    # grid columns covered by >= 2 distinct sizes
    cover = np.array([np.unique(Ns[np.isfinite(R[:, j])]).size for j in range(grid.size)])
    cols = cover >= 2
    lg = np.log(grid)

    def one(subset):
        val, arg = envelope(R[:, cols], subset)
        n_opt = Ns[arg]
        if T is not None:
            d_opt = T[arg, np.flatnonzero(cols)]
        else:
            d_opt = grid[cols] / (6.0 * n_opt)
        good = np.isfinite(val)
        a, kn = _line(lg[cols][good], np.log(n_opt[good]))
        b, kd = _line(lg[cols][good], np.log(d_opt[good]))
        return (a, kn, b, kd), n_opt, d_opt, np.exp(val)

    (a, kn, b, kd), n_opt, d_opt, lv = one(None)
    fit = Approach1Fit(kind="approach1", params={"a": a, "b": b, "k_N": kn, "k_D": kd},
                       n=len(runs), level=level,
                       info={"n_runs": len(runs), "n_grid": int(cols.sum()),
                             "n_sizes_on_frontier": int(np.unique(n_opt[np.isfinite(n_opt)]).size)})
    fit.points = pd.DataFrame({"C": grid[cols], "N_opt": n_opt, "D_opt": d_opt, "loss": lv})
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(n_boot):
            sub = np.unique(rng.integers(0, len(runs), len(runs)))
            if np.unique(Ns[sub]).size < 2:
                rows.append((math.nan,) * 4)
                continue
            rows.append(one(sub)[0])
        fit.samples = pd.DataFrame(rows, columns=["a", "k_N", "b", "k_D"])
        fit.fill_intervals()
    return fit


__all__ = ["curve_matrix", "envelope", "fit_frontier", "fit_approach1", "FrontierFit",
           "Approach1Fit", "percentile_interval"]
