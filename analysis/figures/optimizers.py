"""Figures of the optimizer comparison (analysis/report/optimizers.py): loss against learning
rate, the best learning rate against N, loss against compute at each optimizer's best
learning rate. Each returns a matplotlib Figure in the paper style (analysis/figures/style.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from analysis.figures.axes import ci_label, loglog, size_colorbar, xgrid
from analysis.result import fmt
from analysis.figures.style import PALETTE, SEQ_CMAP, new_figure, paper_style, size_norm


def lr_sensitivity(sens: pd.DataFrame, best: pd.DataFrame):
    """Excess loss over the best learning rate of the same size, against learning rate; one
    panel per optimizer, one line per size; error bars = seed standard deviation; x at the
    top = diverged; ★ = best lr (hollow when it is on the edge of the grid)."""
    opts = list(pd.unique(sens["optimizer"]))
    n = len(opts)
    s_all = sens.copy()
    ref = s_all.groupby(["optimizer", "N"])["loss_mean"].transform("min")
    s_all["excess"] = s_all["loss_mean"] - ref
    fin = s_all["excess"][np.isfinite(s_all["excess"])]
    ytop = float(fin.quantile(0.95)) if len(fin) else 1.0
    ytop = max(ytop, 1e-3)
    ydiv = ytop * 1.12
    with paper_style():
        fig, axes = new_figure(n, width=min(2.6 * n + 0.8, 10.5), height=2.8, sharey=True)
        norm = size_norm(sens["N"])
        cmap = sns.color_palette(SEQ_CMAP, as_cmap=True)
        for ax, opt in zip(axes[0], opts):
            s = s_all[s_all["optimizer"] == opt]
            for N, g in s.groupby("N"):
                g = g.sort_values("lr")
                col = cmap(norm(N))
                ok = g["n_seeds"] > 0
                ax.errorbar(g.loc[ok, "lr"], g.loc[ok, "excess"], yerr=g.loc[ok, "loss_std"],
                            color=col, marker="o", ms=2.5, lw=1.0, elinewidth=0.6, capsize=1.5)
                dv = g[g["n_diverged"] > 0]
                ax.scatter(dv["lr"], np.full(len(dv), ydiv), marker="x", color=col, s=14, lw=0.9,
                           clip_on=False)
                b = best[(best["optimizer"] == opt) & (best["N"] == N)]
                if len(b) and np.isfinite(b["loss"].iloc[0]):
                    edge = bool(b["edge"].iloc[0])
                    ax.plot(b["lr_best"], [0.0], marker="*", ms=8, mfc="none" if edge else col,
                            mec="black", mew=0.6, ls="none", zorder=5)
            ax.set_xscale("log")
            ax.set_title(str(opt))
            ax.set_xlabel("learning rate")
            ax.axhline(ydiv, color="0.75", lw=0.6, ls=":")
        axes[0][0].set_ylabel("loss − best loss at this N")
        axes[0][0].set_ylim(-0.05 * ytop, ydiv * 1.06)
        axes[0][0].text(0.01, ydiv, "diverged", fontsize=6.5, color="0.4", va="bottom",
                        transform=axes[0][0].get_yaxis_transform())
        size_colorbar(fig, axes[0][-1], norm)
    return fig


def best_lr(best: pd.DataFrame, scaling: pd.DataFrame):
    """Best learning rate against N per optimizer with the fitted lr* = c N^gamma;
    hollow markers: best lr on the edge of the grid (excluded from the fit)."""
    with paper_style():
        fig, axes = new_figure(1, width=5.6, height=2.9)
        ax = axes[0][0]
        for i, (opt, g) in enumerate(best.groupby("optimizer", sort=True)):
            col = PALETTE[i % len(PALETTE)]
            e = g["edge"].astype(bool)
            sc = scaling[scaling["optimizer"] == opt]
            lab = str(opt)
            if len(sc) and np.isfinite(sc["gamma"].iloc[0]):
                r = sc.iloc[0]
                lab += rf": $\gamma$ = {r.gamma:.2f}"
                if np.isfinite(r.gamma_low):
                    lab += f" [{r.gamma_low:.2f}, {r.gamma_high:.2f}]"
                xs = xgrid(g["N"], pad=1.3)
                ax.plot(xs, r.c * xs**r.gamma, color=col, lw=1.1)
            ax.plot(g.loc[~e, "N"], g.loc[~e, "lr_refined"], "o", color=col, ms=4, label=lab)
            if e.any():
                ax.plot(g.loc[e, "N"], g.loc[e, "lr_best"], "o", mfc="none", mec=col, ms=5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (parameters)")
        ax.set_ylabel("best learning rate")
        ax.set_title("Best learning rate (○ = grid edge)")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)  # off the data
    return fig


def optimizer_compute(runs: pd.DataFrame, laws: dict, multipliers: list[dict] | None = None):
    """Loss against compute per optimizer at its best learning rate (mean ± seed std) with
    the fitted L(C) and its exponent; compute multipliers in the title box."""
    with paper_style():
        fig, axes = new_figure(1, width=4.4, height=3.1)
        ax = axes[0][0]
        for i, (opt, g) in enumerate(runs.groupby("optimizer", sort=True)):
            col = PALETTE[i % len(PALETTE)]
            agg = g.groupby("N").agg(C=("C", "median"), m=("loss", "mean"),
                                     s=("loss", "std"), k=("loss", "size")).reset_index()
            agg["s"] = agg["s"].fillna(0.0)
            lab = str(opt)
            if opt in laws:
                law = laws[opt]
                lab += ": " + ci_label(r"$\alpha_C$", law, "alpha")
                xs = xgrid(agg["C"], pad=1.5)
                ax.plot(xs, law.predict(xs), color=col, lw=1.1)
                lo, hi = law.band(xs)
                if np.isfinite(lo).all():
                    ax.fill_between(xs, lo, hi, color=col, alpha=0.18, lw=0)
            ax.errorbar(agg["C"], agg["m"], yerr=agg["s"], fmt="o", color=col, ms=4, capsize=2,
                        elinewidth=0.8, label=lab)
        loglog(ax)
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("loss at best learning rate")
        ax.set_title("Loss against compute per optimizer")
        if multipliers:
            txt = "\n".join(
                f"{m['x']} needs {fmt(m['multiplier'], 3)}× [{fmt(m['low'], 3)}, {fmt(m['high'], 3)}]"
                f" the compute of {m['y']}" for m in multipliers)
            ax.text(0.98, 0.98, txt, transform=ax.transAxes, fontsize=6.5, va="top", ha="right")
        ax.legend(loc="lower left")
    return fig


# --------------------------------------------------------------------------------------
# Model families (analysis/families.py)
# --------------------------------------------------------------------------------------
