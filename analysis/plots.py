"""Figures. Every function returns a matplotlib Figure in the package's paper style
(analysis/style.py); :func:`analysis.style.save` writes it as PNG and PDF."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

from .result import fmt
from .style import DATA, FIT, FRONTIER, PALETTE, SEQ_CMAP, new_figure, paper_style, size_norm


def _ci_label(name: str, fit, key: str, digits: int = 3) -> str:
    v = fit.params[key]
    if key in getattr(fit, "unidentified", {}):
        b = fit.bounds.get(key)
        return f"{name} not identified" + (f" (≤ {b[1]:.{digits}g})" if b else "")
    lo, hi = fit.interval(key)
    if math.isfinite(lo):
        return f"{name} = {v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{name} = {v:.{digits}f}"


def _loglog(ax, minor_y: bool = True, plain_x: bool = False):
    """Log-log axes; a loss axis (spanning well under a decade) gets plain-number ticks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    pairs = ([(ax.yaxis, ax.get_ylim())] if minor_y else []) + ([(ax.xaxis, ax.get_xlim())] if plain_x else [])
    for axis, (lo, hi) in pairs:
        if lo > 0 and hi / lo < 10:
            axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        else:
            axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(_plain_formatter())
        axis.set_minor_formatter(NullFormatter())
    if not plain_x:
        _log_ticks(ax.xaxis)


def _log_ticks(axis) -> None:
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


def _plain_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:g}")


def _size_colorbar(fig, ax, norm, label="N (parameters)"):
    sm = ScalarMappable(norm=norm, cmap=SEQ_CMAP)
    cb = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.05, aspect=30)
    cb.set_label(label)
    return cb


def _xgrid(values, pad: float = 1.5, n: int = 200):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return np.geomspace(v.min() / pad, v.max() * pad, n)


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
            lab = f"fit {form}\n" + _ci_label(r"$\alpha$", law, "alpha")
            if law.irreducible:
                lab += "\n" + _ci_label("E", law, "E")
            ax_c.plot(xs, law.predict(xs), color=FIT, lw=1.6, ls="--", label=lab)
            lo, hi = law.band(xs)
            if np.isfinite(lo).all():
                ax_c.fill_between(xs, lo, hi, color=FIT, alpha=0.25, lw=0)
            ax_c.legend(loc="upper right", frameon=True, facecolor="white", edgecolor="none", framealpha=0.9)
        for ax in (ax_t, ax_c):
            _loglog(ax)
            ax.set_ylabel("loss")
        ax_t.set_xlabel("tokens seen")
        ax_c.set_xlabel(c_label)
        ax_t.set_title("Learning curves")
        ax_c.set_title("Against compute")
        _size_colorbar(fig, ax_c, norm)
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
            xs = _xgrid(env["x"], pad=1.3)
            sym = rf"$\alpha_{k}$"
            lab = _ci_label(sym, fit, "alpha")
            if fit.irreducible:
                lab += "\n" + _ci_label("E", fit, "E")
            ax.plot(xs, fit.predict(xs), color=FIT, lw=1.6, label=lab)
            lo, hi = fit.band(xs)
            if np.isfinite(lo).all():
                ax.fill_between(xs, lo, hi, color=FIT, alpha=0.25, lw=0)
            # the axes follow the data, not a bootstrap band that may blow up off the data
            lv = done["loss"].to_numpy(float)
            lv = lv[np.isfinite(lv) & (lv > 0)]
            ax.set_ylim(lv.min() / 1.08, lv.max() * 1.12)
            _loglog(ax)
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
            from .isoflop import profile_curve

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
        ax.xaxis.set_major_formatter(_plain_formatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(n_axis_label(rows))
        ax.set_ylabel("loss")
        est = fit.info.get("estimator", "parabola")
        ax.set_title(f"IsoFLOP profiles (★ {est} minimum, 95% CI)")
        _size_colorbar(fig, ax, norm, label="compute budget C (FLOPs)")
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
        xs = _xgrid(Cs, pad=2.0)
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
                ax.plot(xs, yv, color=PALETTE[2], lw=1.3, label="Approach 1: " + _ci_label(key, a1, key))
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
                ax.plot(xs, yv, color=col, lw=1.3, label="Approach 2: " + _ci_label(key, iso, key))
                if np.isfinite(lo).all():
                    ax.fill_between(xs, lo, hi, color=col, alpha=0.2, lw=0)
            if a3 is not None:
                tab = a3.optimal_table(xs)
                col = PALETTE[1]
                ax.plot(xs, tab[f"{which}_opt"], color=col, lw=1.3, ls="--",
                        label="Approach 3: " + _ci_label(key, a3, key)
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
        _loglog(ax1, plain_x=True)
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
        _log_ticks(ax2.xaxis)
        ax2.set_xlabel(c_label)
        ax2.set_ylabel("log(observed / fitted)")
        mad = float(np.median(np.abs(r)))
        ax2.set_title(f"Residuals (median |r| = {mad:.4f})")
        _size_colorbar(fig, ax2, norm)
    return fig


# --------------------------------------------------------------------------------------
# Optimizer comparison
# --------------------------------------------------------------------------------------


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
        _size_colorbar(fig, axes[0][-1], norm)
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
                xs = _xgrid(g["N"], pad=1.3)
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
                lab += ": " + _ci_label(r"$\alpha_C$", law, "alpha")
                xs = _xgrid(agg["C"], pad=1.5)
                ax.plot(xs, law.predict(xs), color=col, lw=1.1)
                lo, hi = law.band(xs)
                if np.isfinite(lo).all():
                    ax.fill_between(xs, lo, hi, color=col, alpha=0.18, lw=0)
            ax.errorbar(agg["C"], agg["m"], yerr=agg["s"], fmt="o", color=col, ms=4, capsize=2,
                        elinewidth=0.8, label=lab)
        _loglog(ax)
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

_FAMILY_STYLE = ("-", "--", "-.", ":")


def families_loss_vs_n(rows_by: dict, fits: dict, ngrams: pd.DataFrame | None = None,
                       n_label: str = "N (parameters)"):
    """L(N) of each family at its fixed D: runs with their eval stderr, the fitted power law
    with its 95% band and exponent; each n-gram a horizontal line (± its stderr)."""
    with paper_style():
        fig, axes = new_figure(1, width=4.6, height=4.4)
        ax = axes[0, 0]
        all_loss = []
        for i, (arch, rows) in enumerate(rows_by.items()):
            color = PALETTE[i % len(PALETTE)]
            se = rows["eval_loss_stderr"].to_numpy(float) if "eval_loss_stderr" in rows else None
            ax.errorbar(rows["N"], rows["loss"], yerr=se, fmt="o", ms=4, color=color, lw=1,
                        capsize=2, label=f"{arch} runs (D = {rows['D'].iloc[0]:.2g} tokens)")
            all_loss.extend(rows["loss"].to_numpy(float))
            fit = fits.get(arch)
            if fit is None:
                continue
            xs = _xgrid(rows["N"], pad=1.3)
            lab = _ci_label(rf"{arch}: $\alpha_N$", fit, "alpha")
            ax.plot(xs, fit.predict(xs), color=color, lw=1.4, label=lab)
            lo, hi = fit.band(xs)
            if np.isfinite(lo).all():
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)
        if ngrams is not None:
            for j, r in enumerate(ngrams.itertuples()):
                ls = _FAMILY_STYLE[1 + j % 3]
                ax.axhline(r.eval_loss, color="black", ls=ls, lw=1.1,
                           label=f"{int(r.order)}-gram KN: {r.eval_loss:.3f} ± {r.eval_loss_stderr:.3f}")
                ax.axhspan(r.eval_loss - r.eval_loss_stderr, r.eval_loss + r.eval_loss_stderr,
                           color="black", alpha=0.08, lw=0)
                all_loss.append(r.eval_loss)
        lv = np.asarray(all_loss, float)
        lv = lv[np.isfinite(lv) & (lv > 0)]
        if lv.size:
            ax.set_ylim(lv.min() / 1.08, lv.max() * 1.12)
        _loglog(ax)
        ax.set_xlabel(n_label)
        ax.set_ylabel("eval loss (nats/token)")
        ax.set_title("L(N) by model family")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, fontsize="small",
                  frameon=False)
    return fig


def loss_by_position(series: list[tuple[str, float, np.ndarray]],
                     ngrams: pd.DataFrame | None = None, n_label: str = "N (parameters)"):
    """Mean eval loss at each token position of the window (log x: position 1..T), one line
    per (family, N): colour by N, line style by family; n-grams in black (Kaplan et al.
    2020, Fig. 7 right)."""
    from matplotlib.lines import Line2D

    with paper_style():
        fig, axes = new_figure(1, width=4.8, height=3.3)
        ax = axes[0, 0]
        norm = size_norm([n for _, n, _ in series])
        cmap = sns.color_palette(SEQ_CMAP, as_cmap=True)
        families = list(dict.fromkeys(a for a, _, _ in series))
        for arch, n, losses in series:
            ls = _FAMILY_STYLE[families.index(arch) % len(_FAMILY_STYLE)]
            t = np.arange(1, len(losses) + 1)
            ax.plot(t, losses, color=cmap(norm(n)), ls=ls, lw=1.2)
        handles = [Line2D([], [], color="0.3", ls=_FAMILY_STYLE[i % len(_FAMILY_STYLE)], label=a)
                   for i, a in enumerate(families)]
        if ngrams is not None:
            for r in ngrams.itertuples():
                v = r.eval_loss_by_position
                if isinstance(v, (list, np.ndarray)) and len(v):
                    ax.plot(np.arange(1, len(v) + 1), v, color="black", ls=":", lw=1.2)
                    handles.append(Line2D([], [], color="black", ls=":",
                                          label=f"{int(r.order)}-gram KN"))
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
        ax.set_xlabel("tokens of context (position of the target in the window)")
        ax.set_ylabel("eval loss (nats/token)")
        ax.set_title("Loss by position")
        ax.legend(handles=handles, loc="upper right", fontsize="small", frameon=True,
                  facecolor="white", edgecolor="none", framealpha=0.85)
        if series:
            _size_colorbar(fig, ax, norm, label=n_label)
    return fig
