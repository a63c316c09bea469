"""The loss of any run (N, D) before it is paid for: a prediction interval that carries the
law's own misspecification, not only its parameters' bootstrap.

``fit.predict_loss(N, D, level=0.95)`` on every fitted law of (N, D) (ChinchillaFit,
KaplanFit, SharedFit, DataConstrainedFit) returns a :class:`Prediction`: arrays (scalars for
scalar input) with the attributes below and ``.as_dict()`` (keys "N", "D", "C", "x_decades",
"loss", "low", "high", "param_low", "param_high", "misspec_sd"):

- ``loss``: the point prediction of the full-data fit (independent of the bootstrap);
- ``param_low``, ``param_high``: the ``level`` percentile interval of the prediction over the
  bootstrap replicates (parameter uncertainty only; NaN without a bootstrap);
- ``misspec_sd``: the standard deviation, in log loss, of the law's out-of-sample error at the
  target's extrapolation distance (below);
- ``low``, ``high``: the prediction interval. In log loss the two parts are added in
  quadrature, each side on its own: ``log high = log loss + sqrt(dh^2 + (z misspec_sd)^2)``
  with ``dh = log param_high - log loss`` (and the same below), ``z`` the normal quantile of
  ``level``;
- ``C`` and ``x_decades``: the target's compute under the table's own C(N, D) relation and
  its distance beyond the largest fitted compute, in decades (0 inside the data).

Misspecification (:func:`rolling_backtest`): the law is refitted on the cheaper runs only,
at up to four cuts in compute (the training set keeps 50-90 % of the rows, cut between
distinct compute levels so that an IsoFLOP budget is never split), and predicts the runs above
each cut. The log residuals r of those predictions, at distances x (decades beyond the cut's
largest fitted C), give ``E[r^2] = s0^2 + s1^2 x^2`` by non-negative least squares:
``misspec_sd(x) = sqrt(s0^2 + s1^2 x^2)``, growing with distance where the data say so (the
slope more than ``GROWTH_Z`` = 2 standard errors above 0; else s1 = 0 and s0 the residuals'
root mean square). ``s0`` is at least the full fit's robust in-sample residual scale
(1.4826 median |r|). The residuals include the held-out runs' own noise (which a future run has
too) and the sub-fits' parameter error (larger than the full fit's): the estimate errs wide.
The refits start from the full-data optimum and the starts of its best distinct basins, as the
bootstrap's refits do (``analysis backtest`` refits each training set from the full grid).
The mean |relative error| of these backtest predictions is the law's "backtest error", by which
``--law auto`` chooses (analysis/fits/ndlaws.py).

Compute (:class:`CRelation`): the table's own C(N, D), ``C = k0 N^(1 + c1) D`` fitted by least
squares of log(C / (N D)) on log N (exact for 6ND, k0 = 6, c1 = 0; close for C_exact, whose
FLOPs per token and parameter fall with N). Approach 3's compute-optimal allocation
(analysis/fits/chinchilla.py) minimises the law along this same relation, so that it and the
IsoFLOP budgets (C_exact under the default accounting) are on one compute axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from analysis.fits.laws import Law
from analysis.fits.multistart import fit_multistart
from analysis.result import LEVEL, percentile_interval

# share of the rows a backtest cut keeps for fitting (the cheapest ones)
CUT_RANGE = (0.5, 0.9)
MAX_CUTS = 4
# compute values within this many decades are one level (an IsoFLOP budget)
LEVEL_TOL_DEC = 0.01
# the misspecification grows with distance only when the slope of r^2 on x^2 is this many
# standard errors above 0
GROWTH_Z = 2.0


# --------------------------------------------------------------------------------------
# C(N, D)
# --------------------------------------------------------------------------------------


@dataclass
class CRelation:
    """C = k0 N^(1 + c1) D; ``source`` says where it came from."""

    log_k0: float = math.log(6.0)
    c1: float = 0.0
    source: str = "C = 6 N D (assumed: no compute column)"
    max_rel_err: float = 0.0

    def C(self, N, D) -> np.ndarray:
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return np.exp(self.log_k0 + (1.0 + self.c1) * np.log(N) + np.log(D))

    def D_for(self, N, C) -> np.ndarray:
        """Tokens that spend compute C with N parameters."""
        N = np.asarray(N, dtype=np.float64)
        C = np.asarray(C, dtype=np.float64)
        return C / np.exp(self.log_k0 + (1.0 + self.c1) * np.log(N))

    def to_dict(self) -> dict:
        return {"form": "C = k0 N^(1 + c1) D", "k0": math.exp(self.log_k0), "c1": self.c1,
                "source": self.source, "max_rel_err": self.max_rel_err}


def fit_c_relation(N, D, C) -> CRelation:
    """Least squares of log(C / (N D)) on log N over the rows with finite positive N, D, C;
    6ND (stated) when there are none."""
    N, D = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    C = np.full(N.shape, np.nan) if C is None else np.asarray(C, dtype=np.float64)
    ok = np.isfinite(N) & np.isfinite(D) & np.isfinite(C) & (N > 0) & (D > 0) & (C > 0)
    if ok.sum() < 2:
        return CRelation()
    y = np.log(C[ok] / (N[ok] * D[ok]))
    x = np.log(N[ok])
    if np.ptp(x) < 1e-9:
        c1, k = 0.0, float(np.mean(y))
    else:
        c1, k = (float(v) for v in np.polyfit(x, y, 1))
    err = float(np.max(np.abs(np.expm1(y - (k + c1 * x)))))
    if abs(c1) < 1e-9 and abs(k - math.log(6.0)) < 1e-9:
        src = "C = 6 N D (the table's compute is 6 N D)"
    else:
        src = (f"the table's C(N, D): C = {math.exp(k):.4g} N^(1 {'+' if c1 >= 0 else '-'} "
               f"{abs(c1):.4f}) D, fitted to {int(ok.sum())} rows (max relative error "
               f"{err * 100:.2g} %)")
    return CRelation(log_k0=k, c1=c1, source=src, max_rel_err=err)


# --------------------------------------------------------------------------------------
# misspecification from a rolling backtest
# --------------------------------------------------------------------------------------


@dataclass
class Misspec:
    """misspec_sd(x) = sqrt(s0^2 + s1^2 x^2) in log loss, x in decades beyond the fitted C."""

    s0: float
    s1: float = 0.0
    floor: float = 0.0
    n_cuts: int = 0
    n_resid: int = 0
    backtest_error: float = math.nan  # mean |relative error| of the backtest predictions
    max_x: float = 0.0
    how: str = ""
    residuals: list = field(default_factory=list, repr=False)  # (cut, x, r) per prediction

    def sd(self, x) -> np.ndarray:
        x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
        return np.sqrt(self.s0 ** 2 + (self.s1 * x) ** 2)

    def to_dict(self) -> dict:
        return {"s0": self.s0, "s1": self.s1, "floor": self.floor, "n_cuts": self.n_cuts,
                "n_residuals": self.n_resid, "backtest_error": self.backtest_error,
                "max_backtest_decades": self.max_x, "how": self.how,
                "form": "misspec_sd(x) = sqrt(s0^2 + (s1 x)^2), log loss, x = decades of C "
                        "beyond the largest fitted compute"}


def compute_levels(C) -> np.ndarray:
    """An integer level per row: rows whose compute differs by under LEVEL_TOL_DEC decades
    (an IsoFLOP budget) share one."""
    lc = np.log10(np.asarray(C, dtype=np.float64))
    order = np.argsort(lc)
    lev = np.empty(lc.size, dtype=int)
    k, start = 0, None
    for i in order:
        if start is not None and lc[i] - start > LEVEL_TOL_DEC:
            k += 1
            start = lc[i]
        elif start is None:
            start = lc[i]
        lev[i] = k
    return lev


def backtest_cuts(C, N, D, *, min_rows: int, max_cuts: int = MAX_CUTS,
                  share: tuple[float, float] = CUT_RANGE) -> list[np.ndarray]:
    """Training masks (the cheapest rows) for the rolling backtest; see the module docstring.
    Each keeps between ``share`` of the rows, ``min_rows`` or more, 3 distinct N and 3 distinct
    D, and leaves at least one level above it."""
    lev = compute_levels(C)
    n = lev.size
    masks, seen = [], set()
    top = lev.max()
    for q in np.linspace(share[1], share[0], max_cuts):
        # the largest level boundary keeping at most a share q of the rows
        best = None
        for k in range(1, top + 1):
            m = lev < k
            if m.sum() <= q * n + 1e-9:
                best = k
        if best is None or best in seen:
            continue
        m = lev < best
        if (m.sum() < min_rows or m.sum() < share[0] * n - 1e-9 or np.unique(N[m]).size < 3
                or np.unique(D[m]).size < 3 or (~m).sum() == 0):
            continue
        seen.add(best)
        masks.append(m)
    return masks


def misspec_from_residuals(x, r, floor: float) -> tuple[float, float]:
    """(s0, s1) of E[r^2] = s0^2 + s1^2 x^2 by non-negative least squares; s0 >= floor."""
    from scipy.optimize import nnls

    x = np.asarray(x, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if r.size == 0:
        return floor, 0.0
    if r.size < 3 or np.ptp(x) < 1e-9:
        return max(float(np.sqrt(np.mean(r ** 2))), floor), 0.0
    A = np.stack([np.ones_like(x), x ** 2], axis=1)
    q = r ** 2
    coef, _ = nnls(A, q)
    # keep the growth only where the data support it: the slope of r^2 on x^2 more than
    # GROWTH_Z standard errors above 0 (ordinary least squares' standard error)
    ols, *_ = np.linalg.lstsq(A, q, rcond=None)
    dof = max(q.size - 2, 1)
    s2 = float(np.sum((q - A @ ols) ** 2)) / dof
    cov = s2 * np.linalg.pinv(A.T @ A)
    se = math.sqrt(max(cov[1, 1], 0.0))
    if coef[1] <= 0 or ols[1] < GROWTH_Z * se:
        return max(float(np.sqrt(np.mean(q))), floor), 0.0
    return max(float(np.sqrt(coef[0])), floor), float(np.sqrt(coef[1]))


def rolling_backtest(law: Law, y, C, N, D, starts, *, P: int, loss: str, delta: float,
                     weights=None, opt: dict | None = None, floor: float = 0.0) -> Misspec:
    """Refit ``law`` on the cheaper rows at each backtest cut (weights 0 on the others; the
    centring of ``law`` is the full data's, which does not change the optimum) from internal
    ``starts`` (K, P), predict the rows above the cut, and fit :class:`Misspec`."""
    y = np.asarray(y, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    masks = backtest_cuts(C, np.asarray(N), np.asarray(D), min_rows=max(6, P + 2))
    if not masks:
        return Misspec(s0=floor, floor=floor, how="no backtest cut possible (too few compute "
                       "levels or rows below the largest ones): in-sample residual scale only")
    W = np.stack([m.astype(np.float64) for m in masks])
    if weights is not None:
        W = W * np.asarray(weights, dtype=np.float64)[None, :]
    res = fit_multistart(law, y, np.asarray(starts)[:, :P], loss=loss, delta=delta, weights=W,
                         n_problems=len(masks), **(opt or {}))
    pred = law.forward(res.x[:, :P])[0]
    xs, rs, rows = [], [], []
    for j, m in enumerate(masks):
        if not res.ok[j]:
            continue
        cmax = C[m].max()
        held = ~m
        x = np.log10(C[held] / cmax)
        r = y[held] - pred[j, held]
        xs.append(x)
        rs.append(r)
        rows += [(j, float(a), float(b)) for a, b in zip(x, r)]
    if not rs:
        return Misspec(s0=floor, floor=floor, how="every backtest refit failed: in-sample "
                       "residual scale only")
    x = np.concatenate(xs)
    r = np.concatenate(rs)
    s0, s1 = misspec_from_residuals(x, r, floor)
    kept = [float(m.mean()) for j, m in enumerate(masks) if res.ok[j]]
    return Misspec(s0=s0, s1=s1, floor=floor, n_cuts=len(kept), n_resid=int(r.size),
                   backtest_error=float(np.mean(np.abs(np.expm1(-r)))), max_x=float(x.max()),
                   how=(f"rolling backtest: {len(kept)} fits on the cheapest "
                        f"{', '.join(f'{k * 100:.0f}' for k in kept)} % of rows, {r.size} "
                        f"predictions up to {x.max():.2g} decades beyond each fit"),
                   residuals=rows)


def robust_scale(resid) -> float:
    r = np.asarray(resid, dtype=np.float64)
    return max(1.4826 * float(np.median(np.abs(r))), 1e-6)


# --------------------------------------------------------------------------------------
# the prediction
# --------------------------------------------------------------------------------------


PREDICTION_KEYS = ("N", "D", "C", "x_decades", "loss", "low", "high", "param_low",
                   "param_high", "misspec_sd")


@dataclass
class Prediction:
    """See the module docstring. Attributes are arrays, or floats for scalar input."""

    N: object
    D: object
    C: object
    x_decades: object
    loss: object
    low: object
    high: object
    param_low: object
    param_high: object
    misspec_sd: object
    level: float = LEVEL

    def as_dict(self) -> dict:
        out = {}
        for k in PREDICTION_KEYS:
            v = getattr(self, k)
            out[k] = [_num(a) for a in np.asarray(v).ravel()] if np.ndim(v) else _num(v)
        out["level"] = self.level
        return out

    def records(self) -> list[dict]:
        """One dict per target (the ``predictions`` rows of ``fit --json``)."""
        cols = {k: np.atleast_1d(np.asarray(getattr(self, k), dtype=np.float64)) for k in PREDICTION_KEYS}
        return [{k: _num(cols[k][i]) for k in PREDICTION_KEYS} for i in range(cols["loss"].size)]


def _num(v):
    f = float(v)
    return f if math.isfinite(f) else None


def combine(loss, param_low, param_high, sd, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The prediction interval (module docstring): each side's bootstrap half-width and z sd
    added in quadrature in log loss; without a bootstrap (NaN), the misspecification only."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    ll = np.log(loss)
    dl = np.nan_to_num(np.maximum(ll - np.log(param_low), 0.0), nan=0.0)
    dh = np.nan_to_num(np.maximum(np.log(param_high) - ll, 0.0), nan=0.0)
    m = z * np.asarray(sd, dtype=np.float64)
    return np.exp(ll - np.sqrt(dl ** 2 + m ** 2)), np.exp(ll + np.sqrt(dh ** 2 + m ** 2))


class PredictiveMixin:
    """``predict_loss`` for a fit with ``predict(N, D, params)``, ``samples`` (bootstrap rows of
    params), ``misspec`` (:class:`Misspec`), ``c_relation`` (:class:`CRelation`) and
    ``c_max`` (largest fitted compute)."""

    misspec: Misspec | None = None
    c_relation: CRelation | None = None
    c_max: float = math.nan

    def _replicate_params(self):
        if self.samples is None or not len(self.samples):
            return []
        return [row for _, row in self.samples.dropna().iterrows()]

    def predict_loss(self, N, D, level: float = LEVEL) -> Prediction:
        """The loss of runs (N, D) with a ``level`` prediction interval; see the module
        docstring of analysis/fits/prediction.py."""
        scalar = np.ndim(N) == 0 and np.ndim(D) == 0
        N, D = np.broadcast_arrays(np.atleast_1d(np.asarray(N, dtype=np.float64)),
                                   np.atleast_1d(np.asarray(D, dtype=np.float64)))
        if not (np.all(np.isfinite(N)) and np.all(np.isfinite(D)) and np.all(N > 0) and np.all(D > 0)):
            raise ValueError("predict_loss: N and D must be finite and positive")
        point = np.asarray(self.predict(N, D), dtype=np.float64)
        reps = self._replicate_params()
        if len(reps) >= 10:
            with np.errstate(all="ignore"):
                V = np.array([np.asarray(self.predict(N, D, r), dtype=np.float64) for r in reps])
            ci = [percentile_interval(V[:, j], level) for j in range(point.size)]
            plo = np.array([c[0] for c in ci])
            phi = np.array([c[1] for c in ci])
        else:
            plo = phi = np.full(point.shape, np.nan)
        rel = self.c_relation or CRelation()
        C = rel.C(N, D)
        x = np.maximum(np.log10(C / self.c_max), 0.0) if np.isfinite(self.c_max) else np.zeros(C.shape)
        ms = self.misspec or Misspec(s0=0.0, how="none")
        sd = ms.sd(x)
        lo, hi = combine(point, plo, phi, sd, level)
        vals = [N, D, C, x, point, lo, hi, plo, phi, sd]
        if scalar:
            vals = [float(v[0]) for v in vals]
        return Prediction(*vals, level=level)

    def prediction_info(self) -> dict:
        """What the intervals of :meth:`predict_loss` are made of (for JSON and captions)."""
        return {"misspec": self.misspec.to_dict() if self.misspec else None,
                "c_relation": (self.c_relation or CRelation()).to_dict(),
                "c_max_fitted": self.c_max,
                "interval": "parameter part (bootstrap percentiles) and misspecification "
                            "(z * misspec_sd) added in quadrature in log loss, each side"}


def attach(fit, *, law: Law, y, N, D, C, starts, P: int, loss: str, delta: float,
           weights=None, opt=None, resid=None, backtest: bool = True) -> None:
    """Give ``fit`` (a PredictiveMixin) its C relation, largest fitted compute and misspecification."""
    rel = fit_c_relation(N, D, C)
    Cr = np.asarray(C, dtype=np.float64) if C is not None else rel.C(N, D)
    Cr = np.where(np.isfinite(Cr) & (Cr > 0), Cr, rel.C(N, D))
    fit.c_relation = rel
    fit.c_max = float(np.max(Cr))
    # the optimum and the starts of its best distinct basins, in the law's external
    # parameters: a refit of the same rows from these finds the same optimum (auto's bootstrap)
    fit.refit_starts = law.to_external(np.asarray(starts)[:, :P])
    floor = robust_scale(resid) if resid is not None else 0.0
    if backtest:
        fit.misspec = rolling_backtest(law, y, Cr, N, D, starts, P=P, loss=loss, delta=delta,
                                       weights=weights, opt=opt, floor=floor)
    else:
        fit.misspec = Misspec(s0=floor, floor=floor, how="in-sample residual scale only (no backtest)")
    fit.info["prediction"] = fit.prediction_info()
