"""Single-variable power laws, L(x) = E + (x_c / x)^alpha or L(x) = (x_c / x)^alpha.

Kaplan et al. (2020) write L(N), L(D) and L(C_min) without an irreducible term; Hoffmann
et al. (2022) and most later work add E. Both are fitted in log space,
log L = LSE(alpha (log x_c - log x), log E), with a Huber loss (delta 1e-3 by default) on
the log residuals, from a grid of starts, with nonparametric bootstrap intervals.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.fits.laws import PowerLaw0, PowerLawE
from analysis.fits.multistart import basin_starts, fit_multistart, grid
from analysis.result import LEVEL, FitResult, bootstrap_counts


class PowerLawFit(FitResult):
    """Result of :func:`fit_power_law`; ``params``: E (if fitted), x_c, alpha."""

    @property
    def irreducible(self) -> bool:
        return "E" in self.params

    def predict(self, x, params: dict | None = None) -> np.ndarray:
        p = self.params if params is None else params
        x = np.asarray(x, dtype=np.float64)
        val = (p["x_c"] / x) ** p["alpha"]
        return val + p["E"] if "E" in p else val

    def band(self, x, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the fitted curve over the bootstrap fits."""
        x = np.asarray(x, dtype=np.float64)
        if self.samples is None or self.samples.empty:
            nan = np.full(x.shape, np.nan)
            return nan, nan
        S = self.samples.dropna()
        xc = S["x_c"].to_numpy()[:, None]
        al = S["alpha"].to_numpy()[:, None]
        with np.errstate(over="ignore"):  # a wild bootstrap draw may overflow: inf, then quantiles
            v = (xc / x[None, :]) ** al
        if "E" in S:
            v = v + S["E"].to_numpy()[:, None]
        q = (1 - (level or self.level)) / 2
        lo, hi = np.nanquantile(v, [q, 1 - q], axis=0)
        return lo, hi

    def inverse(self, loss, params: dict | None = None) -> np.ndarray:
        """x at which the law reaches ``loss`` (inf where loss <= E)."""
        p = self.params if params is None else params
        loss = np.asarray(loss, dtype=np.float64)
        excess = loss - p.get("E", 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = p["x_c"] * excess ** (-1.0 / p["alpha"])
        return np.where(excess > 0, out, np.inf)


def _starts_e(logx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Data-driven grid of (c, e, alpha) starts: E a fraction of the smallest loss, alpha on a
    log grid, c matching the median point."""
    L = np.exp(y)
    lmin = float(L.min())
    order = np.argsort(logx)
    mid = order[len(order) // 2]
    rows = []
    for frac in (1e-3, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99):
        E = frac * lmin
        for al in (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5):
            excess = max(L[mid] - E, 1e-6 * lmin)
            c = math.log(excess) + al * logx[mid]
            rows.append((c, math.log(E), al))
    return np.array(rows)


def _starts_0(logx: np.ndarray, y: np.ndarray) -> np.ndarray:
    slope, icpt = np.polyfit(logx, y, 1) if np.ptp(logx) > 0 else (0.0, float(np.mean(y)))
    al0 = -slope
    return grid([icpt], [al0]) + grid([0.0], [0.0, 0.05, -0.05, 0.2])


def fit_power_law(
    x,
    loss,
    *,
    irreducible: bool = True,
    loss_fn: str = "huber",
    delta: float = 1e-3,
    n_boot: int = 200,
    seed: int = 0,
    level: float = LEVEL,
    groups=None,
    boot_y: np.ndarray | None = None,
    boot_weights: np.ndarray | None = None,
    name: str = "x",
) -> PowerLawFit:
    """Fit L(x) = E + (x_c/x)^alpha (``irreducible``) or (x_c/x)^alpha to positive data.

    Bootstrap: ``n_boot`` pairs resamples (stratified by ``groups`` if given), unless the
    caller passes its own resampled problems as ``boot_y`` (B, n) (NaN = missing) and/or
    ``boot_weights`` (B, n) (a run-level bootstrap, for example).
    """
    if loss_fn not in ("huber", "l2"):
        raise ValueError(f"power laws are fitted with loss_fn 'huber' or 'l2', not {loss_fn!r} "
                         "(the Huber likelihood is offered for Approach 3)")
    x = np.asarray(x, dtype=np.float64)
    L = np.asarray(loss, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(L) & (x > 0) & (L > 0)
    x, L = x[keep], L[keep]
    n_par = 3 if irreducible else 2
    n_distinct = np.unique(x).size
    if n_distinct < n_par + (1 if irreducible else 0):
        raise ValueError(
            f"power law in {name}: {n_distinct} distinct {name} values, need at least "
            f"{n_par + (1 if irreducible else 0)} for {'E + ' if irreducible else ''}(x_c/x)^alpha"
        )
    logx, y = np.log(x), np.log(L)
    law = PowerLawE(logx) if irreducible else PowerLaw0(logx)
    ext_starts = _starts_e(logx, y) if irreducible else _starts_0(logx, y)
    starts = law.to_internal(ext_starts)
    res = fit_multistart(law, y, starts, loss=loss_fn, delta=delta)
    ext = law.to_external(res.x)[0]

    def to_params(e: np.ndarray) -> dict[str, float]:
        if irreducible:
            c, le, al = e
            return {"E": math.exp(le), "x_c": _xc(c, al), "alpha": al}
        c, al = e
        return {"x_c": _xc(c, al), "alpha": al}

    fit = PowerLawFit(kind="power" if irreducible else "power_pure", params=to_params(ext),
                      n=int(x.size), level=level)
    fit.info = {"x": name, "loss_fn": loss_fn, "delta": delta, "objective": float(res.f[0]),
                "converged": bool(res.ok[0]), "n_starts": int(len(starts))}

    # Bootstrap
    if boot_y is not None or boot_weights is not None:
        By = None if boot_y is None else np.asarray(boot_y, dtype=np.float64)[:, keep]
        Bw = None if boot_weights is None else np.asarray(boot_weights, dtype=np.float64)[:, keep]
        if By is not None:
            miss = ~np.isfinite(By) | (By <= 0)
            Bw = (np.ones_like(By) if Bw is None else Bw) * ~miss
            By = np.log(np.where(miss, 1.0, By))
        else:
            By = y
        n_boot = Bw.shape[0]
    elif n_boot > 0:
        rng = np.random.default_rng(seed)
        g = None if groups is None else np.asarray(groups)[keep]
        Bw = bootstrap_counts(x.size, n_boot, rng, g)
        By = y
    if n_boot > 0:
        bstarts = basin_starts(res, starts, 6)
        bres = fit_multistart(law, By, bstarts, loss=loss_fn, delta=delta, weights=Bw,
                              n_problems=n_boot)
        bext = law.to_external(bres.x)
        rows = []
        for i in range(n_boot):
            # a resample needs enough distinct x values to identify the law
            used = Bw[i] > 0
            ok = bres.ok[i] and np.unique(x[used]).size >= n_par
            rows.append(to_params(bext[i]) if ok else {k: math.nan for k in fit.params})
        fit.samples = pd.DataFrame(rows)
        fit.fill_intervals()
    if irreducible:
        _check_floor(fit, float(L.min()))
    _check_trend(fit, y)
    return fit


def _check_trend(fit: PowerLawFit, y: np.ndarray, tiny: float = 1e-6) -> None:
    """No parameter is identified when the losses show no decrease in x (all equal, or a
    fit with alpha ~ 0 and x_c at infinity): any E, x_c, alpha pair fits a flat line."""
    al, xc = fit.params["alpha"], fit.params["x_c"]
    if np.ptp(y) > 0 and math.isfinite(xc) and abs(al) >= tiny:
        return
    why = ("the losses are all equal: no trend in " + fit.info.get("x", "x")) if np.ptp(y) == 0 \
        else f"alpha = {al:.3g}, x_c = {xc:.3g}: no decrease in {fit.info.get('x', 'x')} to identify"
    for k in list(fit.params):
        fit.mark_unidentified(k, why)


def _check_floor(fit: PowerLawFit, lmin: float, fraction: float = 1e-3) -> None:
    """E not identified when the fit, or more than (1 - level)/2 of the bootstrap replicates,
    put it at its bound (below ``fraction`` of the smallest loss): one-sided upper bound instead
    of an interval (as Approach 3 does, analysis/fits/chinchilla.py)."""
    floor = fraction * lmin
    S = fit.samples["E"].dropna().to_numpy() if fit.samples is not None and len(fit.samples) else np.array([])
    share = float(np.mean(S < floor)) if S.size >= 10 else 0.0
    if fit.params["E"] < floor or share > (1 - fit.level) / 2:
        why = (f"the fit puts E at its bound (E = {fit.params['E']:.3g})" if fit.params["E"] < floor else
               f"{share * 100:.0f} % of the bootstrap replicates put E at its bound (E ~ 0)")
        upper = float(np.quantile(S, fit.level)) if S.size >= 10 else None
        fit.mark_unidentified("E", why, upper=upper)
        fit.info["conditional"] = "alpha and x_c are conditional on the fitted E, which these data do not identify"


def _xc(c: float, alpha: float) -> float:
    if alpha == 0:
        return math.nan
    v = c / alpha
    return math.exp(v) if v < 700 else math.inf
