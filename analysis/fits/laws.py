"""Scaling-law models in log space: forward pass and gradient of each law.

Every law predicts ``log L`` from log-inputs. Internally each law works with centred
log-inputs (``u = log x - mean(log x)``), which removes the strong correlation between
an intercept and its exponent and lets L-BFGS converge in far fewer iterations; the
map to the published parametrisation is linear and exact, so starting points from
published grids are translated exactly and the optimum is unchanged.

The objectives and the multi-start fitter are in analysis/fits/multistart.py.
"""

from __future__ import annotations

import numpy as np


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


class _CenteredND(Law):
    """A law of (log N, log D), both centred at the data's means (u1, u2; mu1, mu2)."""

    def __init__(self, log_n: np.ndarray, log_d: np.ndarray):
        self.u1, self.mu1 = _center(log_n)
        self.u2, self.mu2 = _center(log_d)
        self.n_rows = self.u1.size


class _LawInNAndD(_CenteredND):
    """Shared by the L(N, D) laws: log N and log D centred, so that the internal a and b
    are the terms' values at the data's centre (a well-conditioned fit). Columns 0 and 1
    are a and b; `ALPHA` and `BETA` are the columns of the exponents."""

    ALPHA: int
    BETA: int

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


class KaplanNDLaw(_CenteredND):
    """Kaplan et al. (2020) eq. 1.5: L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D.

    log L = alpha_D * LSE(p (log N_c - log N), log D_c - log D) with p = alpha_N / alpha_D.
    External parameters (log_Nc, log_Dc, p, alpha_D).
    """

    names = ("log_Nc", "log_Dc", "p", "alpha_D")

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
