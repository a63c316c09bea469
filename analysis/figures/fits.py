"""Figures of the scaling-law fits (learning curves and frontier, L(N), L(D), L(C), IsoFLOP
profiles, the optimal allocation, Approach 3 residuals); the optimizer and model-family
figures are in plots_optimizers.py and plots_families.py. Every function returns a matplotlib Figure in the package's paper style
(analysis/figures/style.py); :func:`analysis.figures.style.save` writes it as PNG and PDF."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import LogLocator, NullFormatter

from analysis.figures.axes import (ci_label, log_ticks, loglog, n_axis_label, plain_formatter,
                        size_colorbar, xgrid)
from analysis.figures.style import DATA, FIT, FRONTIER, PALETTE, SEQ_CMAP, new_figure, paper_style, size_norm


# --------------------------------------------------------------------------------------
# Learning curves and the frontier
# --------------------------------------------------------------------------------------


def learning_curves(curves: pd.DataFrame, sizes: dict, frontier=None,
                    c_label: str = "training FLOPs (6 N tokens)", trunks: pd.DataFrame | None = None,
                    trunk_sizes: dict | None = None):
    """Loss against tokens and against FLOPs (log-log), one line per run coloured by N;
    the compute-efficient frontier and its power-law fit on the FLOPs panel.

    ``trunks``: curves of cooldown trunks (constant lr), drawn once each, dashed, in their
    size's colour; ``curves`` then holds each branch from its branch step on
    (analysis.branches.split_curves), so a trunk's steps are not drawn once per branch."""
    trunk_sizes = trunk_sizes or {}
    with paper_style():
        fig, axes = new_figure(2, width=7.2, height=2.9)
        ax_t, ax_c = axes[0]
        norm = size_norm(list(sizes.values()) + list(trunk_sizes.values()))
        cmap = sns.color_palette(SEQ_CMAP, as_cmap=True)
        if trunks is not None and len(trunks):
            first = True
            for pid, c in trunks.groupby("point_id", sort=False):
                N = trunk_sizes.get(pid, math.nan)
                col = cmap(norm(N)) if math.isfinite(N) else DATA
                lab = "trunk (constant lr)" if first else None
                first = False
                if "tokens" in c:
                    ax_t.plot(c["tokens"], c["loss"], color=col, lw=0.9, ls="--", alpha=0.9, label=lab)
                ax_c.plot(c["flops"], c["loss"], color=col, lw=0.9, ls="--", alpha=0.9)
            ax_t.legend(loc="upper right", frameon=True, facecolor="white", edgecolor="none", framealpha=0.9)
        for pid, c in curves.groupby("point_id", sort=False):
            N = sizes.get(pid, math.nan)
            col = cmap(norm(N)) if math.isfinite(N) else DATA
            if "tokens" in c:
                ax_t.plot(c["tokens"], c["loss"], color=col, lw=0.8, alpha=0.85)
            ax_c.plot(c["flops"], c["loss"], color=col, lw=0.8, alpha=0.85)
        if frontier is not None:
            fr = frontier.frontier
            ax_c.plot(fr["C"], fr["loss"], color=FRONTIER, lw=2.0, label="frontier (lower envelope)")
            xs = np.geomspace(fr["C"].min(), fr["C"].max(), 200)
            law = frontier.law
            form = r"$E + (C_c/C)^{\alpha}$" if law.irreducible else r"$(C_c/C)^{\alpha}$"
            lab = f"fit {form}\n" + ci_label(r"$\alpha$", law, "alpha")
            if law.irreducible:
                lab += "\n" + ci_label("E", law, "E")
            ax_c.plot(xs, law.predict(xs), color=FIT, lw=1.6, ls="--", label=lab)
            lo, hi = law.band(xs)
            if np.isfinite(lo).all():
                ax_c.fill_between(xs, lo, hi, color=FIT, alpha=0.25, lw=0)
            ax_c.legend(loc="upper right", frameon=True, facecolor="white", edgecolor="none", framealpha=0.9)
        for ax in (ax_t, ax_c):
            loglog(ax)
            ax.set_ylabel("loss")
        ax_t.set_xlabel("tokens seen")
        ax_c.set_xlabel(c_label)
        ax_t.set_title("Learning curves")
        ax_c.set_title("Against compute")
        size_colorbar(fig, ax_c, norm)
    return fig


# --------------------------------------------------------------------------------------
# L(N), L(D)
# --------------------------------------------------------------------------------------


def loss_vs_size(done: pd.DataFrame, fits: dict, envelopes: dict, labels: dict | None = None):
    """L(N) and L(D): all runs (grey), the per-value best runs used for the fit (black),
    and the fitted power laws with their exponents in the legend.

    ``fits``/``envelopes``: keyed "N", "D" and/or "C" -> PowerLawFit / DataFrame(x, loss);
    ``labels``: axis labels that say the table's convention (e.g. which N, which C)."""
    keys = [k for k in ("N", "D", "C") if k in fits]
    with paper_style():
        fig, axes = new_figure(len(keys), width=min(3.5 * len(keys), 10.5), height=3.0)
        for ax, k in zip(axes[0], keys):
            fit, env = fits[k], envelopes[k]
            ax.scatter(done[k], done["loss"], s=8, color=DATA, alpha=0.6, lw=0, label="all runs")
            ax.scatter(env["x"], env["loss"], s=14, color="black", lw=0, label="Pareto front (fitted)")
            xs = xgrid(env["x"], pad=1.3)
            sym = rf"$\alpha_{k}$"
            lab = ci_label(sym, fit, "alpha")
            if fit.irreducible:
                lab += "\n" + ci_label("E", fit, "E")
            ax.plot(xs, fit.predict(xs), color=FIT, lw=1.6, label=lab)
            lo, hi = fit.band(xs)
            if np.isfinite(lo).all():
                ax.fill_between(xs, lo, hi, color=FIT, alpha=0.25, lw=0)
            # the axes follow the data, not a bootstrap band that may blow up off the data
            lv = done["loss"].to_numpy(float)
            lv = lv[np.isfinite(lv) & (lv > 0)]
            ax.set_ylim(lv.min() / 1.08, lv.max() * 1.12)
            loglog(ax)
            ax.set_xlabel({"N": "N (parameters)", "D": "D (tokens)", "C": "C (FLOPs)",
                           **(labels or {})}[k])
            ax.set_ylabel("loss")
            ax.set_title(f"L({k})")
            ax.legend(loc="best", frameon=True, facecolor="white", edgecolor="none", framealpha=0.85)
    return fig


# --------------------------------------------------------------------------------------
# IsoFLOP and optimal allocation
# --------------------------------------------------------------------------------------


def isoflop(rows: pd.DataFrame, fit):
    """Loss against N for each budget, the fitted parabolas (in log N) and their minima.

    ``rows``: columns budget, N, loss."""
    budgets = fit.budgets
    with paper_style():
        fig, axes = new_figure(1, width=4.6, height=3.1)
        ax = axes[0][0]
        norm = size_norm(budgets["C"])
        cmap = sns.color_palette(SEQ_CMAP, as_cmap=True)
        for b in budgets.itertuples():
            col = cmap(norm(b.C))
            sub = rows[np.isclose(rows["budget"], b.C, rtol=1e-9)]
            ax.scatter(sub["N"], sub["loss"], s=12, color=col, lw=0, zorder=3)
            if not getattr(b, "used", False) and not math.isfinite(getattr(b, "N_opt", math.nan)):
                if len(sub):  # no curve to draw: ring its best run, the edge it sits on
                    best = sub.loc[sub["loss"].idxmin()]
                    ax.scatter([best["N"]], [best["loss"]], s=70, facecolors="none", edgecolors=col,
                               lw=1.0, zorder=4, label="minimum not bracketed (budget excluded)")
                continue
            from analysis.fits.isoflop_minima import profile_curve

            prof = getattr(fit, "profiles", {}).get(float(b.C))
            if prof is not None and len(prof[0]) >= 3:
                xs, ys = profile_curve(prof[0], prof[1], fit.info.get("estimator", "parabola"))
            else:
                u = np.log10(sub["N"].to_numpy())
                xs = np.linspace(u.min() - 0.1, u.max() + 0.1, 100)
                ys = np.polyval(np.polyfit(u, sub["loss"].to_numpy(), 2), xs)
            ax.plot(10 ** xs, ys, color=col, lw=1.1)
            if b.used:
                lo, hi = getattr(b, "N_opt_low", math.nan), getattr(b, "N_opt_high", math.nan)
                xerr = None
                if math.isfinite(lo):
                    xerr = [[max(b.N_opt - lo, 0)], [max(hi - b.N_opt, 0)]]
                ax.errorbar([b.N_opt], [b.loss_opt], xerr=xerr, fmt="*", ms=9, color=col,
                            mec="black", mew=0.5, ecolor="black", elinewidth=0.8, capsize=2,
                            zorder=4)
            else:  # the parabola's vertex lies outside the sizes run: not used in the fit
                best = sub.loc[sub["loss"].idxmin()]
                ax.scatter([best["N"]], [best["loss"]], s=70, facecolors="none", edgecolors=col,
                           lw=1.0, zorder=4, label="minimum not bracketed (budget excluded)")
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # one entry, however many budgets are excluded
            keep = dict(zip(labels, handles))
            ax.legend(keep.values(), keep.keys(), loc="upper center", bbox_to_anchor=(0.5, -0.2),
                      fontsize=7, frameon=False)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(plain_formatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(n_axis_label(rows))
        ax.set_ylabel("loss")
        est = fit.info.get("estimator", "parabola")
        ax.set_title(f"IsoFLOP profiles (★ {est} minimum, 95% CI)")
        size_colorbar(fig, ax, norm, label="compute budget C (FLOPs)")
    return fig


def optimal_allocation(*, iso=None, a1=None, a3=None, C_range=None, runs: pd.DataFrame | None = None,
                       c_label: str = "compute C (FLOPs)"):
    """N_opt(C) and D_opt(C): per-budget optima (Approach 2) and the frontier's (Approach 1)
    as points, each approach's fitted power law with its 95% band, exponents in the legend;
    ``runs`` (columns C, N, D) in grey for where the data lie."""
    with paper_style():
        fig, axes = new_figure(2, width=7.2, height=2.9)
        Cs = []
        if iso is not None:
            Cs += list(iso.budgets["C"])
        if a1 is not None:
            Cs += list(a1.points["C"])
        if C_range is not None:
            Cs += list(C_range)
        xs = xgrid(Cs, pad=2.0)
        for j, (ax, which) in enumerate(zip(axes[0], ("N", "D"))):
            key = "a" if which == "N" else "b"
            if runs is not None and len(runs):
                ax.scatter(runs["C"], runs[which], s=5, color=DATA, alpha=0.5, lw=0, label="runs")
            if a1 is not None:
                pts = a1.points
                ax.scatter(pts["C"], pts[f"{which}_opt"], s=6, color=PALETTE[2], alpha=0.5, lw=0,
                           label="frontier (Approach 1)")
                yv = a1.predict(xs)[j]
                lo, hi = a1.band(xs, which)
                ax.plot(xs, yv, color=PALETTE[2], lw=1.3, label="Approach 1: " + ci_label(key, a1, key))
                if np.isfinite(lo).all():
                    ax.fill_between(xs, lo, hi, color=PALETTE[2], alpha=0.2, lw=0)
            if iso is not None:
                b = iso.budgets[iso.budgets["used"]]
                col = PALETTE[0]
                if which == "N":
                    yerr = None
                    if "N_opt_low" in b:
                        yerr = [np.maximum(b["N_opt"] - b["N_opt_low"], 0),
                                np.maximum(b["N_opt_high"] - b["N_opt"], 0)]
                    ax.errorbar(b["C"], b["N_opt"], yerr=yerr, fmt="o", color=col, ms=4,
                                capsize=2, elinewidth=0.8, label="IsoFLOP minima")
                else:
                    yerr = None
                    if "N_opt_low" in b:
                        dlo = b["C"] / (6 * b["N_opt_high"])
                        dhi = b["C"] / (6 * b["N_opt_low"])
                        yerr = [np.maximum(b["D_opt"] - dlo, 0), np.maximum(dhi - b["D_opt"], 0)]
                    ax.errorbar(b["C"], b["D_opt"], yerr=yerr, fmt="o", color=col, ms=4,
                                capsize=2, elinewidth=0.8, label="IsoFLOP minima")
                yv = iso.predict(xs)[j]
                lo, hi = iso.band(xs, which)
                ax.plot(xs, yv, color=col, lw=1.3, label="Approach 2: " + ci_label(key, iso, key))
                if np.isfinite(lo).all():
                    ax.fill_between(xs, lo, hi, color=col, alpha=0.2, lw=0)
            if a3 is not None:
                tab = a3.optimal_table(xs)
                col = PALETTE[1]
                ax.plot(xs, tab[f"{which}_opt"], color=col, lw=1.3, ls="--",
                        label="Approach 3: " + ci_label(key, a3, key)
                        + ("\n  (conditional: E not identified)" if getattr(a3, "unidentified", None) else ""))
                if f"{which}_opt_low" in tab:
                    ax.fill_between(xs, tab[f"{which}_opt_low"], tab[f"{which}_opt_high"], color=col,
                                    alpha=0.2, lw=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(c_label)
            ax.set_ylabel("N_opt (parameters)" if which == "N" else "D_opt (tokens)")
            ax.set_title("Compute-optimal N" if which == "N" else "Compute-optimal D")
            ax.legend(loc="upper left", fontsize=6.8)
    return fig


def residuals(fit, N, D, L, *, C=None, c_label: str = "compute C = 6 N D (FLOPs)",
              title: str = "Approach 3"):
    """Observed against fitted loss, and the log residual against compute (``C``, default
    6 N D), coloured by N."""
    N = np.asarray(N, float)
    D = np.asarray(D, float)
    L = np.asarray(L, float)
    pred = fit.predict(N, D)
    r = np.log(L) - np.log(pred)
    with paper_style():
        fig, axes = new_figure(2, width=7.2, height=2.9)
        ax1, ax2 = axes[0]
        norm = size_norm(N)
        ax1.scatter(pred, L, c=N, norm=norm, cmap=SEQ_CMAP, s=10, lw=0)
        lim = [min(pred.min(), L.min()) * 0.98, max(pred.max(), L.max()) * 1.02]
        ax1.plot(lim, lim, color="black", lw=0.8, ls="--", label="y = x")
        loglog(ax1, plain_x=True)
        ax1.set_xlim(lim)
        ax1.set_ylim(lim)
        ax1.set_xlabel("fitted loss")
        ax1.set_ylabel("observed loss")
        ax1.set_title(f"{title}: observed vs fitted")
        ax1.legend(loc="upper left")
        ax2.scatter(6 * N * D if C is None else np.asarray(C, float), r, c=N, norm=norm,
                    cmap=SEQ_CMAP, s=10, lw=0)
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xscale("log")
        log_ticks(ax2.xaxis)
        ax2.set_xlabel(c_label)
        ax2.set_ylabel("log(observed / fitted)")
        mad = float(np.median(np.abs(r)))
        ax2.set_title(f"Residuals (median |r| = {mad:.4f})")
        size_colorbar(fig, ax2, norm)
    return fig


# --------------------------------------------------------------------------------------
# Optimizer comparison
# --------------------------------------------------------------------------------------


