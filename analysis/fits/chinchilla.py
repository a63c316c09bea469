"""Chinchilla Approach 3 (parametric L(N, D)) and Kaplan et al.'s joint L(N, D).

Approach 3 (Hoffmann et al. 2022, Section 3.3 and Appendix D.2):

    L(N, D) = E + A / N^alpha + B / D^beta,
    log L = LSE(a - alpha log N, b - beta log D, e),   A = e^a, B = e^b, E = e^e,

minimising the sum over runs of Huber_delta(log L_pred - log L_obs) with delta = 1e-3,
by L-BFGS from the grid alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
a, b in {0, 5, ..., 25} (4,500 starts), keeping the best. Compute-optimal allocation
under C = 6 N D (the published closed form; params a, b, G):

    N_opt(C) = G (C/6)^a,  D_opt(C) = G^-1 (C/6)^b,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta),  b = alpha / (alpha + beta).

Given the table's compute (``C=``), :meth:`ChinchillaFit.optimal` minimises the law along the
table's own C(N, D) = k0 N^(1 + c1) D instead (analysis/fits/prediction.py, :class:`CRelation`;
C_exact under the default accounting), so Approach 3 and the IsoFLOP budgets share one compute
axis: with beta' = beta (1 + c1),

    N_opt(C) = (alpha A / (beta' B))^(1/(alpha+beta')) (C/k0)^(beta/(alpha+beta')),
    D_opt(C) = C / (k0 N_opt^(1 + c1)),

and params gain ``a_C = beta / (alpha + beta')`` and ``b_C = 1 - (1 + c1) a_C``, the exponents
against that C (equal to a and b under 6ND).

Prediction (``fit.predict_loss(N, D, level=0.95)``): the loss of any run with a prediction
interval that adds the law's misspecification, from a rolling backtest, to the bootstrap's
parameter uncertainty; see analysis/fits/prediction.py. ``KaplanFit`` has the same method.

``loss_fn="huber_nll"`` is Besiroglu et al.'s (2024) estimator: the Huber loss read as
the negative log-likelihood of a Huber density with a fitted scale sigma.

Intervals (``bootstrap``): "noise" (default) keeps the design fixed and perturbs each run's
log loss by its measured noise (``noise``: per-run standard errors, e.g. from
:func:`analysis.noise.loss_noise`; when None, the fit's own robust residual scale, stated in
``info["noise_source"]``), then refits; "cases" resamples runs with replacement (as Besiroglu
et al. do for Hoffmann's extracted points). Each replicate is refitted (batched) from the
full-data optimum and the starts that led to the best distinct basins on the full data
(``boot_starts``), not from all 4,500 starts; ``benchmarks/fit_speed.py --verify`` checks on
resamples that the full grid finds the same optima. Failed refits are NaN rows of
``samples`` and counted (``n_boot_failed``); intervals are over the others, and say so.

Identifiability: E is "not identified" when the fit puts it at its bound (E below
``E_FLOOR_FRACTION`` of the smallest loss) or when more than (1 - level)/2 of the replicates
do (the data are then consistent with E = 0, and a percentile interval would hide that).
The reduced model without E is then refitted and both objectives are reported; E gets a
one-sided upper bound (the level-quantile of its replicates) instead of an interval, and a, b,
G and the predictions are marked as conditional on the full model. alpha or beta outside
(``EXPONENT_EDGE``) (the edges of Hoffmann's start grid) are marked the same way.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.fits.laws import ChinchillaLaw, ChinchillaNoELaw, KaplanNDLaw
from analysis.fits.multistart import basin_starts, fit_multistart, grid
from analysis.noise import LossNoise, noise_replicates, shared_factors
from analysis.fits.prediction import CRelation, PredictiveMixin, attach
from analysis.result import LEVEL, FitResult, bootstrap_counts, one_sided_bound, percentile_interval

# E below this fraction of the smallest observed loss counts as "at its bound" (E = 0)
E_FLOOR_FRACTION = 1e-3
# alpha, beta outside this range: at or beyond the edges of Hoffmann's start grid (0..2)
EXPONENT_EDGE = (0.02, 2.0)

HOFFMANN_GRID = {
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
    "e": np.arange(-1.0, 1.01, 0.5),
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
}

# ftol of the batched L-BFGS: stop after `patience` iterations that each lower the objective
# by less than this fraction of its value. Scale-free, so mean and sum of the loss stop at
# the same point (tests/test_analysis_chinchilla.py checks both).
FTOL = 1e-11


def hoffmann_starts() -> np.ndarray:
    """The 4,500 starts (a, b, e, alpha, beta) of Hoffmann et al. (2022)."""
    g = HOFFMANN_GRID
    return grid(g["a"], g["b"], g["e"], g["alpha"], g["beta"])


def derive(a: float, b: float, e: float, alpha: float, beta: float) -> dict[str, float]:
    """E, A, B and the derived allocation exponents from the log-space parameters.

    A bootstrap resample of a small design can send a coefficient to an absurd size
    (exp overflow): it comes back as inf, and the percentile intervals say so.
    """
    with np.errstate(all="ignore"):
        A, B, E = (float(np.exp(np.float64(v))) for v in (a, b, e))
    s = alpha + beta
    with np.errstate(all="ignore"):
        G = (alpha * A / (beta * B)) ** (1.0 / s) if (alpha > 0 and beta > 0) else math.nan
    return {
        "E": E, "A": A, "B": B, "alpha": alpha, "beta": beta,
        "a": beta / s if s else math.nan, "b": alpha / s if s else math.nan, "G": float(G),
    }


class ChinchillaFit(PredictiveMixin, FitResult):
    """Result of :func:`fit_approach3`. params: E, A, B, alpha, beta, a, b, G (+ sigma;
    + a_C, b_C given the table's compute). ``predict_loss``: analysis/fits/prediction.py."""

    def predict(self, N, D, params: dict | None = None) -> np.ndarray:
        p = self.params if params is None else params
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]

    @staticmethod
    def _optimal(C, p, rel: CRelation | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        C = np.asarray(C, dtype=np.float64)
        rel = rel or CRelation()
        al, be = p["alpha"], p["beta"]
        bp = be * (1.0 + rel.c1)
        with np.errstate(all="ignore"):
            g = (al * p["A"] / (bp * p["B"])) ** (1.0 / (al + bp))
            n = g * (C / math.exp(rel.log_k0)) ** (be / (al + bp))
            d = rel.D_for(n, C)
            loss = p["E"] + p["A"] / n ** al + p["B"] / d ** be
        return n, d, loss

    def optimal(self, C, params: dict | None = None):
        """Compute-optimal (N_opt, D_opt, L_opt) for budgets ``C`` (FLOPs under the table's
        own C(N, D) when the fit was given it, else C = 6 N D; ``info["c_relation"]``)."""
        return self._optimal(C, self.params if params is None else params, self.c_relation)

    def optimal_table(self, C, level: float | None = None) -> pd.DataFrame:
        """N_opt, D_opt and L_opt for each budget, with bootstrap percentile intervals."""
        C = np.atleast_1d(np.asarray(C, dtype=np.float64))
        n, d, loss = self.optimal(C)
        out = pd.DataFrame({"C": C, "N_opt": n, "D_opt": d, "loss_opt": loss})
        if self.samples is not None and len(self.samples):
            # replicates whose five law parameters are finite (a column other fits add, such
            # as an allocation along another C, may be NaN without spoiling the replicate)
            S = self.samples.dropna(subset=[k for k in ("E", "A", "B", "alpha", "beta")
                                            if k in self.samples.columns])
            vals = {k: [] for k in ("N_opt", "D_opt", "loss_opt")}
            for _, row in S.iterrows():
                nn, dd, ll = self._optimal(C, row, self.c_relation)
                vals["N_opt"].append(nn)
                vals["D_opt"].append(dd)
                vals["loss_opt"].append(ll)
            for k, v in vals.items():
                arr = np.array(v, dtype=np.float64).reshape(len(v), C.size)
                ci = [percentile_interval(arr[:, j], level or self.level) for j in range(C.size)]
                out[k + "_low"] = [c[0] for c in ci]
                out[k + "_high"] = [c[1] for c in ci]
        return out


def clean_nd(N, D, loss):
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    L = np.asarray(loss, dtype=np.float64)
    keep = np.isfinite(N) & np.isfinite(D) & np.isfinite(L) & (N > 0) & (D > 0) & (L > 0)
    if keep.sum() < 6:
        raise ValueError(f"L(N, D) fit needs at least 6 valid rows, got {int(keep.sum())}")
    if np.unique(N[keep]).size < 3 or np.unique(D[keep]).size < 3:
        raise ValueError("L(N, D) fit needs at least 3 distinct N and 3 distinct D values")
    return N[keep], D[keep], L[keep], keep


def fit_approach3(
    N,
    D,
    loss,
    *,
    loss_fn: str = "huber",
    delta: float = 1e-3,
    reduction: str = "sum",
    starts: np.ndarray | None = None,
    n_boot: int = 200,
    boot_starts: int = 8,
    seed: int = 0,
    level: float = LEVEL,
    ftol: float = FTOL,
    max_iter: int = 1000,
    bootstrap: str = "noise",
    noise=None,
    C=None,
    backtest: bool = True,
) -> ChinchillaFit:
    """Hoffmann et al.'s Approach 3 on runs (N, D, final loss); see the module docstring.

    ``loss_fn``: "huber" (Hoffmann), "huber_nll" (Besiroglu et al.'s Huber likelihood,
    adds a fitted sigma) or "l2". ``reduction``: "sum" or "mean" of the per-run losses (the
    optimum and the stopping point are the same; only the objective's scale differs).
    ``starts``: external (a, b, e, alpha, beta) starts, default Hoffmann's 4,500.
    ``bootstrap``: "noise" or "cases"; ``noise``: per-run standard errors of the loss (array
    or :class:`analysis.noise.LossNoise`), used by the noise bootstrap. ``C``: the table's
    compute per row (its C(N, D) relation then sets the compute-optimal allocation and the
    prediction's extrapolation distance; None: C = 6 N D). ``backtest``: estimate the law's
    misspecification for ``predict_loss`` (analysis/fits/prediction.py).
    """
    if bootstrap not in ("noise", "cases"):
        raise ValueError(f"bootstrap must be 'noise' or 'cases', got {bootstrap!r}")
    C_all = None if C is None else np.asarray(C, dtype=np.float64)
    N, D, L, keep = clean_nd(N, D, loss)
    C_fit = None if C_all is None else C_all[keep]
    n = N.size
    law = ChinchillaLaw(np.log(N), np.log(D))
    y = np.log(L)
    w = None if reduction == "sum" else np.full(n, 1.0 / n)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    ext_starts = hoffmann_starts() if starts is None else np.asarray(starts, dtype=np.float64)
    opt = {"ftol": ftol, "max_iter": max_iter}
    grid_starts = law.to_internal(ext_starts)
    hub = fit_multistart(law, y, grid_starts, loss="huber" if loss_fn == "huber_nll" else loss_fn,
                         delta=delta, weights=w, **opt)
    info = {
        "loss_fn": loss_fn, "delta": delta, "reduction": reduction,
        "n_starts": int(len(grid_starts)),
        "starts_at_best": int(np.sum(np.abs(hub.all_f[0] - hub.f[0]) <= 1e-8 * abs(hub.f[0]))),
        "starts_max_iter": int(np.sum(hub.all_status[0] == 3)),
        "ftol": ftol,
    }
    if loss_fn == "huber_nll":
        base = basin_starts(hub, grid_starts, boot_starts)
        res, run_starts = _fit_nll(law, y, base, delta, w, opt)
        P = 5
    else:
        res, run_starts, P = hub, grid_starts, 5
    best = res.x[0]
    ext = law.to_external(best[:P])[0]
    params = derive(*ext)
    if loss_fn == "huber_nll":
        params["sigma"] = math.exp(best[P])
    info.update({"objective": float(res.f[0]), "converged": bool(res.ok[0])})
    pred = law.forward(best[None, :P])[0][0]
    resid = pred - y
    info["mean_abs_log_residual"] = float(np.mean(np.abs(resid)))
    fit = ChinchillaFit(kind="chinchilla", params=params, n=n, level=level, info=info)
    attach(fit, law=law, y=y, N=N, D=D, C=C_fit, starts=basin_starts(hub, grid_starts, boot_starts),
           P=5, loss="huber" if loss_fn == "huber_nll" else loss_fn, delta=delta, weights=w, opt=opt,
           resid=resid, backtest=backtest)
    if C_fit is not None:
        _c_exponents(params, fit.c_relation)

    if n_boot > 0:
        rng = np.random.default_rng(seed)
        bs = basin_starts(res, run_starts, boot_starts)
        if bootstrap == "cases":
            W = bootstrap_counts(n, n_boot, rng)
            if w is not None:
                W = W / n
            Y = y
            fit.info["bootstrap"] = "cases (runs resampled with replacement)"
        else:
            sigma, source = noise_sigma(noise, keep, L, resid)
            Y = np.log(noise_replicates(L, sigma, n_boot, rng, shared=shared_factors(noise, keep, n_boot, seed)))
            W = w
            fit.info["bootstrap"] = "noise (design fixed, each run's loss perturbed by its noise)"
            fit.info["noise_source"] = source
        bres = fit_multistart(law, Y, bs, loss=loss_fn, delta=delta, weights=W,
                              n_problems=n_boot, **opt)
        rows = []
        for i in range(n_boot):
            if not bres.ok[i]:
                rows.append({k: math.nan for k in params})
                continue
            e_i = law.to_external(bres.x[i, :P])[0]
            r = derive(*e_i)
            if loss_fn == "huber_nll":
                r["sigma"] = float(np.exp(bres.x[i, P]))
            if C_fit is not None:
                _c_exponents(r, fit.c_relation)
            rows.append(r)
        fit.samples = pd.DataFrame(rows)
        fit.fill_intervals()
        fit.info["n_boot_starts"] = int(len(bs))
    _check_identified(fit, law, y, L, w, loss_fn, delta, opt)
    return fit


def _c_exponents(p: dict, rel: CRelation) -> None:
    """a_C, b_C: the exponents of N_opt and D_opt against the table's C (module docstring)."""
    bp = p["beta"] * (1.0 + rel.c1)
    s = p["alpha"] + bp
    p["a_C"] = p["beta"] / s if s else math.nan
    p["b_C"] = 1.0 - (1.0 + rel.c1) * p["a_C"]


def noise_sigma(noise, keep, L, resid) -> tuple[np.ndarray, str]:
    """Per-run absolute noise for the noise bootstrap, and its source in words."""
    if noise is None:
        rel = 1.4826 * float(np.median(np.abs(resid)))
        rel = max(rel, 1e-6)
        return rel * L, (f"assumed: the fit's robust residual scale, {rel * 100:.2g} % relative "
                         "(no measured noise given)")
    if isinstance(noise, LossNoise):
        return np.asarray(noise.sigma, dtype=np.float64)[keep], noise.source
    sig = np.asarray(noise, dtype=np.float64)[keep]
    return sig, "per-run standard errors given by the caller"


def _check_identified(fit: "ChinchillaFit", law, y, L, w, loss_fn, delta, opt) -> None:
    """Mark E, alpha, beta as not identified where they sit at a bound (module docstring),
    refit the reduced model without E and mark the derived quantities as conditional."""
    p = fit.params
    floor = E_FLOOR_FRACTION * float(L.min())
    tail = (1 - fit.level) / 2
    reasons = {}
    S = fit.samples.dropna() if fit.samples is not None and len(fit.samples) else None
    if p["E"] < floor:
        reasons["E"] = f"the fit puts E at its bound (E = {p['E']:.3g} < {E_FLOOR_FRACTION:g} x min loss)"
    elif S is not None and len(S) >= 10 and float(np.mean(S["E"] < floor)) > tail:
        reasons["E"] = (f"{np.mean(S['E'] < floor) * 100:.0f} % of the bootstrap replicates put E at "
                        "its bound (E ~ 0): the data are consistent with no irreducible term")
    lo_e, hi_e = EXPONENT_EDGE
    for k in ("alpha", "beta"):
        if not (lo_e < p[k] < hi_e):
            reasons[k] = f"{k} = {p[k]:.3g} at the edge of the start grid ({lo_e:g}..{hi_e:g})"
    if not reasons:
        fit.info["identified"] = True
        return
    fit.info["identified"] = False
    for k, why in reasons.items():
        upper = one_sided_bound(S[k].to_numpy(), fit.level) if (S is not None and k == "E") else None
        fit.mark_unidentified(k, why, upper=upper if upper is not None and math.isfinite(upper) else None)
    if "E" in reasons and loss_fn in ("huber", "l2"):
        fit.info["reduced_model"] = _fit_without_e(law, y, w, loss_fn, delta, opt, fit.info["objective"])
    fit.info["conditional"] = ("a, b, G and predictions are conditional on the full model "
                               f"E + A/N^alpha + B/D^beta although {', '.join(reasons)} "
                               "is not identified by these data")


def _fit_without_e(law: ChinchillaLaw, y, w, loss_fn, delta, opt, f_full: float) -> dict:
    """Refit L = A/N^alpha + B/D^beta (E = 0) and compare its objective with the full model's."""
    red = ChinchillaNoELaw(law.u1 + law.mu1, law.u2 + law.mu2)
    g = HOFFMANN_GRID
    starts = red.to_internal(grid(g["a"], g["b"], g["alpha"], g["beta"]))
    r = fit_multistart(red, y, starts, loss=loss_fn, delta=delta, weights=w, **opt)
    a, b, al, be = red.to_external(r.x)[0]
    s = al + be
    out = {"form": "A/N^alpha + B/D^beta (E = 0)", "A": _exp(a), "B": _exp(b), "alpha": float(al),
           "beta": float(be), "a": float(be / s) if s else math.nan,
           "b": float(al / s) if s else math.nan, "objective": float(r.f[0]),
           "objective_full": float(f_full), "converged": bool(r.ok[0])}
    out["relative_objective_increase"] = (out["objective"] - f_full) / abs(f_full) if f_full else math.nan
    return out


def _fit_nll(law, y, base_internal, delta, w, opt):
    """Huber-likelihood refit from Huber-loss basins, each with a few initial scales."""
    pred = law.forward(base_internal[:1])[0][0]
    mad = float(np.mean(np.abs(pred - y))) or 1e-3
    sig0 = math.log(max(delta * mad, 1e-12))
    starts = [np.concatenate([b, [sig0 + k]]) for b in base_internal for k in (-1.0, 0.0, 1.0, 3.0)]
    starts = np.array(starts)
    res = fit_multistart(law, y, starts, loss="huber_nll", delta=delta, weights=w, **opt)
    return res, starts


# --------------------------------------------------------------------------------------
# Kaplan et al. (2020), eq. 1.5
# --------------------------------------------------------------------------------------


class KaplanFit(PredictiveMixin, FitResult):
    """params: alpha_N, alpha_D, N_c, D_c (L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D)."""

    def predict(self, N, D, params: dict | None = None) -> np.ndarray:
        p = self.params if params is None else params
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]


def kaplan_starts() -> np.ndarray:
    return grid([15.0, 22.0, 30.0, 38.0], [15.0, 22.0, 30.0, 38.0], [0.5, 0.8, 1.2, 2.0],
                [0.03, 0.08, 0.2, 0.4])


def fit_kaplan(N, D, loss, *, loss_fn: str = "huber", delta: float = 1e-3, n_boot: int = 200,
               boot_starts: int = 6, seed: int = 0, level: float = LEVEL,
               ftol: float = FTOL, max_iter: int = 1000, bootstrap: str = "noise",
               noise=None, C=None, backtest: bool = True, starts=None) -> KaplanFit:
    """Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (no irreducible
    term), same robust log-space loss and bootstrap (``bootstrap``, ``noise``) as
    :func:`fit_approach3`."""
    if bootstrap not in ("noise", "cases"):
        raise ValueError(f"bootstrap must be 'noise' or 'cases', got {bootstrap!r}")
    N, D, L, keep = clean_nd(N, D, loss)
    C_fit = None if C is None else np.asarray(C, dtype=np.float64)[keep]
    law = KaplanNDLaw(np.log(N), np.log(D))
    y = np.log(L)
    starts = law.to_internal(kaplan_starts() if starts is None else np.asarray(starts, dtype=np.float64))
    opt = {"ftol": ftol, "max_iter": max_iter}
    res = fit_multistart(law, y, starts, loss=loss_fn, delta=delta, **opt)

    def to_params(e):
        lnc, ldc, p, ad = e
        return {"alpha_N": p * ad, "alpha_D": ad, "N_c": _exp(lnc), "D_c": _exp(ldc)}

    fit = KaplanFit(kind="kaplan", params=to_params(law.to_external(res.x)[0]), n=int(N.size),
                    level=level, info={"loss_fn": loss_fn, "delta": delta,
                                       "objective": float(res.f[0]), "converged": bool(res.ok[0]),
                                       "n_starts": int(len(starts))})
    resid0 = law.forward(res.x[:1])[0][0] - y
    fit.info["mean_abs_log_residual"] = float(np.mean(np.abs(resid0)))
    attach(fit, law=law, y=y, N=N, D=D, C=C_fit, starts=basin_starts(res, starts, boot_starts),
           P=4, loss="huber" if loss_fn == "huber_nll" else loss_fn, delta=delta, opt=opt,
           resid=resid0, backtest=backtest)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        bs = basin_starts(res, starts, boot_starts)
        if bootstrap == "cases":
            W, Y = bootstrap_counts(N.size, n_boot, rng), y
            fit.info["bootstrap"] = "cases (runs resampled with replacement)"
        else:
            resid = law.forward(res.x[:1])[0][0] - y
            sigma, source = noise_sigma(noise, keep, L, resid)
            W, Y = None, np.log(noise_replicates(L, sigma, n_boot, rng,
                                                 shared=shared_factors(noise, keep, n_boot, seed)))
            fit.info["bootstrap"] = "noise (design fixed, each run's loss perturbed by its noise)"
            fit.info["noise_source"] = source
        bres = fit_multistart(law, Y, bs, loss=loss_fn, delta=delta, weights=W,
                              n_problems=n_boot, **opt)
        ext = law.to_external(bres.x)
        fit.samples = pd.DataFrame([to_params(ext[i]) if bres.ok[i] else
                                    {k: math.nan for k in fit.params} for i in range(n_boot)])
        fit.fill_intervals()
    return fit


def _exp(v: float) -> float:
    return math.exp(v) if v < 700 else math.inf
