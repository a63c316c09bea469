"""Figures of the model-family section (analysis/report/families.py): L(N) per family with the
n-gram reference, and the loss by token position. Each returns a matplotlib Figure in the
paper style (analysis/figures/style.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from analysis.figures.axes import ci_label, log_ticks, loglog, size_colorbar, xgrid
from analysis.figures.style import PALETTE, SEQ_CMAP, new_figure, paper_style, size_norm


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
            xs = xgrid(rows["N"], pad=1.3)
            lab = ci_label(rf"{arch}: $\alpha_N$", fit, "alpha")
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
        loglog(ax)
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
        log_ticks(ax.xaxis)
        ax.set_xlabel("tokens of context (position of the target in the window)")
        ax.set_ylabel("eval loss (nats/token)")
        ax.set_title("Loss by position")
        ax.legend(handles=handles, loc="upper right", fontsize="small", frameon=True,
                  facecolor="white", edgecolor="none", framealpha=0.85)
        if series:
            size_colorbar(fig, ax, norm, label=n_label)
    return fig
