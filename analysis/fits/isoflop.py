"""Chinchilla Approach 2: IsoFLOP minima and the allocation exponents N_opt ∝ C^a, D_opt ∝ C^b.

For each compute budget C the runs trace loss against N. Three estimators of the minimum
N_opt(C) are computed (all reported, one is the default):

- ``parabola``: Chinchilla's global parabola L = q0 + q1 u + q2 u^2 in u = log10 N over all
  sizes of the budget. Exact only near the vertex: a grid placed off-centre or spanning a wide
  range of N biases its vertex, because the IsoFLOP profile is not symmetric in log N.
- ``akima``: the argmin of an Akima interpolant of log L against log N (Porian et al. 2024),
  found on a fine grid and refined by a 3-point parabola; local by construction, so the shape
  of the profile away from the minimum does not move it.
- ``local``: a parabola over the ``LOCAL_POINTS`` sizes nearest the lowest observed loss.

Default: ``auto`` (:data:`DEFAULT_ESTIMATOR`): per fit, :mod:`analysis.fits.isoflop_choice` tests
whether the profiles are parabolas over the grid (a pooled cubic lack-of-fit test) and keeps
the global parabola unless they are not, then takes the local parabola. Validated by
``benchmarks/coverage.py``: on sparse, narrow grids (4-5 sizes per budget over a factor ~4
in N, as in the demo) the global parabola is the least noisy estimator and unbiased; on
dense, wide grids (8-12 sizes over two decades, the optimum drifting across the window as
in published IsoFLOP studies) with asymmetric profiles its bias changes from budget to
budget and reaches the size of its noise, while the local parabola stays unbiased. The
fit records the choice and why (``info["estimator_choice"]``). Earlier benchmarks of the
three estimators on 7-size grids (centred, off-centre, 3 decades wide, a drifting ladder,
jittered) are the ``--kinds`` of the same script.
The report names the estimator and says where the others disagree with it by more than
their combined interval half-widths.
The estimators of one budget's minimum are in analysis/fits/isoflop_minima.py; this module groups
the budgets, fits the exponents and makes their intervals.

Vertex rule (one rule for the point estimate and every bootstrap replicate): a parabola's
vertex counts as the budget's minimum when the curvature is positive and the vertex lies
within the sampled sizes widened by :data:`VERTEX_SLACK` of the grid's span on each side;
the Akima argmin must lie strictly inside. A budget is used only when its lowest observed
loss is at an interior size (the grid brackets the minimum) and its point-estimate minimum
passes the rule; a replicate in which a used budget's minimum fails the rule fails.

Budgets: a budget whose lowest observed loss is at its smallest or largest size did not
bracket its minimum; it is excluded from the exponent fit and named. With fewer than
``MIN_BUDGETS`` bracketed budgets the exponents are not determined: ``params`` hold NaN and
``info["not_determined"]`` says why (a line through 2 points has no uncertainty estimate
worth printing).

The exponents are the unweighted least-squares line of ln N_opt on ln C, as published
IsoFLOP studies fit it; the point estimate depends on the data only, never on the number or
seed of the bootstrap replicates. Beside it (``estimators[...]["weighted"]``) the weighted
line with weights 1 / var(ln N_opt) per budget, the variance propagated (linearised, by
central differences of one noise sd per size) from the noise model given before the
bootstrap; the report shows it where it differs. When the budgets scatter about the line by
more than those variances explain (chi2 / dof > 1: an estimator whose bias changes from
budget to budget, as the parabola's does on grids placed differently at each budget), the
replicates are widened about the estimate by the Birge ratio sqrt(chi2 / dof)
(``estimators[...]["birge_ratio"]``). D_opt is read off the budget's own (N, D) runs
(interpolated in log N), so it follows whichever compute accounting the rows use.

Intervals (``bootstrap``): "noise" (default) keeps the design (sizes, budgets, the set of
budgets used) fixed and perturbs each run's loss by its measured noise
(:mod:`analysis.noise`), then recomputes every minimum and the line; "cases" resamples the
runs of each budget with replacement. A replicate in which some used budget has no minimum
(the estimator's argmin at the edge, a parabola opening downwards) fails as a whole; the
number of failed replicates is reported (``n_boot_failed``) and the interval is over the
others.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.fits.isoflop_minima import ESTIMATORS, VERTEX_SLACK, budget_minimum
from analysis.noise import DEFAULT_REL_NOISE, LossNoise, noise_replicates, shared_factors, trajectory_sd
from analysis.result import LEVEL, AllocationFit, percentile_interval

CHOICES = ESTIMATORS + ("auto",)  # what a caller may ask for; auto picks one of ESTIMATORS
DEFAULT_ESTIMATOR = "auto"
MIN_BUDGETS = 3


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


# --------------------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------------------


class IsoFLOPFit(AllocationFit):
    """params: a, b, k_N, k_D of the default estimator (N_opt = k_N C^a, D_opt = k_D C^b).

    ``budgets``: per-budget table (C, n_runs, n_sizes, N_opt with interval, D_opt, loss_opt,
    used, note, and N_opt of every estimator); ``estimators``: name -> {a, b, k_N, k_D, ci,
    n_boot_failed}; ``profiles``: C -> (u, loss, sigma) of each budget's distinct sizes."""

    budgets: pd.DataFrame
    estimators: dict
    profiles: dict

    @property
    def determined(self) -> bool:
        return math.isfinite(self.params.get("a", math.nan))

    def to_dict(self):
        out = super().to_dict()
        out["estimator"] = self.info.get("estimator")
        out["estimator_requested"] = self.info.get("estimator_requested")
        out["estimator_choice"] = self.info.get("estimator_choice")
        out["estimators"] = self.estimators
        return out


def _aggregate(u, L, sig):
    """Distinct sizes of one budget (log10 N to 1e-6): mean loss and the standard error of
    the mean (several runs at one size: seeds)."""
    key = np.round(u, 6)
    uu = np.unique(key)
    Lm = np.array([L[key == k].mean() for k in uu])
    sm = np.array([math.sqrt(float(np.sum(sig[key == k] ** 2))) / (key == k).sum() for k in uu])
    um = np.array([u[key == k].mean() for k in uu])
    return um, Lm, sm


def _wls_lines(x, Y, w):
    """Weighted least squares of each row of Y (B, K) on x (K,) with weights w (K,):
    (slope, intercept), each (B,); NaN rows stay NaN."""
    w = w / w.sum()
    xb = float(np.sum(w * x))
    yb = Y @ w
    sxx = float(np.sum(w * (x - xb) ** 2))
    slope = ((Y - yb[:, None]) * (w * (x - xb))[None, :]).sum(axis=1) / sxx
    return slope, yb - slope * xb


def _d_at(u_rows, logD_rows, v):
    """ln D at log10 N = v, interpolated linearly in log10 N among a budget's runs."""
    o = np.argsort(u_rows)
    return np.interp(v, u_rows[o], logD_rows[o])


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
    estimator: str = DEFAULT_ESTIMATOR,
    bootstrap: str = "noise",
    noise=None,
) -> IsoFLOPFit:
    """Approach 2 on rows (C, loss) with N and/or D (the missing one from C = 6 N D); see the
    module docstring.

    ``budget``: the budget label of each row (e.g. the planner's compute_budget); when None,
    rows are grouped by ``C`` with :func:`group_budgets`. Budgets with fewer than
    ``min_points`` distinct sizes are skipped. ``noise``: per-row standard errors of the loss
    (array or :class:`analysis.noise.LossNoise`); None: an assumed relative noise of
    :data:`analysis.noise.DEFAULT_REL_NOISE`, stated in ``info["noise_source"]``.
    """
    if estimator not in CHOICES:
        raise ValueError(f"unknown IsoFLOP estimator {estimator!r}; allowed: {', '.join(CHOICES)}")
    if bootstrap not in ("noise", "cases"):
        raise ValueError(f"bootstrap must be 'noise' or 'cases', got {bootstrap!r}")
    C = np.asarray(C, dtype=np.float64)
    L = np.asarray(loss, dtype=np.float64)
    if N is None and D is None:
        raise ValueError("IsoFLOP fit needs N or D (the other is derived from C = 6 N D)")
    N = np.asarray(N, dtype=np.float64) if N is not None else C / (6.0 * np.asarray(D, dtype=np.float64))
    D = np.asarray(D, dtype=np.float64) if D is not None else C / (6.0 * N)
    budget = group_budgets(C, rel_tol=rel_tol) if budget is None else np.asarray(budget, dtype=np.float64)
    if noise is None:
        sig_all, noise_source = DEFAULT_REL_NOISE * L, (
            f"assumed {DEFAULT_REL_NOISE * 100:g} % relative noise (no eval_loss_stderr, no seeds)")
    elif isinstance(noise, LossNoise):
        sig_all, noise_source = np.asarray(noise.sigma, dtype=np.float64), noise.source
    else:
        sig_all, noise_source = np.asarray(noise, dtype=np.float64), "per-run standard errors given by the caller"
    keep = (np.isfinite(N) & np.isfinite(L) & np.isfinite(budget) & np.isfinite(D) & (N > 0) & (L > 0)
            & (D > 0) & (budget > 0) & np.isfinite(sig_all) & (sig_all >= 0))
    N, D, L, budget, sig_all = N[keep], D[keep], L[keep], budget[keep], sig_all[keep]
    # each run's whole seed-and-independent noise, for the propagated weights (a marginal
    # sd: the part shared within a trajectory counts there too, its correlation does not)
    sig_marg = np.sqrt(sig_all ** 2 + (trajectory_sd(noise, keep) * L) ** 2)
    shared = shared_factors(noise, keep, n_boot, seed) if bootstrap == "noise" else None
    rng = np.random.default_rng(seed)

    rows, used = [], []
    profiles = {}
    requested = estimator
    choice = None
    if estimator == "auto":
        from analysis.fits.isoflop_choice import choose_estimator

        bracketed_profiles = []
        for c in np.unique(budget):
            m = budget == c
            u, Lc, _ = _aggregate(np.log10(N[m]), L[m], sig_all[m])
            if u.size >= min_points and 0 < int(np.argmin(Lc)) < u.size - 1:
                bracketed_profiles.append((u, Lc))
        estimator, choice = choose_estimator(bracketed_profiles)
    for c in np.unique(budget):
        m = budget == c
        u_rows, logD_rows = np.log10(N[m]), np.log(D[m])
        u, Lc, sc = _aggregate(u_rows, L[m], sig_all[m])
        sc_marg = _aggregate(u_rows, L[m], sig_marg[m])[2]
        row = {"C": float(c), "n_runs": int(m.sum()), "n_sizes": int(u.size)}
        profiles[float(c)] = (u, Lc, sc)
        if u.size < min_points:
            row.update({"N_opt": math.nan, "vertex_in_range": False, "used": False,
                        "note": f"only {u.size} distinct sizes (< {min_points})"})
            rows.append(row)
            continue
        j = int(np.argmin(Lc))
        bracketed = 0 < j < u.size - 1
        for est in ESTIMATORS:
            v, lm, ok = (float(t[0]) for t in budget_minimum(u, Lc[None], est))
            row[f"N_opt_{est}"] = 10 ** v if ok else math.nan
            if est == estimator:
                row.update({"N_opt": 10 ** v if ok else math.nan, "loss_opt": lm if ok else math.nan,
                            "D_opt": math.exp(_d_at(u_rows, logD_rows, v)) if ok else math.nan,
                            "vertex_in_range": bool(ok)})
        use = bracketed and row["vertex_in_range"]
        row["used"] = bool(use)
        row["note"] = ("" if use else
                       (f"lowest loss at the {'smallest' if j == 0 else 'largest'} size: minimum not bracketed"
                        if not bracketed else f"{estimator} minimum not found within the sampled sizes (+- {VERTEX_SLACK:g} of their span)"))
        rows.append(row)
        if use:
            used.append((float(c), u, Lc, sc, u_rows, logD_rows, m, sc_marg))
    table = pd.DataFrame(rows)
    skipped = [f"C={r['C']:.3g}: {r['note']}" for r in rows if not r["used"]]
    fit = IsoFLOPFit(kind="isoflop", params={k: math.nan for k in ("a", "b", "k_N", "k_D")},
                     n=int(keep.sum()), level=level)
    fit.budgets, fit.profiles, fit.estimators = table, profiles, {}
    fit.info = {"estimator": estimator, "estimator_requested": requested,
                "estimator_choice": (f"auto -> {choice['reason']}" if choice else f"{estimator} (asked for)"),
                "n_budgets": int(len(table)), "n_budgets_used": len(used),
                "budgets_skipped": skipped, "bootstrap": bootstrap, "noise_source": noise_source,
                "min_budgets": MIN_BUDGETS, "vertex_slack": VERTEX_SLACK,
                "line": "unweighted least squares of ln N_opt on ln C (weighted fit beside it)"}
    if choice:
        fit.info["estimator_test"] = {k: v for k, v in choice.items() if k != "reason"}
    if len(used) < MIN_BUDGETS:
        fit.info["not_determined"] = (
            f"not determined: {len(used)} budget(s) bracket their minimum, and an exponent needs "
            f"at least {MIN_BUDGETS}" + (f" ({'; '.join(skipped)})" if skipped else ""))
        fit.ci = {k: (math.nan, math.nan) for k in fit.params}  # keys kept for readers (null)
        if used and n_boot > 0:  # the per-budget minima still get their intervals
            with np.errstate(all="ignore"):
                d = _fit_estimator(estimator, used, np.log(np.array([t[0] for t in used])), n_boot,
                                   bootstrap, rng, level, shared)
            for col, vals in d["_per_budget"].items():
                table.loc[table["used"], col] = vals
            fit.info["per_budget_bootstrap"] = (
                f"per-budget minima: {bootstrap} bootstrap, {n_boot} replicates, "
                f"{sum(d['_per_budget']['boot_failed'])} failed (over all budgets), noise: {noise_source}")
        return fit

    logC = np.log(np.array([t[0] for t in used]))
    for est in ESTIMATORS:
        fit.estimators[est] = _fit_estimator(est, used, logC, n_boot, bootstrap, rng, level, shared)
    d = fit.estimators[estimator]
    fit.params = {k: d[k] for k in ("a", "b", "k_N", "k_D")}
    fit.ci = {k: tuple(d["ci"][k]) for k in d["ci"]}
    fit.samples = d.pop("_samples")
    for e in fit.estimators.values():
        e.pop("_samples", None)
    per = d.pop("_per_budget")
    for e in fit.estimators.values():
        e.pop("_per_budget", None)
    for col, vals in per.items():
        table.loc[table["used"], col] = vals
    fit.info["n_boot_failed"] = d["n_boot_failed"]
    fit.info["disagreement"] = _disagreement(fit.estimators, estimator)
    return fit


def _size_factors(shared, m, u_rows):
    """The shared eval-set log factors (n_boot, rows kept) of one budget's rows ``m``, averaged
    over the runs of each distinct size (as :func:`_aggregate` averages their losses); None
    without a shared part."""
    if shared is None:
        return None
    g = np.asarray(shared, dtype=np.float64)[:, np.asarray(m)]
    key = np.round(u_rows, 6)
    return np.stack([g[:, key == k].mean(axis=1) for k in np.unique(key)], axis=1)


def _replicate_losses(Lc, sc, n_boot, bootstrap, rng, shared=None):
    """(n_boot, m) losses of one budget's distinct sizes for the bootstrap; ``shared``: the
    (n_boot, m) shared eval-set log factors of its sizes (noise bootstrap only)."""
    if bootstrap == "noise":
        return noise_replicates(Lc, sc, n_boot, rng, shared=shared)
    # cases: resample the sizes of the budget with replacement; a size not drawn is missing
    m = Lc.size
    W = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot)
    return np.where(W > 0, Lc[None, :], np.nan)


def _minima_with_gaps(u, LB, est):
    """budget_minimum on replicate rows that may have missing sizes (case bootstrap)."""
    miss = ~np.isfinite(LB)
    if not miss.any():
        return budget_minimum(u, LB, est)
    v = np.full(LB.shape[0], np.nan)
    ok = np.zeros(LB.shape[0], dtype=bool)
    for i in range(LB.shape[0]):
        sel = ~miss[i]
        if sel.sum() >= 3:
            vi, _, oi = budget_minimum(u[sel], LB[i, sel][None], est)
            v[i], ok[i] = vi[0], oi[0]
    return v, None, ok


def _propagated_sd(u, Lc, sc, est) -> float:
    """sd of ln N_opt of one budget from its sizes' loss noise ``sc``, linearised: the vertex
    moved by +- one sd of each size's loss in turn (central differences), combined in
    quadrature. Deterministic (no random draws); NaN where a perturbed minimum fails."""
    m = u.size
    P = np.repeat(Lc[None, :], 2 * m, axis=0)
    j = np.arange(m)
    P[j, j] += sc
    P[m + j, j] -= sc
    v, _, ok = budget_minimum(u, P, est)
    if not ok.all():
        return math.nan
    return float(math.log(10) * math.sqrt(float(np.sum(((v[:m] - v[m:]) / 2) ** 2))))


def _fit_estimator(est, used, logC, n_boot, bootstrap, rng, level, shared=None):
    """Exponents of one estimator: per-budget minima, the unweighted line through them (the
    point estimate), the weighted line beside it, the bootstrap replicates of the line."""
    K = len(used)
    logN = np.empty(K)
    logD = np.empty(K)
    BN = np.full((n_boot, K), np.nan)
    BD = np.full((n_boot, K), np.nan)
    sd_boot = np.full(K, np.nan)
    sd = np.full(K, np.nan)
    fails = np.zeros(K, dtype=int)
    per = {"N_opt_low": [], "N_opt_high": [], "boot_failed": []} if n_boot > 0 else {}
    for k, (c, u, Lc, sc, u_rows, logD_rows, m, sc_marg) in enumerate(used):
        v = float(budget_minimum(u, Lc[None], est)[0][0])
        logN[k] = v * math.log(10)
        logD[k] = _d_at(u_rows, logD_rows, v)
        sd[k] = _propagated_sd(u, Lc, sc_marg, est)
        if n_boot > 0:
            # one stream per estimator and budget keeps estimators comparable and reproducible
            LB = _replicate_losses(Lc, sc, n_boot, bootstrap, rng, _size_factors(shared, m, u_rows))
            vb, _, okb = _minima_with_gaps(u, LB, est)
            vb = np.where(okb, vb, np.nan)
            fails[k] = int((~okb).sum())
            BN[:, k] = vb * math.log(10)
            BD[:, k] = np.where(okb, _d_at(u_rows, logD_rows, np.nan_to_num(vb)), np.nan)
            lo, hi = percentile_interval(10 ** vb, level)
            per["N_opt_low"].append(lo)
            per["N_opt_high"].append(hi)
            per["boot_failed"].append(int(fails[k]))
            fin = BN[np.isfinite(BN[:, k]), k]
            if fin.size >= 10:
                q16, q84 = np.quantile(fin, [0.16, 0.84])
                sd_boot[k] = max((q84 - q16) / 2, 1e-6)
    # the point estimate: the unweighted line (data only; no bootstrap quantity enters it)
    w = np.ones(K)
    a, ia = _wls_lines(logC, logN[None], w)
    b, ib = _wls_lines(logC, logD[None], w)
    out = {"a": float(a[0]), "b": float(b[0]), "k_N": math.exp(ia[0]), "k_D": math.exp(ib[0]),
           "ci": {}, "n_boot": int(n_boot), "n_boot_failed": 0, "weights": "equal (unweighted line)",
           "sd_ln_N_opt": [float(x) for x in sd], "sd_ln_N_opt_boot": [float(x) for x in sd_boot]}
    has_sd = bool(np.isfinite(sd).all() and (sd > 0).all())
    if has_sd:
        wa, wia = _wls_lines(logC, logN[None], 1.0 / sd**2)
        wb, _ = _wls_lines(logC, logD[None], 1.0 / sd**2)
        out["weighted"] = {"a": float(wa[0]), "b": float(wb[0]), "k_N": math.exp(wia[0]),
                           "weights": "1/var(ln N_opt) per budget, propagated from the loss noise "
                                      "(fixed before the bootstrap)"}
    else:
        out["weighted"] = {"a": math.nan, "b": math.nan, "k_N": math.nan,
                           "weights": "not available (a budget's noise is zero or its perturbed "
                                      "minimum fails the vertex rule)"}
    if n_boot > 0:
        ok_rep = np.isfinite(BN).all(axis=1)
        out["n_boot_failed"] = int((~ok_rep).sum())
        sa, sia = _wls_lines(logC, np.where(ok_rep[:, None], BN, 0.0), w)
        sb, sib = _wls_lines(logC, np.where(ok_rep[:, None], BD, 0.0), w)
        # Birge ratio: when the budgets scatter about the line by more than their own noise
        # explains (a minimum estimator whose bias differs from budget to budget, a law that
        # is not a power law), widen the replicates about the estimate by sqrt(chi2 / dof);
        # never narrow them. The budgets' variances: propagated, else from the replicates
        var = sd**2 if has_sd else sd_boot**2
        birge = (_birge_ratio(logC, logN, 1.0 / var, a[0], ia[0])
                 if np.isfinite(var).all() and (var > 0).all() else 1.0)
        out["birge_ratio"] = birge
        if birge > 1:
            sa = a[0] + birge * (sa - a[0])
            sia = ia[0] + birge * (sia - ia[0])
            sb = b[0] + birge * (sb - b[0])
            sib = ib[0] + birge * (sib - ib[0])
        S = pd.DataFrame({"a": sa, "k_N": np.exp(sia), "b": sb, "k_D": np.exp(sib)})
        S.loc[~ok_rep] = np.nan
        for k in ("a", "b", "k_N", "k_D"):
            out["ci"][k] = list(percentile_interval(S[k].to_numpy(), level))
        out["_samples"] = S
    else:
        out["_samples"] = None
    out["_per_budget"] = per
    return out


def _birge_ratio(x, y, w, slope, icpt) -> float:
    """sqrt(chi2 / (K - 2)) of the line's residuals with weights 1/var, at least 1; 1 with K < 3."""
    K = x.size
    if K < 3:
        return 1.0
    chi2 = float(np.sum(w * (y - (icpt + slope * x)) ** 2))
    return max(1.0, math.sqrt(chi2 / (K - 2)))


def _disagreement(estimators: dict, default: str) -> list[str]:
    """Estimators whose a differs from the default's by more than the two intervals' half
    widths combined (in quadrature)."""
    d = estimators[default]
    lo, hi = d["ci"].get("a", (math.nan, math.nan))
    out = []
    for name, e in estimators.items():
        if name == default:
            continue
        lo2, hi2 = e["ci"].get("a", (math.nan, math.nan))
        if not all(map(math.isfinite, (lo, hi, lo2, hi2))):
            continue
        tol = math.hypot((hi - lo) / 2, (hi2 - lo2) / 2)
        if abs(e["a"] - d["a"]) > tol:
            out.append(f"{name} gives a = {e['a']:.3f} [{lo2:.3f}, {hi2:.3f}], {default} "
                       f"{d['a']:.3f} [{lo:.3f}, {hi:.3f}]: they differ by more than their intervals")
    return out
