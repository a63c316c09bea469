"""Robust objectives and a batched multi-start fitter for the laws of analysis/fits/laws.py.

Objectives (all summed over rows, optionally with per-row integer weights for the
bootstrap):

- ``huber``: sum of Huber_delta(log L_pred - log L_obs) (Hoffmann et al. 2022),
- ``huber_nll``: negative log-likelihood of a Huber density of scale sigma
  (Besiroglu et al. 2024): sum Huber_delta(r / sigma) + n log sigma + n log Z(delta),
  with log sigma an extra fitted parameter,
- ``l2``: half the sum of squares (plain least squares in log space).

``fit_multistart`` runs every start through one batched L-BFGS and keeps, for each
problem, the best start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from analysis.fits._lbfgs import CONVERGED, STALLED, minimize_batched
from analysis.fits.laws import Law


# --------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------


def huber_normaliser(delta: float) -> float:
    """Z(delta) = integral of exp(-Huber_delta(u)) du over the real line."""
    from scipy.stats import norm

    return float(np.sqrt(2 * np.pi) * (1 - 2 * norm.sf(delta)) + 2 * np.exp(-0.5 * delta**2) / delta)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    psi = np.clip(r, -delta, delta)
    h = r - 0.5 * psi  # psi * (r - psi / 2) is r^2/2 inside [-delta, delta], delta|r| - delta^2/2 outside
    h *= psi
    return h, psi


def make_objective(law: Law, y: np.ndarray, *, loss: str = "huber", delta: float = 1e-3,
                   weights: np.ndarray | None = None):
    """Return fg(x, rows) for the batched optimiser (x in the law's internal parametrisation;
    for ``huber_nll`` the last column is log sigma).

    ``y`` and ``weights``: shape (n,) (shared by all members) or (S, n) (one row per batch
    member, selected by ``rows``); ``weights`` may be None.
    """
    Y = np.asarray(y, dtype=np.float64)
    W = None if weights is None else np.asarray(weights, dtype=np.float64)
    P = law.n_params
    log_z = np.log(huber_normaliser(delta)) if loss == "huber_nll" else 0.0

    def pick(A, rows):
        if A is None or A.ndim == 1:
            return A
        return A[rows]

    if loss in ("huber", "l2"):

        def fg(x, rows):
            pred, cache = law.forward(x[:, :P])
            r = pred - pick(Y, rows)
            if loss == "huber":
                h, psi = _huber(r, delta)
            else:
                h, psi = 0.5 * r * r, r
            w = pick(W, rows)
            if w is not None:
                h *= w
                psi *= w
            return h.sum(axis=1), law.vjp(cache, psi)

        return fg

    if loss == "huber_nll":

        def fg(x, rows):
            pred, cache = law.forward(x[:, :P])
            ls = x[:, P]
            inv_sig = np.exp(-ls)[:, None]
            u = (pred - pick(Y, rows)) * inv_sig
            h, psi = _huber(u, delta)
            w = pick(W, rows)
            if w is None:
                n_w = np.full(x.shape[0], float(law.n_rows))
            else:
                h *= w
                psi *= w
                n_w = np.broadcast_to(w, u.shape).sum(axis=1)
            f = h.sum(axis=1) + n_w * (ls + log_z)
            g = np.empty((x.shape[0], P + 1))
            g[:, :P] = law.vjp(cache, psi * inv_sig)
            g[:, P] = n_w - (psi * u).sum(axis=1)
            return f, g

        return fg

    raise ValueError(f"unknown loss {loss!r}; allowed: 'huber', 'huber_nll', 'l2'")


# --------------------------------------------------------------------------------------
# Multi-start fitting
# --------------------------------------------------------------------------------------


@dataclass
class MultiStartResult:
    x: np.ndarray  # (B, P') best internal point per problem
    f: np.ndarray  # (B,) best objective per problem
    ok: np.ndarray  # (B,) the best start stopped normally (not max_iter / non-finite)
    all_x: np.ndarray = field(repr=False, default=None)  # (B, K, P') every start's end point
    all_f: np.ndarray = field(repr=False, default=None)  # (B, K)
    all_status: np.ndarray = field(repr=False, default=None)  # (B, K)
    n_iter: np.ndarray = field(repr=False, default=None)  # (B, K)
    n_eval: int = 0


def fit_multistart(
    law: Law,
    y: np.ndarray,
    starts: np.ndarray,
    *,
    loss: str = "huber",
    delta: float = 1e-3,
    weights: np.ndarray | None = None,
    n_problems: int | None = None,
    chunk: int = 20000,
    **opt,
) -> MultiStartResult:
    """Fit one or several problems from internal-parametrisation ``starts`` and keep, per
    problem, the start that ends lowest.

    Problems: ``y`` of shape (n,) or (B, n) and ``weights`` None, (n,) or (B, n); B is the
    number of problems (bootstrap resamples). ``starts``: (K, P') shared by all problems or
    (B, K, P') one set per problem. ``chunk`` bounds the members optimised together.
    """
    y = np.asarray(y, dtype=np.float64)
    Wt = None if weights is None else np.asarray(weights, dtype=np.float64)
    starts = np.asarray(starts, dtype=np.float64)
    B = n_problems or max(y.shape[0] if y.ndim == 2 else 1,
                          Wt.shape[0] if (Wt is not None and Wt.ndim == 2) else 1,
                          starts.shape[0] if starts.ndim == 3 else 1)
    if starts.ndim == 2:
        starts = np.broadcast_to(starts, (B,) + starts.shape)
    B, K, Pp = starts.shape
    x0 = starts.reshape(B * K, Pp)
    prob = np.repeat(np.arange(B), K)
    total = B * K
    xs, fs, sts, its, n_eval = [], [], [], [], 0
    for lo in range(0, total, chunk):
        hi = min(total, lo + chunk)
        p = prob[lo:hi]
        y_c = y[p] if y.ndim == 2 else y
        w_c = Wt[p] if (Wt is not None and Wt.ndim == 2) else Wt
        fg = make_objective(law, y_c, loss=loss, delta=delta, weights=w_c)
        # evaluate ~64k (member, row) elements per call: cache-sized, few Python round trips
        opt.setdefault("eval_chunk", max(64, 65536 // max(law.n_rows, 1)))
        res = minimize_batched(fg, x0[lo:hi], **opt)
        xs.append(res.x)
        fs.append(res.f)
        sts.append(res.status)
        its.append(res.n_iter)
        n_eval += res.n_eval
    X = np.concatenate(xs).reshape(B, K, Pp)
    F = np.concatenate(fs).reshape(B, K)
    ST = np.concatenate(sts).reshape(B, K)
    F = np.where(np.isfinite(F), F, np.inf)
    best = np.argmin(F, axis=1)
    ar = np.arange(B)
    ok = np.isin(ST[ar, best], (CONVERGED, STALLED)) & np.isfinite(F[ar, best])
    return MultiStartResult(x=X[ar, best], f=F[ar, best], ok=ok, all_x=X, all_f=F,
                            all_status=ST, n_iter=np.concatenate(its).reshape(B, K),
                            n_eval=n_eval)


def basin_starts(res: MultiStartResult, starts: np.ndarray, k: int, *, rtol: float = 1e-6,
                 problem: int = 0) -> np.ndarray:
    """Starting points for refits of perturbed data (bootstrap): the optimum found, then
    the original starts that led to the ``k`` lowest *distinct* end points (one start per
    basin, best basins first). ``starts``: the (K, P') starts of ``res``."""
    F = res.all_f[problem]
    X = res.all_x[problem]
    order = np.argsort(F)
    chosen, ends = [], []
    for i in order:
        if not np.isfinite(F[i]):
            break
        if any(abs(F[i] - fe) <= rtol * max(abs(fe), 1e-300) and np.allclose(X[i], xe, rtol=1e-3, atol=1e-3)
               for fe, xe in ends):
            continue
        ends.append((F[i], X[i]))
        chosen.append(i)
        if len(chosen) >= k:
            break
    return np.concatenate([res.x[problem][None, :], np.asarray(starts)[chosen]], axis=0)


def grid(*axes: Sequence[float]) -> np.ndarray:
    """Cartesian product of 1-D axes as an array of shape (prod(len), len(axes))."""
    mesh = np.meshgrid(*[np.asarray(a, dtype=np.float64) for a in axes], indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)
