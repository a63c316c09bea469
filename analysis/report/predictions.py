"""The report's compute-optimal allocation: the figure of N_opt and D_opt against compute from
every allocation fit made (Approaches 1, 2 and 3), and the table of predictions for larger
budgets. Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.figures import fits as plots
from analysis.fits.predict import compute_optimal
from analysis.report.writer import Report, c_label
from analysis.result import fmt
from analysis.report.tables import value_ci


def section(rep: Report, df: pd.DataFrame, rows: pd.DataFrame, *, a3, iso, a1, frontier,
            pl_fits: dict, predict_C) -> None:
    """The allocation figure and the predictions at ``predict_C`` (default: the next three
    decades above the largest compute run)."""
    iso_ok = iso if (iso is not None and iso.determined) else None
    if iso_ok is not None or a1 is not None or a3 is not None:
        shown = ", ".join(x for x, fit in (("per-budget minima (Approach 2)", iso_ok),
                                           ("frontier sizes (Approach 1)", a1)) if fit is not None)
        rep.figure("optimal_allocation", "Compute-optimal N and D against compute: "
                   + (shown + ", and " if shown else "")
                   + "the fitted power laws with 95% bands"
                   + (", including Approach 3's allocation (minimised along the table's own "
                      "C(N, D), the same compute axis as Approach 2)" if a3 is not None else "") + ".",
                   lambda: plots.optimal_allocation(iso=iso_ok, a1=a1, a3=a3, runs=rows,
                                                    C_range=[rows["C"].min(), rows["C"].max()],
                                                    c_label=c_label(df)),
                   fit=[f for f in (iso_ok, a1, a3) if f is not None])

    # ---------------------------------------------------------------- predictions
    if len(rows) and (a3 is not None or iso_ok is not None or a1 is not None):
        if predict_C is None:
            top = 10 ** math.ceil(math.log10(rows["C"].max()))
            predict_C = [top, top * 10, top * 100]
        loss_law = frontier.law if frontier is not None else pl_fits.get("C")
        pred = compute_optimal(predict_C, chinchilla=a3, isoflop=iso_ok, approach1=a1, loss_law=loss_law)
        if len(pred):
            show = pd.DataFrame({
                "C (FLOPs)": pred["C"], "method": pred["method"],
                "N_opt [95% CI]": [value_ci(r.N_opt, r.N_opt_low, r.N_opt_high, 3) for r in pred.itertuples()],
                "D_opt [95% CI]": [value_ci(r.D_opt, r.D_opt_low, r.D_opt_high, 3) for r in pred.itertuples()],
                "loss [95% CI]": [value_ci(r.loss_opt, r.loss_opt_low, r.loss_opt_high, 4)
                                  if np.isfinite(r.loss_opt) else "–" for r in pred.itertuples()],
            })
            rep.table(show, "predictions", "Compute-optimal allocation and loss predicted for "
                      "larger budgets (extrapolations; intervals are bootstrap percentiles and "
                      "do not include model misspecification"
                      + ("; Approach 3 rows are conditional: the model has a parameter the data do not "
                         "identify" if (a3 is not None and a3.unidentified) else "") + ")",
                      fit=[f for f in (a3, iso_ok, a1) if f is not None])
            rep.fits["predictions"] = json.loads(pred.to_json(orient="records"))
            first = pred.iloc[0]
            rep.findings.append(
                f"Prediction at C = {fmt(first['C'], 2)} FLOPs ({first['method']}"
                + (", conditional: the model has a parameter the data do not identify"
                   if (first["method"].startswith("Approach 3") and a3 is not None and a3.unidentified) else "")
                + "): N_opt = "
                f"{value_ci(first['N_opt'], first['N_opt_low'], first['N_opt_high'], 3)}, D_opt = "
                f"{value_ci(first['D_opt'], first['D_opt_low'], first['D_opt_high'], 3)}"
                + (f", loss {value_ci(first['loss_opt'], first['loss_opt_low'], first['loss_opt_high'], 4)}"
                   if np.isfinite(first["loss_opt"]) else "") + ".")
