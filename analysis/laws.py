"""Scaling-law models in log space, robust objectives, and a batched multi-start fitter.

Every law predicts ``log L`` from log-inputs. Internally each law works with centred
log-inputs (``u = log x - mean(log x)``), which removes the strong correlation between
an intercept and its exponent and lets L-BFGS converge in far fewer iterations; the
map to the published parametrisation is linear and exact, so starting points from
published grids are translated exactly and the optimum is unchanged.

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

from ._lbfgs import CONVERGED, STALLED, minimize_batched


def _lse_weights(*z: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stable log-sum-exp of the terms ``z`` (same shapes) and its exact gradient.

    Returns ``(lse, [w_1, ..., w_k])`` with ``w_i = exp(z_i - lse)`` (the softmax weights,
    d lse / d z_i). The largest term is subtracted before exponentiating, so no argument of
    exp() is ever positive: there is no clip, hence no flat region where the value stops
    changing while the gradient does not (L-BFGS used to walk E to such a clip at ln E ~ -700).
    """
    m = z[0].copy()
    for zi in z[1:]:
        np.maximum(m, zi, out=m)
    ws = []
    s = np.zeros_like(m)
    for zi in z:
        w = np.subtract(zi, m)
        np.exp(w, out=w)
        s += w
        ws.append(w)
    inv = np.reciprocal(s)
    for w in ws:
        w *= inv
    lse = np.log(s, out=s)
    lse += m
    return lse, ws


def _center(v: np.ndarray) -> tuple[np.ndarray, float]:
    v = np.asarray(v, dtype=np.float64)
    mu = float(np.mean(v))
    return v - mu, mu


# --------------------------------------------------------------------------------------
# Laws: forward(theta (k,P)) -> pred (k,n), cache ; vjp(cache, v (k,n)) -> (k,P)
# --------------------------------------------------------------------------------------


class Law:
    """A model of log L. Subclasses define internal <-> external parameter maps."""

    names: tuple[str, ...] = ()  # external (published) parameter names
    n_rows: int

    @property
    def n_params(self) -> int:
        return len(self.names)

    def forward(self, th: np.ndarray):  # pragma: no cover - interface
        raise NotImplementedError

    def vjp(self, cache, v: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def to_internal(self, ext: np.ndarray) -> np.ndarray:
        return np.asarray(ext, dtype=np.float64)

    def to_external(self, th: np.ndarray) -> np.ndarray:
        return np.asarray(th, dtype=np.float64)


class _LawInNAndD(Law):
    """Shared by the L(N, D) laws: log N and log D centred, so that the internal a and b
    are the terms' values at the data's centre (a well-conditioned fit). Columns 0 and 1
    are a and b; `ALPHA` and `BETA` are the columns of the exponents."""

    ALPHA: int
    BETA: int

    def __init__(self, log_n: np.ndarray, log_d: np.ndarray):
        self.u1, self.mu1 = _center(log_n)
        self.u2, self.mu2 = _center(log_d)
        self.n_rows = self.u1.size

    def to_internal(self, ext):
        ext = np.array(ext, dtype=np.float64, ndmin=2)
        th = ext.copy()
        th[:, 0] = ext[:, 0] - ext[:, self.ALPHA] * self.mu1
        th[:, 1] = ext[:, 1] - ext[:, self.BETA] * self.mu2
        return th

    def to_external(self, th):
        th = np.array(th, dtype=np.float64, ndmin=2)
        ext = th.copy()
        ext[:, 0] = th[:, 0] + th[:, self.ALPHA] * self.mu1
        ext[:, 1] = th[:, 1] + th[:, self.BETA] * self.mu2
        return ext


class ChinchillaLaw(_LawInNAndD):
    """log L = LSE(a - alpha log N, b - beta log D, e)  (Hoffmann et al. 2022, Approach 3).

    External parameters (a, b, e, alpha, beta): A = exp(a), B = exp(b), E = exp(e).
    """

    names = ("a", "b", "e", "alpha", "beta")
    ALPHA, BETA = 3, 4

    def forward(self, th):
        a, b, e, al, be = (th[:, i : i + 1] for i in range(5))
        z1 = np.subtract(a, al * self.u1)
        z2 = np.subtract(b, be * self.u2)
        z3 = np.broadcast_to(e, z1.shape)
        pred, (w1, w2, w3) = _lse_weights(z1, z2, z3)
        return pred, (w1, w2, w3)

    def vjp(self, cache, v):
        w1, w2, w3 = cache
        q1 = v * w1
        q2 = v * w2
        g = np.empty((v.shape[0], 5))
        g[:, 0] = q1.sum(axis=1)
        g[:, 1] = q2.sum(axis=1)
        g[:, 2] = (v * w3).sum(axis=1)
        g[:, 3] = -(q1 @ self.u1)
        g[:, 4] = -(q2 @ self.u2)
        return g


class ChinchillaNoELaw(_LawInNAndD):
    """The reduced Approach 3 model without an irreducible term (E = 0):
    log L = LSE(a - alpha log N, b - beta log D). External parameters (a, b, alpha, beta).

    Fitted next to :class:`ChinchillaLaw` when the data do not identify E, so that the two
    objectives can be compared (a flat profile in E means the data cannot tell E from 0).
    """

    names = ("a", "b", "alpha", "beta")
    ALPHA, BETA = 2, 3

    def forward(self, th):
        a, b, al, be = (th[:, i : i + 1] for i in range(4))
        pred, (w1, w2) = _lse_weights(np.subtract(a, al * self.u1), np.subtract(b, be * self.u2))
        return pred, (w1, w2)

    def vjp(self, cache, v):
        w1, w2 = cache
        q1 = v * w1
        q2 = v * w2
        g = np.empty((v.shape[0], 4))
        g[:, 0] = q1.sum(axis=1)
        g[:, 1] = q2.sum(axis=1)
        g[:, 2] = -(q1 @ self.u1)
        g[:, 3] = -(q2 @ self.u2)
        return g


class SharedExponentLaw(ChinchillaLaw):
    """log L = LSE(a - g log N, b - g log D, e): L = E + A/N^g + B/D^g, one exponent for both
    terms (a parameter fewer than :class:`ChinchillaLaw`). External parameters (a, b, e, g).

    :class:`ChinchillaLaw` with beta = alpha = g: its forward pass on (a, b, e, g, g), and
    the gradient in g the sum of its gradients in alpha and beta."""

    names = ("a", "b", "e", "g")
    ALPHA = BETA = 3
    _AS_CHINCHILLA = [0, 1, 2, 3, 3]  # (a, b, e, g) -> (a, b, e, alpha, beta)

    def forward(self, th):
        return super().forward(th[:, self._AS_CHINCHILLA])

    def vjp(self, cache, v):
        g = super().vjp(cache, v)
        g[:, 3] += g[:, 4]
        return g[:, :4]


class DataConstrainedLaw(_LawInNAndD):
    """Muennighoff et al. (2023), data-constrained: Chinchilla's form in the effective data

        D' = U + U R* (1 - exp(-R / R*)),   R = D / U - 1 (repetitions beyond the first epoch),

    log L = LSE(a - alpha log N, b - beta log D', e), with U the unique tokens of each run and
    R* (the repetitions after which repeated tokens are worth ~1/e of fresh ones) fitted as
    s = log R*. External parameters (a, b, e, alpha, beta, s). log D' is centred at the mean of
    log D (fixed), so the internal b is beta-centred as in :class:`ChinchillaLaw`."""

    names = ("a", "b", "e", "alpha", "beta", "s")
    ALPHA, BETA = 3, 4

    def __init__(self, log_n: np.ndarray, log_d: np.ndarray, log_u: np.ndarray):
        super().__init__(log_n, log_d)
        self.log_u = np.asarray(log_u, dtype=np.float64)
        self.R = np.maximum(np.exp(np.asarray(log_d, dtype=np.float64) - self.log_u) - 1.0, 0.0)

    def log_d_eff(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log D' for each member's s (k, 1) and each row, and d log D' / d s."""
        rs = np.exp(np.clip(s, -30.0, 30.0))
        t = self.R / rs
        one_m = -np.expm1(-t)
        f = 1.0 + rs * one_m
        df = rs * (one_m - t * np.exp(-t))
        return self.log_u + np.log(f), df / f

    def forward(self, th):
        a, b, e, al, be, s = (th[:, i : i + 1] for i in range(6))
        ld, dld = self.log_d_eff(s)
        u2 = ld - self.mu2
        z1 = np.subtract(a, al * self.u1)
        z2 = np.subtract(b, be * u2)
        pred, (w1, w2, w3) = _lse_weights(z1, z2, np.broadcast_to(e, z1.shape))
        return pred, (w1, w2, w3, u2, be * dld)

    def vjp(self, cache, v):
        w1, w2, w3, u2, bdl = cache
        q1 = v * w1
        q2 = v * w2
        g = np.empty((v.shape[0], 6))
        g[:, 0] = q1.sum(axis=1)
        g[:, 1] = q2.sum(axis=1)
        g[:, 2] = (v * w3).sum(axis=1)
        g[:, 3] = -(q1 @ self.u1)
        g[:, 4] = -(q2 * u2).sum(axis=1)
        g[:, 5] = -(q2 * bdl).sum(axis=1)
        return g


class _CenteredPowerLaw(Law):
    """A power law in log x, fitted in centred log x (u = log x - mean): the intercept
    c (parameter 0) absorbs alpha * mean, which conditions the problem."""

    names: tuple[str, ...]

    def __init__(self, log_x: np.ndarray):
        self.u, self.mu = _center(log_x)
        self.n_rows = self.u.size
        self._alpha = self.names.index("alpha")

    def to_internal(self, ext):
        th = np.array(ext, dtype=np.float64, ndmin=2).copy()
        th[:, 0] -= th[:, self._alpha] * self.mu
        return th

    def to_external(self, th):
        ext = np.array(th, dtype=np.float64, ndmin=2).copy()
        ext[:, 0] += ext[:, self._alpha] * self.mu
        return ext


class PowerLawE(_CenteredPowerLaw):
    """log L = LSE(c - alpha log x, e): L = E + (x_c / x)^alpha with c = alpha log x_c.

    External parameters (c, e, alpha).
    """

    names = ("c", "e", "alpha")

    def forward(self, th):
        c, e, al = (th[:, i : i + 1] for i in range(3))
        z1 = np.subtract(c, al * self.u)
        pred, (w1, w2) = _lse_weights(z1, np.broadcast_to(e, z1.shape))
        return pred, (w1, w2)

    def vjp(self, cache, v):
        w1, w2 = cache
        q = v * w1
        g = np.empty((v.shape[0], 3))
        g[:, 0] = q.sum(axis=1)
        g[:, 1] = (v * w2).sum(axis=1)
        g[:, 2] = -(q @ self.u)
        return g


class PowerLaw0(_CenteredPowerLaw):
    """log L = c - alpha log x: L = (x_c / x)^alpha, no irreducible term. External (c, alpha)."""

    names = ("c", "alpha")

    def forward(self, th):
        pred = th[:, 0:1] - th[:, 1:2] * self.u
        return pred, None

    def vjp(self, cache, v):
        g = np.empty((v.shape[0], 2))
        g[:, 0] = v.sum(axis=1)
        g[:, 1] = -(v @ self.u)
        return g


class KaplanNDLaw(Law):
    """Kaplan et al. (2020) eq. 1.5: L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D.

    log L = alpha_D * LSE(p (log N_c - log N), log D_c - log D) with p = alpha_N / alpha_D.
    External parameters (log_Nc, log_Dc, p, alpha_D).
    """

    names = ("log_Nc", "log_Dc", "p", "alpha_D")

    def __init__(self, log_n, log_d):
        self.u1, self.mu1 = _center(log_n)
        self.u2, self.mu2 = _center(log_d)
        self.n_rows = self.u1.size

    # internal: (c1, c2, p, alpha_D) with z1 = c1 - p u1, z2 = c2 - u2
    def to_internal(self, ext):
        ext = np.array(ext, dtype=np.float64, ndmin=2)
        th = ext.copy()
        th[:, 0] = ext[:, 2] * (ext[:, 0] - self.mu1)
        th[:, 1] = ext[:, 1] - self.mu2
        return th

    def to_external(self, th):
        th = np.array(th, dtype=np.float64, ndmin=2)
        ext = th.copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            ext[:, 0] = th[:, 0] / th[:, 2] + self.mu1
        ext[:, 1] = th[:, 1] + self.mu2
        return ext

    def forward(self, th):
        c1, c2, p, ad = (th[:, i : i + 1] for i in range(4))
        z1 = c1 - p * self.u1
        z2 = c2 - self.u2
        mx = np.maximum(z1, z2)
        e1 = np.exp(z1 - mx)
        e2 = np.exp(z2 - mx)
        s = e1 + e2
        lse = mx + np.log(s)
        return ad * lse, (e1 / s, e2 / s, lse, ad)

    def vjp(self, cache, v):
        w1, w2, lse, ad = cache
        va = v * ad
        q1 = va * w1
        q2 = va * w2
        g = np.empty((v.shape[0], 4))
        g[:, 0] = q1.sum(axis=1)
        g[:, 1] = q2.sum(axis=1)
        g[:, 2] = -(q1 @ self.u1)
        g[:, 3] = (v * lse).sum(axis=1)
        return g


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
