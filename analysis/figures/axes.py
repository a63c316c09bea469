"""What the figures share: axes on log scales with readable ticks, the N axis's label, the
size colour bar, a fit's parameter with its interval as a legend label (analysis/figures/fits.py,
plots_optimizers.py, plots_families.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from analysis.figures.style import SEQ_CMAP


def ci_label(name: str, fit, key: str, digits: int = 3) -> str:
    """"name = v [lo, hi]" for a legend; "not identified" with its bound where so."""
    v = fit.params[key]
    if key in getattr(fit, "unidentified", {}):
        b = fit.bounds.get(key)
        return f"{name} not identified" + (f" (≤ {b[1]:.{digits}g})" if b else "")
    lo, hi = fit.interval(key)
    if math.isfinite(lo):
        return f"{name} = {v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{name} = {v:.{digits}f}"


def loglog(ax, minor_y: bool = True, plain_x: bool = False):
    """Log-log axes; a loss axis (spanning well under a decade) gets plain-number ticks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    pairs = ([(ax.yaxis, ax.get_ylim())] if minor_y else []) + ([(ax.xaxis, ax.get_xlim())] if plain_x else [])
    for axis, (lo, hi) in pairs:
        if lo > 0 and hi / lo < 10:
            axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        else:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(plain_formatter())
        axis.set_minor_formatter(NullFormatter())
    if not plain_x:
        log_ticks(ax.xaxis)


def log_ticks(axis) -> None:
    """A log axis labelled at decades (with 3x between them on a short axis), minor ticks
    bare, so that labels never overlap."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = sorted(axis.get_view_interval())
    span = hi / lo if lo > 0 else math.inf
    subs = (1.0,) if span >= 1e3 else (1.0, 3.0) if span >= 10 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    axis.set_minor_formatter(NullFormatter())
    if span < 10:  # within a decade: short labels ("2e11"), which never collide
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e")
                                               .replace("e+", "e")))


def n_axis_label(df: pd.DataFrame) -> str:
    """The N axis's label, saying which parameters are counted (the table's accounting)."""
    return {"total": "N (all parameters)", "kaplan": "N (non-embedding parameters)"}.get(
        getattr(df, "attrs", {}).get("accounting"), "N (parameters)")


def plain_formatter():
    """Tick labels as plain numbers ("2.5", "3")."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}")


def size_colorbar(fig, ax, norm, label="N (parameters)"):
    """A colour bar of model size (or budget) beside ``ax``."""
    sm = ScalarMappable(norm=norm, cmap=SEQ_CMAP)
    cb = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.05, aspect=30)
    cb.set_label(label)
    return cb


def xgrid(values, pad: float = 1.5, n: int = 200):
    """A log-spaced grid over the positive finite ``values``, widened by ``pad``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return np.geomspace(v.min() / pad, v.max() * pad, n)
