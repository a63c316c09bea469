"""The laws of L(N, D) offered for prediction, and ``auto``: the one that extrapolates best.

=============  ===========================================================================
``chinchilla`` E + A/N^alpha + B/D^beta (Hoffmann et al. 2022; analysis/fits/chinchilla.py)
``shared``     E + A/N^g + B/D^g: one exponent, a parameter fewer, often steadier far out
``kaplan``     [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D (Kaplan et al. 2020, eq. 1.5)
``datacon``    E + A/N^alpha + B/D'^beta with the effective data of repeated tokens
               (Muennighoff et al. 2023): D' = U + U R* (1 - exp(-R/R*)), R = D/U - 1, U the
               run's unique tokens (a column ``unique_tokens``/``U_D``), R* fitted. Without a
               unique-token column D' = D and the law is Chinchilla's; the fit says so.
=============  ===========================================================================

Every fit is the same robust log-space Huber fit (delta 1e-3) from a grid of starts, the same
bootstrap (noise or cases) and has ``predict_loss(N, D, level=0.95)`` with a prediction interval
(analysis/fits/prediction.py). ``huber_nll`` applies to ``chinchilla`` only; the others use Huber.

``fit_auto`` fits every candidate without a bootstrap, compares their backtest errors (mean
|relative error| of the rolling backtest that also sets each law's misspecification: the law
refitted on the cheaper runs predicts the more expensive ones), picks the smallest (ties: the
earlier in the order above) and bootstraps that one only, so it costs about two grid fits and
one bootstrap more than one law alone (benchmarks/README.md gives the measured times).
For a datacon target, U is min(D, the largest U in the table) unless given (the same corpus).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.fits.chinchilla import clean_nd, fit_approach3, fit_kaplan, noise_sigma
from analysis.fits.laws import DataConstrainedLaw, SharedExponentLaw
from analysis.fits.multistart import basin_starts, fit_multistart, grid
from analysis.noise import noise_replicates
from analysis.fits.prediction import PredictiveMixin, attach
from analysis.result import LEVEL, FitResult, bootstrap_counts

FORMS = {
    "chinchilla": "E + A/N^alpha + B/D^beta",
    "shared": "E + A/N^g + B/D^g",
    "kaplan": "[(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
    "datacon": "E + A/N^alpha + B/D'^beta, D' = U + U R* (1 - exp(-R/R*)), R = D/U - 1",
}
ND_LAWS = tuple(FORMS)
FTOL = 1e-11


def _exp(v: float) -> float:
    return math.exp(v) if v < 700 else math.inf


class SharedFit(PredictiveMixin, FitResult):
    """params: E, A, B, g (L = E + A/N^g + B/D^g); a = b = 1/2 under C = 6ND."""

    def predict(self, N, D, params: dict | None = None) -> np.ndarray:
        p = self.params if params is None else params
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return p["E"] + p["A"] / N ** p["g"] + p["B"] / D ** p["g"]


class DataConstrainedFit(PredictiveMixin, FitResult):
    """params: E, A, B, alpha, beta, R_star; ``u_max``: the largest U of the table."""

    u_max: float = math.inf

    def effective_d(self, D, U=None, params: dict | None = None) -> np.ndarray:
        p = self.params if params is None else params
        D = np.asarray(D, dtype=np.float64)
        U = np.minimum(D, self.u_max) if U is None else np.asarray(U, dtype=np.float64)
        R = np.maximum(D / U - 1.0, 0.0)
        rs = p["R_star"]
        return U + U * rs * -np.expm1(-R / rs)

    def predict(self, N, D, params: dict | None = None, U=None) -> np.ndarray:
        p = self.params if params is None else params
        N = np.asarray(N, dtype=np.float64)
        Dp = self.effective_d(D, U, p)
        return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / Dp ** p["beta"]


def _generic(kind, cls, law, ext_starts, to_params, N, D, L, keep, C, *, loss_fn, delta, n_boot,
             boot_starts, seed, level, ftol, max_iter, bootstrap, noise, backtest, info=None):
    """Multi-start Huber fit, misspecification backtest and bootstrap (as fit_kaplan)."""
    if bootstrap not in ("noise", "cases"):
        raise ValueError(f"bootstrap must be 'noise' or 'cases', got {bootstrap!r}")
    lf = "huber" if loss_fn == "huber_nll" else loss_fn
    y = np.log(L)
    opt = {"ftol": ftol, "max_iter": max_iter}
    starts = law.to_internal(ext_starts)
    res = fit_multistart(law, y, starts, loss=lf, delta=delta, **opt)
    resid = law.forward(res.x[:1])[0][0] - y
    fit = cls(kind=kind, params=to_params(law.to_external(res.x)[0]), n=int(N.size), level=level,
              info={"form": FORMS[kind], "loss_fn": lf, "delta": delta, "objective": float(res.f[0]),
                    "converged": bool(res.ok[0]), "n_starts": int(len(starts)),
                    "mean_abs_log_residual": float(np.mean(np.abs(resid))), **(info or {})})
    if loss_fn == "huber_nll":
        fit.info["note"] = "huber_nll applies to chinchilla only: fitted with the Huber loss"
    bs = basin_starts(res, starts, boot_starts)
    attach(fit, law=law, y=y, N=N, D=D, C=None if C is None else np.asarray(C, float)[keep],
           starts=bs, P=law.n_params, loss=lf, delta=delta, opt=opt, resid=resid, backtest=backtest)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        if bootstrap == "cases":
            W, Y = bootstrap_counts(N.size, n_boot, rng), y
            fit.info["bootstrap"] = "cases (runs resampled with replacement)"
        else:
            sigma, source = noise_sigma(noise, keep, L, resid)
            W, Y = None, np.log(noise_replicates(L, sigma, n_boot, rng))
            fit.info["bootstrap"] = "noise (design fixed, each run's loss perturbed by its noise)"
            fit.info["noise_source"] = source
        bres = fit_multistart(law, Y, bs, loss=lf, delta=delta, weights=W, n_problems=n_boot, **opt)
        ext = law.to_external(bres.x)
        fit.samples = pd.DataFrame([to_params(ext[i]) if bres.ok[i] else
                                    {k: math.nan for k in fit.params} for i in range(n_boot)])
        fit.fill_intervals()
    return fit


def fit_shared(N, D, loss, *, C=None, loss_fn: str = "huber", delta: float = 1e-3,
               n_boot: int = 200, boot_starts: int = 8, seed: int = 0, level: float = LEVEL,
               ftol: float = FTOL, max_iter: int = 1000, bootstrap: str = "noise", noise=None,
               backtest: bool = True, starts=None) -> SharedFit:
    """E + A/N^g + B/D^g from the grid a, b in {0, 5, ..., 25}, e in {-1, -0.5, ..., 1},
    g in {0, 0.5, ..., 2} (900 starts)."""
    N, D, L, keep = clean_nd(N, D, loss)
    law = SharedExponentLaw(np.log(N), np.log(D))
    if starts is None:
        starts = grid(np.arange(0.0, 25.1, 5.0), np.arange(0.0, 25.1, 5.0),
                      np.arange(-1.0, 1.01, 0.5), np.arange(0.0, 2.01, 0.5))

    def to_params(e):
        a, b, ee, g = e
        return {"E": _exp(ee), "A": _exp(a), "B": _exp(b), "g": float(g)}

    return _generic("shared", SharedFit, law, starts, to_params, N, D, L, keep, C, loss_fn=loss_fn,
                    delta=delta, n_boot=n_boot, boot_starts=boot_starts, seed=seed, level=level,
                    ftol=ftol, max_iter=max_iter, bootstrap=bootstrap, noise=noise, backtest=backtest)


def fit_datacon(N, D, loss, *, U=None, C=None, loss_fn: str = "huber", delta: float = 1e-3,
                n_boot: int = 200, boot_starts: int = 8, seed: int = 0, level: float = LEVEL,
                ftol: float = FTOL, max_iter: int = 1000, bootstrap: str = "noise", noise=None,
                backtest: bool = True, starts=None):
    """Muennighoff et al.'s data-constrained form (module docstring). ``U``: unique tokens per
    row; None (or no row repeating its data): D' = D, and the fit is :func:`fit_approach3`'s,
    labelled ``datacon`` and saying so in ``info["datacon"]``."""
    common = dict(loss_fn=loss_fn, delta=delta, n_boot=n_boot, seed=seed, level=level, ftol=ftol,
                  max_iter=max_iter, bootstrap=bootstrap, noise=noise, backtest=backtest)
    Ua = None if U is None else np.asarray(U, dtype=np.float64)
    Da = np.asarray(D, dtype=np.float64)
    repeats = Ua is not None and bool(np.any(np.isfinite(Ua) & (Ua > 0) & (Da > Ua * (1 + 1e-9))))
    if not repeats:
        fit = fit_approach3(N, D, loss, C=C, boot_starts=boot_starts, starts=starts, **common)
        fit.kind = "datacon"
        fit.info["datacon"] = ("no unique-token column: D' = D, the data-constrained law is "
                               "Chinchilla's" if Ua is None else
                               "no run repeats its data (D <= U everywhere): D' = D, the "
                               "data-constrained law is Chinchilla's")
        return fit
    Ua = np.where(np.isfinite(Ua) & (Ua > 0), Ua, Da)
    N_, D_, L, keep = clean_nd(N, D, loss)
    U_ = np.minimum(Ua[keep], D_)
    law = DataConstrainedLaw(np.log(N_), np.log(D_), np.log(U_))
    ab = np.arange(0.0, 25.1, 5.0)
    if starts is None or np.shape(starts)[-1] != 6:  # Chinchilla's 5-column grid: not ours
        starts = grid(ab, ab, [-1.0, 0.0, 1.0], [0.25, 0.75, 1.5], [0.25, 0.75, 1.5],
                      np.log([2.0, 10.0, 50.0]))

    def to_params(e):
        a, b, ee, al, be, s = e
        return {"E": _exp(ee), "A": _exp(a), "B": _exp(b), "alpha": float(al), "beta": float(be),
                "R_star": _exp(s)}

    fit = _generic("datacon", DataConstrainedFit, law, starts, to_params, N_, D_, L, keep, C,
                   boot_starts=boot_starts, info={"datacon": f"U from the table: {int(np.sum(D_ > U_))} "
                                                  f"of {D_.size} runs repeat their data"}, **common)
    fit.u_max = float(np.max(U_))
    return fit


def fit_law(name: str, N, D, loss, *, C=None, U=None, own_starts=None, **kw):
    """Fit one of :data:`ND_LAWS` (``kw``: the fit functions' options; ``starts`` is
    Chinchilla's (a, b, e, alpha, beta) start grid and applies to chinchilla only;
    ``own_starts``: external starts of the law ``name`` itself, replacing its grid)."""
    if name in ("shared", "kaplan"):
        kw.pop("starts", None)
    if own_starts is not None:
        kw["starts"] = own_starts
    if name == "chinchilla":
        return fit_approach3(N, D, loss, C=C, **kw)
    if name == "kaplan":
        kw.pop("boot_starts", None)
        return fit_kaplan(N, D, loss, C=C, **kw)
    if name == "shared":
        return fit_shared(N, D, loss, C=C, **kw)
    if name == "datacon":
        return fit_datacon(N, D, loss, C=C, U=U, **kw)
    raise ValueError(f"unknown law {name!r}; allowed: {', '.join(ND_LAWS)}")


def fit_auto(N, D, loss, *, C=None, U=None, candidates=ND_LAWS, n_boot: int = 200, **kw):
    """Fit every candidate (no bootstrap), choose the smallest backtest error, bootstrap it.
    Returns (fit, report) with report = {"chosen", "why", "candidates": {name: {...}}}."""
    table, fits = {}, {}
    for name in candidates:
        if name == "datacon" and (U is None or not np.any(np.asarray(D, float) > np.asarray(U, float))):
            table[name] = {"form": FORMS[name], "same_as": "chinchilla",
                           "note": "no unique-token column or no repeated data: D' = D, "
                                   "identical to chinchilla (not fitted again)"}
            continue
        try:
            f = fit_law(name, N, D, loss, C=C, U=U, n_boot=0, **kw)
        except Exception as exc:  # a candidate that cannot be fitted is reported, not fatal
            table[name] = {"form": FORMS[name], "error": f"{type(exc).__name__}: {exc}"}
            continue
        fits[name] = f
        ms = f.misspec
        table[name] = {"form": FORMS[name], "backtest_error": ms.backtest_error,
                       "n_predictions": ms.n_resid, "n_cuts": ms.n_cuts,
                       "misspec_s0": ms.s0, "misspec_s1": ms.s1,
                       "mean_abs_log_residual": f.info.get("mean_abs_log_residual")}
    scored = [(table[n]["backtest_error"], i, n) for i, n in enumerate(candidates)
              if n in fits and np.isfinite(table[n]["backtest_error"])]
    if scored:
        err, _, chosen = min(scored)
        others = ", ".join(f"{n} {table[n]['backtest_error'] * 100:.3g} %" for _, _, n in sorted(scored)
                           if n != chosen)
        why = (f"smallest backtest error (mean |relative error| predicting the more expensive runs "
               f"from fits to the cheaper ones): {chosen} {err * 100:.3g} %"
               + (f" against {others}" if others else ""))
    else:
        chosen = "chinchilla" if "chinchilla" in candidates else next(iter(fits))
        why = "no backtest was possible on this table (too few compute levels): chinchilla by default"
    if n_boot > 0:  # the bootstrap for the chosen law only, refitted from its own optimum
        final = fit_law(chosen, N, D, loss, C=C, U=U, n_boot=n_boot,
                        own_starts=getattr(fits[chosen], "refit_starts", None), **kw)
        final.info["n_starts"] = fits[chosen].info.get("n_starts")
        final.info["auto_refit"] = ("the chosen law refitted with its bootstrap from the candidate "
                                    "fit's optimum and basins (same optimum as the full grid)")
    else:
        final = fits[chosen]
    final.info["auto"] = {"chosen": chosen, "why": why}
    return final, {"chosen": chosen, "why": why, "candidates": table}
