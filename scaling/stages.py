"""The learning-rate follow-up of a sweep: widen edge optima, then more seeds at the best.

A fair optimizer comparison tunes the learning rate of every (optimizer, size) pair and
then re-runs each pair's best rate with more seeds. A spec asks for this with

    [followup]
    seeds = [1, 2]          # extra seeds at each pair's best learning rate
    metric = "val_loss"     # what "best" minimises: val_loss (final eval) or train_loss
    widen = 2               # up to this many extra grid values past an edge optimum

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

from scaling.sweep import Point, SweepSpec, point_id, seed_followup

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


def run_followup(spec: SweepSpec, sweep_dir: Path, execute: Callable[[list[Point]], pd.DataFrame]) -> dict:
    """Run the [followup] stage; `execute(points)` runs points and returns the results table.

    Writes followup.json in the sweep folder: per pair the best rate, the rates tried,
    and whether the optimum is still on an edge.
    """
    fu = spec.followup
    metric = fu.get("metric", "val_loss")
    if metric not in METRICS:
        from scaling.sweep import SpecError

        raise SpecError(f"followup.metric = {metric!r}: allowed: {', '.join(METRICS)}")
    limit = int(fu.get("widen", 2))
    stage1 = [p for p in spec.points if p.group != "seeds"]
    widened: dict[tuple, int] = {}
    results = execute([])
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
    (sweep_dir / "followup.json").write_text(json.dumps(report, indent=2, default=str))
    return report
