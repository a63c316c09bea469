"""Planning: from a merged spec table to the spec's points.

`plan_spec` checks the spec-level keys, builds each [sweep] table's drafts
(`scaling.sweep.axes`) and the [[point]] tables' (`explicit_points` here), resolves each
draft into a Point (`scaling.sweep.resolve`: overrides, D and steps, warm-up, evals, lr
law), drops IsoFLOP sizes that do not fit their budget, turns the tables with
[sweep.cooldown] into trunks and branches (`scaling.sweep.cooldown`) and keeps a resizer
per IsoFLOP point. The rules are in the package docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

from scaling.config import SECTIONS, ConfigError, build_section, preset_values
from scaling.sweep.axes import axis_keys, grid_drafts
from scaling.sweep.checks import (Schedule, check_cooldown, check_followup, check_overrides,
                                  check_slurm, dotted_table, number_list, schedule_keys)
from scaling.sweep.cooldown import apply_cooldown
from scaling.sweep.ladder import ladder_shape
from scaling.sweep.points import Point, SweepSpec, axis_label
from scaling.sweep.resolve import Draft, apply_sets, arch_of, base_model, resolve_point
from scaling.sweep.spec import (DATA_AXIS_KEYS, EXECUTORS, POINT_KEYS, SWEEP_KEYS, SpecError,
                                check_keys, spec_accounting, suggest)
from scaling.sweep.validate import check_validate

log = logging.getLogger(__name__)


def plan_spec(path: Path, raw: dict, base_over: dict, variant: str | None) -> SweepSpec:
    """The planning half of `load_spec`: a merged spec table (`spec.read_spec`) -> SweepSpec.

    Checks the spec-level keys (name, executor, accounting, slurm, followup), builds each
    [sweep] grid and the [[point]] tables into drafts, resolves every draft into a Point,
    drops IsoFLOP sizes that do not fit their budget (noted; an empty budget is an error),
    turns the points of tables with [sweep.cooldown] into trunks and branches, keeps for
    every IsoFLOP point a resizer (the bracketing stage's `SweepSpec.resize`) and drops
    duplicate points with one warning line each.
    """
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise SpecError(f"{path}: name = {name!r}: must be a non-empty string without '/'")
    executor = raw.get("executor", "local")
    if executor not in EXECUTORS:
        raise SpecError(f"{path}: executor = {executor!r}: unknown executor"
                        f"{suggest(str(executor), list(EXECUTORS))}; allowed: "
                        f"{', '.join(repr(e) for e in EXECUTORS)}")
    slurm = check_slurm(raw.get("slurm", {}), path)
    followup = check_followup(raw["followup"], path) if "followup" in raw else {}
    acc = spec_accounting(raw, path)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{path}: description must be a string")

    base = _base_dict(raw, base_over, path)
    notes: list[str] = []
    rules = check_overrides(raw.get("override", []), path)
    grids = raw.get("sweep", {})
    grids = grids if isinstance(grids, list) else [grids]  # [sweep] or several [[sweep]]
    drafts: list[Draft] = []
    first_schedule = Schedule()
    cooldowns: dict[int, dict] = {}
    for i, sweep in enumerate(grids):
        where = "sweep" if len(grids) == 1 else f"sweep[{i}]"
        try:
            check_keys(sweep, SWEEP_KEYS, "sweep", path)
            schedule = schedule_keys(path, sweep, "sweep")
            _check_table_rules(path, sweep, schedule)
            if "cooldown" in sweep:
                cooldowns[i] = check_cooldown(path, sweep["cooldown"], "sweep")
            grid = grid_drafts(path, sweep, base, notes, acc)
        except SpecError as e:
            if where == "sweep":
                raise
            raise SpecError(f"{e} (in the [[sweep]] table number {i}, counting from 0)") from None
        if i == 0:
            first_schedule = schedule
        for d in grid:
            d.schedule, d.table = schedule, i
        drafts += grid
    drafts += explicit_points(path, raw.get("point", []), first_schedule)
    if followup.get("bracket") and not any(d.budget is not None for d in drafts):
        raise SpecError(f"{path}: followup.bracket brackets IsoFLOP budgets: it needs a "
                        "[sweep.compute] axis")
    if followup.get("seeds_at") and not any(d.budget is not None for d in drafts):
        raise SpecError(f"{path}: followup.seeds_at picks IsoFLOP points: it needs a [sweep.compute] axis")
    if "validate" in followup:
        followup["validate"] = check_validate(path, followup["validate"],
                                              any(d.budget is not None for d in drafts))

    resolved: list[tuple[Draft, Point]] = []
    dropped: dict[tuple[str, float], list[str]] = {}
    for draft in drafts:
        point = resolve_point(path, base, draft, rules, dropped, acc)
        if point is not None:
            resolved.append((draft, point))
    for (gname, budget), reasons in dropped.items():
        if not any(p.group == gname and p.compute_budget == budget for _, p in resolved):
            raise SpecError(f"{path}: sweep.compute.budgets: budget {gname} (C = {budget:.3g}, "
                            f"accounting {acc!r}) fits no model size: {'; '.join(reasons)}")
        notes.append(f"budget {gname}: dropped {'; '.join(reasons)}")
    points, resizers = _cooldown_tables(path, resolved, cooldowns, base, rules, acc,
                                        len(grids))

    unique: dict[str, Point] = {}
    for p in points:
        if p.point_id in unique:
            msg = (f"point {p.label} (group {p.group or '-'}) duplicates {unique[p.point_id].label} "
                   f"(id {p.point_id}); kept the first")
            log.warning("%s: %s", path, msg)  # one line on stderr, no source line
            notes.append(msg)
            continue
        unique[p.point_id] = p
    if not unique:
        raise SpecError(f"{path}: the spec plans no points")
    return SweepSpec(name=name, path=path, executor=executor, slurm=slurm,
                     points=tuple(unique.values()), raw=raw, description=description,
                     variant=variant, followup=followup, notes=tuple(notes),
                     accounting=acc, resizers=resizers,
                     cooldown=tuple(cooldowns[i] for i in sorted(cooldowns)))


def _check_table_rules(path: Path, sweep: dict, schedule: Schedule) -> None:
    """Keys of one [sweep] table that would contradict its lr law or its cooldown rule."""
    axes = axis_keys(sweep.get("axes", {})) if isinstance(sweep.get("axes"), dict) else {}
    if schedule.lr_law is not None and "optim.lr" in axes:
        raise SpecError(f"{path}: sweep.lr_law sets optim.lr per size; it cannot be combined "
                        "with an optim.lr axis in [sweep.axes]")
    if "cooldown" in sweep:
        if "data" not in sweep and "compute" not in sweep:
            raise SpecError(f"{path}: [sweep.cooldown] branches one trunk per size at several "
                            "D: it needs a [sweep.data] or [sweep.compute] axis")
        clash = [a for a in axes if a in ("optim.schedule", "optim.decay_fraction",
                                          "optim.decay_shape", "optim.warmup_steps")]
        if clash:
            raise SpecError(f"{path}: axis {clash[0]!r} conflicts with [sweep.cooldown], which "
                            "sets the schedule of its trunks and branches")


def _cooldown_tables(path: Path, resolved: list[tuple[Draft, Point]], cooldowns: dict,
                     base: dict, rules: list, acc: str, n_tables: int
                     ) -> tuple[list[Point], dict]:
    """Apply each [sweep.cooldown] to its table's points; the resizers of IsoFLOP points.

    Returns (points in plan order, {point id: resize callable}); a table with a cooldown
    rule is replaced, in place, by its trunks and branches (`scaling.sweep.cooldown`).
    """
    out: list[Point] = []
    resizers: dict = {}
    done_tables: set[int] = set()
    for draft, point in resolved:
        cd = cooldowns.get(draft.table)
        if cd is None:
            out.append(point)
            became = {point.point_id: point}
        elif draft.table in done_tables:
            continue
        else:
            done_tables.add(draft.table)
            where = "sweep" if n_tables == 1 else f"sweep[{draft.table}]"
            table_points = [p for d, p in resolved if d.table == draft.table]
            made, became = apply_cooldown(path, table_points, cd, draft.schedule.evals, where)
            out += made
        for d, p in ([(draft, point)] if cd is None else
                     [(d, p) for d, p in resolved if d.table == draft.table]):
            if d.budget is not None:
                resizers[became[p.point_id].point_id] = functools.partial(
                    _resize, path, base, d, rules, acc, cooldowns.get(d.table))
    return out, resizers


def _resize(path: Path, base: dict, draft: Draft, rules: list, acc: str, cooldown: dict | None,
            *, preset: str | None = None, n_target: float | None = None,
            budget: float | None = None) -> tuple[Point | None, str, Any]:
    """The draft's point at another size (a preset or a target N snapped by its shape rule).

    Everything else is planned as for the original point; under a cooldown rule the new
    point, a single length of its size, is a plain wsd run (`scaling.sweep.cooldown`).
    `budget`: D from this compute budget instead of the draft's, outside the table's
    tokens_per_param_range (the validation stage, scaling.sweep.validate).
    Returns (point, "", the new point's own resizer), or (None, the planner's reason,
    None) where the size does not fit the budget.
    """
    requested = {k: v for k, v in draft.requested.items()
                 if k not in ("preset", "n_target", "tokens_per_param_target")}
    if budget is not None:
        requested.pop("tokens_per_param_range", None)
        requested["compute"] = float(budget)
        draft = dataclasses.replace(draft, budget=float(budget), data=("compute", float(budget)),
                                    requested=requested)
    if preset is not None:
        shape = preset_values(preset, arch_of({**base, **draft.sets}))
        sets = {"model.preset": preset, **{f"model.{k}": v for k, v in shape.items()}}
        size_label, requested["preset"] = preset, preset
    else:
        rule = {"aspect_ratio": None, "n_layer": None, "head_dim": None, "n_head": None,
                "d_multiple": None, **draft.requested.get("shape_rule", {})}
        shape = ladder_shape(n_target, base_model(base), **rule)
        sets = {"model.preset": "", **{f"model.{k}": v for k, v in shape.items()}}
        size_label, requested["n_target"] = "", n_target
    new = dataclasses.replace(draft, sets=apply_sets(draft.sets, sets), size_label=size_label,
                              requested=requested)
    dropped: dict = {}
    point = resolve_point(path, base, new, rules, dropped, acc)
    if point is None:
        return None, "; ".join(r for rs in dropped.values() for r in rs), None
    if cooldown is not None:
        made, _ = apply_cooldown(path, [point], cooldown, draft.schedule.evals)
        point = made[0]
    return point, "", functools.partial(_resize, path, base, new, rules, acc, cooldown)


def _base_dict(raw: dict, base_over: dict, path: Path) -> dict:
    """The base config as dotted keys; unknown keys and wrong types fail here."""
    base: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise SpecError(f"{path}: [{section}] must be a table of key = value")
        try:
            build_section(cls, section, values)
        except ConfigError as e:
            raise SpecError(f"{path}: base config: {e}") from None
        for k, v in values.items():
            base[f"{section}.{k}"] = v
    for dotted, value in base_over.items():
        if dotted == "name":
            continue
        section, key = dotted.split(".", 1)
        try:
            build_section(SECTIONS[section], section, {key: value})
        except ConfigError as e:
            raise SpecError(f"override: {e}") from None
        base[dotted] = value
    return _expand_preset(base)


def _expand_preset(sets: dict[str, Any]) -> dict[str, Any]:
    """With model.preset set, write its shape out under keys this dict does not set."""
    preset = sets.get("model.preset")
    if not preset:
        return dict(sets)
    out = {f"model.{k}": v for k, v in preset_values(preset, arch_of(sets)).items()}
    out.update(sets)
    return out


def explicit_points(path: Path, pts: Any, schedule: Schedule) -> list[Draft]:
    """The [[point]] tables -> drafts (set, D or D/N, group; schedule keys over `schedule`)."""
    if not isinstance(pts, list):
        raise SpecError(f"{path}: point must be an array of tables: [[point]]")
    out = []
    for i, p in enumerate(pts):
        where = f"point[{i}]"
        check_keys(p, POINT_KEYS, where, path)
        sched = schedule_keys(path, p, where).under(schedule)
        sets = dotted_table(path, f"{where}.set", p.get("set", {}))
        if "tokens" in p and "tokens_per_param" in p:
            raise SpecError(f"{path}: {where}: give tokens or tokens_per_param, not both")
        data = None
        for kind in DATA_AXIS_KEYS:
            if kind in p:
                data = (kind, number_list(path, f"{where}.{kind}", [p[kind]])[0])
        group = p.get("group", "")
        if not isinstance(group, str):
            raise SpecError(f"{path}: {where}.group = {group!r}: expected a string")
        label = [axis_label(k, v) for k, v in sets.items() if k != "model.preset"]
        out.append(Draft(sets=sets, group=group, data=data, label=label,
                          size_label=sets.get("model.preset", ""),
                          requested={"explicit": i, **({data[0]: data[1]} if data else {})},
                          protected=tuple(sets), schedule=sched))
    return out
