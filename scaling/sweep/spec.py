"""Reading a sweep spec: TOML files, `extends` / `base` / variants merged, keys checked.

What a spec may say (the spec language) is described in the package docstring
(`scaling/sweep/__init__.py`). This module reads the file(s), merges them, applies
command-line overrides of the spec itself, and holds the validators of the tables that are
not axes (slurm, followup, overrides, schedule keys) plus the key lists. Planning the
points from the merged table is `scaling.sweep.plan`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

from scaling.config import (SECTIONS, ConfigError, build_section, parse_overrides, read_config_file,
                            split_key)
from scaling.sweep.points import ACCOUNTINGS


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the field."""


EXECUTORS = ("local", "slurm")
TOP_KEYS = ("name", "description", "executor", "accounting", "base", "extends", *SECTIONS,
            "sweep", "override", "point", "slurm", "followup", "variants")
SWEEP_KEYS = ("seeds", "model", "data", "compute", "axes", "zip", "warmup_fraction",
              "warmup_tokens", "evals_per_run", "lr_law", "cooldown", "accounting")
MODEL_AXIS_KEYS = ("presets", "n", "aspect_ratio", "n_layer", "head_dim", "n_head",
                   "d_multiple")
DATA_AXIS_KEYS = ("tokens", "tokens_per_param")
COMPUTE_KEYS = ("budgets", "tokens_per_param", "tokens_per_param_range")
OVERRIDE_KEYS = ("where", "set")
POINT_KEYS = ("set", "tokens", "tokens_per_param", "group", "warmup_fraction",
              "warmup_tokens", "evals_per_run")
FOLLOWUP_KEYS = ("seeds", "metric", "widen", "bracket", "validate", "seeds_at")
BRACKET_KEYS = ("max_extra",)
LR_LAW_KEYS = ("lr", "n_ref", "exponent")
COOLDOWN_KEYS = ("fraction", "shape")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")
# key: (type(s), check, what is allowed)
SLURM_KEYS: dict[str, tuple[tuple[type, ...], Callable[[Any], bool], str]] = {
    "partition": ((str,), bool, "a non-empty string"),
    "gpus_per_job": ((int,), lambda v: v >= 0, "an integer >= 0"),
    "cpus_per_job": ((int,), lambda v: v > 0, "an integer > 0"),
    "mem_gb": ((int, float), lambda v: v > 0, "a number > 0"),
    "time_min": ((int,), lambda v: v > 0, "an integer > 0 (minutes)"),
    "account": ((str,), lambda v: True, "a string"),
    "qos": ((str,), lambda v: True, "a string"),
    "nodes": ((int,), lambda v: v > 0, "an integer > 0"),
    "array_parallelism": ((int,), lambda v: v > 0, "an integer > 0 (jobs at once)"),
    "setup": ((list,), lambda v: all(isinstance(s, str) for s in v),
              "a list of shell lines run before each job"),
    "extra": ((dict,), lambda v: all(isinstance(x, (str, int, float, bool)) for x in v.values()),
              "a table of sbatch flag = value (string, number or boolean)"),
}


def read_spec(path: Path, overrides: list[str] | dict | None = None,
              variant: str | None = None) -> tuple[dict, dict[str, Any]]:
    """(merged spec table, base-config overrides): the reading half of `load_spec`."""
    raw = _read_spec(path, seen=())
    if variant is not None:
        variants = raw.get("variants", {})
        if not isinstance(variants, dict) or variant not in variants:
            names = list(variants) if isinstance(variants, dict) else []
            raise SpecError(f"{path}: variant {variant!r} not found{_suggest(variant, names)}; "
                            f"allowed: {', '.join(names) or '(none: no [variants] table)'}")
        raw = _deep_merge(raw, variants[variant], where=f"variants.{variant}")
        _check_keys(raw, TOP_KEYS, "", path)
    base_over: dict[str, Any] = {}
    for dotted, value in parse_overrides(overrides).items():
        head = dotted.split(".", 1)[0]
        if head == "accounting" and dotted == "accounting":
            _override_accounting(raw, value)
        elif head in ("sweep", "slurm", "followup", "executor"):
            _set_dotted(raw, dotted, value)
        else:
            section, key = split_key(dotted)  # ConfigError names an unknown key
            base_over["name" if section == "name" else f"{section}.{key}"] = value
    _check_overrides_vs_axes(raw, base_over, path)
    return raw, base_over


def _check_overrides_vs_axes(raw: dict, base_over: dict[str, Any], path: Path) -> None:
    """A command-line override of a key that an axis (or the seeds, or the lr law) of the
    spec sets for every point would be silently replaced: refuse it, naming the axis."""
    grids = raw.get("sweep", {})
    for grid in grids if isinstance(grids, list) else [grids]:
        if not isinstance(grid, dict):
            continue
        axes = grid.get("axes", {})
        setters = {}
        for k, v in (axes.items() if isinstance(axes, dict) else ()):
            if "." not in k and k in SECTIONS and isinstance(v, dict):  # optim.lr = [...]
                setters.update({f"{k}.{kk}": f"sweep.axes.{k}.{kk}" for kk in v})
            else:
                setters[k] = f'sweep.axes."{k}"'
        if "seeds" in grid:
            setters["train.seed"] = "sweep.seeds"
        if "lr_law" in grid:
            setters["optim.lr"] = "sweep.lr_law"
        for dotted in base_over:
            if dotted in setters:
                raise SpecError(
                    f"{dotted}={base_over[dotted]!r} on the command line: the spec's "
                    f"{setters[dotted]} sets {dotted} for every point, so the override would "
                    f"be ignored; change {setters[dotted]} in {path} instead")


def _override_accounting(raw: dict, value: Any) -> None:
    """A command-line `accounting=...` sets the whole spec's accounting, [sweep] tables too."""
    raw["accounting"] = value
    grids = raw.get("sweep")
    for grid in grids if isinstance(grids, list) else [grids]:
        if isinstance(grid, dict):
            grid.pop("accounting", None)


def spec_accounting(raw: dict, path: Path | str) -> str:
    """The spec's one accounting: top-level `accounting`, or the same value in [sweep] tables.

    Default "total". Each value must be one of ACCOUNTINGS; a [[sweep]] table may repeat
    the accounting but a spec never mixes two (its points' C and D/N would not be
    comparable, and a fit over them would mean nothing), so differing values are refused.
    """
    given: dict[str, Any] = {}
    if "accounting" in raw:
        given["accounting"] = raw["accounting"]
    grids = raw.get("sweep", {})
    grids = grids if isinstance(grids, list) else [grids]
    for i, grid in enumerate(grids):
        if isinstance(grid, dict) and "accounting" in grid:
            given["sweep.accounting" if len(grids) == 1 else f"sweep[{i}].accounting"] = \
                grid["accounting"]
    for key, value in given.items():
        if value not in ACCOUNTINGS:
            raise SpecError(f"{path}: {key} = {value!r}: unknown accounting"
                            f"{_suggest(str(value), list(ACCOUNTINGS))}; allowed: "
                            + ", ".join(repr(a) for a in ACCOUNTINGS)
                            + " (total: C = real training FLOPs, N = all parameters; "
                            "kaplan: C = 6 N D, N non-embedding)")
    values = set(given.values())
    if len(values) > 1:
        raise SpecError(f"{path}: a spec must not mix accountings: "
                        + ", ".join(f"{k} = {v!r}" for k, v in given.items())
                        + "; give one top-level accounting")
    return values.pop() if values else "total"


def _read_spec(path: Path, seen: tuple[Path, ...]) -> dict:
    raw = read_config_file(path, SpecError, "spec file")
    _check_keys(raw, TOP_KEYS, "", path)
    raw.setdefault("name", path.stem)
    if "extends" in raw:
        parent = _resolve_path(path, raw.pop("extends"), "extends")
        if parent.resolve() in seen:
            raise SpecError(f"{path}: extends = {str(parent)!r} is circular")
        parent_raw = _read_spec(parent, seen + (path.resolve(),))
        raw = _deep_merge(parent_raw, raw, where="extends")
    if "base" in raw:
        base_path = _resolve_path(path, raw.pop("base"), "base")
        try:
            base = tomllib.loads(base_path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: base = {str(base_path)!r}: cannot parse: {e}") from None
        for key in base:
            if key not in ("name", *SECTIONS):
                raise SpecError(f"{path}: base = {str(base_path)!r} is not a run config: "
                                f"key {key!r}; allowed: name, {', '.join(SECTIONS)}")
        raw = _deep_merge({k: v for k, v in base.items() if k != "name"}, raw, where="base")
    return raw


def _resolve_path(spec_path: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{spec_path}: {key} = {value!r}: expected a path to a TOML file")
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = spec_path.parent / p
    if not p.exists():
        raise SpecError(f"{spec_path}: {key} = {value!r}: no such file ({p})")
    return p


def _deep_merge(lower: dict, upper: dict, where: str) -> dict:
    """Tables merge key by key; any other value (lists included) in `upper` replaces."""
    if not isinstance(upper, dict):
        raise SpecError(f"{where} must be a table, got {upper!r}")
    out = copy.deepcopy(lower)
    for k, v in upper.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v, where=f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """raw[a][b]... = value; through an array of tables ([[sweep]]) it sets every table."""
    parts = dotted.split(".")
    nodes = [raw]
    for p in parts[:-1]:
        nxt = []
        for node in nodes:
            child = node.setdefault(p, {})
            if isinstance(child, list) and child and all(isinstance(c, dict) for c in child):
                nxt += child
            elif isinstance(child, dict):
                nxt.append(child)
            else:
                raise SpecError(f"override {dotted!r}: {p!r} is not a table")
        nodes = nxt
    for node in nodes:
        node[parts[-1]] = value


def _check_keys(table: Any, allowed: tuple[str, ...], where: str, path: Path | str) -> None:
    label = f"[{where}]" if where else "top level"
    if not isinstance(table, dict):
        raise SpecError(f"{path}: {where or 'spec'} must be a table, got {table!r}")
    for key in table:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            hint = ""
            if where == "sweep" and key not in allowed:
                hint = ("; a config field to sweep goes in [sweep.axes] as "
                        "\"section.key\" = [values]")
            raise SpecError(f"{path}: unknown key {full!r} in {label}"
                            f"{_suggest(key, list(allowed))}; allowed: {', '.join(allowed)}{hint}")


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-point rules of a [sweep] (or [[point]]) table that depend on the point's steps or N.

    warmup_fraction: warm-up = round(f x steps); warmup_tokens: ("N", m) for m x N tokens
    (N = the accounting's N) or ("tokens", x) for x tokens; evals: evaluations per run;
    lr_law: {"lr", "n_ref", "exponent"} for optim.lr = lr x (N / n_ref)^exponent.
    """

    warmup_fraction: float | None = None
    warmup_tokens: tuple[str, float] | None = None
    evals: int | None = None
    lr_law: dict | None = None

    def under(self, lower: "Schedule") -> "Schedule":
        """This table's own keys over `lower`'s (a [[point]] over the first [sweep]).

        The two warm-up keys go together: a table that gives either replaces both.
        """
        own_warmup = self.warmup_fraction is not None or self.warmup_tokens is not None
        return Schedule(
            warmup_fraction=self.warmup_fraction if own_warmup else lower.warmup_fraction,
            warmup_tokens=self.warmup_tokens if own_warmup else lower.warmup_tokens,
            evals=self.evals if self.evals is not None else lower.evals,
            lr_law=self.lr_law if self.lr_law is not None else lower.lr_law)


_WARMUP_N = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)?\s*\*?\s*N\s*$")


def _schedule_keys(path: Path, tbl: dict, where: str) -> Schedule:
    """The Schedule of a [sweep] or [[point]] table, checked (lr_law only in [sweep])."""
    warmup_fraction = tbl.get("warmup_fraction")
    if warmup_fraction is not None and (
            isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, (int, float))
            or not 0 <= warmup_fraction < 1):
        raise SpecError(f"{path}: {where}.warmup_fraction = {warmup_fraction!r}: "
                        "must be a number in [0, 1)")
    warmup_tokens = _warmup_tokens(path, tbl, where)
    if warmup_fraction is not None and warmup_tokens is not None:
        raise SpecError(f"{path}: {where}.warmup_fraction and {where}.warmup_tokens are "
                        "exclusive: give the warm-up as a fraction of each point's steps, or "
                        "in tokens (\"N\", \"2N\" or a number), not both")
    evals = tbl.get("evals_per_run")
    if evals is not None and (not _is_int(evals) or evals < 1):
        raise SpecError(f"{path}: {where}.evals_per_run = {evals!r}: must be an integer >= 1")
    lr_law = _check_lr_law(path, tbl["lr_law"], where) if "lr_law" in tbl else None
    return Schedule(warmup_fraction, warmup_tokens, evals, lr_law)


def _warmup_tokens(path: Path, tbl: dict, where: str) -> tuple[str, float] | None:
    """warmup_tokens = "N" | "<m>N" (m x the accounting's N) | a number of tokens > 0."""
    value = tbl.get("warmup_tokens")
    if value is None:
        return None
    if isinstance(value, str):
        m = _WARMUP_N.match(value)
        if m is not None:
            mult = float(m.group(1)) if m.group(1) else 1.0
            if mult > 0:
                return ("N", mult)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return ("tokens", float(value))
    raise SpecError(f"{path}: {where}.warmup_tokens = {value!r}: expected \"N\" (warm-up of "
                    "N tokens, N as the accounting counts it), a multiple such as \"2N\" or "
                    "\"0.5N\", or a number of tokens > 0")


def _check_lr_law(path: Path, law: Any, where: str) -> dict:
    """lr_law = { lr = 3e-3, n_ref = 1e5, exponent = -0.25 }: all three numbers, lr, n_ref > 0."""
    if not isinstance(law, dict):
        raise SpecError(f"{path}: {where}.lr_law must be a table {{ lr = .., n_ref = .., "
                        "exponent = .. }}")
    _check_keys(law, LR_LAW_KEYS, f"{where}.lr_law", path)
    for key in LR_LAW_KEYS:
        v = law.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpecError(f"{path}: {where}.lr_law.{key} = {v!r}: expected a number "
                            "(lr_law needs lr, n_ref and exponent)")
        if key != "exponent" and not v > 0:
            raise SpecError(f"{path}: {where}.lr_law.{key} = {v!r}: must be > 0")
    return {k: float(law[k]) for k in LR_LAW_KEYS}


def check_cooldown(path: Path, tbl: Any, where: str) -> dict:
    """[sweep.cooldown]: fraction in (0, 1) (default 0.2), shape in DECAY_SHAPES (1-sqrt)."""
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: [{where}.cooldown] must be a table: fraction = 0.2, "
                        "shape = \"1-sqrt\"")
    _check_keys(tbl, COOLDOWN_KEYS, f"{where}.cooldown", path)
    fraction = tbl.get("fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise SpecError(f"{path}: {where}.cooldown.fraction = {fraction!r}: must be a number "
                        "in (0, 1) (the part of each branch's steps spent cooling down)")
    shape = tbl.get("shape", "1-sqrt")
    if shape not in DECAY_SHAPES:
        raise SpecError(f"{path}: {where}.cooldown.shape = {shape!r}: unknown decay shape"
                        f"{_suggest(str(shape), list(DECAY_SHAPES))}; allowed: "
                        + ", ".join(repr(x) for x in DECAY_SHAPES))
    return {"fraction": float(fraction), "shape": shape}


def _check_slurm(slurm: Any, path: Path) -> dict:
    _check_keys(slurm, tuple(SLURM_KEYS), "slurm", path)
    for key, value in slurm.items():
        types_, ok, allowed = SLURM_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types_) or not ok(value):
            raise SpecError(f"{path}: slurm.{key} = {value!r}: expected {allowed}")
    return dict(slurm)


def _check_followup(fu: Any, path: Path) -> dict:
    """[followup]: the learning-rate stage (seeds, metric, widen) and IsoFLOP bracketing.

    Without `bracket` or `validate` the learning-rate stage's defaults hold (seeds [1, 2],
    widen 2); with either and neither seeds nor widen given, the learning-rate stage is off
    (seeds [], widen 0): a self-bracketing IsoFLOP spec does not ask for extra seeds.
    """
    _check_keys(fu, FOLLOWUP_KEYS, "followup", path)
    lr_stage = not ({"bracket", "validate"} & set(fu)) or "seeds" in fu or "widen" in fu
    seeds = fu.get("seeds", [1, 2] if lr_stage else [])
    if not isinstance(seeds, list) or not all(_is_int(s) and s >= 0 for s in seeds):
        raise SpecError(f"{path}: followup.seeds = {seeds!r}: expected a list of integers >= 0")
    metric = fu.get("metric", "val_loss")
    if metric not in ("val_loss", "eval_loss", "train_loss"):
        raise SpecError(f"{path}: followup.metric = {metric!r}: allowed: 'val_loss', "
                        "'eval_loss', 'train_loss'")
    widen = fu.get("widen", 2 if lr_stage else 0)
    if not _is_int(widen) or widen < 0:
        raise SpecError(f"{path}: followup.widen = {widen!r}: expected an integer >= 0")
    out = {"seeds": list(seeds), "metric": metric, "widen": int(widen)}
    if "bracket" in fu:
        out["bracket"] = _check_bracket(fu["bracket"], path)
    if "seeds_at" in fu:  # seeds at a few IsoFLOP points (scaling.sweep.followup)
        from scaling.sweep.followup import check_seeds_at

        out["seeds_at"] = check_seeds_at(fu["seeds_at"], path, seeds)
    if "validate" in fu:  # checked against the planned points by scaling.sweep.validate
        out["validate"] = fu["validate"]
    return out


def _check_bracket(tbl: Any, path: Path) -> dict:
    """followup.bracket = { max_extra = 4 }: extra sizes per budget (an integer >= 1)."""
    if tbl is True:
        tbl = {}
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: followup.bracket = {tbl!r}: expected a table "
                        "{ max_extra = 4 } (or true for the defaults)")
    _check_keys(tbl, BRACKET_KEYS, "followup.bracket", path)
    max_extra = tbl.get("max_extra", 4)
    if not _is_int(max_extra) or max_extra < 1:
        raise SpecError(f"{path}: followup.bracket.max_extra = {max_extra!r}: expected an "
                        "integer >= 1 (extra sizes per budget)")
    return {"max_extra": int(max_extra)}


def _number_list(path: Path, where: str, values: Any, *, positive: bool = True) -> list[float]:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and (v > 0 if positive else True) for v in values):
        raise SpecError(f"{path}: {where} = {values!r}: expected a non-empty list of numbers > 0")
    return [float(v) if isinstance(v, float) else v for v in values]


def _dotted_table(path: Path, where: str, tbl: Any) -> dict[str, Any]:
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: {where} must be a table of \"section.key\" = value")
    out = {}
    for dotted, value in _flatten(tbl).items():
        try:
            section, key = split_key(dotted)
            if section == "name":
                raise ConfigError("'name' is the point's label, set by the planner")
            build_section(SECTIONS[section], section, {key: value})
        except ConfigError as e:
            raise SpecError(f"{path}: {where}: {e}") from None
        out[f"{section}.{key}"] = value
    return out


def _flatten(tbl: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} and {"optim.lr": 1} both -> {"optim.lr": 1}."""
    out = {}
    for k, v in tbl.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- overrides -------------------------------------------------------------------------

_CMP = re.compile(r"^\s*(<=|>=|<|>|==|!=)\s*([-+0-9.eE_]+)\s*$")
_META_KEYS = ("group", "n_params", "size")


def _check_overrides(rules: Any, path: Path) -> list[tuple[dict, dict, int]]:
    if not isinstance(rules, list):
        raise SpecError(f"{path}: override must be an array of tables: [[override]]")
    out = []
    for i, rule in enumerate(rules):
        where = f"override[{i}]"
        _check_keys(rule, OVERRIDE_KEYS, where, path)
        if "set" not in rule:
            raise SpecError(f"{path}: {where} needs set = {{ \"section.key\" = value }}")
        where_tbl = rule.get("where", {})
        if not isinstance(where_tbl, dict):
            raise SpecError(f"{path}: {where}.where must be a table")
        conds = {}
        for key, cond in _flatten(where_tbl).items():
            if key not in _META_KEYS:
                try:
                    section, k = split_key(key)
                    if section == "name" or k not in _fields(SECTIONS[section]):
                        raise ConfigError(f"unknown config key {key!r}")
                    key = f"{section}.{k}"
                except ConfigError as e:
                    raise SpecError(f"{path}: {where}.where: {e}; or one of "
                                    f"{', '.join(_META_KEYS)}") from None
            if isinstance(cond, str) and _CMP.match(cond) is None and key in ("n_params",):
                raise SpecError(f"{path}: {where}.where.{key} = {cond!r}: expected a number, "
                                "a list, or a comparison such as \"< 1e5\"")
            conds[key] = cond
        out.append((conds, _dotted_table(path, f"{where}.set", rule["set"]), i))
    return out


def _matches(cond: Any, value: Any) -> bool:
    if isinstance(cond, list):
        return any(_matches(c, value) for c in cond)
    if isinstance(cond, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        m = _CMP.match(cond)
        if m:
            op, x = m.group(1), float(m.group(2).replace("_", ""))
            return {"<": value < x, "<=": value <= x, ">": value > x, ">=": value >= x,
                    "==": value == x, "!=": value != x}[op]
    if isinstance(cond, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(float(cond), float(value), rel_tol=1e-12)
    return cond == value


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
