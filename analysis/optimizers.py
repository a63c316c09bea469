"""Optimizer comparisons: learning-rate sensitivity, best learning rate per size and its
scaling with N, loss against compute per optimizer, and compute multipliers.

Input: a results table (see analysis/load.py) with columns optimizer, lr, N, C, loss,
seed, status. Seeds are averaged within each (optimizer, N, lr) cell; their spread
(standard deviation) is carried along as error bars. Diverged runs count as divergence
markers, not as losses.

- ``lr_sensitivity``: mean/std loss and divergence count per (optimizer, N, lr);
- ``best_lr``: per (optimizer, N), the grid learning rate with the lowest mean loss, a
  refined optimum (vertex of a parabola in log lr through it and its two neighbours),
  and ``edge`` = True when the best grid value is the smallest or largest learning rate
  tried (the optimum may lie outside the grid: widen it);
- ``lr_scaling``: lr*(N) = c N^gamma per optimizer (least squares on the refined optima,
  t-interval on gamma);
- ``compute_laws``: at each optimizer's best lr per size, L(C) = E + (C_c/C)^alpha (or a
  pure power law when there are fewer than 5 sizes), pairs bootstrap over seeds;
- ``compute_multiplier``: how much more compute optimizer X needs than Y to reach the loss
  Y reaches at a reference compute, from the two fitted laws, with a bootstrap interval
  (independent resamples of the two fits paired at random).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fits.powerlaw import PowerLawFit, fit_power_law
from analysis.result import LEVEL, percentile_interval


class EdgeOfGridWarning(UserWarning):
    """The best learning rate is the smallest or largest value tried."""


def _key_n(df: pd.DataFrame) -> pd.Series:
    # sizes differ by a few parameters between optimisers' runs at most; group on 4 digits
    return df["N"].map(lambda v: float(f"{v:.4g}"))


def lr_sensitivity(df: pd.DataFrame) -> pd.DataFrame:
    """Per (optimizer, N, lr): mean, std, count of the loss over done seeds, and the number
    of diverged runs. ``df``: the full table (all statuses)."""
    d = df[df["status"].isin(["done", "diverged"])].copy()
    d["N"] = _key_n(d)
    d["is_div"] = (d["status"] == "diverged") | ~np.isfinite(d["loss"])
    g = d.groupby(["optimizer", "N", "lr"], sort=True)
    out = g.apply(lambda x: pd.Series({
        "loss_mean": x.loc[~x["is_div"], "loss"].mean(),
        "loss_std": x.loc[~x["is_div"], "loss"].std(ddof=1) if (~x["is_div"]).sum() > 1 else 0.0,
        "n_seeds": int((~x["is_div"]).sum()),
        "n_diverged": int(x["is_div"].sum()),
        "C": x["C"].median(),
    }), include_groups=False).reset_index()
    return out


def refine_lr(lrs: np.ndarray, means: np.ndarray, i: int, half_width: int = 2) -> float:
    """Vertex of a least-squares parabola in log10 lr through the best grid point and up to
    ``half_width`` finite neighbours on each side (clipped to the points used); the grid
    value itself when the parabola is not convex."""
    lo, hi = max(0, i - half_width), min(len(lrs), i + half_width + 1)
    x = np.log10(lrs[lo:hi])
    y = means[lo:hi]
    m = np.isfinite(y)
    if m.sum() < 3 or not (m[: i - lo].any() and m[i - lo + 1 :].any()):
        return float(lrs[i])
    p = np.polyfit(x[m], y[m], 2)
    if p[0] <= 0:
        return float(lrs[i])
    v = -p[1] / (2 * p[0])
    return float(10 ** np.clip(v, x[m].min(), x[m].max()))


def best_lr(sens: pd.DataFrame, *, warn: bool = True) -> pd.DataFrame:
    """Best learning rate per (optimizer, N) from :func:`lr_sensitivity`'s table. A size run
    at a single learning rate gets ``edge_side = "single lr"`` and no refined optimum."""
    rows = []
    for (opt, N), g in sens.groupby(["optimizer", "N"], sort=True):
        g = g.sort_values("lr")
        lrs = g["lr"].to_numpy()
        means = g["loss_mean"].to_numpy()
        if not np.isfinite(means).any():
            rows.append({"optimizer": opt, "N": N, "lr_best": math.nan, "lr_refined": math.nan,
                         "loss": math.nan, "loss_std": math.nan, "edge": True,
                         "edge_side": "all diverged", "n_lr": len(lrs)})
            continue
        i = int(np.nanargmin(means))
        if len(lrs) == 1:  # one learning rate: not a sweep, nothing to warn about or fit
            rows.append({"optimizer": opt, "N": N, "lr_best": float(lrs[0]), "lr_refined": math.nan,
                         "loss": float(means[0]), "loss_std": float(g["loss_std"].iloc[0]),
                         "n_seeds": int(g["n_seeds"].iloc[0]), "C": float(g["C"].iloc[0]),
                         "edge": False, "edge_side": "single lr", "n_lr": 1})
            continue
        # the best grid value is an edge when nothing was tried beyond it; a best lr whose
        # next-higher neighbour diverged is bracketed (by divergence) and is not an edge
        edge_side = "lowest lr tried" if i == 0 else ("highest lr tried" if i == len(lrs) - 1 else "")
        rows.append({
            "optimizer": opt, "N": N, "lr_best": float(lrs[i]),
            "lr_refined": refine_lr(lrs, means, i) if not edge_side else float(lrs[i]),
            "loss": float(means[i]), "loss_std": float(g["loss_std"].iloc[i]),
            "n_seeds": int(g["n_seeds"].iloc[i]), "C": float(g["C"].iloc[i]),
            "edge": bool(edge_side), "edge_side": edge_side, "n_lr": len(lrs),
        })
        if edge_side and warn:
            warnings.warn(f"{opt}, N={N:.3g}: best learning rate {lrs[i]:.3g} is the "
                          f"{edge_side}; the optimum may lie outside the grid",
                          EdgeOfGridWarning, stacklevel=2)
    return pd.DataFrame(rows)


def lr_scaling(best: pd.DataFrame, *, level: float = LEVEL) -> pd.DataFrame:
    """lr*(N) = c N^gamma per optimizer: least squares on log10 of the refined optima,
    excluding sizes whose best lr is on the edge of the grid; t-interval on gamma."""
    rows = []
    for opt, g in best.groupby("optimizer", sort=True):
        g = g[np.isfinite(g["lr_refined"]) & ~g["edge"]]
        row = {"optimizer": opt, "n_sizes": len(g), "gamma": math.nan, "gamma_low": math.nan,
               "gamma_high": math.nan, "c": math.nan}
        if len(g) >= 2:
            x = np.log10(g["N"].to_numpy())
            y = np.log10(g["lr_refined"].to_numpy())
            res = stats.linregress(x, y)
            row.update({"gamma": res.slope, "c": 10 ** res.intercept})
            if len(g) >= 3:
                t = stats.t.ppf(0.5 + level / 2, len(g) - 2)
                row.update({"gamma_low": res.slope - t * res.stderr,
                            "gamma_high": res.slope + t * res.stderr})
        rows.append(row)
    return pd.DataFrame(rows)


def best_lr_runs(df: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The done runs (all seeds) at each (optimizer, N)'s best grid learning rate."""
    d = df[(df["status"] == "done") & np.isfinite(df["loss"])].copy()
    d["N"] = _key_n(d)
    key = best[["optimizer", "N", "lr_best"]].rename(columns={"lr_best": "lr"})
    return d.merge(key, on=["optimizer", "N", "lr"], how="inner")


def compute_laws(df: pd.DataFrame, best: pd.DataFrame, *, n_boot: int = 200, seed: int = 0,
                 irreducible: bool | None = None, level: float = LEVEL) -> dict[str, PowerLawFit]:
    """Per optimizer, L(C) at the best learning rate of each size (every seed a row;
    bootstrap resampling seeds within each size). ``irreducible`` None: with E when the
    optimizer has at least 5 sizes."""
    runs = best_lr_runs(df, best)
    out = {}
    for opt, g in runs.groupby("optimizer", sort=True):
        n_sizes = g["N"].nunique()
        irr = (n_sizes >= 5) if irreducible is None else irreducible
        if n_sizes < (4 if irr else 2):
            continue
        out[opt] = fit_power_law(g["C"].to_numpy(), g["loss"].to_numpy(), irreducible=irr,
                                 n_boot=n_boot, seed=seed, groups=g["N"].to_numpy(),
                                 level=level, name="C")
        out[opt].info["optimizer"] = opt
        out[opt].info["n_sizes"] = int(n_sizes)
    return out


def compute_multiplier(laws: dict[str, PowerLawFit], x: str, y: str, *,
                       at_compute: float, level: float = LEVEL, seed: int = 0) -> dict:
    """Compute optimizer ``x`` needs to reach the loss optimizer ``y`` reaches at
    ``at_compute``, divided by ``at_compute`` (> 1: x is less compute-efficient).

    Interval: bootstrap fits of x and y paired at random; a resample in which x's law never
    reaches the target loss (target <= E_x) gives an infinite multiplier and counts in the
    upper tail."""
    fx, fy = laws[x], laws[y]
    target = float(fy.predict(at_compute))
    mult = float(fx.inverse(target)) / at_compute
    out = {"x": x, "y": y, "at_compute": at_compute, "target_loss": target,
           "multiplier": mult, "low": math.nan, "high": math.nan}
    if fx.samples is not None and fy.samples is not None:
        Sx = fx.samples.dropna().reset_index(drop=True)
        Sy = fy.samples.dropna().reset_index(drop=True)
        n = min(len(Sx), len(Sy))
        if n >= 10:
            rng = np.random.default_rng(seed)
            iy = rng.permutation(len(Sy))[:n]
            vals = []
            for i in range(n):
                py = Sy.iloc[iy[i]].to_dict()
                px = Sx.iloc[i].to_dict()
                t = float(fy.predict(at_compute, py))
                vals.append(float(fx.inverse(t, px)) / at_compute)
            v = np.array(vals)
            v = np.where(np.isnan(v), np.inf, v)
            q = (1 - level) / 2
            lo, hi = np.quantile(np.where(np.isinf(v), 1e300, v), [q, 1 - q])
            out.update({"low": float(lo), "high": float(hi) if hi < 1e299 else math.inf,
                        "frac_unreachable": float(np.isinf(v).mean())})
    return out


def seed_spread(sens: pd.DataFrame) -> float:
    """Median standard deviation across seeds over all cells with more than one seed."""
    s = sens.loc[sens["n_seeds"] > 1, "loss_std"]
    return float(s.median()) if len(s) else math.nan


__all__ = ["lr_sensitivity", "best_lr", "lr_scaling", "best_lr_runs", "compute_laws",
           "compute_multiplier", "seed_spread", "EdgeOfGridWarning", "percentile_interval"]
