"""The report's critical-batch-size section (analysis/batch.py): where the sweep has 3 or
more batch sizes (column ``batch_size``; B in tokens = batch_size x seq_len), the steps and
tokens to reach automatically chosen target losses, S_min, E_min and B_crit per optimizer
and target, and B_crit(L). Called once from analysis/report/build.py (:func:`section`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analysis.batch import BOOT_WORDS, LOSS_WORDS, LR_RULE, analyze_batch, batch_runs, law_text
from analysis.figures import batch as plots_batch
from analysis.fits.critical_batch import MIN_BATCHES
from analysis.load import load_curves
from analysis.report.writer import Report
from analysis.result import fmt, json_default


def table(analysis) -> pd.DataFrame:
    """One row per (arm, target): batches reaching it, censored runs, S_min, E_min, B_crit."""
    rows = []
    for arm, ar in analysis.arms.items():
        for t in ar.targets:
            f = t.get("fit")
            row = {"optimizer": arm, "target loss": t["target"],
                   "batches reaching": f"{t['n_batches']} of {t['n_batches_total']}",
                   "runs censored": t["n_censored"], "below at 1st eval": t["n_first_eval"],
                   "best lr at edge": t["n_edge"]}
            if f is None:
                row.update({"S_min (steps)": "–", "E_min (tokens)": "–", "B_crit (tokens)": "not fitted: "
                            + t["reason"], "failed replicates": "–"})
            else:
                sm, em = f.ci.get("S_min", (math.nan,) * 2), f.ci.get("E_min", (math.nan,) * 2)
                row.update({"S_min (steps)": f"{fmt(f.S_min, 3)} [{fmt(sm[0], 3)}, {fmt(sm[1], 3)}]",
                            "E_min (tokens)": f"{fmt(f.E_min, 3)} [{fmt(em[0], 3)}, {fmt(em[1], 3)}]",
                            "B_crit (tokens)": f.describe().replace("B_crit ", "").replace(" tokens", ""),
                            "failed replicates": f"{f.n_failed} of {f.n_boot}"})
            if ar.b_simple is not None:
                b = t.get("b_simple")
                row["B_simple (tokens)"] = fmt(b, 3) if b is not None and math.isfinite(b) else "–"
            rows.append(row)
    return pd.DataFrame(rows)


def section(rep: Report, df: pd.DataFrame, source: Path, *, n_boot: int, seed: int) -> None:
    """The section, or a skip line saying why not. Reads the rows `python -m analysis batch`
    reads (done and diverged runs, `batch_runs`), not only the done ones."""
    done = batch_runs(df)
    if "batch_size" not in done or "seq_len" not in done:
        rep.skip("critical batch size", "no batch_size / seq_len columns")
        return
    b = pd.to_numeric(done["batch_size"], errors="coerce") * pd.to_numeric(done["seq_len"], errors="coerce")
    if b.dropna().nunique() < MIN_BATCHES:
        rep.skip("critical batch size", f"{b.dropna().nunique()} batch size(s) (need >= {MIN_BATCHES})")
        return
    try:
        curves = load_curves(source, results=done, prefer="eval", min_evals=1)
    except Exception as exc:  # a section must never sink the report
        rep.skip("critical batch size", f"could not read the learning curves: {exc}")
        return
    if curves is None or not len(curves):
        rep.skip("critical batch size", "no learning curves (curves.parquet / curves.csv)")
        return
    try:
        an = analyze_batch(done, curves, None, loss="eval", n_boot=n_boot, seed=seed)
    except Exception as exc:  # a section must never sink the report
        rep.skip("critical batch size", f"{type(exc).__name__}: {exc}")
        return
    if not an.targets:
        rep.skip("critical batch size", f"no target loss: {an.targets_rule}")
        return
    conv = (f"B in tokens (batch_size x seq_len); curves: {LOSS_WORDS['eval']}; per batch: "
            f"{LR_RULE}; intervals: {BOOT_WORDS.format(n=n_boot)}")
    lines = ["## Critical batch size\n",
             "- model: (S/S_min - 1)(E/E_min - 1) = 1, i.e. S(B) = S_min + E_min / B, "
             "B_crit = E_min / S_min (McCandlish et al. 2018); B_crit(L) = B* / L^(1/alpha_B) "
             "(Kaplan et al. 2020)",
             f"- {conv}", f"- targets: {an.targets_rule}",
             "- S: first crossing of the target, linear in log step between the two evals around "
             "it; runs that never reach a target are censored (counted below), never dropped"]
    lines += [f"- {n}" for n in an.notes]
    for arm, ar in an.arms.items():
        conv_t = [t for t in ar.targets if t.get("fit") is not None and t["fit"].converged]
        bound = [t for t in ar.targets if t.get("fit") is not None and not t["fit"].converged]
        unfit = [t for t in ar.targets if t.get("fit") is None]
        lines.append(f"- {arm}: {len(conv_t)} target(s) with a B_crit estimate, {len(bound)} at a "
                     f"bound, {len(unfit)} not fitted")
        for t in bound:
            lines.append(f"  - L = {t['target']:.4g}: {t['fit'].describe()}")
        for t in unfit:
            lines.append(f"  - L = {t['target']:.4g}: not fitted: {t['reason']}")
        if ar.law is not None:
            lines.append(f"  - {law_text(ar.law)}")
            rep.findings.append(f"Critical batch size ({arm}, B in tokens): {law_text(ar.law)}.")
        else:
            lines.append(f"  - B_crit(L) not fitted: {ar.law_reason}")
        for t in conv_t[:1] + conv_t[-1:] if len(conv_t) > 1 else conv_t:
            rep.findings.append(f"{arm} at L = {t['target']:.4g}: {t['fit'].describe()} "
                                f"(S_min = {fmt(t['fit'].S_min, 3)} steps, E_min = "
                                f"{fmt(t['fit'].E_min, 3)} tokens).")
    rep.table(table(an), "critical_batch", "Steps S_min, tokens E_min and critical batch B_crit "
              f"(tokens) per optimizer and target loss ({conv})")
    rep.figure("batch_steps_tokens", "Steps against tokens to reach each target loss, one panel "
               "per optimizer: each batch size at its best lr (hollow: best lr at its grid's edge), "
               "the fitted S = S_min + E_min / B (dashed: at a bound), ● at (2 E_min, 2 S_min) = "
               f"B_crit; targets not fitted have no line ({conv})", lambda: plots_batch.steps_tokens(an))
    rep.figure("batch_bcrit_loss", "Critical batch B_crit (tokens) against the target loss with "
               "95 % intervals (arrows: an end the data do not bound, or a bound), the fitted "
               "B_crit(L) law and its band; hollow squares: each run's B_simple (last half of the "
               f"run) at its final eval loss, where measured ({conv})", lambda: plots_batch.bcrit_loss(an))
    rep.fits["critical_batch"] = json.loads(json.dumps(an.to_dict(), default=json_default))
    rep.sections.append("\n".join(lines) + "\n")
