"""IsoFLOP minima: where one compute budget's profile of loss against N has its minimum, by the
three estimators of analysis/fits/isoflop.py (global parabola, Akima interpolant, local parabola),
under the one vertex rule (:data:`VERTEX_SLACK`); and each estimator's curve for figures.
"""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("parabola", "akima", "local")
LOCAL_POINTS = 5
VERTEX_SLACK = 0.5  # a parabola vertex may lie this fraction of the grid's span beyond the sizes
_FINE = 801  # grid points of the Akima argmin search over a budget's range of log10 N


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


# --------------------------------------------------------------------------------------
# Minimum estimators: u (m,) sorted distinct log10 N; LB (B, m) losses -> (u*, L*, ok), (B,)
# --------------------------------------------------------------------------------------


def _min_parabola(u, LB, slack: float):
    vert, lmin, curv = _parabola(u, LB)
    span = u[-1] - u[0]
    ok = (curv > 0) & (vert >= u[0] - slack * span) & (vert <= u[-1] + slack * span)
    return vert, lmin, ok


def _min_akima(u, LB, slack: float = 0.0):
    from scipy.interpolate import Akima1DInterpolator

    fine = np.linspace(u[0], u[-1], _FINE)
    f = Akima1DInterpolator(u, np.log(LB).T, axis=0)(fine)  # (G, B)
    i = np.argmin(f, axis=0)
    B = LB.shape[0]
    ok = (i > 0) & (i < _FINE - 1)
    ic = np.clip(i, 1, _FINE - 2)
    ar = np.arange(B)
    y0, y1, y2 = f[ic - 1, ar], f[ic, ar], f[ic + 1, ar]
    den = y0 - 2 * y1 + y2
    h = fine[1] - fine[0]
    with np.errstate(all="ignore"):
        shift = np.where(den > 0, 0.5 * (y0 - y2) / den, 0.0)
    vert = fine[ic] + np.clip(shift, -1, 1) * h
    lmin = np.exp(y1 - 0.25 * (y0 - y2) * np.clip(shift, -1, 1))
    return vert, lmin, ok


def _min_local(u, LB, slack: float):
    m = u.size
    k = min(LOCAL_POINTS, m)
    j = np.argmin(LB, axis=1)
    start = np.clip(j - k // 2, 0, m - k)
    vert = np.full(LB.shape[0], np.nan)
    lmin = np.full(LB.shape[0], np.nan)
    ok = np.zeros(LB.shape[0], dtype=bool)
    for s in np.unique(start):
        sel = start == s
        uu = u[s : s + k]
        v, lm, curv = _parabola(uu, LB[sel, s : s + k])
        span = uu[-1] - uu[0]
        vert[sel], lmin[sel] = v, lm
        ok[sel] = (curv > 0) & (v >= uu[0] - slack * span) & (v <= uu[-1] + slack * span)
    return vert, lmin, ok


_MINIMA = {"parabola": _min_parabola, "akima": _min_akima, "local": _min_local}


def budget_minimum(u, LB, estimator: str = "parabola", *, slack: float = VERTEX_SLACK):
    """The minimum of each row of ``LB`` (losses at sorted distinct ``u`` = log10 N) by
    ``estimator``: (u*, L*, ok) each of shape (B,). ``slack``: how far (as a fraction of the
    grid's span) a parabola vertex may lie outside the sizes and still count (the module's
    one vertex rule, :data:`VERTEX_SLACK`, for point estimates and replicates alike)."""
    if estimator not in _MINIMA:
        raise ValueError(f"unknown IsoFLOP estimator {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    u = np.asarray(u, dtype=np.float64)
    LB = np.atleast_2d(np.asarray(LB, dtype=np.float64))
    return _MINIMA[estimator](u, LB, slack)


def profile_curve(u, L, estimator: str = "parabola", n: int = 200):
    """(u grid, loss) of the estimator's curve through one budget's points (for figures)."""
    u = np.asarray(u, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    if estimator == "akima":
        from scipy.interpolate import Akima1DInterpolator

        g = np.linspace(u[0], u[-1], n)
        return g, np.exp(Akima1DInterpolator(u, np.log(L))(g))
    if estimator == "local":
        k = min(LOCAL_POINTS, u.size)
        s = int(np.clip(np.argmin(L) - k // 2, 0, u.size - k))
        u, L = u[s : s + k], L[s : s + k]
    p = np.polyfit(u, L, 2)
    g = np.linspace(u[0] - 0.05, u[-1] + 0.05, n)
    return g, np.polyval(p, g)
