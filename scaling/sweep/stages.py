"""Follow-up stages of a sweep: IsoFLOP bracketing; widen edge learning rates, then seeds.

Seeds at IsoFLOP points (`followup.seeds_at = { size = "middle", budgets = 3 }` with
`seeds`): the middle size of the smallest budgets re-run with each seed, a cooldown branch
from its own trunk at that seed (scaling.sweep.followup.seed_points); it replaces the
seeds at the best learning rates. analysis.noise pools their spread into the fits' noise.

IsoFLOP bracketing (`followup.bracket = { max_extra = 4 }`): while a budget's best size is
the smallest or largest tried, the next size outwards is planned and run, up to stated
limits; the rule is in scaling.sweep.bracket, the driver is `run_bracket`.

A validation run (`followup.validate = [10]`), last: the law fitted on the sweep's results
predicts, then a run at 10x the largest budget checks it (scaling.sweep.validate).

A fair optimizer comparison tunes the learning rate of every (optimizer, size) pair and
then re-runs each pair's best rate with more seeds. A spec asks for this with

    [followup]
    seeds = [1, 2]          # extra seeds at each pair's best learning rate
    metric = "val_loss"     # what "best" minimises: val_loss (final eval) or train_loss
    widen = 2               # up to this many extra grid values past an edge optimum

(seeds and widen default to [1, 2] and 2, unless the table gives only `bracket`: then
this stage is off.)

After the spec's points have run, for each pair the best learning rate is read off the
results (a diverged or failed run counts as infinitely bad). If it lies on the edge of the
rates tried, the grid is extended one step further on that side (a step is the grid's own
geometric ratio) and the new point is run; up to `widen` times per side. An optimum still
on the edge after that is reported, not hidden. Then `seed_followup` adds the seeds.
Everything is a plain sweep point in the same sweep folder, so a killed follow-up resumes
like any other point, and rerunning the sweep recomputes the same decisions from the same
results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from scaling.sweep import Point, SweepSpec, bracket, point_id, seed_followup
from scaling.sweep.followup import run_seed_points
from scaling.sweep.validate import run_validate

log = logging.getLogger(__name__)

METRICS = {"val_loss": "final_eval_loss", "eval_loss": "final_eval_loss",
           "train_loss": "final_train_loss"}


def _pair(p: Point) -> tuple[str, int]:
    return (p.config.optim.name, p.n_params)


def derive(src: Point, lr: float, *, group: str) -> Point:
    """`src` with another learning rate: a new point with its own stable id."""
    name, n = re.subn(r"_lr[^_]+", f"_lr{lr:.3g}", src.config.name, count=1)
    cfg = src.config.replace({"optim.lr": lr, "name": name if n else f"{name}_lr{lr:.3g}"})
    return dataclasses.replace(src, point_id=point_id(cfg), config=cfg, group=group,
                               requested={**src.requested, "stage": "lr_widen",
                                          "from_point": src.point_id, "lr": lr})


def best_rates(points: list[Point], results: pd.DataFrame, metric: str) -> dict:
    """(optimizer, N) -> {"best": lr, "tried": [lrs], "edge": "low" | "high" | None, ...}.

    Only pairs whose every point has finished (done, diverged or failed) are decided.
    """
    column = METRICS[metric]
    rows = results.set_index("point_id")
    out = {}
    by_pair: dict[tuple, list[Point]] = {}
    for p in points:
        by_pair.setdefault(_pair(p), []).append(p)
    for pair, pts in by_pair.items():
        scores = {}
        for p in pts:
            if p.point_id not in rows.index:
                break
            row = rows.loc[p.point_id]
            if row["status"] not in ("done", "diverged", "failed"):
                break
            value = row[column] if row["status"] == "done" else math.inf
            scores[p.config.optim.lr] = math.inf if pd.isna(value) else float(value)
        else:
            tried = sorted(scores)
            best = min(tried, key=lambda lr: (scores[lr], lr))
            edge = None
            if len(tried) > 1 and math.isfinite(scores[best]):
                edge = "low" if best == tried[0] else "high" if best == tried[-1] else None
            out[pair] = {"best": best, "tried": tried, "edge": edge, "scores": scores,
                         "points": {p.config.optim.lr: p for p in pts}}
    return out


def widen(decisions: dict, limit: int, widened: dict[tuple, int]) -> list[Point]:
    """One more grid value past each edge optimum (at most `limit` per pair and side)."""
    new = []
    for pair, d in decisions.items():
        if d["edge"] is None or widened.get((pair, d["edge"]), 0) >= limit:
            continue
        tried = d["tried"]
        if d["edge"] == "low":
            ratio = tried[1] / tried[0]
            lr, src = tried[0] / ratio, d["points"][tried[0]]
        else:
            ratio = tried[-1] / tried[-2]
            lr, src = tried[-1] * ratio, d["points"][tried[-1]]
        widened[(pair, d["edge"])] = widened.get((pair, d["edge"]), 0) + 1
        new.append(derive(src, float(f"{lr:.4g}"), group="lr_widen"))
    return new


def wanted(spec: SweepSpec) -> bool:
    """Whether the spec asks for a follow-up stage (learning rates, seeds, bracketing or a
    validation run)."""
    fu = spec.followup
    return bool(fu.get("seeds") or fu.get("widen") or fu.get("bracket") or fu.get("validate"))


def run_followup(spec: SweepSpec, sweep_dir: Path,
                 execute: Callable[[list[Point]], pd.DataFrame]) -> dict:
    """Run the [followup] stages; `execute(points)` runs points and returns the results table.

    First the IsoFLOP bracketing (`followup.bracket`, `run_bracket`), then the
    learning-rate stage (`widen`, `seeds`). Writes followup.json in the sweep folder: per
    pair the best rate, the rates tried, and whether the optimum is still on an edge; per
    budget the sizes tried, the best, and the points added and why (key "bracket").
    """
    fu = spec.followup
    metric = fu.get("metric", "val_loss")
    if metric not in METRICS:
        from scaling.sweep import SpecError

        raise SpecError(f"followup.metric = {metric!r}: allowed: {', '.join(METRICS)}")
    results = execute([])
    report: dict = {}
    if fu.get("bracket"):
        report["bracket"], results = run_bracket(spec, execute, results, metric)
    if fu.get("seeds_at"):  # seeds at a few IsoFLOP points, not at every best lr
        report["seeds"], results = run_seed_points(spec, execute, fu["seeds"], fu["seeds_at"])
    elif fu.get("seeds") or fu.get("widen"):
        report.update(_lr_stage(spec, execute, results, metric))
    if fu.get("validate"):  # last: a run at k x the largest budget checks the law (validate.py)
        report["validate"], results = run_validate(spec, sweep_dir, execute, execute([]))
    (sweep_dir / "followup.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def run_bracket(spec: SweepSpec, execute: Callable[[list[Point]], pd.DataFrame],
                results: pd.DataFrame, metric: str = "val_loss") -> tuple[dict, pd.DataFrame]:
    """Add sizes outwards until every IsoFLOP budget's minimum is bracketed or a limit is hit.

    The rule and its limits are in scaling.sweep.bracket. Each round proposes at most one
    size per budget series from the results so far, runs the new points and looks again.
    Returns (report, the results table after the last round).
    """
    max_extra = spec.followup["bracket"]["max_extra"]
    pool = [p for p in spec.points if p.compute_budget is not None]
    added: dict[str, int] = {}
    extra: list[Point] = []
    while True:
        new, decisions = bracket.propose(spec, pool, results, max_extra, added,
                                         METRICS[metric])
        known = {p.point_id for p in pool}
        new = [p for p in new if p.point_id not in known]
        if not new:
            break
        for p in new:
            log.info("%s: adding %s (%s)", spec.name, p.label, p.requested["bracket"])
        pool += new
        extra += new
        results = execute(new)
    for d in decisions:
        if not d["bracketed"]:
            log.warning("budget %s (C = %.3g): minimum not bracketed (best %s): %s", d["group"],
                        d["budget"], d["best"], d["limit"])
    report = {"max_extra": max_extra, "metric": metric, "budgets": decisions,
              "added_points": [{"id": p.point_id, "label": p.label, "why": p.requested["bracket"]}
                               for p in extra]}
    return report, results


def _lr_stage(spec: SweepSpec, execute: Callable[[list[Point]], pd.DataFrame],
              results: pd.DataFrame, metric: str) -> dict:
    """Widen edge learning rates, then seeds at each pair's best (module docstring)."""
    fu = spec.followup
    limit = int(fu.get("widen", 2))
    stage1 = [p for p in spec.points if p.group != "seeds"]
    widened: dict[tuple, int] = {}
    while True:
        decisions = best_rates(stage1, results, metric)
        new = [p for p in widen(decisions, limit, widened)
               if p.point_id not in {q.point_id for q in stage1}]
        if not new:
            break
        for p in new:
            log.info("learning rate %s of %s at N=%d is on the grid's edge: adding lr %.3g",
                     p.requested["from_point"], p.config.optim.name, p.n_params, p.config.optim.lr)
        stage1 += new
        results = execute(new)
    best = {pair: d["best"] for pair, d in decisions.items()}
    seeds = fu.get("seeds", [])
    followers = seed_followup(spec, best, seeds=seeds, points=stage1) if seeds else []
    if followers:
        results = execute(followers)
    report = {
        "metric": metric,
        "pairs": [
            {"optimizer": pair[0], "N": pair[1], "best_lr": d["best"], "tried": d["tried"],
             "on_edge": d["edge"], "scores": {f"{lr:.4g}": s for lr, s in d["scores"].items()}}
            for pair, d in sorted(decisions.items())
        ],
        "seed_points": [p.point_id for p in followers],
        "widened_points": [p.point_id for p in stage1 if p.group == "lr_widen"],
    }
    edges = [r for r in report["pairs"] if r["on_edge"]]
    for r in edges:
        log.warning("best lr of %s at N=%d is still on the %s edge of %s", r["optimizer"], r["N"],
                    r["on_edge"], r["tried"])
    return report
