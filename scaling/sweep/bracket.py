"""IsoFLOP budgets that bracket their own minimum: the decisions of the bracketing stage.

A spec asks for it with

    [followup]
    bracket = { max_extra = 4 }   # at most this many sizes added per budget

and a [sweep.compute] axis. After the budgets have run (scaling.sweep.stages drives it), each
budget's SERIES (its points that differ only in size: same budget, same other axes; seeds
pooled, the loss of a size being the mean final eval loss of its finished seeds) is
looked at once every point of it has finished:

  - its best size is the one with the lowest loss among sizes with status done;
  - if a done size lies on each side of it, the minimum is bracketed: nothing to add;
  - otherwise the next size outwards on the open side is planned: the next preset of
    scaling.config.presets (by exact N) for a preset ladder, or, for a ladder of target N, the
    edge's target times the ladder's own step (edge target / its inner neighbour's; 2x
    with one size), snapped by the table's shape rule (stepping on while the snapped shape
    is one already tried, at most 4 steps). The new point is its source planned at the
    new size by the same [sweep] table (`SweepSpec.resize`): same budget, accounting,
    axes, overrides, warm-up, lr law, cooldown rule; one per seed of the best size.
  - limits, each reported instead of a new size: the end of the preset ladder, no new
    shape from the shape rule, the size does not fit the budget (the planner's reason:
    tokens_per_param_range, less than one batch, warm-up), max_extra sizes added to the
    budget already, or the next size outward was tried and did not finish.

Each added point's `requested["bracket"]` says why it was added. Everything here plans;
nothing trains, so it is tested with a fake results table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pandas as pd

from scaling.config.presets import presets_of
from scaling.sweep.points import Point, SweepSpec, param_counts

FINISHED = ("done", "diverged", "failed")
_SIZE_KEYS = ("model.n_layer", "model.d_model", "model.n_head", "model.d_ff", "model.preset",
              "train.steps", "train.eval_every", "train.seed", "train.data_seed",
              "optim.warmup_steps", "data.cache_dir")
MAX_SNAP_STEPS = 4


def series_key(p: Point) -> str:
    """Budget plus the semantic config less what changes with the size (and the seed)."""
    d = p.config.semantic_dict()
    drop = list(_SIZE_KEYS) + (["optim.lr"] if "lr_law" in p.requested else [])
    for dotted in drop:
        section, key = dotted.split(".")
        d.get(section, {}).pop(key, None)
    return json.dumps([p.group, p.compute_budget, d], sort_keys=True, separators=(",", ":"))


def propose(spec: SweepSpec, points: list[Point], results: pd.DataFrame, max_extra: int,
            added: dict[str, int], column: str = "final_eval_loss"
            ) -> tuple[list[Point], list[dict]]:
    """(points to run next, one decision per budget series) from the results so far.

    `points`: the IsoFLOP points planned so far (the spec's and those added by earlier
    rounds); `added`: series key -> sizes added to it so far (updated here); trunks and
    other points without a budget are ignored.
    """
    rows = results.set_index("point_id") if len(results) else None
    series: dict[str, list[Point]] = {}
    for p in points:
        if p.compute_budget is not None and p.role != "trunk":
            series.setdefault(series_key(p), []).append(p)
    new: list[Point] = []
    decisions = []
    for key, pts in series.items():
        decision, made = _decide(spec, key, pts, rows, max_extra, added, column)
        decisions.append(decision)
        new += made
    return new, decisions


def _status(rows, p: Point, column: str) -> tuple[str, float]:
    if rows is None or p.point_id not in rows.index:
        return "pending", math.nan
    row = rows.loc[p.point_id]
    status = str(row["status"])
    value = row[column] if column in row.index else math.nan
    return status, (float(value) if status == "done" and not pd.isna(value) else math.nan)


def _decide(spec, key, pts, rows, max_extra, added, column) -> tuple[dict, list[Point]]:
    first = pts[0]
    by_size: dict[int, list[Point]] = {}
    for p in sorted(pts, key=lambda p: p.n_params):
        by_size.setdefault(p.n_params, []).append(p)
    sizes = []
    for n, group in by_size.items():
        states = [_status(rows, p, column) for p in group]
        losses = [v for s, v in states if s == "done" and math.isfinite(v)]
        sizes.append({"size": group[0].requested.get("size", group[0].label), "N": n,
                      "loss": sum(losses) / len(losses) if losses else None,
                      "status": sorted({s for s, _ in states}),
                      "finished": all(s in FINISHED for s, _ in states)})
    decision: dict[str, Any] = {
        "group": first.group, "budget": first.compute_budget, "sizes": sizes,
        "best": None, "edge": None, "bracketed": False, "limit": None,
        "added_so_far": added.get(key, 0)}
    if not all(s["finished"] for s in sizes):
        decision["limit"] = "waiting: not every point of the budget has finished"
        return decision, []
    done = [i for i, s in enumerate(sizes) if s["loss"] is not None]
    if not done:
        decision["limit"] = "no size of the budget finished with status done"
        return decision, []
    best = min(done, key=lambda i: (sizes[i]["loss"], i))
    decision["best"] = sizes[best]["size"]
    below = [i for i in done if i < best]
    above = [i for i in done if i > best]
    if below and above:
        decision["bracketed"] = True
        return decision, []
    side = "small" if not below else "large"
    decision["edge"] = side
    outer = range(best - 1, -1, -1) if side == "small" else range(best + 1, len(sizes))
    unfinished = [sizes[i] for i in outer]
    if unfinished:  # tried, but not done: its loss is unknown
        s = unfinished[0]
        decision["limit"] = (f"the next {'smaller' if side == 'small' else 'larger'} size "
                             f"{s['size']} was tried and ended {'/'.join(s['status'])}")
        return decision, []
    if added.get(key, 0) >= max_extra:
        decision["limit"] = f"max_extra = {max_extra} sizes already added to this budget"
        return decision, []
    made, why_not = _next_size(spec, by_size, sizes, best, side)
    if not made:
        decision["limit"] = why_not
        return decision, []
    why = (f"bracket: budget {first.group} (C = {first.compute_budget:.3g})'s best size "
           f"{sizes[best]['size']} was at the {side} edge")
    made = [dataclasses.replace(p, requested={**p.requested, "stage": "bracket",
                                              "bracket": why})
            for p in made]
    added[key] = added.get(key, 0) + 1
    decision["added"] = [{"id": p.point_id, "size": p.requested.get("size"), "N": p.n_params,
                          "why": why} for p in made]
    return decision, made


def _next_size(spec: SweepSpec, by_size: dict[int, list[Point]], sizes: list[dict], best: int,
               side: str) -> tuple[list[Point], str]:
    """The best size's points (one per seed) planned at the next size outwards, or why not."""
    srcs = by_size[sizes[best]["N"]]
    src = srcs[0]
    tried = set(by_size)
    edge = sizes[best]["size"]
    outward = (lambda n: n < sizes[best]["N"]) if side == "small" else \
        (lambda n: n > sizes[best]["N"])
    word = "smaller" if side == "small" else "larger"
    if "preset" in src.requested:
        ladder = _preset_ladder(src)
        beyond = [(n, name) for n, name in ladder if outward(n) and n not in tried]
        if not beyond:
            return [], f"ladder end: no preset {word} than {edge} in scaling.config.presets"
        _, name = beyond[-1] if side == "small" else beyond[0]
        return _resized(spec, srcs, {"preset": name})
    if "n_target" in src.requested:
        t_edge = float(src.requested["n_target"])
        inner = best + 1 if side == "small" else best - 1
        if 0 <= inner < len(sizes) and "n_target" in by_size[sizes[inner]["N"]][0].requested:
            ratio = t_edge / float(by_size[sizes[inner]["N"]][0].requested["n_target"])
        else:
            ratio = 0.5 if side == "small" else 2.0
        target = t_edge
        for _ in range(MAX_SNAP_STEPS):
            target *= ratio
            made, why_not = _resized(spec, srcs, {"n_target": target})
            if not made:
                return [], why_not
            n = made[0].n_params
            if outward(n) and n not in tried:
                return made, ""
        return [], (f"shape-rule range: {MAX_SNAP_STEPS} steps of the ladder {word} than "
                    f"{edge} snap to no new shape")
    return [], f"the sizes of budget {src.group} come from no ladder (explicit shapes)"


def _resized(spec: SweepSpec, srcs: list[Point], size: dict) -> tuple[list[Point], str]:
    made = []
    for s in srcs:
        p, why_not = spec.resize(s, **size)
        if p is None:
            what = size.get("preset") or f"target N {size['n_target']:.3g}"
            return [], f"size {what} does not fit the budget: {why_not}"
        made.append(p)
    return made, ""


def _preset_ladder(src: Point) -> list[tuple[int, str]]:
    """(exact non-embedding N, name) of every preset with the source's other model keys."""
    out = []
    for name, shape in presets_of(src.config.model.arch).items():
        m = dataclasses.replace(src.config.model, preset="", d_ff=0, **shape)
        out.append((param_counts(m)[0], name))
    return sorted(out)
