"""``--estimator auto``: which IsoFLOP minimum estimator suits the data, decided per fit.

The global parabola (:mod:`analysis.fits.isoflop`) is the least noisy estimator of a budget's
minimum, and exact where the profile L(log N) is a parabola over the grid's span. Real
IsoFLOP profiles are asymmetric in log N (Chinchilla's L = E + A/N^alpha + B/D^beta with
alpha != beta rises faster on one side), so over a wide grid the parabola's vertex moves
towards the shallower side, by an amount that depends on where the grid sits around the
optimum; where that position drifts from budget to budget the bias does not cancel in the
slope a. The asymmetry shows as a cubic term the parabola cannot follow.

The rule: fit each budget's profile (log loss against log10 N, every budget with at least
:data:`MIN_SIZES_TEST` distinct sizes) with a quadratic and with a cubic, pool the residual
sums of squares over the budgets, and test the cubic terms jointly (F test: q = number of
budgets tested, residual dof = sum of (sizes - 4)). The noise scale is the cubic fit's own
residual variance, so the rule does not depend on a noise model.

- p >= :data:`ALPHA_TEST` (no detectable asymmetry over the grid, or no budget with enough
  sizes to test it: sparse, narrow grids such as the demo's 4-5 sizes over a factor 4-5
  in N): ``parabola``;
- p < :data:`ALPHA_TEST` (the profile over the grid is not a parabola: dense, wide grids):
  ``local``, the parabola over the :data:`analysis.fits.isoflop.LOCAL_POINTS` sizes nearest the
  lowest loss, whose span (hence bias) is a fraction of the grid's. The Akima argmin is not
  chosen: on the same synthetic dense grids it is as unbiased but 3-4x noisier.

Validated in ``benchmarks/coverage.py`` (``--kinds sparse dense``): asymmetric profiles on
sparse narrow grids and on dense wide grids whose optimum drifts across the window.
"""

from __future__ import annotations

import math

import numpy as np

ALPHA_TEST = 0.05
MIN_SIZES_TEST = 5  # a cubic on 5 sizes leaves 1 residual dof


def _rss(x, y, deg):
    r = y - np.polyval(np.polyfit(x, y, deg), x)
    return float(r @ r)


def choose_estimator(profiles) -> tuple[str, dict]:
    """(estimator, why) for a list of (u = log10 N sorted distinct, L mean loss) per budget.

    ``why``: {"rule", "F", "dof", "p", "n_budgets_tested", "reason"} (F, p NaN when untested)."""
    from scipy import stats

    rss2 = rss3 = 0.0
    q = dof = 0
    for u, L in profiles:
        u = np.asarray(u, dtype=np.float64)
        L = np.asarray(L, dtype=np.float64)
        if u.size < MIN_SIZES_TEST:
            continue
        x = (u - u.mean()) / max(float(np.ptp(u)), 1e-12)
        y = np.log(L)
        rss2 += _rss(x, y, 2)
        rss3 += _rss(x, y, 3)
        q += 1
        dof += u.size - 4
    why = {"rule": (f"cubic lack-of-fit test of the global parabola, pooled over budgets with >= "
                    f"{MIN_SIZES_TEST} sizes; parabola unless p < {ALPHA_TEST:g}, then local"),
           "n_budgets_tested": q, "F": math.nan, "dof": [q, dof], "p": math.nan}
    if q == 0:
        why["reason"] = (f"parabola: no budget has >= {MIN_SIZES_TEST} distinct sizes, so the "
                         "parabola's shape cannot be tested; on sparse grids it is the least noisy")
        return "parabola", why
    if rss3 <= 0:
        F, p = (math.inf, 0.0) if rss2 > 0 else (0.0, 1.0)
    else:
        F = ((rss2 - rss3) / q) / (rss3 / dof)
        p = float(stats.f.sf(F, q, dof))
    why.update(F=float(F), p=p)
    if p < ALPHA_TEST:
        why["reason"] = (f"local: the profiles are not parabolas over the grid (cubic term F = {F:.3g} "
                         f"on {q} and {dof} dof, p = {p:.2g} < {ALPHA_TEST:g}: asymmetric over the "
                         "span, so the global parabola's vertex is biased)")
        return "local", why
    why["reason"] = (f"parabola: no sign of asymmetry over the grid (cubic term F = {F:.3g} on {q} "
                     f"and {dof} dof, p = {p:.2g}); the global parabola is the least noisy")
    return "parabola", why
