"""Follow-up stage: more seeds at the best learning rates (used by scaling.stages)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from scaling.sweep.points import Point, SweepSpec, point_id
from scaling.sweep.spec import SpecError


def seed_followup(spec: SweepSpec, best_lr: dict[tuple[str, int | str], float],
                  seeds: tuple[int, ...] | list[int] | None = (1, 2),
                  points: tuple[Point, ...] | list[Point] | None = None) -> list[Point]:
    """Points re-running each (optimizer, N) at its best learning rate with other seeds.

    `best_lr` maps (optimizer name, N) -> lr, N being `Point.n_params` (matched to 0.1%,
    so N rounded to 4 significant digits, as analysis.optimizers groups it, works) or the
    size label (e.g. a preset name); the lr must be one of the spec's grid values for that
    pair (relative tolerance 1e-9), not a refined optimum between grid points. Each new point is the matching stage-1 point with
    train.seed = s (and data order following it, as data_seed = -1 means "same as seed"),
    group "seeds", label suffix "_s<seed>", requested["from_point"] = the stage-1 id.
    Seeds equal to the stage-1 seed are skipped. `seeds=None` uses the spec's
    [followup] seeds. The runner calls this after stage 1 and runs the returned points
    in the same sweep folder; their ids are stable like every other point's. `points`:
    the stage-1 points to pick from (default: the spec's; scaling.stages adds the
    points of widened learning-rate grids).
    """
    if seeds is None:
        seeds = spec.followup.get("seeds", [1, 2])
    pool = spec.points if points is None else points
    out: dict[str, Point] = {}
    for key, lr in best_lr.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise SpecError(f"seed_followup: key {key!r}: expected (optimizer, N)")
        opt, n = key
        matches = [p for p in pool
                   if p.config.optim.name == opt and _same_size(p, n)
                   and math.isclose(p.config.optim.lr, float(lr), rel_tol=1e-9)]
        if not matches:
            lrs = sorted({p.config.optim.lr for p in pool if p.config.optim.name == opt
                          and _same_size(p, n)})
            raise SpecError(f"seed_followup: no point of {spec.name} has optim.name = {opt!r}, "
                            f"N = {n!r}, optim.lr = {lr!r}; lrs planned for that pair: "
                            f"{lrs or 'none (unknown optimizer or N)'}")
        for src in matches:
            for s in seeds:
                if s == src.config.train.seed:
                    continue
                cfg = src.config.replace({"train.seed": s, "name": f"{src.config.name}_s{s}"})
                pid = point_id(cfg)
                out.setdefault(pid, dataclasses.replace(
                    src, point_id=pid, config=cfg, group="seeds",
                    requested={**src.requested, "stage": "seed_followup",
                               "from_point": src.point_id, "seed": s}))
    return list(out.values())


def _same_size(p: Point, n: Any) -> bool:
    if isinstance(n, str):
        return p.requested.get("size") == n or p.config.model.preset == n
    return math.isclose(p.n_params, float(n), rel_tol=1e-3)
