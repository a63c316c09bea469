"""The report's optimizer comparison: loss against learning rate per optimizer and size, the
best learning rate and its scaling with N, the seed spread, and (with several optimizers)
each one's L(C) at its best learning rate with the compute multipliers between them.
Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd

from analysis.figures import optimizers as plots_optimizers
from analysis.optimizers import (EdgeOfGridWarning, best_lr, best_lr_runs, compute_laws,
                         compute_multiplier, lr_scaling, lr_sensitivity, seed_spread)
from analysis.report.writer import Report
from analysis.result import fmt, sig
from analysis.report.tables import value_ci


def section(rep: Report, df: pd.DataFrame, done: pd.DataFrame, *, n_boot: int, seed: int):
    """Where the table has several optimizers or a learning-rate grid (>= 3 lrs at some
    size); otherwise the report says why it is skipped."""
    if not {"optimizer", "lr"} <= set(df.columns) or len(done) == 0:
        rep.skip("optimizer comparison", "no optimizer / lr columns")
        return
    n_opt = done["optimizer"].nunique()
    lr_counts = done.groupby(["optimizer", done["N"].map(sig)])["lr"].nunique()
    has_grid = bool((lr_counts >= 3).any())
    if n_opt < 2 and not has_grid:
        rep.skip("optimizer comparison", f"{n_opt} optimizer and no learning-rate grid "
                 "(need >= 2 optimizers or >= 3 learning rates at some size)")
        return
    df = df[df["status"].isin(["done", "diverged"])]
    if n_opt >= 2:
        # compare optimizers on the (N, D) cells that several optimizers ran: runs of one
        # optimizer elsewhere (an IsoFLOP sweep in the same table, say) are not comparable
        # (a diverged run stopped early: its cell is the D it was planned to train)
        d_cell = df["D_planned"].fillna(df["D"]) if "D_planned" in df else df["D"]
        key = df["N"].map(lambda v: sig(v, 4)).astype(str) + "|" + d_cell.map(lambda v: sig(v, 4)).astype(str)
        per = df.assign(_k=key).groupby("_k")["optimizer"].nunique()
        shared = set(per[per >= 2].index)
        if shared:
            n_before = len(df)
            df = df[key.isin(shared)]
            if len(df) < n_before:
                lines_pre = [f"- compared on the {len(shared)} (N, D) cells run with several optimizers "
                             f"({len(df)} of {n_before} done/diverged runs)"]
            else:
                lines_pre = []
        else:
            lines_pre = ["- no (N, D) cell was run with several optimizers: the comparison mixes "
                         "different token budgets"]
    else:
        lines_pre = []
    sens = lr_sensitivity(df)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EdgeOfGridWarning)
        best = best_lr(sens)
    edge_msgs = [str(w.message) for w in caught if issubclass(w.category, EdgeOfGridWarning)]
    scal = lr_scaling(best)
    spread = seed_spread(sens)
    lines = ["## Optimizer comparison\n"] + lines_pre
    if has_grid:
        rep.figure("lr_sensitivity", "Final loss against learning rate per optimizer and size "
                   "(error bars: seed std; ×: diverged; ★: best, hollow when on the grid's edge).",
                   lambda: plots_optimizers.lr_sensitivity(sens, best))
        rep.figure("best_lr", "Best learning rate against N per optimizer with fitted "
                   "lr* = c N^γ (edge-of-grid points hollow, not fitted).",
                   lambda: plots_optimizers.best_lr(best, scal))
    bt = pd.DataFrame({
        "optimizer": best["optimizer"], "N": best["N"], "best lr (grid)": best["lr_best"],
        "best lr (refined)": best["lr_refined"],
        "loss ± seed std": [f"{m:.4f} ± {s:.4f}" if np.isfinite(m) else "–"
                            for m, s in zip(best["loss"], best["loss_std"])],
        "edge of grid": best["edge_side"].replace("", "no"),
    })
    rep.table(bt, "best_lr", "Best learning rate per optimizer and size")
    st = pd.DataFrame({"optimizer": scal["optimizer"], "sizes fitted": scal["n_sizes"],
                       "γ [95% CI]": [value_ci(g, lo, hi, 3) for g, lo, hi in
                                      zip(scal["gamma"], scal["gamma_low"], scal["gamma_high"])]})
    rep.table(st, "lr_scaling", "Best learning rate against N: lr* = c N^γ")
    for r in scal.itertuples():
        if np.isfinite(r.gamma):
            lines.append(f"- {r.optimizer}: best learning rate scales as N^γ with γ = "
                         f"{value_ci(r.gamma, r.gamma_low, r.gamma_high, 3)} ({r.n_sizes} sizes).")
    for m in edge_msgs:
        lines.append(f"- warning: {m}")
        rep.warnings.append(m)
    if np.isfinite(spread):
        lines.append(f"- seed-to-seed spread (median std of the final loss over cells with several "
                     f"seeds): {spread:.4f}; loss differences below about twice this are not resolved.")
    laws = compute_laws(df, best, n_boot=n_boot, seed=seed) if n_opt >= 2 else {}
    mults = []
    if laws:
        runs = best_lr_runs(df, best)
        lt = []
        for opt, law in laws.items():
            rep.add_params(f"{opt}: L(C) at best lr", law, ["E", "x_c", "alpha"])
            lt.append({"optimizer": opt, "sizes": law.info["n_sizes"],
                       "form": "E + (C_c/C)^α" if law.irreducible else "(C_c/C)^α",
                       "α [95% CI]": value_ci(law["alpha"], *law.interval("alpha"), 3),
                       "E [95% CI]": value_ci(law["E"], *law.interval("E"), 3) if law.irreducible else "–"})
            lines.append(f"- {opt}: loss at its best learning rate falls as C^-α with α = "
                         f"{value_ci(law['alpha'], *law.interval('alpha'), 3)}.")
        rep.table(pd.DataFrame(lt), "optimizer_laws", "Loss against compute per optimizer at its best learning rate",
                  fit=list(laws.values()))
        # reference: the optimizer with the lowest predicted loss at the largest compute
        cmax = float(runs["C"].max())
        ranked = sorted(laws, key=lambda o: float(laws[o].predict(cmax)))
        ref = ranked[0]
        for o in ranked[1:]:
            m = compute_multiplier(laws, o, ref, at_compute=cmax, seed=seed)
            mults.append(m)
            lines.append(f"- to reach the loss {ref} reaches at C = {fmt(cmax, 3)} FLOPs "
                         f"({m['target_loss']:.4f}), {o} needs {fmt(m['multiplier'], 3)}× the compute "
                         f"(95% CI {fmt(m['low'], 3)}–{fmt(m['high'], 3)}).")
        rep.fits["compute_multipliers"] = mults
        if mults:
            mt = pd.DataFrame({"optimizer": [m["x"] for m in mults], "reference": [m["y"] for m in mults],
                               "at C": [m["at_compute"] for m in mults],
                               "compute multiplier [95% CI]": [value_ci(m["multiplier"], m["low"], m["high"], 3)
                                                                for m in mults]})
            rep.table(mt, "compute_multipliers", "Compute needed relative to the best optimizer, "
                      "to reach its loss at the largest compute in the sweep")
        rep.figure("optimizer_compute", "Loss against compute per optimizer at its best learning "
                   "rate (error bars: seed std) with fitted L(C) and 95% bands.",
                   lambda: plots_optimizers.optimizer_compute(runs, laws, mults), fit=list(laws.values()))
        rep.findings.append(f"Optimizers: {ref} reaches the lowest loss at the largest compute; "
                            + "; ".join(f"{m['x']} needs {fmt(m['multiplier'], 3)}× "
                                        f"[{fmt(m['low'], 3)}, {fmt(m['high'], 3)}] its compute"
                                        for m in mults) + ".")
        far = [m["x"] for m in mults if m["multiplier"] > 10]
        if mults:
            note = ("- A multiplier above 1 reads the slower optimizer's fitted law beyond the "
                    "largest compute run in the sweep, so it is an extrapolation")
            if far:
                note += (f"; for {', '.join(far)} (over 10×) by more than a decade: read those "
                         "as 'far behind at this scale', not as a precise figure")
            lines.append(note + ".")
    elif n_opt >= 2:
        rep.skip("compute laws per optimizer", "fewer than 2 sizes at the best learning rate")
    rep.fits["best_lr"] = json.loads(best.to_json(orient="records"))
    rep.fits["lr_scaling"] = json.loads(scal.to_json(orient="records"))
    rep.sections.append("\n".join(lines) + "\n")
