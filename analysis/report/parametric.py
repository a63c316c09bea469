"""The report's parametric laws of L(N, D): Chinchilla's Approach 3 (with its residual figure
and, where the data do not identify a parameter, the reduced model) and Kaplan et al.'s
L(N, D). Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import pandas as pd

from analysis.figures import fits as plots
from analysis.fits.chinchilla import fit_approach3, fit_kaplan
from analysis.report.writer import Report, boot_text, c_label, param_text
from analysis.result import fmt, sig
from analysis.report.tables import value_ci


def section(rep: Report, df: pd.DataFrame, rows: pd.DataFrame, *, n_boot: int, seed: int,
            loss_fn: str, boot: str, noise, measured: bool):
    """Approach 3 and Kaplan's L(N, D) where the rows hold >= 6 (N, D) cells with >= 3
    distinct N and D; return the Approach 3 fit (None when not made)."""
    conv = rep.convention
    a3 = None
    if len(rows):
        nN, nD = rows["N"].map(sig).nunique(), rows["D"].map(sig).nunique()
        if len(rows) >= 6 and nN >= 3 and nD >= 3:
            try:
                a3 = fit_approach3(rows["N"], rows["D"], rows["loss"], n_boot=n_boot, seed=seed,
                                   loss_fn=loss_fn, bootstrap=boot,
                                   noise=noise if measured else None, C=rows["C"])
                rep.add_params("Approach 3: E + A/N^α + B/D^β", a3,
                               ["E", "A", "B", "alpha", "beta", "a", "b"]
                               + [k for k in ("a_C", "b_C", "sigma") if k in a3.params])
                p = a3.params
                rep.findings.append(
                    f"Approach 3: L(N, D) = {param_text(a3, 'E')} + {fmt(p['A'], 4)}/N^{p['alpha']:.3f} + "
                    f"{fmt(p['B'], 4)}/D^{p['beta']:.3f}; compute-optimal N ∝ C^a "
                    f"{'(conditional on the full model) ' if a3.unidentified else ''}with a = "
                    f"{value_ci(p['a'], *a3.interval('a'), 3)} and D ∝ C^b with b = "
                    f"{value_ci(p['b'], *a3.interval('b'), 3)} along C = 6ND"
                    + (f"; along the table's own compute ({c_label(df)}, the IsoFLOP budgets' axis) "
                       f"a_C = {value_ci(p['a_C'], *a3.interval('a_C'), 3)}, "
                       f"b_C = {value_ci(p['b_C'], *a3.interval('b_C'), 3)}"
                       if "a_C" in p else "")
                    + f" ({len(rows)} runs, "
                    f"{a3.info['n_starts']} starts, mean |log residual| "
                    f"{a3.info['mean_abs_log_residual']:.4f}; {boot_text(a3)}; {conv}).")
                if a3.unidentified:
                    red = a3.info.get("reduced_model")
                    rep.findings.append(
                        "Approach 3 is not identified by these data: "
                        + "; ".join(f"{k}: {why}" for k, why in a3.unidentified.items())
                        + f". {a3.info['conditional']}."
                        + (f" The reduced model {red['form']} gives α = {red['alpha']:.3f}, β = "
                           f"{red['beta']:.3f}, a = {red['a']:.3f}, objective {red['objective']:.4g} "
                           f"against {red['objective_full']:.4g} with E." if red else ""))
                rep.figure("residuals", rep.cap("Approach 3: observed against fitted loss, and log "
                           "residuals against compute, coloured by N"),
                           lambda: plots.residuals(a3, rows["N"], rows["D"], rows["loss"], C=rows["C"],
                                                   c_label=c_label(df)))
            except Exception as exc:
                rep.skip("Approach 3", f"{type(exc).__name__}: {exc}")
            try:
                kap = fit_kaplan(rows["N"], rows["D"], rows["loss"], n_boot=n_boot, seed=seed,
                                 bootstrap=boot, noise=noise if measured else None)
                rep.add_params("Kaplan L(N, D)", kap, ["alpha_N", "alpha_D", "N_c", "D_c"])
            except Exception as exc:
                rep.skip("Kaplan L(N, D)", f"{type(exc).__name__}: {exc}")
        else:
            rep.skip("Approach 3 and Kaplan L(N, D)", f"{len(rows)} (N, D) cells with {nN} distinct N "
                     f"and {nD} distinct D (need >= 6 cells, >= 3 of each)")
    return a3
