"""The critical batch size (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training"; Kaplan et al. 2020, section 5.1) from the steps needed to reach one target loss
at several batch sizes. Pure numpy/scipy.

Units: B is the batch in TOKENS per optimizer step (batch_size x seq_len), S the optimizer
steps to reach the target, E = B S the training tokens to reach it.

Model: (S / S_min - 1)(E / E_min - 1) = 1, i.e. S(B) = S_min + E_min / B (equivalently
E(B) = E_min + S_min B): S_min is the fewest steps (infinite batch), E_min the fewest tokens
(batch -> 0), and B_crit = E_min / S_min the batch at which reaching the target costs
2 S_min steps and 2 E_min tokens.

Fit (:func:`fit_critical_batch`): least squares in log S (a step count's noise is relative),
S_min >= 0, E_min >= 0, profiled over log B_crit: for a given B_crit, log S = log S_min +
log(1 + B_crit / B) is linear in log S_min, whose best value is closed-form, so the sum of
squares is a function of log B_crit alone. It is evaluated on a fixed grid from 3 decades
below the smallest batch to 3 decades above the largest and refined by a bounded scalar
search around the grid minimum; the limits B_crit -> infinity (S = E_min / B, perfect scaling:
S_min = 0) and B_crit -> 0 (S = S_min, no gain from larger batches: E_min = 0) are fitted in
closed form and win when they fit as well as any B_crit inside. The point estimate is thus
a deterministic function of the data: it depends on no bootstrap size or seed.

At a bound: with S_min = 0 the data show no curvature (perfect scaling over the measured
range), so B_crit is only bounded below: "B_crit > x", x the bootstrap's 5 % quantile, or the
largest batch measured when no replicate shows curvature either. With E_min = 0, "B_crit < x"
(95 % quantile, or the smallest batch). Never reported as a converged estimate. A point
estimate inside the grid whose bootstrap interval is open at one end (>= 2.5 % of the
replicates at S_min = 0, or at E_min = 0) is reported the same way: the data do not exclude
the limit. (The values S_min, E_min are the deterministic fit's; only this label looks at
the bootstrap.)

Intervals: residual bootstrap in log S over the batch sizes. The batch sizes are the design
(fixed by the sweep); the noise is in the measured steps (the learning curve's eval noise,
the seed, which learning rate wins), multiplicative, so the residuals in log S are
exchangeable under the model. Each replicate adds residuals drawn with replacement (centred,
scaled by sqrt(n / (n - p)) for the p fitted parameters) to the fitted log S and refits the
same way; a replicate at a bound gives B_crit = inf or 0 (kept: percentiles of B_crit then
say "not bounded above/below"), a replicate whose fit is not finite is failed and counted.
With 3 batch sizes the residuals have one degree of freedom: the interval is rough. Measured
coverage (tests/test_analysis_batch.py, 7 batch sizes, 5 % noise in S, 100 draws): 84 % for a
nominal 95 %: the percentile interval is too narrow by about that much.
``uniforms`` lets several targets share one draw per replicate and batch slot, so that the
replicates of a B_crit(L) law keep the correlation of targets measured on the same runs.

B_crit against the loss (:func:`fit_bcrit_law`): B_crit(L) = B* / L^(1 / alpha_B) (Kaplan et
al. 2020, eq. 5.3 style), least squares of log B_crit on log L over the targets with a
B_crit whose interval is closed on both sides (>= 3; one open at 0 or infinity says the
target's B_crit is not measured); intervals from the same replicate index of every target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar

LEVEL = 0.95
DECADES = 3.0  # the grid of log B_crit reaches this far beyond the measured batches
GRID = 361
MIN_BATCHES = 3


def _quantile(x: np.ndarray, q: float) -> float:
    """Order-statistic quantile (no interpolation), so that inf and 0 replicates stay what
    they are."""
    x = np.sort(np.asarray(x, dtype=float))
    if x.size == 0:
        return math.nan
    k = min(max(int(math.ceil(q * x.size)) - 1, 0), x.size - 1)
    return float(x[k])


def _grid(B: np.ndarray) -> np.ndarray:
    lo = math.log(B.min()) - DECADES * math.log(10)
    hi = math.log(B.max()) + DECADES * math.log(10)
    return np.linspace(lo, hi, GRID)


def _profile(Y: np.ndarray, B: np.ndarray, grid: np.ndarray):
    """Sum of squares of each row of Y (log S) against log B_crit on the grid, with log S_min
    profiled out: shape (rows, grid)."""
    H = np.log1p(np.exp(grid[:, None] - np.log(B)[None, :]))  # (G, n): log(1 + Bc / B)
    Yc = Y - Y.mean(axis=1, keepdims=True)
    Hc = H - H.mean(axis=1, keepdims=True)
    return (Yc ** 2).sum(1)[:, None] - 2 * Yc @ Hc.T + (Hc ** 2).sum(1)[None, :]


def _bounds_sse(Y: np.ndarray, B: np.ndarray):
    """Sums of squares of the two limits: perfect scaling (log S = log E_min - log B) and
    no scaling (log S = log S_min)."""
    perf = Y + np.log(B)[None, :]
    flat = Y
    return (((perf - perf.mean(1, keepdims=True)) ** 2).sum(1),
            ((flat - flat.mean(1, keepdims=True)) ** 2).sum(1))


def _solve(Y: np.ndarray, B: np.ndarray, refine: bool):
    """log B_crit per row (+inf: S_min = 0; -inf: E_min = 0) and the row's log S_min or,
    at the perfect-scaling bound, log E_min."""
    grid = _grid(B)
    sse = _profile(Y, B, grid)
    j = sse.argmin(1)
    best = sse[np.arange(len(Y)), j]
    lbc = grid[j].astype(float)
    inner = (j > 0) & (j < len(grid) - 1)
    step = grid[1] - grid[0]
    if refine:
        for r in np.flatnonzero(inner):
            def f(t, y=Y[r]):
                h = np.log1p(np.exp(t - np.log(B)))
                d = y - h
                return float(((d - d.mean()) ** 2).sum())
            res = minimize_scalar(f, bounds=(grid[j[r]] - step, grid[j[r]] + step), method="bounded",
                                  options={"xatol": 1e-9})
            if res.fun <= best[r]:
                lbc[r], best[r] = float(res.x), float(res.fun)
    else:  # a parabola through the three grid points around the minimum
        r = np.flatnonzero(inner)
        a, b, c = sse[r, j[r] - 1], sse[r, j[r]], sse[r, j[r] + 1]
        den = a - 2 * b + c
        off = np.where(den > 0, 0.5 * (a - c) / np.where(den > 0, den, 1.0), 0.0)
        lbc[r] = grid[j[r]] + np.clip(off, -1, 1) * step
    perf, flat = _bounds_sse(Y, B)
    tol = 1e-12 * (1 + np.abs(best))
    finite = inner & (best < np.minimum(perf, flat) - tol)  # a B_crit inside fits better than both limits
    lbc = np.where(finite, lbc, np.where(perf <= flat, np.inf, -np.inf))
    # log S_min (finite B_crit or E_min = 0), log E_min at S_min = 0
    h = np.log1p(np.exp(np.where(np.isfinite(lbc), lbc, 0.0)[:, None] - np.log(B)[None, :]))
    level = np.where(np.isposinf(lbc), (Y + np.log(B)).mean(1),
                     np.where(np.isneginf(lbc), Y.mean(1), (Y - h).mean(1)))
    return lbc, level


def _params(lbc: np.ndarray, level: np.ndarray):
    """(S_min, E_min, B_crit) from log B_crit and the level _solve returns."""
    with np.errstate(all="ignore"):
        bc = np.exp(lbc)  # inf / 0 at the bounds
        s_min = np.where(np.isposinf(lbc), 0.0, np.exp(level))
        e_min = np.where(np.isposinf(lbc), np.exp(level), np.where(np.isneginf(lbc), 0.0, s_min * bc))
    return s_min, e_min, bc


def _predict_log(B: np.ndarray, lbc: float, level: float) -> np.ndarray:
    if np.isposinf(lbc):
        return level - np.log(B)
    if np.isneginf(lbc):
        return np.full(B.shape, level)
    return level + np.log1p(np.exp(lbc - np.log(B)))


@dataclass
class CriticalBatchFit:
    """One target's fit of S(B) = S_min + E_min / B. ``status``: "converged" (B_crit inside
    the grid), "lower_bound" (S_min at 0: B_crit > ``bound``) or "upper_bound" (E_min at 0:
    B_crit < ``bound``). ``ci``: 95 % bootstrap percentile intervals (an infinite end means
    the data do not bound that side)."""

    B: np.ndarray
    S: np.ndarray
    S_min: float
    E_min: float
    B_crit: float
    status: str
    bound: float = math.nan
    bound_how: str = ""
    ci: dict = field(default_factory=dict)
    n_boot: int = 0
    n_failed: int = 0
    n_rep_lower: int = 0  # replicates with S_min = 0 (B_crit = inf)
    n_rep_upper: int = 0  # replicates with E_min = 0 (B_crit = 0)
    residual_sd: float = math.nan
    samples: np.ndarray | None = None  # (n_boot, 3): S_min, E_min, B_crit (NaN: failed)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def bounded(self) -> bool:
        """Converged with both ends of its interval finite and positive (or no bootstrap):
        the targets a B_crit(L) law uses."""
        lo, hi = self.ci.get("B_crit", (1.0, 1.0))
        return self.converged and (math.isnan(lo) or (0 < lo and math.isfinite(hi)))

    @property
    def outside_range(self) -> bool:
        """A converged B_crit beyond the measured batches (an extrapolation)."""
        return self.converged and not (self.B.min() <= self.B_crit <= self.B.max())

    def predict(self, B) -> np.ndarray:
        """Steps S(B) of the fitted hyperbola (its limit at a bound)."""
        B = np.asarray(B, dtype=float)
        return self.S_min + self.E_min / B

    def describe(self) -> str:
        """B_crit in words: an estimate with its interval, or a one-sided bound."""
        from analysis.result import fmt

        if self.status == "lower_bound":
            return (f"B_crit > {fmt(self.bound, 3)} tokens (S_min at 0 or not excluded: perfect "
                    f"scaling over the measured batches; {self.bound_how})")
        if self.status == "upper_bound":
            return (f"B_crit < {fmt(self.bound, 3)} tokens (E_min at 0 or not excluded: no fewer "
                    f"steps with larger batches; {self.bound_how})")
        lo, hi = self.ci.get("B_crit", (math.nan, math.nan))
        ci = ""
        if not math.isnan(lo):
            ci = " [" + (fmt(lo, 3) if lo > 0 else "not bounded below") + ", " + (
                fmt(hi, 3) if math.isfinite(hi) else "not bounded above") + "]"
        out = f"B_crit = {fmt(self.B_crit, 3)}{ci} tokens"
        if self.outside_range:
            out += " (beyond the measured batches: an extrapolation)"
        return out

    def to_dict(self) -> dict:
        return {"B": self.B.tolist(), "S": self.S.tolist(), "S_min": self.S_min,
                "E_min": self.E_min, "B_crit": self.B_crit, "status": self.status,
                "bound": self.bound, "bound_how": self.bound_how,
                "ci": {k: list(v) for k, v in self.ci.items()}, "n_boot": self.n_boot,
                "n_boot_failed": self.n_failed, "n_replicates_S_min_0": self.n_rep_lower,
                "n_replicates_E_min_0": self.n_rep_upper, "residual_sd_log_S": self.residual_sd,
                "outside_measured_range": bool(self.outside_range), "describe": self.describe()}


def fit_critical_batch(B, S, *, n_boot: int = 1000, seed: int = 0,
                       uniforms: np.ndarray | None = None, level: float = LEVEL) -> CriticalBatchFit:
    """Fit S(B) = S_min + E_min / B to steps ``S`` at batch sizes ``B`` (tokens), one value
    per batch size, >= 3 batch sizes (ValueError otherwise). ``uniforms``: (n_boot, >= n)
    draws in [0, 1) for the residual bootstrap (default: from ``seed``)."""
    B = np.asarray(B, dtype=float)
    S = np.asarray(S, dtype=float)
    if B.shape != S.shape or B.ndim != 1:
        raise ValueError("B and S must be 1-d arrays of one length")
    ok = np.isfinite(B) & np.isfinite(S) & (B > 0) & (S > 0)
    if not ok.all():
        raise ValueError(f"B and S must be finite and positive ({int((~ok).sum())} values are not)")
    if np.unique(B).size < MIN_BATCHES:
        raise ValueError(f"{np.unique(B).size} distinct batch sizes: need >= {MIN_BATCHES}")
    order = np.argsort(B)
    B, S = B[order], S[order]
    y = np.log(S)
    lbc, lev = _solve(y[None, :], B, refine=True)
    lbc, lev = float(lbc[0]), float(lev[0])
    s_min, e_min, bc = (float(v[0]) for v in _params(np.array([lbc]), np.array([lev])))
    status = "converged" if math.isfinite(lbc) else ("lower_bound" if lbc > 0 else "upper_bound")
    fitted = _predict_log(B, lbc, lev)
    resid = y - fitted
    n = B.size
    p = 2 if status == "converged" else 1
    scale = math.sqrt(n / (n - p))
    r = (resid - resid.mean()) * scale
    out = CriticalBatchFit(B=B, S=S, S_min=s_min, E_min=e_min, B_crit=bc, status=status,
                           residual_sd=float(math.sqrt((resid ** 2).sum() / (n - p))))
    if n_boot > 0:
        U = uniforms if uniforms is not None else np.random.default_rng(seed).random((n_boot, n))
        U = np.asarray(U, dtype=float)[:n_boot, :n]
        idx = np.minimum((U * n).astype(int), n - 1)
        Y = fitted[None, :] + r[idx]
        with np.errstate(all="ignore"):
            lb, lv = _solve(Y, B, refine=False)
            sm, em, bcs = _params(lb, lv)
        samples = np.column_stack([sm, em, bcs])
        bad = ~np.isfinite(lv) | np.isnan(bcs)
        samples[bad] = np.nan
        out.samples = samples
        out.n_boot = int(len(Y))
        out.n_failed = int(bad.sum())
        good = samples[~bad]
        out.n_rep_lower = int(np.isposinf(good[:, 2]).sum())
        out.n_rep_upper = int((good[:, 2] == 0).sum())
        q = (1 - level) / 2
        if len(good) >= 10:
            out.ci = {k: (_quantile(good[:, i], q), _quantile(good[:, i], 1 - q))
                      for i, k in enumerate(("S_min", "E_min", "B_crit"))}
        lo_ci, hi_ci = out.ci.get("B_crit", (math.nan, math.nan))
        if status == "converged" and (math.isinf(hi_ci) or lo_ci == 0):
            # the data do not exclude a limit: a bound, whatever the point estimate
            k = out.n_rep_lower if math.isinf(hi_ci) else out.n_rep_upper
            status = out.status = "lower_bound" if math.isinf(hi_ci) else "upper_bound"
            out.bound_how = (f"{k} of {out.n_boot} replicates at {'S_min' if math.isinf(hi_ci) else 'E_min'}"
                             f" = 0; point estimate {bc:.3g} not identified; ")
        if status == "lower_bound":
            b = _quantile(good[:, 2], 1 - level) if len(good) >= 10 else math.nan
            if math.isfinite(b) and b > 0:
                out.bound, out.bound_how = b, out.bound_how + f"bound: bootstrap {1 - level:.0%} quantile"
            else:
                out.bound, out.bound_how = float(B.max()), out.bound_how + (
                    "bound: the largest batch measured (no bootstrap replicate shows curvature)")
        elif status == "upper_bound":
            b = _quantile(good[:, 2], level) if len(good) >= 10 else math.nan
            if math.isfinite(b) and b > 0:
                out.bound, out.bound_how = b, out.bound_how + f"bound: bootstrap {level:.0%} quantile"
            else:
                out.bound, out.bound_how = float(B.min()), out.bound_how + (
                    "bound: the smallest batch measured (no bootstrap replicate shows a gain)")
    elif status != "converged":
        out.bound = float(B.max() if status == "lower_bound" else B.min())
        out.bound_how = "the measured range (no bootstrap)"
    return out


@dataclass
class BcritLaw:
    """B_crit(L) = B_star / L^(1 / alpha_B), fitted in log-log over converged targets."""

    losses: np.ndarray
    b_crit: np.ndarray
    B_star: float
    inv_alpha: float  # 1 / alpha_B: the exponent of L
    ci: dict = field(default_factory=dict)
    n_boot: int = 0
    n_failed: int = 0
    samples: np.ndarray | None = None  # (n_boot, 2): log B_star, 1/alpha_B

    @property
    def alpha_B(self) -> float:
        return 1.0 / self.inv_alpha if self.inv_alpha != 0 else math.inf

    def alpha_interval(self) -> tuple[float, float]:
        """alpha_B's interval: 1 / the exponent's, when that excludes 0 (else not bounded)."""
        lo, hi = self.ci.get("inv_alpha", (math.nan, math.nan))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 <= hi:
            return (math.nan, math.nan)
        return (1.0 / hi, 1.0 / lo)

    def predict(self, L) -> np.ndarray:
        return self.B_star / np.asarray(L, dtype=float) ** self.inv_alpha

    def band(self, L, level: float = LEVEL):
        """Pointwise percentile band of the law over ``L`` from the replicates."""
        L = np.asarray(L, dtype=float)
        if self.samples is None or len(self.samples) < 10:
            return np.full(L.shape, np.nan), np.full(L.shape, np.nan)
        s = self.samples[np.isfinite(self.samples).all(1)]
        curves = s[:, :1] - s[:, 1:2] * np.log(L)[None, :]
        q = (1 - level) / 2
        return np.exp(np.quantile(curves, q, axis=0)), np.exp(np.quantile(curves, 1 - q, axis=0))

    def to_dict(self) -> dict:
        return {"form": "B_crit(L) = B_star / L^(1/alpha_B)", "losses": self.losses.tolist(),
                "B_crit": self.b_crit.tolist(), "B_star": self.B_star, "alpha_B": self.alpha_B,
                "inv_alpha_B": self.inv_alpha,
                "ci": {**{k: list(v) for k, v in self.ci.items()},
                       "alpha_B": list(self.alpha_interval())},
                "n_boot": self.n_boot, "n_boot_failed": self.n_failed}


def fit_bcrit_law(losses, fits: list[CriticalBatchFit], level: float = LEVEL) -> BcritLaw:
    """B_crit(L) over the targets whose B_crit is bounded (>= 3, ValueError otherwise). Replicate
    j uses replicate j of every target (fit them with shared ``uniforms``); a replicate with
    fewer than 3 finite, positive B_crit is failed and counted."""
    L = np.asarray(losses, dtype=float)
    use = np.array([f.bounded for f in fits], dtype=bool)
    if use.sum() < 3:
        raise ValueError(f"{int(use.sum())} target(s) with a B_crit bounded on both sides: need >= 3 "
                         f"({int((~use).sum())} at a bound or with an interval open on one side)")
    x = np.log(L[use])
    yb = np.log([f.B_crit for f, u in zip(fits, use) if u])
    slope, icpt = np.polyfit(x, yb, 1)
    law = BcritLaw(losses=L[use], b_crit=np.exp(yb), B_star=float(math.exp(icpt)), inv_alpha=float(-slope))
    sub = [f for f, u in zip(fits, use) if u]
    if all(f.samples is not None for f in sub) and sub:
        n = min(len(f.samples) for f in sub)
        reps = np.full((n, 2), np.nan)
        for j in range(n):
            v = np.array([f.samples[j, 2] for f in sub])
            ok = np.isfinite(v) & (v > 0)
            if ok.sum() >= 3 and np.unique(x[ok]).size >= 3:
                s, c = np.polyfit(x[ok], np.log(v[ok]), 1)
                reps[j] = (c, -s)
        good = reps[np.isfinite(reps).all(1)]
        law.samples, law.n_boot, law.n_failed = reps, n, int(n - len(good))
        if len(good) >= 10:
            q = (1 - level) / 2
            law.ci = {"B_star": (float(np.exp(np.quantile(good[:, 0], q))),
                                 float(np.exp(np.quantile(good[:, 0], 1 - q)))),
                      "inv_alpha": (float(np.quantile(good[:, 1], q)), float(np.quantile(good[:, 1], 1 - q)))}
    return law
