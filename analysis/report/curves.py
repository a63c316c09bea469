"""The report's learning-curve section: the compute-efficient frontier L(C), Approach 1 (the
sizes on the frontier) and the learning-curve figure; a cooldown design (trunks and
branches, analysis/branches.py) draws its curves but fits neither. Called once from
analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis import families as fam
from analysis.figures import fits as plots
from analysis.branches import fit_curves, split_curves
from analysis.fitrows import reference_optimizer
from analysis.fits.frontier import fit_approach1, fit_frontier
from analysis.load import load_curves
from analysis.report.writer import Report, c_label
from analysis.report.tables import value_ci


class _Skipped(Exception):
    """A fit the design cannot support; the report already says why."""


def section(rep: Report, df: pd.DataFrame, done: pd.DataFrame, source: Path, roles,
            trunk_table: pd.DataFrame, n_trunks: int, *, n_boot: int, seed: int, pl_loss: str):
    """Frontier and Approach 1 from the curves of >= 2 done runs; return (frontier, a1),
    each None when not made."""
    frontier = a1 = None
    curves = None
    trunk_rows = trunk_table
    try:
        with_trunks = df
        if len(trunk_rows):
            with_trunks = pd.concat([df, trunk_rows], ignore_index=True)
            with_trunks.attrs = dict(df.attrs)
        curves = load_curves(source, results=with_trunks)
    except Exception as exc:
        rep.skip("learning curves", f"could not read: {exc}")
    if curves is None:
        if not any(w == "learning curves" for w, _ in rep.skipped):
            rep.skip("frontier, Approach 1, learning-curve figure", "no curves.parquet / curves.csv")
    elif len(curves):
        family = fam.reference_family(done)
        curves, trunk_curves = split_curves(curves, roles)
        if "point_id" in done:
            # the frontier is an envelope: every done run of the reference optimizer may enter
            ref = reference_optimizer(done)
            pick = (done["optimizer"] == ref) if ref is not None else pd.Series(True, index=done.index)
            if family is not None:  # one model family's curves (as the scaling-law rows)
                pick &= fam.arch_series(done) == family
            ids = done.loc[pick, "point_id"]
            curves = curves[curves["point_id"].isin(set(ids))]
        sizes = dict(zip(done["point_id"], done["N"])) if "point_id" in done else {}
        if curves["point_id"].nunique() >= 2 and n_trunks:
            rep.skip("frontier and Approach 1",
                     "a cooldown design: each branch's own curve begins at its trunk's step and "
                     "the trunks run at a constant learning rate, so no curve here traces the "
                     "lowest loss reachable at each compute; Approaches 2 and 3 use the branches' "
                     "final losses")
        if curves["point_id"].nunique() >= 2:
            try:
                if n_trunks:
                    raise _Skipped
                frontier = fit_frontier(fit_curves(curves, roles), sizes=sizes, n_boot=n_boot, seed=seed, loss_fn=pl_loss)
                rep.add_params("Frontier L(C) = E + (C_c/C)^α", frontier.law, ["E", "x_c", "alpha"])
                rep.findings.append(
                    f"Compute-efficient frontier of the learning curves ({frontier.info['n_runs']} runs): "
                    f"L(C) = E + (C_c/C)^α with α = {value_ci(frontier.law['alpha'], *frontier.law.interval('alpha'), 3)}, "
                    f"E = {value_ci(frontier.law['E'], *frontier.law.interval('E'), 3)}.")
            except _Skipped:
                pass
            except Exception as exc:
                rep.skip("frontier", f"{type(exc).__name__}: {exc}")
            try:
                if n_trunks:
                    raise _Skipped
                a1 = fit_approach1(fit_curves(curves, roles), sizes, n_boot=n_boot, seed=seed)
                rep.add_params("Approach 1 (frontier)", a1, ["a", "b", "k_N", "k_D"])
                rep.findings.append(
                    f"Approach 1 (sizes on the frontier): a = {value_ci(a1['a'], *a1.interval('a'), 3)}, "
                    f"b = {value_ci(a1['b'], *a1.interval('b'), 3)} "
                    f"({a1.info['n_sizes_on_frontier']} sizes attain the frontier).")
            except _Skipped:
                pass
            except Exception as exc:
                rep.skip("Approach 1", f"{type(exc).__name__}: {exc}")
            tsizes = {pid: n for pid, n in zip(trunk_rows["point_id"], trunk_rows["N"])} \
                if len(trunk_curves) else {}
            rep.figure("learning_curves", "Learning curves against tokens and FLOPs (log-log), "
                       "coloured by N" + (f", {family} runs only" if family else "")
                       + (", with the compute-efficient frontier and its power-law fit "
                          "(95% band, bootstrap over runs)" if frontier is not None else "")
                       + ("; cooldown trunks (constant lr) dashed, drawn once, each branch from "
                          "its branch step on; trunks are not fitted" if len(trunk_curves) else "")
                       + ".",
                       lambda: plots.learning_curves(
                           curves, sizes, frontier,
                           c_label=c_label(df) if df.attrs.get("accounting") else "training FLOPs (6 N tokens)",
                           trunks=trunk_curves, trunk_sizes=tsizes),
                       fit=frontier)
        else:
            rep.skip("frontier", "curves of fewer than 2 done runs")
    return frontier, a1
