"""Points that a sweep's follow-up stages added, and why (for the report).

Three stages add points after the planned ones (scaling/sweep/stages.py; read here as plain JSON):

- IsoFLOP bracketing: a budget whose best size was at the edge of its sizes gets the next
  size outwards. Each such point's point.json has ``requested.stage = "bracket"`` and
  ``requested.bracket`` (the reason); followup.json's "bracket" section holds, per budget,
  whether its minimum is bracketed and, if not, the limit that stopped the stage.
- learning-rate widening: a best lr at the edge of the grid gets the next lr outwards
  (``requested.stage = "lr_widen"``, ``from_point``, ``lr``; followup.json "pairs").
- seed follow-up: more seeds at each pair's best lr (``requested.stage = "seed_followup"``).

The report lists every added point with its reason, and each budget or (optimizer, N)
pair the stage left undecided (still at an edge) with the stated limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

STAGES = ("bracket", "lr_widen", "seed_followup")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _why(stage: str, req: dict) -> str:
    if stage == "bracket":
        return str(req.get("bracket", "bracketing stage"))
    if stage == "lr_widen":
        return (f"learning rate {req.get('lr')}: the best lr of point {req.get('from_point')} "
                "was at the edge of its grid (next lr outwards)")
    return f"seed {req.get('seed')} at the best lr of point {req.get('from_point')}"


def added_points(folder: str | Path | None) -> dict | None:
    """{"points": [{stage, point_id, label, N, lr, why, status}], "bracket": [budgets not
    bracketed, with the limit], "lr_edges": [pairs still at an edge]} or None when the sweep
    folder has no added point and no followup.json."""
    if folder is None:
        return None
    folder = Path(folder)
    rows = []
    pts = folder / "points"
    for d in sorted(pts.glob("*")) if pts.is_dir() else []:
        meta = _read_json(d / "point.json") or {}
        req = meta.get("requested") or {}
        stage = req.get("stage")
        if stage not in STAGES:
            continue
        res = _read_json(d / "result.json")
        status = (res.get("status", "done") if isinstance(res, dict) else
                  "failed" if (d / "failed.json").exists() else "pending")
        rows.append({"stage": stage, "point_id": d.name, "label": meta.get("label", ""),
                     "N": meta.get("N"), "lr": (meta.get("config") or {}).get("optim", {}).get("lr"),
                     "why": _why(stage, req), "status": status})
    fu = _read_json(folder / "followup.json") or {}
    if not rows and not fu:
        return None
    unbracketed = [{"group": b.get("group"), "budget": b.get("budget"), "best": b.get("best"),
                    "edge": b.get("edge"), "limit": b.get("limit")}
                   for b in (fu.get("bracket") or {}).get("budgets", []) if not b.get("bracketed")]
    edges = [{"optimizer": p.get("optimizer"), "N": p.get("N"), "best_lr": p.get("best_lr"),
              "on_edge": p.get("on_edge"), "tried": p.get("tried")}
             for p in fu.get("pairs", []) if p.get("on_edge")]
    n_budgets = len((fu.get("bracket") or {}).get("budgets", []))
    return {"points": rows, "bracket_unresolved": unbracketed, "n_budgets_looked_at": n_budgets,
            "lr_edges": edges, "has_followup_json": bool(fu)}


def added_points_section(added: dict) -> str:
    """The summary.md section: a table of added points and the stages' open ends."""
    lines = ["## Points added by follow-up stages\n"]
    pts = pd.DataFrame(added["points"])
    if len(pts):
        for stage, g in pts.groupby("stage", sort=False):
            lines.append(f"- {stage}: {len(g)} point(s) added")
        lines.append("")
        lines.append("| stage | point | label | N | lr | status | why |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in pts.itertuples():
            n = f"{float(r.N):.3g}" if r.N is not None and r.N == r.N else "–"
            lr = f"{float(r.lr):.3g}" if r.lr is not None and r.lr == r.lr else "–"
            lines.append(f"| {r.stage} | `{r.point_id}` | {r.label} | {n} | {lr} | {r.status} | "
                         f"{str(r.why).replace('|', '/')} |")
    else:
        lines.append("- no point was added by a follow-up stage")
    if added["n_budgets_looked_at"]:
        left = added["bracket_unresolved"]
        lines.append("")
        lines.append(f"- bracketing: {added['n_budgets_looked_at'] - len(left)} of "
                     f"{added['n_budgets_looked_at']} budget series bracket their minimum"
                     + ("" if not left else "; not bracketed: " + "; ".join(
                         f"{b['group']} (C = {float(b['budget']):.3g}, best {b['best']}, "
                         f"{b['edge']} edge): {b['limit']}" if b.get("budget") is not None else
                         f"{b['group']}: {b['limit']}" for b in left)))
    for e in added["lr_edges"]:
        lines.append(f"- learning rate still at the {e['on_edge']} edge for {e['optimizer']} at "
                     f"N = {e['N']}: best {e['best_lr']} of {e['tried']} (a bound, not an optimum)")
    return "\n".join(lines) + "\n"
