"""One paper style for every figure: seaborn "paper" context, ticks, colour-blind-safe
colours (seaborn's "colorblind" palette for categories, viridis for sizes and budgets),
figures saved as PNG (200 dpi) and PDF (vector, fonts embedded as Type 42).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend),
so that the package works headless and never changes the caller's matplotlib state.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib as mpl
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

PALETTE = sns.color_palette("colorblind")  # categorical: optimizers, approaches
SEQ_CMAP = "viridis"  # sequential: model size, compute budget (CVD-safe, prints in grey)
FRONTIER = "black"
FIT = PALETTE[1]  # orange: fitted curves
FIT2 = PALETTE[2]  # green
DATA = "0.6"

WIDTH_1 = 3.5  # inches, one column
WIDTH_2 = 7.2  # two columns
HEIGHT = 2.8


def _rc() -> dict:
    rc = {}
    rc.update(sns.axes_style("ticks"))
    rc.update(sns.plotting_context("paper", font_scale=1.05))
    rc.update({
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "axes.grid.which": "major",
        "grid.color": "0.92",
        "grid.linewidth": 0.6,
        "legend.frameon": False,
        "legend.fontsize": 7.5,
        "legend.title_fontsize": 8,
        "lines.linewidth": 1.4,
        "lines.markersize": 4.5,
        "savefig.dpi": 200,
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.03,
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "font.family": "DejaVu Sans",
        "image.cmap": SEQ_CMAP,
    })
    return rc


@contextlib.contextmanager
def paper_style():
    """Context in which figures take the package's paper style."""
    with mpl.rc_context(_rc()):
        yield


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float | None = None,
               height: float | None = None, **kw):
    """A constrained-layout Figure and its axes (call inside :func:`paper_style`)."""
    w = width or (WIDTH_1 if ncols == 1 else WIDTH_2)
    h = height or HEIGHT * nrows
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def size_norm(values) -> LogNorm:
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    lo, hi = (v.min(), v.max()) if v.size else (1.0, 10.0)
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    return LogNorm(vmin=lo, vmax=hi)


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.pdf; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, format=ext)
        paths.append(p)
    return paths
