"""The report's power laws L(N), L(D) and L(C): each fitted on the Pareto front of the runs
(analysis/fits/pareto.py) with the case bootstrap, their exponents as findings and one figure.
Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.figures import axes as plot_axes

from analysis.figures import fits as plots
from analysis.fits.pareto import pareto_front
from analysis.fits.powerlaw import fit_power_law
from analysis.report.writer import Report, boot_text, c_label
from analysis.result import fmt
from analysis.report.tables import value_ci


def section(rep: Report, df: pd.DataFrame, rows: pd.DataFrame, *, n_boot: int, seed: int,
            pl_loss: str) -> dict:
    """Fit L(x) for x in N, D, C where the front has >= 4 distinct x; return {x: fit}."""
    pl_fits, pl_env = {}, {}
    if len(rows):
        for key, label in (("N", "parameters"), ("D", "tokens"), ("C", "compute")):
            x = rows[key].to_numpy(float)
            L = rows["loss"].to_numpy(float)
            idx = pareto_front(x, L)
            env = pd.DataFrame({"x": x[idx], "loss": L[idx]})
            how = f"Pareto front (lowest loss reached with at most that {key})"
            # distinct to within 5 % (IsoFLOP points of one budget differ only by rounding)
            n_distinct = np.unique(np.round(np.log10(env["x"].to_numpy(float)) / 0.02)).size
            if n_distinct < 4:
                rep.skip(f"power law L({key})", f"{n_distinct} distinct {key} values (to 5 %) on "
                         f"the {how} (need 4)")
                continue
            try:
                # case bootstrap on purpose: the front is a selection of the lowest losses, not a
                # design; perturbing losses and re-taking the minimum biases the front downwards,
                # and resampling runs also carries the misspecification of L(x) on such a front
                fit = fit_power_law(env["x"], env["loss"], irreducible=True, n_boot=n_boot,
                                    seed=seed, name=key, loss_fn=pl_loss)
                fit.info["bootstrap"] = "cases (Pareto-front rows resampled)"
            except Exception as exc:
                rep.skip(f"power law L({key})", str(exc))
                continue
            fit.info["points"] = how
            pl_fits[key], pl_env[key] = fit, env
            rep.add_params(f"L({key}) = E + ({key}_c/{key})^α", fit, ["E", "x_c", "alpha"])
            lo, hi = fit.interval("alpha")
            weak = (not (np.isfinite(lo) and lo > 0)) or hi / lo > 2
            rep.findings.append(
                f"L({key}) on the {how}: exponent α_{key} = {value_ci(fit['alpha'], lo, hi, 3)}, "
                + (f"irreducible E not identified ({fit.unidentified['E']}; one-sided bound "
                   f"E ≤ {fmt(fit.bounds['E'][1], 3) if 'E' in fit.bounds else 'n/a'}; α is conditional on it)"
                   if "E" in fit.unidentified else f"irreducible E = {value_ci(fit['E'], *fit.interval('E'), 3)}")
                + f" ({boot_text(fit)})."
                + (f" The exponent is poorly constrained by this design (its interval spans more "
                   f"than a factor 2): the runs do not trace L({key}) at fixed other resources."
                   if weak else ""))
        if pl_fits:
            rep.figure("loss_vs_size", "L(N), L(D) and L(C) on the Pareto front of the runs (grey: all runs), with power-law fits "
                       "(E + (x_c/x)^α) and 95% bootstrap bands; exponents in the legends.",
                       lambda: plots.loss_vs_size(rows, pl_fits, pl_env,
                                                  labels={"N": plot_axes.n_axis_label(df),
                                                          "C": c_label(df)}), fit=list(pl_fits.values()))
    return pl_fits
