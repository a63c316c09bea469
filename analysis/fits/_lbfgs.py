"""Batched L-BFGS in numpy: many small independent problems advanced in lock-step.

Scaling-law fits are small (a handful of parameters, hundreds of rows) but are
started from thousands of points (Hoffmann et al.'s grid) and refitted hundreds of
times (bootstrap). Looping ``scipy.optimize.minimize`` over them costs minutes; here
every start is one row of a ``(k, P)`` array and one call of the objective evaluates
all still-running rows at once, so the per-call Python overhead is paid once per
iteration instead of once per start.

The objective is ``fg(x, rows) -> (f, g)`` with ``x`` of shape ``(k, P)``, ``rows`` the
indices (into the batch) of the ``k`` members being evaluated, ``f`` of shape ``(k,)``
and ``g`` of shape ``(k, P)``. ``rows`` lets a member carry its own data (bootstrap
weights).

Stopping is scale-free: a member stops when its relative decrease
``(f_old - f_new) / |f|`` stays below ``ftol`` for ``patience`` consecutive
iterations, when no step decreases ``f`` any more (the line search fails twice,
once with a fresh memory), or when it creeps: less than ``slow_tol`` relative decrease
over ``slow_window`` iterations (starts stranded on a plateau of the loss, where a term
has vanished, otherwise run to ``max_iter``). Multiplying the objective by any constant (sum versus
mean of a loss) does not change where it stops; that is the point: an absolute
tolerance tuned for O(1) losses silently stops a Huber fit whose values are O(1e-5).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

FG = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

# Status codes of BatchResult.status
RUNNING, CONVERGED, STALLED, MAX_ITER, NONFINITE = 0, 1, 2, 3, 4
STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED: "converged",
    STALLED: "no further decrease",
    MAX_ITER: "max_iter",
    NONFINITE: "non-finite",
}


def _default_threads() -> int:
    env = os.environ.get("SCALINGLAB_FIT_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE != n:
        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="analysis-fit")
        _POOL_SIZE = n
    return _POOL


def _chunked(fg: FG, chunk: int, threads: int) -> FG:
    """Evaluate ``fg`` on at most ``chunk`` members at a time: the (members x rows)
    temporaries then stay in cache, which is several times faster than one big call.
    Chunks run on ``threads`` threads (numpy releases the GIL inside its loops)."""

    def wrapped(x, rows):
        k = x.shape[0]
        if k <= chunk:
            return fg(x, rows)
        f = np.empty(k)
        g = np.empty(x.shape)
        bounds = [(lo, min(k, lo + chunk)) for lo in range(0, k, chunk)]

        def one(b):
            lo, hi = b
            with np.errstate(all="ignore"):  # error state is per thread
                f[lo:hi], g[lo:hi] = fg(x[lo:hi], rows[lo:hi])

        if threads > 1 and len(bounds) > 1:
            list(_pool(threads).map(one, bounds))
        else:
            for b in bounds:
                one(b)
        return f, g

    return wrapped


@dataclass
class BatchResult:
    x: np.ndarray  # (S, P) final points
    f: np.ndarray  # (S,) final values (inf where non-finite)
    g: np.ndarray  # (S, P) final gradients
    status: np.ndarray  # (S,) codes above
    n_iter: np.ndarray  # (S,) iterations taken
    n_eval: int  # objective evaluations of member rows, summed (work measure)

    @property
    def ok(self) -> np.ndarray:
        """Members that stopped normally (converged or could not decrease further)."""
        return (self.status == CONVERGED) | (self.status == STALLED)


def minimize_batched(
    fg: FG,
    x0: np.ndarray,
    *,
    memory: int = 10,
    max_iter: int = 3000,
    ftol: float = 1e-13,
    patience: int = 4,
    max_linesearch: int = 40,
    c1: float = 1e-4,
    eval_chunk: int = 256,
    threads: int | None = None,
    slow_window: int = 50,
    slow_tol: float = 1e-8,
) -> BatchResult:
    """Minimise ``S`` independent problems from the rows of ``x0`` (shape ``(S, P)``).

    Non-finite objective values are handled explicitly (a start that is non-finite stops;
    a trial step that is non-finite is shortened), so floating-point warnings are muted."""
    with np.errstate(all="ignore"):
        return _minimize(fg, x0, memory=memory, max_iter=max_iter, ftol=ftol, patience=patience,
                         max_linesearch=max_linesearch, c1=c1, eval_chunk=eval_chunk,
                         threads=threads, slow_window=slow_window, slow_tol=slow_tol)


def _minimize(fg, x0, *, memory, max_iter, ftol, patience, max_linesearch, c1, eval_chunk,
              threads, slow_window, slow_tol) -> BatchResult:
    x = np.array(x0, dtype=np.float64, copy=True)
    if x.ndim != 2:
        raise ValueError(f"x0 must be 2-D (starts, params), got shape {x.shape}")
    S, P = x.shape
    m = int(memory)
    all_rows = np.arange(S)
    fg = _chunked(fg, eval_chunk, _default_threads() if threads is None else int(threads))
    f, g = fg(x, all_rows)
    f = np.array(f, dtype=np.float64)
    g = np.array(g, dtype=np.float64)
    finite = np.isfinite(f) & np.isfinite(g).all(axis=1)
    status = np.where(finite, RUNNING, NONFINITE)
    f[~finite] = np.inf
    n_eval = S

    s_mem = np.zeros((S, m, P))
    y_mem = np.zeros((S, m, P))
    rho = np.zeros((S, m))
    gnorm = np.sqrt((g * g).sum(axis=1))
    gamma = np.where(gnorm > 0, 1.0 / np.maximum(gnorm, 1e-300), 1.0)
    fresh = np.ones(S, dtype=bool)  # memory empty (first step or after a reset)
    stall = np.zeros(S, dtype=np.int64)
    n_iter = np.zeros(S, dtype=np.int64)
    f_ckpt = f.copy()  # objective at the last slow-progress checkpoint

    for k in range(max_iter):
        idx = np.flatnonzero(status == RUNNING)
        if idx.size == 0:
            break
        gi = g[idx]
        # Two-loop recursion, all members at once; empty slots have rho = 0 and act as no-ops.
        q = gi.copy()
        n_slots = min(k, m)
        slots = [(k - 1 - j) % m for j in range(n_slots)]  # newest first
        alphas = []
        for sl in slots:
            a_j = rho[idx, sl] * np.einsum("ij,ij->i", s_mem[idx, sl], q)
            q -= a_j[:, None] * y_mem[idx, sl]
            alphas.append(a_j)
        r = gamma[idx, None] * q
        for sl, a_j in zip(reversed(slots), reversed(alphas)):
            b_j = rho[idx, sl] * np.einsum("ij,ij->i", y_mem[idx, sl], r)
            r += s_mem[idx, sl] * (a_j - b_j)[:, None]
        d = -r
        gd = np.einsum("ij,ij->i", gi, d)
        bad = ~(gd < 0) | ~np.isfinite(gd)
        if bad.any():  # not a descent direction: drop the memory, steepest descent
            bi = idx[bad]
            rho[bi] = 0.0
            fresh[bi] = True
            gn = np.sqrt((gi[bad] ** 2).sum(axis=1))
            gamma[bi] = 1.0 / np.maximum(gn, 1e-300)
            d[bad] = -gi[bad] * gamma[bi, None]
            gd[bad] = np.einsum("ij,ij->i", gi[bad], d[bad])

        # Backtracking Armijo line search (safeguarded quadratic interpolation).
        xi, fi = x[idx], f[idx]
        t = np.ones(idx.size)
        x_new = xi.copy()
        f_new = fi.copy()
        g_new = gi.copy()
        accepted = np.zeros(idx.size, dtype=bool)
        pend = np.arange(idx.size)
        for _ in range(max_linesearch):
            xt = xi[pend] + t[pend, None] * d[pend]
            ft, gt = fg(xt, idx[pend])
            n_eval += pend.size
            fin = np.isfinite(ft) & np.isfinite(gt).all(axis=1)
            ok = fin & (ft <= fi[pend] + c1 * t[pend] * gd[pend])
            if ok.any():
                pk = pend[ok]
                x_new[pk], f_new[pk], g_new[pk] = xt[ok], ft[ok], gt[ok]
                accepted[pk] = True
            nk = ~ok
            if not nk.any():
                break
            tp, fp, gdp = t[pend[nk]], ft[nk], gd[pend[nk]]
            denom = 2.0 * (fp - fi[pend[nk]] - gdp * tp)
            t_q = -gdp * tp * tp / denom
            t_q = np.where(np.isfinite(t_q) & np.isfinite(fp), t_q, 0.1 * tp)
            t[pend[nk]] = np.clip(t_q, 0.1 * tp, 0.5 * tp)
            pend = pend[nk]
        n_iter[idx] += 1

        # Members whose search failed: retry once with an empty memory, then stop.
        fail = ~accepted
        if fail.any():
            fi_idx = idx[fail]
            give_up = fresh[fi_idx]
            status[fi_idx[give_up]] = STALLED
            retry = fi_idx[~give_up]
            rho[retry] = 0.0
            fresh[retry] = True
            gn = np.sqrt((g[retry] ** 2).sum(axis=1))
            gamma[retry] = 1.0 / np.maximum(gn, 1e-300)

        acc = idx[accepted]
        if acc.size:
            s_vec = x_new[accepted] - x[acc]
            y_vec = g_new[accepted] - g[acc]
            sy = np.einsum("ij,ij->i", s_vec, y_vec)
            yy = np.einsum("ij,ij->i", y_vec, y_vec)
            ss = np.einsum("ij,ij->i", s_vec, s_vec)
            good = (sy > 1e-12 * np.sqrt(ss * yy)) & (sy > 1e-290) & (yy > 0)
            slot = k % m
            s_mem[acc, slot] = np.where(good[:, None], s_vec, 0.0)
            y_mem[acc, slot] = np.where(good[:, None], y_vec, 0.0)
            rho[acc, slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
            gamma[acc] = np.where(good, sy / np.where(good & (yy > 0), yy, 1.0), gamma[acc])
            fresh[acc[good]] = False

            f_old = f[acc]
            fa = f_new[accepted]
            scale = np.maximum(np.maximum(np.abs(f_old), np.abs(fa)), 1e-300)
            small = (f_old - fa) <= ftol * scale
            stall[acc] = np.where(small, stall[acc] + 1, 0)
            x[acc], f[acc], g[acc] = x_new[accepted], fa, g_new[accepted]
            status[acc[stall[acc] >= patience]] = CONVERGED
        if slow_window and (k + 1) % slow_window == 0:
            # creeping along a plateau: less than slow_tol relative decrease in slow_window
            # iterations. Stopping costs at most that much objective, never a better basin.
            run = np.flatnonzero(status == RUNNING)
            gain = (f_ckpt[run] - f[run]) / np.maximum(np.abs(f[run]), 1e-300)
            status[run[gain < slow_tol]] = STALLED
            f_ckpt[run] = f[run]
    status[status == RUNNING] = MAX_ITER
    return BatchResult(x=x, f=f, g=g, status=status, n_iter=n_iter, n_eval=n_eval)
