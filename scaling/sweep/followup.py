"""Follow-up seeds (used by scaling.sweep.stages): more seeds at the best learning rates, or at a few
IsoFLOP points (`seeds_at`) to measure the seed-to-seed spread for the whole fit."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from scaling.sweep.points import Point, SweepSpec, point_id, train_flops_per_token
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
    the stage-1 points to pick from (default: the spec's; scaling.sweep.stages adds the
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


# ---------------------------------------------------------------------------- seeds at points
#
# [followup] seeds = [1, 2] with seeds_at = { size = "middle", budgets = 3 }: instead of every
# (optimizer, N) pair at its best learning rate, re-run a few IsoFLOP points with other seeds,
# to measure the seed-to-seed spread of one run cheaply (analysis.noise pools it into one
# relative seed sd for the whole fit). A cooldown branch continues its trunk, so a branch at
# another seed needs its own trunk at that seed: one per (size, seed), trained only as far as
# the latest chosen branch of that size leaves it.
# (followup.seeds_at is checked by scaling.sweep.checks.check_seeds_at.)


def chosen_points(spec: SweepSpec, at: dict) -> list[Point]:
    """The IsoFLOP points (branches or runs, never trunks) `seeds_at` picks, budgets ascending."""
    by_budget: dict[float, list[Point]] = {}
    for p in spec.points:
        if p.compute_budget is not None and p.role != "trunk":
            by_budget.setdefault(float(p.compute_budget), []).append(p)
    if not by_budget:
        raise SpecError(f"{spec.path}: followup.seeds_at picks IsoFLOP points: the spec has no "
                        "[sweep.compute] budgets")
    budgets = sorted(by_budget)[: at.get("budgets") or len(by_budget)]
    out = []
    for c in budgets:
        pts = sorted(by_budget[c], key=lambda p: (p.n_params_total, p.point_id))
        out.append(pts[(len(pts) - 1) // 2])
    return out


def seed_points(spec: SweepSpec, seeds, at: dict) -> list[Point]:
    """The points that re-run `chosen_points` with each seed in `seeds` (trunks first).

    A run is re-run with train.seed = s (data order follows the seed). A cooldown branch gets
    a trunk at seed s: its own trunk's config with train.seed = s, train.steps = the latest
    start among the chosen branches of that trunk and checkpoints kept at their starts; the
    branch's config with train.seed = s starts from it. Its point id is the id of the
    separate run of that config (scaling.sweep.cooldown). Each new point has
    requested["stage"] = "seed_followup", "seed" and "from_point"."""
    by_id = {p.point_id: p for p in spec.points}
    chosen = chosen_points(spec, at)
    trunks: dict[tuple[str, int], list[Point]] = {}
    out: dict[str, Point] = {}
    for p in chosen:
        for s in seeds:
            if s == p.config.train.seed:
                continue
            if p.role == "branch":
                trunks.setdefault((p.depends_on, int(s)), []).append(p)
                continue
            cfg = p.config.replace({"train.seed": int(s), "name": f"{p.config.name}_s{s}"})
            pid = point_id(cfg)
            out.setdefault(pid, dataclasses.replace(
                p, point_id=pid, config=cfg,
                requested={**p.requested, "stage": "seed_followup", "from_point": p.point_id, "seed": int(s)}))
    first: list[Point] = []
    for (tid0, s), branches in trunks.items():
        t0 = by_id[tid0]
        starts = sorted({int(b.branched_at_step) for b in branches})
        steps = starts[-1]
        every = min(t0.config.train.eval_every, steps) if t0.config.train.eval_every else 0
        # the curve evals each chosen branch's separate run makes before its k, as
        # scaling.sweep.cooldown plans a trunk's (train.eval_steps)
        evals = {j for b in branches if b.config.train.eval_every
                 for j in range(b.config.train.eval_every, int(b.branched_at_step), b.config.train.eval_every)}
        extra = sorted(j for j in evals if j < steps and not (every and j % every == 0))
        cfg = t0.config.replace({"train.seed": s, "train.steps": steps, "name": f"{t0.config.name}_s{s}_to{steps}",
                                 "train.save_steps": ",".join(str(k) for k in starts),
                                 "train.eval_every": every, "train.eval_steps": ",".join(map(str, extra))})
        tid = point_id(cfg)
        tokens = steps * cfg.train.batch_size * cfg.model.seq_len
        f6, fx = 6.0 * t0.n_params * tokens, train_flops_per_token(cfg.model) * tokens
        first.append(dataclasses.replace(
            t0, point_id=tid, config=cfg, tokens=tokens, flops_6nd=f6, flops_exact=fx,
            flops=fx if t0.accounting == "total" else f6, tokens_per_param=tokens / t0.n_accounted,
            requested={**t0.requested, "trunk": tid, "branch_steps": starts, "stage": "seed_followup",
                       "from_point": t0.point_id, "seed": s,
                       "derivation": f"trunk at seed {s} for the seed follow-up: constant lr, "
                                     f"steps = the latest chosen branch start = {steps}"}))
        for b in branches:
            bcfg = b.config.replace({"train.seed": s, "train.init_from": f"../{tid}",
                                     "name": f"{b.config.name}_s{s}"})
            bid = point_id(bcfg)
            out.setdefault(bid, dataclasses.replace(
                b, point_id=bid, config=bcfg,
                requested={**b.requested, "trunk": tid, "stage": "seed_followup",
                           "from_point": b.point_id, "seed": s}))
    return first + list(out.values())


def seed_cost(spec: SweepSpec, points: list[Point]) -> dict:
    """Training FLOPs (the spec's accounting, as spent: a branch its cooldown only) of the
    seed points against the spec's own points: {"extra", "base", "share", "points"}."""
    base = sum(p.flops_spent for p in spec.points)
    extra = sum(p.flops_spent for p in points)
    return {"extra": extra, "base": base, "share": extra / base if base else float("nan"),
            "points": len(points)}


def run_seed_points(spec: SweepSpec, execute, seeds, at: dict):
    """The `seeds_at` stage: run `seed_points` (trunks before their branches, as every
    executor orders them); returns (its followup.json entry, the results table)."""
    pts = seed_points(spec, seeds, at)
    results = execute(pts)
    cost = seed_cost(spec, pts)
    report = {"seeds": list(seeds), "at": at,
              "chosen": [p.label for p in chosen_points(spec, at)],
              "points": [{"id": p.point_id, "label": p.label, "role": p.role, "seed": p.requested["seed"],
                          "from_point": p.requested["from_point"]} for p in pts],
              "training_flops": cost}
    return report, results
