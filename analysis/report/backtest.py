"""The report's "Does the law extrapolate?" section: each law of L(N, D) fitted on the cheaper
runs predicts the most expensive quarter (analysis/fits/backtest.py); a table of error and coverage
per law, a table per held-out run, and a figure of predicted against observed loss with the
95 % prediction intervals. Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from analysis.fits.backtest import run_backtest, runs_table, summary_table
from analysis.figures.style import PALETTE, new_figure, paper_style
from analysis.report.tables import to_markdown

MARKERS = {"chinchilla": "o", "shared": "s", "kaplan": "^", "datacon": "D"}


def figure(res: dict, c_label: str = "compute C (FLOPs)"):
    """(a) predicted against observed loss of the held-out runs with 95 % prediction
    intervals, one colour per law; (b) relative error against compute, the largest fitted
    compute marked."""
    laws = [n for n, r in res["laws"].items() if r.get("runs")]
    k = len(laws)
    with paper_style():
        fig, axes = new_figure(2, width=7.2, height=3.4)
        ax1, ax2 = axes[0]
        allv = []
        for j, name in enumerate(laws):
            rt = pd.DataFrame(res["laws"][name]["runs"])
            col = PALETTE[j % len(PALETTE)]
            r = res["laws"][name]
            lab = (f"{name}: mean |error| {r['mean_abs_rel_error'] * 100:.2f} %, "
                   f"{r['n_inside']}/{r['n']} inside")
            # a small offset in log x per law keeps overlapping intervals readable
            off = 1.0 + 0.004 * (j - (k - 1) / 2)
            ax1.errorbar(rt["observed"] * off, rt["predicted"],
                         yerr=[rt["predicted"] - rt["low"], rt["high"] - rt["predicted"]],
                         fmt=MARKERS.get(name, "o"), ms=3.5, color=col, mfc="white", mew=0.9,
                         elinewidth=0.8, capsize=1.5, label=lab)
            allv += list(rt["observed"]) + list(rt["predicted"])
            offc = 10 ** (0.02 * (j - (k - 1) / 2))
            rel_lo = (rt["low"] / rt["observed"] - 1) * 100
            rel_hi = (rt["high"] / rt["observed"] - 1) * 100
            rel = rt["rel_error"] * 100
            ax2.errorbar(rt["C"] * offc, rel, yerr=[rel - rel_lo, rel_hi - rel],
                         fmt=MARKERS.get(name, "o"), ms=3.5, color=col, mfc="white", mew=0.9,
                         elinewidth=0.8, capsize=1.5, label=name)
        if allv:  # the runs set the limits; a wide interval may run off the axes
            lo, hi = min(allv), max(allv)
            pad = max(0.25 * (hi - lo), 0.01 * hi)
            lo, hi = lo - pad, hi + pad
            ax1.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--", zorder=0, label="predicted = observed")
            ax1.set_xlim(lo, hi)
            ax1.set_ylim(lo, hi)
        ax1.set_xlabel("observed loss (held-out run)")
        ax1.set_ylabel("predicted loss (95% PI)")
        ax1.set_title("(a) Held-out runs: predicted vs observed", fontsize=9)
        h, lab = ax1.get_legend_handles_labels()
        fig.legend(h, lab, loc="outside lower center", ncol=2, fontsize=7)
        ax2.axhline(0, color="black", lw=0.8)
        ax2.axvline(res["C_max_fit"], color="0.5", lw=0.8, ls=":")
        ax2.text(res["C_max_fit"], 0.02, " largest fitted C", transform=ax2.get_xaxis_transform(),
                 fontsize=6.5, color="0.35", ha="left", va="bottom")
        ax2.set_xscale("log")
        ax2.set_xlabel(c_label)
        ax2.set_ylabel("predicted / observed - 1 (%)")
        ax2.set_title("(b) Relative error against compute", fontsize=9)
    return fig


def section(rep, rows: pd.DataFrame, *, n_boot: int, seed: int, boot: str, noise, c_label: str,
            holdout_top: float = 0.25) -> None:
    """Run the backtest on the report's scaling-law rows and add its section, table and
    figure to ``rep`` (analysis/report/writer.py's Report); a design that cannot be split is
    skipped with the reason."""
    title = "Does the law extrapolate?"
    if len(rows) < 7 or "C" not in rows or not np.isfinite(rows["C"].to_numpy(float)).all():
        rep.skip(title, f"{len(rows)} scaling-law rows with compute (need >= 7)")
        return
    sig = None if noise is None else np.asarray(noise.sigma, dtype=np.float64)
    try:
        res = run_backtest(rows, holdout_top=holdout_top, n_boot=n_boot, seed=seed, bootstrap=boot,
                           noise=sig)
    except ValueError as exc:
        rep.skip(title, str(exc))
        return
    rep.fits["backtest"] = json.loads(json.dumps(res, default=lambda o: None))
    fitted = {n: r for n, r in res["laws"].items() if "mean_abs_rel_error" in r}
    if not fitted:
        rep.skip(title, "no law could be fitted to the cheaper runs: "
                 + "; ".join(f"{n}: {r.get('error', r.get('note'))}" for n, r in res["laws"].items()))
        return
    how = (f"each law fitted to the {res['n_fit']} cheaper runs alone ({boot} bootstrap, {n_boot} "
           f"replicates), predicting the {res['n_held_out']} held-out ones; 95% prediction intervals "
           "= bootstrap + the law's misspecification from a backtest within the fitted runs")
    summ = summary_table(res)
    rep.table(summ, "backtest", rep.cap(f"Backtest: {res['rule']}; {how}"))
    rt = runs_table(res)
    show = pd.DataFrame({"law": rt["law"], "N": rt["N"], "D": rt["D"], "C": rt["C"],
                         "observed": rt["observed"], "predicted [95% PI]": [
                             f"{p:.4f} [{lo:.4f}, {hi:.4f}]" for p, lo, hi in
                             zip(rt["predicted"], rt["low"], rt["high"])],
                         "rel. error": [f"{v * 100:+.2f} %" for v in rt["rel_error"]],
                         "inside": rt["inside"].map({True: "yes", False: "no"})})
    rep.table(show, "backtest_runs", rep.cap(f"Backtest per held-out run: {res['rule']}"))
    rep.figure("backtest", f"Backtest: {res['rule']}; {how}. (a) predicted against observed loss "
               "with 95% prediction intervals (dashed: equality); (b) relative error against "
               "compute, the dotted line at the largest fitted compute", lambda: figure(res, c_label))
    best = min(fitted, key=lambda n: fitted[n]["mean_abs_rel_error"])
    b = fitted[best]
    cov = ", ".join(f"{n} {r['n_inside']}/{r['n']}" for n, r in fitted.items())
    rep.findings.append(
        f"Backtest ({res['rule']}): {best} extrapolates best, mean |relative error| "
        f"{b['mean_abs_rel_error'] * 100:.2f} % (largest {b['max_abs_rel_error'] * 100:.2f} %); "
        f"observed losses inside the 95% prediction intervals: {cov}.")
    lines = [f"## {title}\n", f"{res['rule'][0].upper() + res['rule'][1:]}; {how}. "
             f"{rep.convention}; eval set: {rep.eval_set}.\n", to_markdown(summ), ""]
    low = [n for n, r in fitted.items() if r["n"] >= 3 and r["coverage"] < 0.8]
    if low:
        lines.append(f"Coverage below 80 % for {', '.join(low)}: those laws' intervals are too "
                     "narrow beyond the data here; do not trust their predictions' intervals.\n")
    rep.sections.append("\n".join(lines) + "\n")
