"""Planning: from a merged spec table to fully resolved points.

Axes (model, data, compute, seed, config fields) are built into drafts, combined as a
product (or zipped), [[override]] tables applied, D and steps derived, and each point's
config built with `scaling.config.from_dict`. The rules are in the package docstring.

Compute accounting (the spec's `accounting`, `points.charged_per_token`): a budget C buys
D = C / (FLOPs charged per token), i.e. D = C / (3 x forward matmul FLOPs per token)
under "total" and D = C / (6 N) under "kaplan", and "tokens per parameter" is D / N with
that accounting's N (N_total, or N non-embedding). Size ladders stay targets of
non-embedding N (the shape rule and the size labels speak of it).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config import (
    SECTIONS,
    Config,
    ConfigError,
    ModelConfig,
    build_section,
    from_dict,
    preset_values,
    split_key,
)
from scaling.sweep.cooldown import apply_cooldown
from scaling.sweep.ladder import ladder_shape
from scaling.sweep.points import (
    Point,
    SweepSpec,
    charged_per_token,
    train_flops_per_token,
    _axis_label,
    _num,
    _si,
    _size_label,
    param_counts,
    point_id,
)
from scaling.sweep.spec import (
    COMPUTE_KEYS,
    DATA_AXIS_KEYS,
    EXECUTORS,
    MODEL_AXIS_KEYS,
    POINT_KEYS,
    SWEEP_KEYS,
    Schedule,
    SpecError,
    check_cooldown,
    _check_followup,
    _check_keys,
    _check_overrides,
    _check_slurm,
    _dotted_table,
    _fields,
    _flatten,
    _is_int,
    _matches,
    _number_list,
    _schedule_keys,
    _suggest,
    spec_accounting,
)
from scaling.sweep.validate import check_validate

log = logging.getLogger(__name__)

_SHAPE_KEYS = ("n_layer", "d_model", "n_head", "d_ff")


@dataclass
class _Draft:
    """A point before its steps are derived: dotted overrides plus what was asked."""

    sets: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    budget: float | None = None
    data: tuple[str, float] | None = None  # ("tokens" | "tokens_per_param" | "compute", x)
    requested: dict = field(default_factory=dict)
    label: list[str] = field(default_factory=list)
    size_label: str = ""
    protected: tuple[str, ...] = ()  # keys [[override]] may not change ([[point]] set)
    schedule: Schedule = Schedule()  # warm-up, evaluations, lr law of its table
    table: int = -1  # index of its [sweep] table; -1 for [[point]] tables


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
                        f"{_suggest(str(executor), list(EXECUTORS))}; allowed: "
                        f"{', '.join(repr(e) for e in EXECUTORS)}")
    slurm = _check_slurm(raw.get("slurm", {}), path)
    followup = _check_followup(raw["followup"], path) if "followup" in raw else {}
    acc = spec_accounting(raw, path)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{path}: description must be a string")

    base = _base_dict(raw, base_over, path)
    notes: list[str] = []
    rules = _check_overrides(raw.get("override", []), path)
    grids = raw.get("sweep", {})
    grids = grids if isinstance(grids, list) else [grids]  # [sweep] or several [[sweep]]
    drafts: list[_Draft] = []
    first_schedule = Schedule()
    cooldowns: dict[int, dict] = {}
    for i, sweep in enumerate(grids):
        where = "sweep" if len(grids) == 1 else f"sweep[{i}]"
        try:
            _check_keys(sweep, SWEEP_KEYS, "sweep", path)
            schedule = _schedule_keys(path, sweep, "sweep")
            _check_table_rules(path, sweep, schedule)
            if "cooldown" in sweep:
                cooldowns[i] = check_cooldown(path, sweep["cooldown"], "sweep")
            grid = _grid(path, sweep, base, notes, acc)
        except SpecError as e:
            if where == "sweep":
                raise
            raise SpecError(f"{e} (in the [[sweep]] table number {i}, counting from 0)") from None
        if i == 0:
            first_schedule = schedule
        for d in grid:
            d.schedule, d.table = schedule, i
        drafts += grid
    drafts += _explicit_points(path, raw.get("point", []), first_schedule)
    if followup.get("bracket") and not any(d.budget is not None for d in drafts):
        raise SpecError(f"{path}: followup.bracket brackets IsoFLOP budgets: it needs a "
                        "[sweep.compute] axis")
    if followup.get("seeds_at") and not any(d.budget is not None for d in drafts):
        raise SpecError(f"{path}: followup.seeds_at picks IsoFLOP points: it needs a [sweep.compute] axis")
    if "validate" in followup:
        followup["validate"] = check_validate(path, followup["validate"],
                                              any(d.budget is not None for d in drafts))

    resolved: list[tuple[_Draft, Point]] = []
    dropped: dict[tuple[str, float], list[str]] = {}
    for draft in drafts:
        point = _resolve(path, base, draft, rules, dropped, acc)
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
    axes = _axis_keys(sweep.get("axes", {})) if isinstance(sweep.get("axes"), dict) else {}
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


def _cooldown_tables(path: Path, resolved: list[tuple[_Draft, Point]], cooldowns: dict,
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


def _resize(path: Path, base: dict, draft: _Draft, rules: list, acc: str, cooldown: dict | None,
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
        shape = preset_values(preset, _arch_of({**base, **draft.sets}))
        sets = {"model.preset": preset, **{f"model.{k}": v for k, v in shape.items()}}
        size_label, requested["preset"] = preset, preset
    else:
        rule = {"aspect_ratio": None, "n_layer": None, "head_dim": None, "n_head": None,
                "d_multiple": None, **draft.requested.get("shape_rule", {})}
        shape = ladder_shape(n_target, _base_model(base), **rule)
        sets = {"model.preset": "", **{f"model.{k}": v for k, v in shape.items()}}
        size_label, requested["n_target"] = "", n_target
    new = dataclasses.replace(draft, sets=_apply(draft.sets, sets), size_label=size_label,
                              requested=requested)
    dropped: dict = {}
    point = _resolve(path, base, new, rules, dropped, acc)
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
    out = {f"model.{k}": v for k, v in preset_values(preset, _arch_of(sets)).items()}
    out.update(sets)
    return out


def _arch_of(sets: dict[str, Any]) -> str:
    return sets.get("model.arch", "transformer")


def _family_shape(sets: dict[str, Any], draft: "_Draft", base: dict) -> dict[str, Any]:
    """`sets` with the draft's size re-derived for the point's family, where a sweep axis
    or a [[point]] set model.arch away from the base config's: a size (preset name or
    target N) means the same nominal N in every family, met by that family's ladder
    (scaling.config.presets, ladder_shape). Unchanged when the family is the base's."""
    arch, req = _arch_of(sets), draft.requested
    other_family = arch != _arch_of(base)
    if "n_target" in req:
        if not other_family:
            return sets
        rule = {"aspect_ratio": None, "n_layer": None, "head_dim": None, "n_head": None,
                "d_multiple": None, **req.get("shape_rule", {})}
        shape = ladder_shape(req["n_target"],
                             dataclasses.replace(_base_model(base), arch=arch), **rule)
    elif sets.get("model.preset") and (other_family or
                                       ("preset" in req and arch != "transformer")):
        # (a preset axis's drafts are merged before they meet the base, so their preset
        # may have been written out under the transformer's ladder: rewrite it)
        shape = preset_values(sets["model.preset"], arch)
    else:
        return sets
    out = {k: v for k, v in sets.items() if k.split(".", 1)[-1] not in _SHAPE_KEYS
           or not k.startswith("model.")}
    out.update({f"model.{k}": v for k, v in shape.items()})
    return out


def _apply(sets: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """sets <- new, where a new preset also brings its shape (over the older shape keys)."""
    out = dict(sets)
    if new.get("model.preset"):
        for k in _SHAPE_KEYS:
            out.pop(f"model.{k}", None)
        arch = new.get("model.arch", _arch_of(out))
        out.update({f"model.{k}": v for k, v in preset_values(new["model.preset"], arch).items()})
    out.update(new)
    return out


# --- axes ------------------------------------------------------------------------------


def _grid(path: Path, sweep: dict, base: dict, notes: list[str], acc: str) -> list[_Draft]:
    """Drafts of the grid: the product of the axes (or of zip groups of them)."""
    axes: dict[str, list[_Draft]] = {}  # axis name -> one partial draft per value
    has_compute = "compute" in sweep
    if "data" in sweep and has_compute:
        raise SpecError(f"{path}: [sweep.data] and [sweep.compute] are exclusive: with a compute "
                        "budget D = C / (FLOPs per token) is derived")
    model_tbl = sweep.get("model")
    if has_compute:
        axes["compute"] = _compute_axis(path, sweep["compute"], model_tbl, base, acc)
    elif model_tbl is not None:
        axes["model"] = _model_axis(path, model_tbl, base)
    if "data" in sweep:
        axes["data"] = _data_axis(path, sweep["data"])
    if "seeds" in sweep:
        seeds = sweep["seeds"]
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
            raise SpecError(f"{path}: sweep.seeds = {seeds!r}: expected a non-empty list of "
                            "integers >= 0")
        axes["seed"] = [_Draft(sets={"train.seed": s}, label=[f"s{s}"],
                               requested={"seed": s}) for s in seeds]
    field_axes = sweep.get("axes", {})
    if not isinstance(field_axes, dict):
        raise SpecError(f"{path}: [sweep.axes] must be a table of \"section.key\" = [values]")
    field_axes = _axis_keys(field_axes)  # optim.lr = [...] (TOML dotted key) or "optim.lr"
    conditional: dict[str, dict] = {}  # axis -> {value of its parent axis: [values]}
    shaped = {"model", "compute"} & set(axes)
    for dotted, values in field_axes.items():
        try:
            section, key = split_key(dotted)
            if section == "name":
                raise ConfigError("'name' is the point's label, set by the planner")
            if key not in _fields(SECTIONS[section]):
                every = [f"{section}.{k}" for k in _fields(SECTIONS[section])]
                raise ConfigError(f"unknown config key '{section}.{key}'"
                                  f"{_suggest(f'{section}.{key}', every)}")
        except ConfigError as e:
            raise SpecError(f"{path}: unknown axis {dotted!r} in [sweep.axes]: {e}") from None
        full = f"{section}.{key}"
        if isinstance(values, dict):  # values depend on another axis' value
            conditional[full] = values
            for k, vs in values.items():
                if not isinstance(vs, list) or not vs:
                    raise SpecError(f"{path}: sweep.axes.{full}.{k} = {vs!r}: expected a "
                                    "non-empty list")
            values = [v for vs in values.values() for v in vs]
        elif not isinstance(values, list) or not values:
            raise SpecError(f"{path}: sweep.axes.{dotted} = {values!r}: expected a non-empty list "
                            "(or a table of lists keyed by the values of another axis)")
        if shaped and section == "model" and key in (*_SHAPE_KEYS, "preset"):
            raise SpecError(f"{path}: axis {full!r} conflicts with the size axis "
                            f"[sweep.{next(iter(shaped))}], which sets the model shape")
        if full == "train.seed" and "seed" in axes:
            raise SpecError(f"{path}: axis 'train.seed' duplicates sweep.seeds")
        if full == "train.steps" and ("data" in axes or has_compute):
            raise SpecError(f"{path}: axis 'train.steps' conflicts with the data/compute axis "
                            "(steps are derived from D)")
        for v in values:
            try:
                build_section(SECTIONS[section], section, {key: v})
            except ConfigError as e:
                raise SpecError(f"{path}: sweep.axes.{full}: {e}") from None
        if full not in conditional:
            axes[full] = [_Draft(sets={full: v}, label=[_axis_label(full, v)],
                                 requested={full: v}) for v in values]
    parents = {full: _parent_axis(path, full, table, field_axes, conditional)
               for full, table in conditional.items()}

    units = _units(path, sweep.get("zip", []), axes, conditional)
    drafts = []
    for combo in itertools.product(*units):
        d = _Draft()
        for part in (x for unit_value in combo for x in unit_value):
            d.sets = _apply(d.sets, part.sets)
            d.group = part.group or d.group
            d.budget = part.budget if part.budget is not None else d.budget
            d.data = part.data or d.data
            d.requested.update(part.requested)
            d.size_label = part.size_label or d.size_label
            d.label += part.label
        drafts.append(d)
    for full, table in conditional.items():  # expand each draft by its parent's entry
        parent = parents[full]
        drafts = [_merge_part(d, _Draft(sets={full: v}, label=[_axis_label(full, v)],
                                        requested={full: v}))
                  for d in drafts for v in table[str(d.sets[parent])]]
    return drafts


def _merge_part(d: _Draft, part: _Draft) -> _Draft:
    return dataclasses.replace(d, sets=_apply(d.sets, part.sets), label=d.label + part.label,
                               requested={**d.requested, **part.requested})


def _axis_keys(tbl: dict) -> dict[str, Any]:
    """[sweep.axes] -> {"section.key": list | table}: `optim.lr = [...]` (a TOML dotted key,
    i.e. {"optim": {"lr": [...]}}), `"optim.lr" = [...]` and `[sweep.axes."optim.lr"]`."""
    out = {}
    for k, v in tbl.items():
        if "." not in k and k in SECTIONS and isinstance(v, dict):
            for kk, vv in v.items():
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


def _parent_axis(path: Path, full: str, table: dict, field_axes: dict, conditional: dict) -> str:
    """The list axis whose values are exactly the keys of a conditional axis' table."""
    keys = set(table)
    found = [a for a, vs in field_axes.items() if a != full and a not in conditional
             and isinstance(vs, list) and {str(v) for v in vs} == keys]
    if len(found) != 1:
        listed = {a: vs for a, vs in field_axes.items() if isinstance(vs, list)}
        raise SpecError(
            f"{path}: sweep.axes.{full} is a table keyed by {sorted(keys)}: its keys must be "
            f"exactly the values of one other axis in [sweep.axes]; "
            + ("several match: " + ", ".join(found) if found else
               "none does; list axes here: " + (", ".join(f"{a} = {vs}" for a, vs in listed.items())
                                                 or "(none)")))
    return found[0]


def _units(path: Path, zips: Any, axes: dict[str, list[_Draft]],
           conditional: dict) -> list[list[tuple[_Draft, ...]]]:
    """Axes grouped for itertools.product: each zip group is one unit of tuples."""
    if zips == "all":
        zips = [list(axes)] if axes else []
    if not isinstance(zips, list) or not all(isinstance(g, list) for g in zips):
        raise SpecError(f"{path}: sweep.zip = {zips!r}: expected \"all\" or a list of lists of "
                        f"axis names; axes here: {', '.join(axes) or '(none)'}")
    group_of: dict[str, int] = {}
    for i, group in enumerate(zips):
        for name in group:
            if name in conditional:
                raise SpecError(f"{path}: sweep.zip: axis {name!r} depends on another axis "
                                "(a table of lists) and cannot be zipped")
            if name not in axes:
                raise SpecError(f"{path}: sweep.zip: unknown axis {name!r}"
                                f"{_suggest(str(name), list(axes))}; axes here: "
                                f"{', '.join(axes) or '(none)'}")
            if name in group_of:
                raise SpecError(f"{path}: sweep.zip: axis {name!r} appears twice")
            group_of[name] = i
        lengths = {name: len(axes[name]) for name in group}
        if len(set(lengths.values())) > 1:
            raise SpecError(f"{path}: sweep.zip: axes zipped together need equal lengths, got "
                            + ", ".join(f"{n} ({k} values)" for n, k in lengths.items()))
    units, done = [], set()
    for name in axes:
        if name in group_of:
            gi = group_of[name]
            if gi in done:
                continue
            done.add(gi)
            units.append(list(zip(*(axes[n] for n in zips[gi]))))
        else:
            units.append([(d,) for d in axes[name]])
    return units


def _shape_rule(path: Path, tbl: dict, arch: str = "transformer") -> dict[str, Any]:
    rule = {"aspect_ratio": tbl.get("aspect_ratio"), "n_layer": tbl.get("n_layer"),
            "head_dim": tbl.get("head_dim"), "n_head": tbl.get("n_head"),
            "d_multiple": tbl.get("d_multiple")}
    if rule["aspect_ratio"] is None and rule["n_layer"] is None:
        rule["aspect_ratio"] = 32.0
    for key in ("n_layer", "head_dim", "n_head", "d_multiple"):
        v = rule[key]
        if v is not None and not (_is_int(v) and v > 0):
            raise SpecError(f"{path}: sweep.model.{key} = {v!r}: expected an integer > 0")
    a = rule["aspect_ratio"]
    if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or a <= 0):
        raise SpecError(f"{path}: sweep.model.aspect_ratio = {a!r}: expected a number > 0")
    if rule["aspect_ratio"] is not None and rule["n_layer"] is not None:
        raise SpecError(f"{path}: sweep.model: give aspect_ratio or n_layer, not both")
    if rule["head_dim"] is None and rule["n_head"] is None and arch != "lstm":
        raise SpecError(f"{path}: sweep.model: a ladder needs head_dim (n_head = d_model / "
                        "head_dim) or n_head (fixed)")
    if rule["head_dim"] is not None and rule["n_head"] is not None:
        raise SpecError(f"{path}: sweep.model: give head_dim or n_head, not both")
    return rule


def _base_model(base: dict) -> ModelConfig:
    values = {k.split(".", 1)[1]: v for k, v in base.items() if k.startswith("model.")}
    return build_section(ModelConfig, "model", values)


def _size_drafts(path: Path, tbl: dict, base: dict, targets: list[float] | None = None,
                 where: str = "sweep.model") -> list[_Draft]:
    """One draft per size: presets, or shapes snapped to target N by the shape rule."""
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [{where}] must be a table")
    _check_keys(tbl, MODEL_AXIS_KEYS, "sweep.model", path)
    if targets is None:
        if ("presets" in tbl) == ("n" in tbl):
            raise SpecError(f"{path}: [sweep.model] needs exactly one of presets = [names] or "
                            "n = [target N]")
        if "presets" in tbl:
            extra = [k for k in tbl if k != "presets"]
            if extra:
                raise SpecError(f"{path}: sweep.model.{extra[0]} applies to an n = [...] ladder, "
                                "not to presets")
            presets = tbl["presets"]
            if not isinstance(presets, list) or not presets:
                raise SpecError(f"{path}: sweep.model.presets = {presets!r}: expected a list")
            out = []
            for name in presets:
                try:
                    shape = preset_values(name, _arch_of(base))
                except ConfigError as e:
                    raise SpecError(f"{path}: sweep.model.presets: {e}") from None
                sets = {"model.preset": name, **{f"model.{k}": v for k, v in shape.items()}}
                out.append(_Draft(sets=sets, size_label=name, requested={"preset": name}))
            return out
        targets = _number_list(path, "sweep.model.n", tbl["n"])
    elif "presets" in tbl or "n" in tbl:
        raise SpecError(f"{path}: sweep.compute.tokens_per_param generates the sizes of each "
                        "budget; [sweep.model] may then give only the shape rule, not "
                        "presets or n")
    rule = _shape_rule(path, tbl, _arch_of(base))
    bm = _base_model(base)
    out = []
    for t in targets:
        shape = ladder_shape(t, bm, **rule)
        sets = {"model.preset": "", **{f"model.{k}": v for k, v in shape.items()}}
        out.append(_Draft(sets=sets, requested={"n_target": t, "shape_rule": {
            k: v for k, v in rule.items() if v is not None}}))
    return out


def _model_axis(path: Path, tbl: dict, base: dict) -> list[_Draft]:
    return _size_drafts(path, tbl, base)


def _data_axis(path: Path, tbl: Any) -> list[_Draft]:
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [sweep.data] must be a table")
    _check_keys(tbl, DATA_AXIS_KEYS, "sweep.data", path)
    if len(tbl) != 1:
        raise SpecError(f"{path}: [sweep.data] needs exactly one of tokens = [D] or "
                        "tokens_per_param = [D/N]")
    (kind, values), = tbl.items()
    values = _number_list(path, f"sweep.data.{kind}", values)
    return [_Draft(data=(kind, v), requested={kind: v}) for v in values]


def _compute_axis(path: Path, tbl: Any, model_tbl: Any, base: dict, acc: str) -> list[_Draft]:
    """IsoFLOP: for each budget C, sizes N; D = C / (FLOPs charged per token) per point.

    Sizes come from the [sweep.model] ladder, or from `tokens_per_param` = [r, ...]: for
    each r the shape whose D / N at this budget is closest to r, N and the FLOPs per
    token counted by the spec's accounting (`_target_for_ratio`); under "kaplan" that is
    Kaplan's N = sqrt(C / (6 r)) snapped by the shape rule, as before.
    """
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [sweep.compute] must be a table")
    _check_keys(tbl, COMPUTE_KEYS, "sweep.compute", path)
    if "budgets" not in tbl:
        raise SpecError(f"{path}: [sweep.compute] needs budgets = [C, ...] (FLOPs)")
    budgets = tbl["budgets"]
    if isinstance(budgets, dict):
        named = list(budgets.items())
        _number_list(path, "sweep.compute.budgets", [c for _, c in named])
    else:
        named = [(f"C{_num(c)}", c) for c in _number_list(path, "sweep.compute.budgets", budgets)]
    if model_tbl is None:
        model_tbl = {}
    window = tbl.get("tokens_per_param_range")
    if window is not None:
        if (not isinstance(window, list) or len(window) != 2
                or not all(isinstance(x, (int, float)) and x > 0 for x in window)
                or window[0] >= window[1]):
            raise SpecError(f"{path}: sweep.compute.tokens_per_param_range = {window!r}: "
                            "expected [low, high] with 0 < low < high")
    ratios = tbl.get("tokens_per_param")
    out = []
    for gname, c in named:
        if ratios is not None:
            rs = _number_list(path, "sweep.compute.tokens_per_param", ratios)
            targets = [math.sqrt(c / (6.0 * r)) for r in rs]
            sizes = _size_drafts(path, model_tbl, base, targets=targets)  # checks the rule
            if acc != "kaplan":
                rule, bm = _shape_rule(path, model_tbl, _arch_of(base)), _base_model(base)
                targets = [_target_for_ratio(float(c), r, bm, rule, acc) for r in rs]
                sizes = _size_drafts(path, model_tbl, base, targets=targets)
            for s, r in zip(sizes, rs):
                s.requested["tokens_per_param_target"] = r
        else:
            if "presets" not in model_tbl and "n" not in model_tbl:
                raise SpecError(f"{path}: [sweep.compute] needs its sizes: tokens_per_param = "
                                "[D/N, ...] (sizes per budget), or a [sweep.model] ladder")
            sizes = _size_drafts(path, model_tbl, base)
        for s in sizes:
            s.group, s.budget, s.data = gname, float(c), ("compute", float(c))
            s.requested["compute"] = float(c)
            s.requested["tokens_per_param_range"] = window
            out.append(s)
    return out


def _target_for_ratio(c: float, r: float, bm: ModelConfig, rule: dict, acc: str) -> float:
    """The non-embedding target N whose snapped shape, given budget c, has D / N closest to r.

    D = c / (FLOPs charged per token) and N are counted by `acc`. Charged FLOPs x N grows
    about as N^2 (Kaplan: exactly 6 N^2), so the target is rescaled by sqrt(ratio / r)
    until the snapped shape stops changing; as shapes are discrete, the targets 2^(k/8)
    times the best one (k = -8 .. 8) are tried too, and the target whose shape comes
    closest (in |log(ratio / r)|; the smaller target on a tie) is kept.
    """

    def miss(target: float) -> float:
        shape = ladder_shape(target, bm, **rule)
        per_token, n = charged_per_token(dataclasses.replace(bm, preset="", **shape), acc)
        return math.log(c / per_token / n / r)

    t = math.sqrt(c / (6.0 * r))
    best = (abs(miss(t)), t)
    for _ in range(50):
        t_next = t * math.exp(miss(t) / 2)  # ratio ~ 1 / N^2: rescale N by sqrt(ratio / r)
        if math.isclose(t_next, t, rel_tol=1e-9):
            break
        t = t_next
        best = min(best, (abs(miss(t)), t))
    centre = best[1]
    for k in range(-8, 9):
        best = min(best, (abs(miss(centre * 2 ** (k / 8))), centre * 2 ** (k / 8)))
    return best[1]


def _explicit_points(path: Path, pts: Any, schedule: Schedule) -> list[_Draft]:
    if not isinstance(pts, list):
        raise SpecError(f"{path}: point must be an array of tables: [[point]]")
    out = []
    for i, p in enumerate(pts):
        where = f"point[{i}]"
        _check_keys(p, POINT_KEYS, where, path)
        sched = _schedule_keys(path, p, where).under(schedule)
        sets = _dotted_table(path, f"{where}.set", p.get("set", {}))
        if "tokens" in p and "tokens_per_param" in p:
            raise SpecError(f"{path}: {where}: give tokens or tokens_per_param, not both")
        data = None
        for kind in DATA_AXIS_KEYS:
            if kind in p:
                data = (kind, _number_list(path, f"{where}.{kind}", [p[kind]])[0])
        group = p.get("group", "")
        if not isinstance(group, str):
            raise SpecError(f"{path}: {where}.group = {group!r}: expected a string")
        label = [_axis_label(k, v) for k, v in sets.items() if k != "model.preset"]
        out.append(_Draft(sets=sets, group=group, data=data, label=label,
                          size_label=sets.get("model.preset", ""),
                          requested={"explicit": i, **({data[0]: data[1]} if data else {})},
                          protected=tuple(sets), schedule=sched))
    return out


# --- one point -------------------------------------------------------------------------


def _resolve(path: Path, base: dict, draft: _Draft, rules: list, dropped: dict,
             acc: str) -> Point | None:
    """One draft -> a Point, or None where an IsoFLOP size is dropped (reason in `dropped`).

    D comes from the draft's data: given, r x N, or C / (FLOPs charged per token), with N
    and the charge counted by `acc` (module docstring); steps = round(D / tokens per
    step), and D, C_6ND, C_exact are then what those steps really train.
    """
    sched = draft.schedule
    sets = _family_shape(_apply(base, draft.sets), draft, base)
    where_label = "_".join([draft.size_label, *draft.label]).strip("_") or "(base)"
    try:
        model = _model_of(sets)
    except ConfigError as e:
        raise SpecError(f"{path}: point {where_label}: {e}") from None
    n, _ = param_counts(model)
    size_label = draft.size_label or _size_label(n)
    where_label = "_".join([size_label, *draft.label])
    # [[override]] tables, matched on the point before any of them applies
    flat_before = {**_defaults_flat(), **sets, "group": draft.group, "n_params": n,
                   "size": size_label}
    applied = []
    # an lr law does not replace an lr set by a [[point]]'s set or an [[override]]
    lr_given = "optim.lr" in draft.protected
    for conds, new, i in rules:
        if all(_matches(c, flat_before.get(k)) for k, c in conds.items()):
            new = {k: v for k, v in new.items() if k not in draft.protected}
            sets = _apply(sets, new)
            applied.append(i)
            lr_given = lr_given or "optim.lr" in new
    try:
        model = _model_of(sets)
    except ConfigError as e:
        raise SpecError(f"{path}: point {where_label}: {e}") from None
    n, n_total = param_counts(model)
    per_token, n_acc = charged_per_token(model, acc)
    n_name = "N_tot" if acc == "total" else "N"
    if not draft.size_label or sets.get("model.preset") != draft.size_label:
        size_label = sets.get("model.preset") or _size_label(n)
    tr = _train_of(sets)
    per_step = tr.batch_size * model.seq_len
    req = dict(draft.requested)
    req["size"] = size_label
    if applied:
        req["overrides"] = applied

    if draft.data is None:
        steps = tr.steps
        deriv = f"steps = {steps} (given) x {per_step} tok/step"
    else:
        kind, x = draft.data
        if kind == "tokens":
            d_req = float(x)
            how = f"D = {_si(d_req)} (given)"
        elif kind == "tokens_per_param":
            d_req = float(x) * n_acc
            how = f"D = {_num(x)}·{n_name} = {_num(x)}·{_si(n_acc)} = {_si(d_req)}"
        elif acc == "kaplan":
            d_req = x / per_token
            how = f"D = C/(6N) = {_num(x)}/(6·{_si(n)}) = {_si(d_req)}"
        else:
            d_req = x / per_token
            how = f"D = C/(FLOPs/tok) = {_num(x)}/{per_token:.4g} = {_si(d_req)}"
        exact = d_req / per_step
        steps = math.floor(exact + 0.5)
        deriv = f"{how}; steps = round({exact:.1f}) = {steps} x {per_step} tok"
        req["tokens"] = d_req
        req["steps_exact"] = exact
        if steps < 1:
            msg = (f"(N = {_si(n)}): D = {_si(d_req)} tokens is less than one batch "
                   f"(train.batch_size x model.seq_len = {tr.batch_size} x {model.seq_len} = "
                   f"{per_step}), steps would be 0")
            if kind == "compute":
                dropped.setdefault((draft.group, draft.budget), []).append(f"{size_label} {msg}")
                return None
            raise SpecError(f"{path}: sweep.data: point {where_label} {msg}; lower the batch "
                            "or raise D")
        window = draft.requested.get("tokens_per_param_range") if kind == "compute" else None
        if window is not None and not window[0] <= d_req / n_acc <= window[1]:
            dropped.setdefault((draft.group, draft.budget), []).append(
                f"{size_label} (D/{n_name} = {d_req / n_acc:.3g} outside "
                f"tokens_per_param_range {window})")
            return None
    sets["train.steps"] = steps
    if sched.warmup_fraction is not None:
        sets["optim.warmup_steps"] = min(steps - 1,
                                         math.floor(sched.warmup_fraction * steps + 0.5))
    elif sched.warmup_tokens is not None:
        sets["optim.warmup_steps"], how_wu = _warmup_from_tokens(
            sched.warmup_tokens, n_acc, n_name, per_step, steps)
        deriv += f"; {how_wu}"
    else:
        wu = sets.get("optim.warmup_steps", 0)
        if wu >= steps and draft.data is not None:
            msg = f"(N = {_si(n)}): optim.warmup_steps = {wu} >= the {steps} steps derived from D"
            if draft.data[0] == "compute":
                dropped.setdefault((draft.group, draft.budget), []).append(f"{size_label} {msg}")
                return None
            raise SpecError(f"{path}: point {where_label} {msg}; give sweep.warmup_fraction "
                            "(warm-up as a fraction of each point's steps) instead")
    if sched.evals is not None:
        sets["train.eval_every"] = max(1, math.ceil(steps / sched.evals))
    if sched.lr_law is not None and not lr_given:
        sets["optim.lr"], how_lr = _lr_from_law(sched.lr_law, n_acc, n_name)
        deriv += f"; {how_lr}"
        req["lr_law"] = dict(sched.lr_law)

    tokens = steps * per_step
    flops_6nd = 6.0 * n * tokens
    flops_exact = train_flops_per_token(model) * tokens
    flops = flops_exact if acc == "total" else flops_6nd
    label_parts = [draft.group] if draft.budget is not None else []
    label = "_".join(label_parts + [size_label, f"D{_si(tokens)}"] + draft.label)
    sets["name"] = label
    try:
        config = from_dict(_nest(sets))
    except ConfigError as e:
        raise SpecError(f"{path}: point {label}: {e}") from None

    if draft.data is not None:
        req["rounding"] = {"tokens_rel": tokens / req["tokens"] - 1.0}
    if draft.budget is not None:
        req["rounding"]["flops_rel"] = flops / draft.budget - 1.0
        spent = "C_exact" if acc == "total" else "C_6ND = 6ND"
        deriv += (f"; budget spent in {spent} = {flops:.4g} "
                  f"({100 * (flops / draft.budget - 1):+.2f}%)")
    if "n_target" in req:
        deriv = f"N target {_si(req['n_target'])} -> {model.n_layer}x{model.d_model} = {_si(n)}; " + deriv
    req["derivation"] = deriv
    return Point(point_id=point_id(config), config=config, group=draft.group,
                 compute_budget=draft.budget, n_params=n, n_params_total=n_total,
                 tokens=tokens, flops=flops, accounting=acc, flops_6nd=flops_6nd,
                 flops_exact=flops_exact, tokens_per_param=tokens / n_acc, requested=req)


def _warmup_from_tokens(rule: tuple[str, float], n_acc: int, n_name: str, per_step: int,
                        steps: int) -> tuple[int, str]:
    """warmup_steps = round(m x N / tokens per step) (or round(x / tokens per step)).

    N is the accounting's N (N_total under "total", non-embedding under "kaplan"), after
    Porian et al. 2024 (a warm-up of about N tokens); capped at steps - 1 and at least 1.
    """
    kind, x = rule
    tokens = x * n_acc if kind == "N" else x
    exact = tokens / per_step
    steps_wu = min(steps - 1, max(1, math.floor(exact + 0.5)))
    what = (f"{_num(x)}·{n_name} = {_si(tokens)}" if kind == "N" else f"{_si(tokens)} (given)")
    return steps_wu, f"warm-up {what} tok = {exact:.1f} -> {steps_wu} steps"


def _lr_from_law(law: dict, n_acc: int, n_name: str) -> tuple[float, str]:
    """optim.lr = lr x (N / n_ref)^exponent, N the accounting's N; 4 significant digits."""
    lr = law["lr"] * (n_acc / law["n_ref"]) ** law["exponent"]
    lr = float(f"{lr:.4g}")
    return lr, (f"lr = {_num(law['lr'])}·({n_name}/{_num(law['n_ref'])})^{law['exponent']:g}"
                f" = {lr:.4g}")


@functools.lru_cache(maxsize=1)
def _defaults_flat_cached() -> tuple:
    return tuple(_flatten(Config().to_dict()).items())


def _defaults_flat() -> dict[str, Any]:
    return {k: v for k, v in _defaults_flat_cached() if k != "name"}


def _model_of(sets: dict) -> ModelConfig:
    values = {k.split(".", 1)[1]: v for k, v in sets.items() if k.startswith("model.")}
    values.pop("preset", None)
    m = build_section(ModelConfig, "model", values)
    m.validate()
    return m


def _train_of(sets: dict):
    cls = SECTIONS["train"]
    values = {k.split(".", 1)[1]: v for k, v in sets.items() if k.startswith("train.")}
    return build_section(cls, "train", values)


def _nest(sets: dict) -> dict:
    out: dict[str, Any] = {}
    for dotted, v in sets.items():
        if dotted == "name":
            out["name"] = v
            continue
        section, key = dotted.split(".", 1)
        out.setdefault(section, {})[key] = v
    return out
