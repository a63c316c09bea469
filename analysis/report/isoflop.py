"""The report's IsoFLOP section (Chinchilla's Approach 2, analysis/fits/isoflop.py): the allocation
exponents with every estimator of the minima, the per-budget table and the profiles' figure.
Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.figures import fits as plots
from analysis.fits.isoflop import fit_isoflop
from analysis.report.writer import Report, boot_text
from analysis.result import sig
from analysis.report.tables import value_ci


def section(rep: Report, rows: pd.DataFrame, *, n_boot: int, seed: int, noise, measured: bool):
    """Approach 2 where the rows have >= 3 compute budgets of >= 3 sizes each; return the
    fit (None when not made)."""
    conv = rep.convention
    iso = None
    iso_rows = None
    if len(rows) and "compute_budget" in rows and np.isfinite(rows["compute_budget"]).any():
        r = rows[np.isfinite(rows["compute_budget"])]
        per = r.groupby("compute_budget")["N"].apply(lambda s: s.map(sig).nunique())
        good = per[per >= 3]
        if len(good) >= 3:
            iso_rows = r[r["compute_budget"].isin(good.index)].rename(columns={"compute_budget": "budget"})
            try:
                iso_noise = noise.take(rows.index.get_indexer(iso_rows.index)) if noise is not None else None
                iso = fit_isoflop(iso_rows["C"], iso_rows["loss"], N=iso_rows["N"], D=iso_rows["D"],
                                  budget=iso_rows["budget"], n_boot=n_boot, seed=seed,
                                  noise=iso_noise if measured else None)
                rep.add_params("Approach 2 (IsoFLOP)", iso, ["a", "b", "k_N", "k_D"])
                rep.fits["Approach 2 (IsoFLOP)"]["budgets"] = json.loads(iso.budgets.to_json(orient="records"))
                nb, nu = iso.info["n_budgets"], iso.info["n_budgets_used"]
                if iso.determined:
                    others = "; ".join(
                        f"{e}: {value_ci(d['a'], *d['ci'].get('a', (math.nan, math.nan)), 3)}"
                        for e, d in iso.estimators.items() if e != iso.info["estimator"])
                    rep.findings.append(
                        f"Approach 2 (IsoFLOP, {nu} of {nb} budgets bracket their minimum; minima by the "
                        f"{iso.info['estimator']} estimator, the unweighted line through them as published "
                        f"studies fit it; weighted by each budget's propagated noise a = "
                        f"{iso.estimators[iso.info['estimator']]['weighted']['a']:.3f}): "
                        f"N_opt ∝ C^a with a = {value_ci(iso['a'], *iso.interval('a'), 3)}, "
                        f"D_opt ∝ C^b with b = {value_ci(iso['b'], *iso.interval('b'), 3)} "
                        f"({boot_text(iso)}; noise: {iso.info['noise_source']}; {conv}). "
                        f"Other estimators of the minima give a = {others}. "
                        f"Estimator {iso.info['estimator_choice']}.")
                    for line in iso.info.get("disagreement", []):
                        rep.findings.append(f"Warning (IsoFLOP estimators disagree): {line}.")
                else:
                    rep.findings.append(f"Approach 2 (IsoFLOP, {nb} budgets, {nu} bracket their minimum): "
                                        f"the allocation exponents are {iso.info['not_determined']}.")
                for s in iso.info["budgets_skipped"]:
                    rep.skip("IsoFLOP budget", s)
                tb = iso.budgets.copy()
                show = pd.DataFrame({
                    "C": tb["C"], "runs": tb["n_runs"], "sizes": tb["n_sizes"],
                    "N_opt [95% CI]": [value_ci(a, b, c, 3) for a, b, c in zip(
                        tb["N_opt"], tb.get("N_opt_low", np.nan * tb["C"]), tb.get("N_opt_high", np.nan * tb["C"]))],
                    "D_opt": tb.get("D_opt", np.nan * tb["C"]),
                    "loss_opt": tb.get("loss_opt", np.nan * tb["C"]),
                    "used": tb["used"], "note": tb["note"].fillna(""),
                })
                for e in ("akima", "local", "parabola"):
                    if e != iso.info["estimator"] and f"N_opt_{e}" in tb:
                        show[f"N_opt ({e})"] = tb[f"N_opt_{e}"]
                rep.table(show, "isoflop_budgets", rep.cap(
                    f"IsoFLOP minima per compute budget ({iso.info['estimator']} estimator; the others "
                    f"in their own columns; {nu} of {nb} budgets used)", iso))
                rep.figure("isoflop", rep.cap(
                    f"IsoFLOP profiles: loss against N per budget, the {iso.info['estimator']} "
                    "estimator's curve and minimum (95% interval); hollow: budget excluded "
                    f"(minimum not bracketed); {nu} of {nb} budgets used", iso),
                           lambda: plots.isoflop(iso_rows, iso))
            except Exception as exc:
                rep.skip("Approach 2 (IsoFLOP)", f"{type(exc).__name__}: {exc}")
        else:
            rep.skip("Approach 2 (IsoFLOP)", f"{len(good)} compute budgets with >= 3 sizes (need 3)")
    elif len(rows):
        rep.skip("Approach 2 (IsoFLOP)", "no compute_budget column (or all NaN)")
    return iso
