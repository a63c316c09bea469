"""Validation runs (issue 26): the law's prediction checked against a run it never saw.

A sweep with ``[followup] validate = [10]`` (scaling/sweep/validate.py) trains, after its
other points, the model Approach 3 calls compute-optimal at 10x its largest budget, and
records in the point's point.json (``requested.validate``) the prediction made before it
trained. Rules kept here:

- A validation run is not a result to fit: it exists to test the fits, so it is left out
  of every fit and figure of results, like a cooldown trunk (:func:`drop_validation`; the
  shared row selection, analysis/fitrows.py, calls it for ``analyze`` and ``fit``). A row
  is a validation run when its ``group`` is "validate" (the stage's group), or, without a
  group column, when its point folder's point.json says ``requested.stage = "validate"``.
- The report's section "Does the prediction hold? (a 10x run)" and ``fits.json``'s
  ``validation`` list compare, per validation run, the loss predicted by the Approach 3 fit
  of the report (fitted on the other rows) at the run's actual N and D, with its prediction
  interval (``fit.predict_loss``: parameter bootstrap plus the law's misspecification,
  analysis/fits/prediction.py), against the observed final eval loss and its standard error.
  The prediction recorded before training (the stage's own fit, same rows, fixed seed) is
  shown beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.result import fmt

GROUP = "validate"
STAGE = "validate"
VALIDATION_NOTE = ("a validation run tests the law at a compute it was not fitted on (its "
                   "loss is compared with the prediction in the section \"Does the prediction "
                   "hold?\"), so no fit uses it")
TITLE = "## Does the prediction hold? (a 10x run)"


def _meta(folder, pid) -> dict:
    if folder is None or pid is None:
        return {}
    try:
        out = json.loads((Path(folder) / "points" / str(pid) / "point.json").read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def is_validation(df: pd.DataFrame, folder=None) -> pd.Series:
    """Rows that are validation runs (module docstring)."""
    if "group" in df.columns:
        return df["group"].astype(str) == GROUP
    if folder is not None and "point_id" in df.columns:
        return df["point_id"].map(
            lambda pid: (_meta(folder, pid).get("requested") or {}).get("stage") == STAGE
        ).astype(bool)
    return pd.Series(False, index=df.index)


def drop_validation(df: pd.DataFrame, folder=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the other rows, the validation rows); attrs kept on both."""
    m = is_validation(df, folder if folder is not None else df.attrs.get("folder"))
    rest, val = df[~m].copy(), df[m].copy()
    rest.attrs, val.attrs = dict(df.attrs), dict(df.attrs)
    return rest, val


def _as_dict(pred) -> dict:
    d = pred.as_dict() if hasattr(pred, "as_dict") else dict(pred)
    return {k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
            for k, v in d.items()}


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def records(val: pd.DataFrame, fit, folder=None) -> list[dict]:
    """One record per validation run: C, N, D, predicted, low, high (``fit.predict_loss`` at
    the run's N and D), observed and observed_stderr (NaN-free: None where missing), and what
    the stage recorded before training (``before``)."""
    out = []
    for _, r in val.iterrows():
        N, D, C = _num(r.get("N")), _num(r.get("D")), _num(r.get("C"))
        rec: dict = {"point_id": r.get("point_id"), "status": r.get("status"), "C": C, "N": N,
                     "D": D, "predicted": None, "low": None, "high": None,
                     "observed": _num(r.get("loss")) if r.get("status") == "done" else None,
                     "observed_stderr": _num(r.get("eval_loss_stderr"))}
        if fit is not None and N and D:
            p = _as_dict(fit.predict_loss(N, D))
            rec.update(predicted=p.get("loss"), low=p.get("low"), high=p.get("high"),
                       param_low=p.get("param_low"), param_high=p.get("param_high"),
                       misspec_sd=p.get("misspec_sd"), x_decades=p.get("x_decades"))
        if rec["predicted"] is not None and rec["observed"] is not None:
            rec["rel_error"] = abs(rec["predicted"] - rec["observed"]) / rec["observed"]
            rec["inside"] = bool(rec["low"] is not None and rec["high"] is not None
                                 and rec["low"] <= rec["observed"] <= rec["high"])
        before = (_meta(folder, r.get("point_id")).get("requested") or {}).get("validate")
        if isinstance(before, dict):
            rec["before"] = {k: before.get(k) for k in (
                "multiple", "C_target", "largest_budget", "law", "allocation", "N_opt", "D_opt",
                "shape", "prediction") if k in before}
        out.append(rec)
    return out


def section(recs: list[dict], convention: str = "", fit_name: str = "Approach 3") -> str:
    """The report's markdown section for the records (an empty string without any)."""
    if not recs:
        return ""
    lines = [TITLE, "",
             f"A run at a multiple of the largest budget, planned after the sweep, is compared "
             f"with the loss the {fit_name} fit of this report (on the other runs only) "
             "predicts at its N and D, with a 95 % prediction interval (parameter bootstrap "
             "plus the law's misspecification from its own backtest). Validation runs are "
             f"left out of every fit. {convention}".strip(), "",
             "| run | C | N | D | N_opt (law, unsnapped) | predicted [95 % PI] | observed ± stderr "
             "| abs(pred − obs)/obs | inside |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in recs:
        b = r.get("before") or {}
        mult = f"{b['multiple']:g}x" if isinstance(b.get("multiple"), (int, float)) else "?"
        pred = (f"{r['predicted']:.4f} [{fmt(r['low'], 4)}, {fmt(r['high'], 4)}]"
                if r["predicted"] is not None else "not fitted")
        obs = (f"{r['observed']:.4f} ± {fmt(r['observed_stderr'], 2)}"
               if r["observed"] is not None else f"({r['status']})")
        err = f"{100 * r['rel_error']:.2f} %" if "rel_error" in r else "–"
        inside = ("yes" if r["inside"] else "no") if "inside" in r else "–"
        lines.append(f"| {mult} `{r['point_id']}` | {fmt(r['C'], 3)} | {fmt(r['N'], 4)} | "
                     f"{fmt(r['D'], 4)} | {fmt(b.get('N_opt'), 4)} | {pred} | {obs} | {err} | "
                     f"{inside} |")
        bp = b.get("prediction") or {}
        if "loss" in bp:
            when = "before training" if bp.get("made_before_training", True) else \
                "after training (no prediction could be made before it)"
            notes.append(f"- `{r['point_id']}`: predicted by the stage {when}: "
                         f"{bp['loss']:.4f} [{fmt(bp.get('low'), 4)}, {fmt(bp.get('high'), 4)}] "
                         f"({b.get('law', '?')}; {b.get('allocation', '')})")
        elif "error" in bp:
            notes.append(f"- `{r['point_id']}`: the stage made no prediction before training "
                         f"({bp['error']})")
        if r["predicted"] is not None and r.get("misspec_sd") is not None:
            notes.append(f"- `{r['point_id']}`: {fmt(r.get('x_decades'), 2)} decades beyond the "
                         f"largest fitted C; parameter-only interval [{fmt(r.get('param_low'), 4)}, "
                         f"{fmt(r.get('param_high'), 4)}], misspecification sd "
                         f"{fmt(r['misspec_sd'], 3)} (log loss)")
    return "\n".join(lines + [""] + notes) + "\n"


def finding(recs: list[dict]) -> str | None:
    """One line for the report's findings, or None."""
    done = [r for r in recs if "rel_error" in r]
    if not done:
        return None
    r = done[0]
    return (f"Validation run at C = {fmt(r['C'], 3)} (N = {fmt(r['N'], 4)}, D = {fmt(r['D'], 4)}): "
            f"predicted {r['predicted']:.4f} [{fmt(r['low'], 4)}, {fmt(r['high'], 4)}], observed "
            f"{r['observed']:.4f} ± {fmt(r['observed_stderr'], 2)}: |error| "
            f"{100 * r['rel_error']:.2f} % of the loss, "
            f"{'inside' if r['inside'] else 'outside'} the 95 % prediction interval.")


def add_to_report(rep, val: pd.DataFrame, fit, folder=None) -> None:
    """The report's validation section, its finding and ``fits.json["validation"]``."""
    if val is None or not len(val):
        return
    recs = records(val, fit, folder)
    rep.fits["validation"] = recs
    rep.sections.append(section(recs, getattr(rep, "convention", "") or ""))
    line = finding(recs)
    if line:
        rep.findings.append(line)
