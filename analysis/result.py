"""Fit results with intervals: one small container shared by every fit in the package."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

LEVEL = 0.95


def one_sided_bound(samples: np.ndarray, level: float = LEVEL, side: str = "upper") -> float:
    """One-sided percentile bound of the finite samples (the ``level`` quantile for an upper
    bound): what a bootstrap can say about a parameter that sits at its bound."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 10:
        return math.nan
    return float(np.quantile(s, level if side == "upper" else 1 - level))


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Equal-tailed percentile interval of the finite samples (NaN, NaN if fewer than 10)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 10:
        return (math.nan, math.nan)
    q = (1 - level) / 2
    lo, hi = np.quantile(s, [q, 1 - q])
    return (float(lo), float(hi))


def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """Row multiplicities of ``n_boot`` nonparametric bootstrap resamples, shape (n_boot, n).

    With ``groups`` (one label per row) the resampling is stratified: each group keeps its
    size and is resampled within itself (for IsoFLOP budgets, optimiser cells, ...)."""
    if n_boot <= 0:
        return np.zeros((0, n))
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    groups = np.asarray(groups)
    W = np.zeros((n_boot, n))
    for g in pd.unique(groups):
        idx = np.flatnonzero(groups == g)
        W[:, idx] = rng.multinomial(idx.size, np.full(idx.size, 1.0 / idx.size), size=n_boot)
    return W


@dataclass
class FitResult:
    """Point estimates, percentile bootstrap intervals and the bootstrap samples.

    ``params`` holds every reported quantity (fitted and derived) by name; ``ci`` the
    interval of each that has one; ``samples`` one row per bootstrap resample (NaN rows for
    resamples whose refit failed); ``info`` free-form diagnostics (objective value, starts,
    convergence, notes) that are JSON-serialisable.
    """

    kind: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: pd.DataFrame | None = None
    n: int = 0
    level: float = LEVEL
    info: dict[str, Any] = field(default_factory=dict)
    # parameters the data do not identify (at a bound, or a flat objective): name -> reason.
    # Their two-sided interval is replaced by a one-sided bound (``bounds``).
    unidentified: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> ("<=", v)

    def identified(self, name: str) -> bool:
        return name not in self.unidentified

    @property
    def n_boot_failed(self) -> int:
        if self.samples is None or not len(self.samples):
            return 0
        return int(self.samples.isna().any(axis=1).sum())

    def mark_unidentified(self, name: str, reason: str, *, upper: float | None = None,
                          lower: float | None = None) -> None:
        """Flag ``name`` as not identified; drop its two-sided interval; keep a one-sided
        bound when given."""
        self.unidentified[name] = reason
        self.ci.pop(name, None)
        if upper is not None:
            self.bounds[name] = ("<=", float(upper))
        elif lower is not None:
            self.bounds[name] = (">=", float(lower))

    def __getitem__(self, name: str) -> float:
        return self.params[name]

    def interval(self, name: str) -> tuple[float, float]:
        return self.ci.get(name, (math.nan, math.nan))

    def fill_intervals(self) -> None:
        if self.samples is None or self.samples.empty:
            return
        for col in self.samples.columns:
            if col in self.params and col not in self.unidentified:
                self.ci[col] = percentile_interval(self.samples[col].to_numpy(), self.level)

    def table(self, names: list[str] | None = None) -> pd.DataFrame:
        names = names or list(self.params)
        rows = []
        for k in names:
            lo, hi = self.interval(k)
            rows.append({"parameter": k, "value": self.params[k], "ci_low": lo, "ci_high": hi})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "n": self.n, "level": self.level}
        out["params"] = {k: _jsonable(v) for k, v in self.params.items()}
        out["ci"] = {k: [_jsonable(a), _jsonable(b)] for k, (a, b) in self.ci.items()}
        out["n_boot"] = 0 if self.samples is None else int(len(self.samples))
        out["n_boot_failed"] = self.n_boot_failed
        out["identified"] = {k: k not in self.unidentified for k in self.params}
        if self.unidentified:
            out["not_identified"] = dict(self.unidentified)
        if self.bounds:
            out["bounds"] = {k: [op, _jsonable(v)] for k, (op, v) in self.bounds.items()}
        out["info"] = _jsonable(self.info)
        return out

    def describe(self, names: list[str] | None = None, digits: int = 4) -> str:
        lines = []
        for k in names or list(self.params):
            v = self.params[k]
            lo, hi = self.interval(k)
            if k in self.unidentified:
                b = self.bounds.get(k)
                bound = f"  (95% one-sided bound: {k} {b[0]} {fmt(b[1], digits)})" if b else ""
                lines.append(f"{k:>10s} = {fmt(v, digits)}  NOT IDENTIFIED: {self.unidentified[k]}{bound}")
            elif math.isfinite(lo):
                lines.append(f"{k:>10s} = {fmt(v, digits)}  [{fmt(lo, digits)}, {fmt(hi, digits)}]")
            else:
                lines.append(f"{k:>10s} = {fmt(v, digits)}")
        return "\n".join(lines)


def json_default(o):
    """`json.dumps(default=...)` for fit outputs: numpy scalars as Python numbers, a non-finite
    float as null (JSON has no NaN), anything else as its string."""
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def sig(v, digits=6):
    """``v`` rounded to ``digits`` significant figures (NaN and inf as they are): the key that
    groups sizes, token counts and budgets equal to rounding."""
    return float(f"{v:.{digits}g}") if np.isfinite(v) else v


def fmt(v: float, digits: int = 4) -> str:
    """Compact number formatting for tables and legends."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan" if v is None or math.isnan(v) else ("inf" if v > 0 else "-inf")
    av = abs(v)
    if av != 0 and (av >= 1e5 or av < 1e-3):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


class AllocationFit(FitResult):
    """Compute-optimal allocation laws: params a, b, k_N, k_D with N_opt = k_N C^a and
    D_opt = k_D C^b (Chinchilla Approaches 1 and 2)."""

    def predict(self, C, params: dict | None = None):
        p = self.params if params is None else params
        C = np.asarray(C, dtype=np.float64)
        return p["k_N"] * C ** p["a"], p["k_D"] * C ** p["b"]

    def band(self, C, which: str = "N", level: float | None = None):
        """(low, high) of N_opt(C) ("N") or D_opt(C) ("D") over the bootstrap samples."""
        C = np.asarray(C, dtype=np.float64)
        if self.samples is None or self.samples.empty:
            return np.full(C.shape, np.nan), np.full(C.shape, np.nan)
        S = self.samples.dropna()
        e, k = ("a", "k_N") if which == "N" else ("b", "k_D")
        v = S[k].to_numpy()[:, None] * C[None, :] ** S[e].to_numpy()[:, None]
        q = (1 - (level or self.level)) / 2
        lo, hi = np.quantile(v, [q, 1 - q], axis=0)
        return lo, hi
