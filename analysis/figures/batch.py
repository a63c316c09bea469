"""Figures of the critical-batch-size analysis (analysis/batch.py, analysis/report/batch.py):
steps against tokens to reach each target with the fitted hyperbolas, and B_crit against the
loss with the fitted B_crit(L) law. B is in tokens (batch_size x seq_len) throughout. A
target that is not fitted gets its points and no line; a B_crit at a bound is an arrow."""

from __future__ import annotations

import math

import numpy as np
import seaborn as sns
from matplotlib.ticker import NullFormatter, ScalarFormatter

from analysis.figures.style import PALETTE, SEQ_CMAP, new_figure, paper_style


def steps_tokens(analysis):
    """One panel per arm: (E, S) at each batch size's best lr per target (hollow: the best lr
    is at its grid's edge), the fitted S(B) = S_min + E_min / B drawn over the measured
    batches (dashed at a bound: the limit S = E_min / B or S = S_min), ● at (2 E_min, 2 S_min)."""
    arms = list(analysis.arms)
    n = len(arms)
    targets = sorted(analysis.targets)
    cmap = sns.color_palette(SEQ_CMAP, as_cmap=True)
    col = {t: cmap(i / max(len(targets) - 1, 1)) for i, t in enumerate(targets)}
    best = analysis.best
    with paper_style():
        fig, axes = new_figure(n, width=min(3.4 * n + 0.6, 10.5), height=3.0)
        for ax, arm in zip(axes[0], arms):
            ar = analysis.arms[arm]
            for rec in ar.targets:
                t = rec["target"]
                g = best[(best["arm"] == arm) & (best["target"] == t) & (best["state"] == "reached")] \
                    if len(best) else best
                if not len(g):
                    continue
                e = g["edge"] != ""
                c = col[t]
                ax.plot(g.loc[~e, "E"], g.loc[~e, "S"], "o", color=c, ms=4)
                if e.any():
                    ax.plot(g.loc[e, "E"], g.loc[e, "S"], "o", mfc="none", mec=c, ms=4.5)
                f = rec.get("fit")
                lab = f"L = {t:.3g}"
                if f is None:
                    ax.plot([], [], "o", color=c, label=lab + " (not fitted)")
                    continue
                b = np.geomspace(f.B.min() / 1.5, f.B.max() * 1.5, 200)
                S = f.predict(b)
                ax.plot(b * S, S, color=c, lw=1.1, ls="-" if f.converged else "--",
                        label=lab + ("" if f.converged else " (bound)"))
                if f.converged:
                    ax.plot([2 * f.E_min], [2 * f.S_min], "o", color=c, mec="black", mew=0.6, ms=5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(str(arm))
            ax.set_xlabel("tokens to reach the target E = B S")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels crowd a short decade
            ax.legend(loc="upper right", fontsize=6.5)
        axes[0][0].set_ylabel("steps to reach the target S")
    return fig


def bcrit_loss(analysis):
    """B_crit (tokens) against the target loss per arm: converged estimates with their 95 %
    interval (an open end drawn as an arrow), bounds as arrows from the bound, the fitted
    B_crit(L) law with its band over the targets it used; B_simple of each run at its final
    eval loss (hollow squares) where the table has it."""
    with paper_style():
        fig, axes = new_figure(1, width=4.6, height=3.2)
        ax = axes[0][0]
        ys = []
        for i, (arm, ar) in enumerate(analysis.arms.items()):
            c = PALETTE[i % len(PALETTE)]
            for rec in ar.targets:
                f = rec.get("fit")
                if f is None:
                    continue
                t = rec["target"]
                if f.converged:
                    lo, hi = f.ci.get("B_crit", (math.nan, math.nan))
                    ys += [f.B_crit]
                    ax.plot([t], [f.B_crit], "o", color=c, ms=4.5)
                    if math.isfinite(lo) and lo > 0 and math.isfinite(hi):
                        ax.plot([t, t], [lo, hi], color=c, lw=1.0)
                    elif math.isfinite(hi) and hi > 0:  # open below
                        ax.annotate("", xy=(t, hi / 4), xytext=(t, hi),
                                    arrowprops=dict(arrowstyle="->", color=c, lw=1.0))
                    elif math.isfinite(lo) and lo > 0:  # open above
                        ax.annotate("", xy=(t, lo * 4), xytext=(t, lo),
                                    arrowprops=dict(arrowstyle="->", color=c, lw=1.0))
                else:
                    up = f.status == "lower_bound"
                    ys += [f.bound]
                    ax.annotate("", xy=(t, f.bound * (4 if up else 0.25)), xytext=(t, f.bound),
                                arrowprops=dict(arrowstyle="->", color=c, lw=1.2))
                    ax.plot([t], [f.bound], "_", color=c, ms=8, mew=1.5)
            lab = str(arm)
            if ar.law is not None:
                law = ar.law
                L = np.geomspace(law.losses.min(), law.losses.max(), 100)
                lo_a, hi_a = law.alpha_interval()
                lab += rf": $\alpha_B$ = {law.alpha_B:.2f}" + (f" [{lo_a:.2f}, {hi_a:.2f}]"
                                                            if math.isfinite(lo_a) else " (open)")
                ax.plot(L, law.predict(L), color=c, lw=1.1)
                blo, bhi = law.band(L)
                if np.isfinite(blo).all():
                    ax.fill_between(L, blo, bhi, color=c, alpha=0.18, lw=0)
            ax.plot([], [], "o", color=c, label=lab)
            if ar.b_simple is not None:
                bs = ar.b_simple
                ax.plot(bs["loss"], bs["B_simple"], "s", mfc="none", mec=c, ms=3.5, mew=0.7,
                        label=f"{arm}: B_simple per run (last half, at final loss)")
                ys += list(bs["B_simple"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        if ys:
            v = np.asarray(ys, float)
            v = v[np.isfinite(v) & (v > 0)]
            if v.size:
                ax.set_ylim(v.min() / 6, v.max() * 6)
        ax.set_xlabel("target loss L")
        # a narrow range of losses: plain tick labels (2.5, not 2.5 x 10^0)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.set_ylabel("critical batch B_crit (tokens)")
        ax.set_title("Critical batch size against loss")
        ax.legend(loc="best", fontsize=6.5)
    return fig
