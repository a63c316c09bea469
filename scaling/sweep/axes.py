"""The axes of one [sweep] table -> drafts: their product (or zip groups), sizes, IsoFLOP.

`grid_drafts` builds one partial draft per value of each axis ("model": presets or a
ladder of target N snapped by the shape rule; "data": D or D/N; "compute": IsoFLOP
budgets with their sizes; "seed"; "section.key" config fields, possibly keyed by another
axis' values), combines them as a product except the `zip` groups, and returns the
drafts that `scaling.sweep.resolve` turns into points.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from scaling.config import SECTIONS, ConfigError, ModelConfig, build_section, preset_values, split_key
from scaling.sweep.checks import config_fields, is_int, number_list
from scaling.sweep.ladder import ladder_shape
from scaling.sweep.points import axis_label, charged_per_token, format_num
from scaling.sweep.resolve import SHAPE_KEYS, Draft, apply_sets, arch_of, base_model
from scaling.sweep.spec import COMPUTE_KEYS, DATA_AXIS_KEYS, MODEL_AXIS_KEYS, SpecError, check_keys, suggest




def grid_drafts(path: Path, sweep: dict, base: dict, notes: list[str], acc: str) -> list[Draft]:
    """Drafts of the grid: the product of the axes (or of zip groups of them)."""
    axes: dict[str, list[Draft]] = {}  # axis name -> one partial draft per value
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
        if not isinstance(seeds, list) or not seeds or not all(is_int(s) and s >= 0 for s in seeds):
            raise SpecError(f"{path}: sweep.seeds = {seeds!r}: expected a non-empty list of "
                            "integers >= 0")
        axes["seed"] = [Draft(sets={"train.seed": s}, label=[f"s{s}"],
                               requested={"seed": s}) for s in seeds]
    field_axes = sweep.get("axes", {})
    if not isinstance(field_axes, dict):
        raise SpecError(f"{path}: [sweep.axes] must be a table of \"section.key\" = [values]")
    field_axes = axis_keys(field_axes)  # optim.lr = [...] (TOML dotted key) or "optim.lr"
    conditional: dict[str, dict] = {}  # axis -> {value of its parent axis: [values]}
    shaped = {"model", "compute"} & set(axes)
    for dotted, values in field_axes.items():
        try:
            section, key = split_key(dotted)
            if section == "name":
                raise ConfigError("'name' is the point's label, set by the planner")
            if key not in config_fields(SECTIONS[section]):
                every = [f"{section}.{k}" for k in config_fields(SECTIONS[section])]
                raise ConfigError(f"unknown config key '{section}.{key}'"
                                  f"{suggest(f'{section}.{key}', every)}")
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
        if shaped and section == "model" and key in (*SHAPE_KEYS, "preset"):
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
            axes[full] = [Draft(sets={full: v}, label=[axis_label(full, v)],
                                 requested={full: v}) for v in values]
    parents = {full: _parent_axis(path, full, table, field_axes, conditional)
               for full, table in conditional.items()}

    units = _units(path, sweep.get("zip", []), axes, conditional)
    drafts = []
    for combo in itertools.product(*units):
        d = Draft()
        for part in (x for unit_value in combo for x in unit_value):
            d.sets = apply_sets(d.sets, part.sets)
            d.group = part.group or d.group
            d.budget = part.budget if part.budget is not None else d.budget
            d.data = part.data or d.data
            d.requested.update(part.requested)
            d.size_label = part.size_label or d.size_label
            d.label += part.label
        drafts.append(d)
    for full, table in conditional.items():  # expand each draft by its parent's entry
        parent = parents[full]
        drafts = [_merge_part(d, Draft(sets={full: v}, label=[axis_label(full, v)],
                                        requested={full: v}))
                  for d in drafts for v in table[str(d.sets[parent])]]
    return drafts


def _merge_part(d: Draft, part: Draft) -> Draft:
    return dataclasses.replace(d, sets=apply_sets(d.sets, part.sets), label=d.label + part.label,
                               requested={**d.requested, **part.requested})


def axis_keys(tbl: dict) -> dict[str, Any]:
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


def _units(path: Path, zips: Any, axes: dict[str, list[Draft]],
           conditional: dict) -> list[list[tuple[Draft, ...]]]:
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
                                f"{suggest(str(name), list(axes))}; axes here: "
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
        if v is not None and not (is_int(v) and v > 0):
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


def _size_drafts(path: Path, tbl: dict, base: dict, targets: list[float] | None = None,
                 where: str = "sweep.model") -> list[Draft]:
    """One draft per size: presets, or shapes snapped to target N by the shape rule."""
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [{where}] must be a table")
    check_keys(tbl, MODEL_AXIS_KEYS, "sweep.model", path)
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
                    shape = preset_values(name, arch_of(base))
                except ConfigError as e:
                    raise SpecError(f"{path}: sweep.model.presets: {e}") from None
                sets = {"model.preset": name, **{f"model.{k}": v for k, v in shape.items()}}
                out.append(Draft(sets=sets, size_label=name, requested={"preset": name}))
            return out
        targets = number_list(path, "sweep.model.n", tbl["n"])
    elif "presets" in tbl or "n" in tbl:
        raise SpecError(f"{path}: sweep.compute.tokens_per_param generates the sizes of each "
                        "budget; [sweep.model] may then give only the shape rule, not "
                        "presets or n")
    rule = _shape_rule(path, tbl, arch_of(base))
    bm = base_model(base)
    out = []
    for t in targets:
        shape = ladder_shape(t, bm, **rule)
        sets = {"model.preset": "", **{f"model.{k}": v for k, v in shape.items()}}
        out.append(Draft(sets=sets, requested={"n_target": t, "shape_rule": {
            k: v for k, v in rule.items() if v is not None}}))
    return out


def _model_axis(path: Path, tbl: dict, base: dict) -> list[Draft]:
    return _size_drafts(path, tbl, base)


def _data_axis(path: Path, tbl: Any) -> list[Draft]:
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [sweep.data] must be a table")
    check_keys(tbl, DATA_AXIS_KEYS, "sweep.data", path)
    if len(tbl) != 1:
        raise SpecError(f"{path}: [sweep.data] needs exactly one of tokens = [D] or "
                        "tokens_per_param = [D/N]")
    (kind, values), = tbl.items()
    values = number_list(path, f"sweep.data.{kind}", values)
    return [Draft(data=(kind, v), requested={kind: v}) for v in values]


def _compute_axis(path: Path, tbl: Any, model_tbl: Any, base: dict, acc: str) -> list[Draft]:
    """IsoFLOP: for each budget C, sizes N; D = C / (FLOPs charged per token) per point.

    Sizes come from the [sweep.model] ladder, or from `tokens_per_param` = [r, ...]: for
    each r the shape whose D / N at this budget is closest to r, N and the FLOPs per
    token counted by the spec's accounting (`_target_for_ratio`); under "kaplan" that is
    Kaplan's N = sqrt(C / (6 r)) snapped by the shape rule, as before.
    """
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [sweep.compute] must be a table")
    check_keys(tbl, COMPUTE_KEYS, "sweep.compute", path)
    if "budgets" not in tbl:
        raise SpecError(f"{path}: [sweep.compute] needs budgets = [C, ...] (FLOPs)")
    budgets = tbl["budgets"]
    if isinstance(budgets, dict):
        named = list(budgets.items())
        number_list(path, "sweep.compute.budgets", [c for _, c in named])
    else:
        named = [(f"C{format_num(c)}", c) for c in number_list(path, "sweep.compute.budgets", budgets)]
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
            rs = number_list(path, "sweep.compute.tokens_per_param", ratios)
            targets = [math.sqrt(c / (6.0 * r)) for r in rs]
            sizes = _size_drafts(path, model_tbl, base, targets=targets)  # checks the rule
            if acc != "kaplan":
                rule, bm = _shape_rule(path, model_tbl, arch_of(base)), base_model(base)
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
