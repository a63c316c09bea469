"""Cooldown trunks and branches (issue 12): which rows are results, what compute was spent.

A sweep with ``[sweep.cooldown]`` plans, per size, one constant-lr TRUNK and, per length S,
a BRANCH: a wsd run that starts from the trunk's checkpoint at step k = branched_at_step
and cools down to S. Rules the analysis keeps:

- A trunk is not a result. Its learning rate never decays, so its final loss is not the
  loss of a run of its length, and fitting it beside the branches would put a biased point
  (and a duplicate of the branches' first k steps) into every law. A row is a trunk when
  its ``role`` is "trunk" (point.json ``requested.role``); in tables without a role column,
  when its group ends in "/trunk" (or is "trunk"), as the planner names trunk groups.
- A branch is an ordinary result: its config is exactly a separate wsd run's.
- Learning curves: a branch's metrics start with its trunk's rows up to k (copied, so the
  branch's own curve is whole). Curve figures and the frontier draw the trunk's curve once
  and each branch from its branch step k on (:func:`split_curves`), so the first k steps
  are not drawn (or fitted) once per branch.
- Compute actually spent (:func:`compute_spent`): each trunk once, plus each branch's
  cooldown only, C x (S - k) / S; against the cost of separate runs: every non-trunk row's
  whole C. C is the compute under the accounting in use (loader's canonical ``C``).
  Training only, and training + evaluation: a run's evals cost C / (3 D) (its forward
  FLOPs per token, same accounting) x the tokens its evals ran through the model
  (result.json ``eval_forward_tokens``); a branch spends only the evals after its trunk
  (less ``eval_forward_tokens_from_trunk``), a separate run all of them. Task evals
  (decoding, ``data.tasks``) are not counted.

The role columns come from the results table when it has them ("role", "trunk",
"branched_at_step"), else from each point folder's point.json / result.json (plain JSON;
the analysis never imports ``scaling``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

ROLE_COLUMNS = ("role", "trunk", "branched_at_step")
EVAL_COLUMNS = ("eval_forward_tokens", "eval_forward_tokens_from_trunk")


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _from_points(folder: Path, pid: str) -> dict:
    """role, trunk, branched_at_step of one point from its point.json (the plan) and its
    result.json (what the run did)."""
    d = folder / "points" / str(pid)
    req = _read_json(d / "point.json").get("requested") or {}
    res = _read_json(d / "result.json")
    return {"role": req.get("role"),
            "trunk": res.get("trunk") or req.get("trunk"),
            "branched_at_step": res.get("branched_at_step", req.get("branched_at_step"))}


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def annotate_roles(df: pd.DataFrame, folder: str | Path | None = None) -> pd.DataFrame:
    """Fill the ``role``, ``trunk`` and ``branched_at_step`` columns (in place; returned).

    Order of sources per row: the table's own value, then the point folder's JSON files
    (when ``folder`` is a sweep folder), then the group name (".../trunk" -> "trunk").
    Rows with none of these get role "run". A trunk's own "trunk" entry (its own id, as
    the planner records it) is cleared: only branches name a trunk.
    """
    for c in ROLE_COLUMNS:
        if c not in df.columns:
            df[c] = None
    df["role"] = df["role"].astype(object)
    df["trunk"] = df["trunk"].astype(object)
    pts = Path(folder) / "points" if folder is not None else None
    use_points = pts is not None and pts.is_dir() and "point_id" in df.columns
    for i in df.index:
        if use_points and any(_is_missing(df.at[i, c]) for c in ROLE_COLUMNS):
            found = _from_points(Path(folder), df.at[i, "point_id"])
            for c in ROLE_COLUMNS:
                if _is_missing(df.at[i, c]) and not _is_missing(found[c]):
                    df.at[i, c] = found[c]
        if _is_missing(df.at[i, "role"]):
            grp = str(df.at[i, "group"]) if "group" in df.columns else ""
            df.at[i, "role"] = ("trunk" if grp == "trunk" or grp.endswith("/trunk") else
                                "branch" if not _is_missing(df.at[i, "branched_at_step"]) else "run")
    df.loc[df["role"] == "trunk", "trunk"] = None
    df["branched_at_step"] = pd.to_numeric(df["branched_at_step"], errors="coerce")
    return df


def is_trunk(df: pd.DataFrame) -> pd.Series:
    """Rows that are cooldown trunks (role "trunk"; without a role column, group ".../trunk")."""
    if "role" in df.columns:
        return df["role"].astype(str) == "trunk"
    if "group" in df.columns:
        g = df["group"].astype(str)
        return (g == "trunk") | g.str.endswith("/trunk")
    return pd.Series(False, index=df.index)


def drop_trunks(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(the rows that are results, how many trunk rows were left out); attrs kept."""
    m = is_trunk(df)
    out = df[~m].copy()
    out.attrs = dict(df.attrs)
    return out, int(m.sum())


TRUNK_NOTE = ("a cooldown trunk runs at a constant learning rate to the latest branch step: its "
              "final loss is not that of a run of its length, and its first k steps are already "
              "in every branch, so it is a source of branches, not a result")


def _eval_tokens(rows: pd.DataFrame, folder) -> pd.DataFrame:
    """EVAL_COLUMNS of `rows`: the table's own, else each point's result.json (NaN where
    neither has them: results from before they were recorded)."""
    out = pd.DataFrame(index=rows.index, columns=list(EVAL_COLUMNS), dtype=float)
    for c in EVAL_COLUMNS:
        if c in rows.columns:
            out[c] = pd.to_numeric(rows[c], errors="coerce")
    pts = Path(folder) / "points" if folder is not None else None
    if pts is not None and pts.is_dir() and "point_id" in rows.columns:
        for i in rows.index:
            if out.loc[i].isna().any():
                res = _read_json(pts / str(rows.at[i, "point_id"]) / "result.json")
                for c in EVAL_COLUMNS:
                    if not np.isfinite(out.at[i, c]) and isinstance(res.get(c), (int, float)):
                        out.at[i, c] = float(res[c])
    return out


def _eval_flops(rows: pd.DataFrame, c: pd.Series, folder) -> tuple[pd.Series, pd.Series]:
    """(eval FLOPs a row spent, eval FLOPs it would spend as a separate run): C / (3 D)
    per forward token; a branch spent only the evals after its trunk."""
    tok = _eval_tokens(rows, folder)
    per_token = c / pd.to_numeric(rows["D"], errors="coerce") / 3.0
    whole = per_token * tok["eval_forward_tokens"]
    inherited = (per_token * tok["eval_forward_tokens_from_trunk"]).where(rows["role"] == "branch", 0.0)
    return whole - inherited, whole


def compute_spent(df: pd.DataFrame, *, statuses=("done",)) -> dict | None:
    """FLOPs actually spent by trunks and branches against separate runs, or None when
    the table has no branch.

    spent = sum of trunks' C + sum over branches of C x (S - k) / S (+ plain runs' C);
    separate = sum over every non-trunk row of its whole C (a branch run on its own from
    step 0; no trunk). Rows with a status outside ``statuses`` are not counted (their
    compute is not known); the count is returned. ``C`` is the canonical compute of the
    loaded table (the accounting in use); ``C_exact``/``C_6ND`` are summed beside it when
    present so both accountings can be read.
    """
    if "role" not in df.columns or not (df["role"] == "branch").any():
        return None
    ok = df["status"].isin(statuses) if "status" in df.columns else pd.Series(True, index=df.index)
    rows = df[ok]
    steps = pd.to_numeric(rows.get("steps"), errors="coerce") if "steps" in rows else None
    k = pd.to_numeric(rows["branched_at_step"], errors="coerce")
    branch = rows["role"] == "branch"
    trunk = rows["role"] == "trunk"
    if steps is None or not np.isfinite(steps[branch]).all():
        frac = pd.Series(np.nan, index=rows.index)
    else:
        frac = ((steps - k) / steps).where(branch, 1.0)
    out = {
        "rule": "spent = each trunk's C once + each branch's cooldown C x (steps - "
                "branched_at_step) / steps (+ plain runs' C); separate = every non-trunk row's "
                "whole C (each branch as its own run from step 0, no trunks)",
        "accounting": df.attrs.get("accounting"),
        "convention": df.attrs.get("convention"),
        "n_trunks": int(trunk.sum()), "n_branches": int(branch.sum()),
        "n_runs": int((~trunk & ~branch).sum()),
        "n_not_counted": int((~ok).sum()),
        "statuses_counted": list(statuses),
    }
    cols = [("C", "C")] + [(c, c) for c in ("C_exact", "C_6ND") if c in rows.columns]
    for key, col in cols:
        c = pd.to_numeric(rows[col], errors="coerce")
        spent = float((c * frac).sum(min_count=1)) if np.isfinite(frac).all() else math.nan
        separate = float(c[~trunk].sum())
        tag = "" if key == "C" else f"_{key}"
        out[f"spent{tag}"] = spent
        out[f"separate{tag}"] = separate
        out[f"ratio{tag}"] = spent / separate if separate > 0 else math.nan
        if key == "C":
            # + evaluation (module doc); NaN when a counted row has no record of it
            ev_spent, ev_whole = _eval_flops(rows, c, df.attrs.get("folder"))
            known = bool(np.isfinite(ev_spent).all() and np.isfinite(ev_whole).all())
            out["eval_spent"] = float(ev_spent.sum()) if known else math.nan
            out["eval_separate"] = float(ev_whole[~trunk].sum()) if known else math.nan
            out["spent_with_eval"] = spent + out["eval_spent"]
            out["separate_with_eval"] = separate + out["eval_separate"]
            out["ratio_with_eval"] = (out["spent_with_eval"] / out["separate_with_eval"]
                                      if out["separate_with_eval"] > 0 else math.nan)
            out["eval_rule"] = ("eval FLOPs = C / (3 D) x eval_forward_tokens (forward passes of "
                                "every curve and final eval); a branch less the evals its trunk "
                                "made (eval_forward_tokens_from_trunk); task evals not counted")
            out["trunks"] = float(c[trunk].sum())
            out["cooldowns"] = float((c * frac)[branch].sum())
            # the trunks and branches alone, against the branches run separately
            out["branches_spent"] = out["trunks"] + out["cooldowns"]
            out["branches_separate"] = float(c[branch].sum())
            out["branches_ratio"] = (out["branches_spent"] / out["branches_separate"]
                                     if out["branches_separate"] > 0 else math.nan)
    return out


def compute_text(cs: dict) -> str:
    """One paragraph on the compute actually spent (for summary.md)."""
    def f(v):
        return f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else "n/a"
    line = (f"Cooldown branches: {cs['n_trunks']} trunk(s) and {cs['n_branches']} branch(es)"
            + (f" beside {cs['n_runs']} separate run(s)" if cs["n_runs"] else "")
            + f" spent C = {f(cs['spent'])} FLOPs in training (trunks {f(cs['trunks'])} once + cooldowns "
            f"{f(cs['cooldowns'])}"
            + (f" + separate runs {f(cs['spent'] - cs['trunks'] - cs['cooldowns'])}" if cs["n_runs"] else "")
            + f"); as separate runs from step 0 the same results would cost {f(cs['separate'])}: "
            f"{f(cs['ratio'])}x ({cs.get('convention') or 'accounting as in the table'}")
    if math.isfinite(cs.get("ratio_with_eval", math.nan)):
        line += (f"; with evaluation (forward passes, C/(3D) per token) {f(cs['spent_with_eval'])} "
                 f"against {f(cs['separate_with_eval'])}: {f(cs['ratio_with_eval'])}x, of which "
                 f"evals {f(cs['eval_spent'])} against {f(cs['eval_separate'])}")
    elif "ratio_with_eval" in cs:
        line += "; evaluation FLOPs not known (results without eval_forward_tokens): training only"
    if cs["n_runs"]:
        line += (f"; the trunks and branches alone: {f(cs['branches_spent'])} against "
                 f"{f(cs['branches_separate'])} for the branches run separately, "
                 f"{f(cs['branches_ratio'])}x")
    extra = [f"{k}: {f(cs['spent_' + k])} vs {f(cs['separate_' + k])} = {f(cs['ratio_' + k])}x"
             for k in ("C_exact", "C_6ND") if f"spent_{k}" in cs]
    if extra:
        line += "; " + "; ".join(extra)
    line += ")."
    if cs["n_not_counted"]:
        line += (f" {cs['n_not_counted']} row(s) whose status is not "
                 f"{'/'.join(cs['statuses_counted'])} are not counted (their compute is not known).")
    return line


def split_curves(curves: pd.DataFrame, roles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(branch and plain-run curves from their own start, trunk curves drawn once).

    A branch's rows at steps before its branch step k are its trunk's (copied there by the
    training loop) and are dropped; the row at k is kept so the branch's line starts where
    it leaves the trunk. ``roles``: a table with point_id, role, branched_at_step (and
    trunk). Trunk curves come back separately, for figures only (never fitted).
    """
    if curves is None or not len(curves) or "role" not in roles.columns:
        return curves, curves.iloc[0:0] if curves is not None else curves
    role = dict(zip(roles["point_id"], roles["role"]))
    k = dict(zip(roles["point_id"], pd.to_numeric(roles["branched_at_step"], errors="coerce")))
    r = curves["point_id"].map(role)
    kk = curves["point_id"].map(k)
    trunk = r == "trunk"
    before = (r == "branch") & np.isfinite(kk) & (curves["step"] < kk) if "step" in curves else False
    own = curves[~trunk & ~before].copy()
    own.attrs = dict(curves.attrs)
    return own, curves[trunk].copy()


def fit_curves(curves: pd.DataFrame, roles: pd.DataFrame) -> pd.DataFrame:
    """Curves the frontier may fit: no trunk rows at all (a branch's rows from strictly
    after its branch step; the row at k is the trunk's loss)."""
    own, _ = split_curves(curves, roles)
    if own is None or not len(own) or "role" not in roles.columns or "step" not in own:
        return own
    k = own["point_id"].map(dict(zip(roles["point_id"],
                                     pd.to_numeric(roles["branched_at_step"], errors="coerce"))))
    out = own[~(np.isfinite(k) & (own["step"] <= k))].copy()
    out.attrs = dict(own.attrs)
    return out
