"""One paper style for every figure: seaborn "paper" context, ticks, colour-blind-safe
colours (seaborn's "colorblind" palette for categories, viridis for sizes and budgets),
figures saved as PNG (200 dpi) and PDF (vector, fonts embedded as Type 42).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend),
so that the package works headless and never changes the caller's matplotlib state.
"""

from __future__ import annotations

import contextlib
import sys
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


class FigureWriter:
    """Writes figures (:func:`save`) in forked child processes, so that drawing them (about
    half of a report's time) runs on other cores while the fits and the next figures go
    on. At most `max_children` at once (default: one per core); 0, or a platform without
    fork, writes each figure here and now. :meth:`wait` returns {name: error text} of the figures whose child failed.

    A forked child holds the figure and the style settings exactly as they are at the
    call, so it draws what an in-process save would; it writes only the figure's two
    files, and leaves by os._exit (no cleanup of the parent's state)."""

    def __init__(self, max_children: int | None = None):
        import os

        if max_children is None:
            try:
                cores = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cores = os.cpu_count() or 1
            max_children = cores  # the parent mostly waits on them once its fits are done
            if "jax" in sys.modules:  # never fork a process that runs jax's thread pools
                max_children = 0      # (`run --analyze` analyses in a fresh process)
        self.max_children = max_children if hasattr(os, "fork") else 0
        self.children: dict[int, tuple[str, Path]] = {}
        self.failed: dict[str, str] = {}

    def save(self, fig: Figure, out_dir: str | Path, name: str) -> None:
        import os
        import traceback

        if self.max_children < 1:
            save(fig, out_dir, name)
            return
        while len(self.children) >= self.max_children:
            self._reap(block=True)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        err = out / f".{name}.error"
        err.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:  # the child: draw, write, leave
            code = 0
            try:
                save(fig, out, name)
            except BaseException:  # noqa: BLE001 - reported by the parent
                try:
                    err.write_text(traceback.format_exc(limit=3))
                except OSError:
                    pass
                code = 1
            os._exit(code)
        self.children[pid] = (name, err)

    def _reap(self, block: bool) -> None:
        import os

        for pid in list(self.children):
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done == 0:
                continue
            name, err = self.children.pop(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                text = err.read_text() if err.exists() else f"exit status {status}"
                self.failed[name] = text.strip().splitlines()[-1] if text.strip() else text
            err.unlink(missing_ok=True)
            if block:
                return

    def wait(self) -> dict[str, str]:
        while self.children:
            self._reap(block=True)
        return dict(self.failed)


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
