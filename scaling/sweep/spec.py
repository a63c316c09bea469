"""Reading a sweep spec: TOML files, `extends` / `base` / variants merged, keys checked.

What a spec may say (the spec language) is described in the package docstring
(`scaling/sweep/__init__.py`). This module reads the file(s), merges them, applies
command-line overrides of the spec itself, and holds SpecError, the key lists and the
check of a table's keys. The tables that are not axes (slurm, followup, overrides,
schedule keys) are checked in `scaling.sweep.checks`; planning the points from the merged
table is `scaling.sweep.plan`.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
from pathlib import Path
from typing import Any, Callable

from scaling.config import SECTIONS, ConfigError, parse_overrides, read_config_file, split_key
from scaling.sweep.points import ACCOUNTINGS


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the field."""


EXECUTORS = ("local", "slurm")
TOP_KEYS = ("name", "description", "executor", "accounting", "base", "extends", *SECTIONS,
            "sweep", "override", "point", "slurm", "followup", "variants")
SWEEP_KEYS = ("seeds", "model", "data", "compute", "axes", "zip", "warmup_fraction",
              "warmup_tokens", "evals_per_run", "lr_law", "lr_batch_rule", "cooldown",
              "accounting")
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
LR_BATCH_RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}  # lr x (B / base_batch)^k
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
            raise SpecError(f"{path}: variant {variant!r} not found{suggest(variant, names)}; "
                            f"allowed: {', '.join(names) or '(none: no [variants] table)'}")
        raw = _deep_merge(raw, variants[variant], where=f"variants.{variant}")
        check_keys(raw, TOP_KEYS, "", path)
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
                            f"{suggest(str(value), list(ACCOUNTINGS))}; allowed: "
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
    check_keys(raw, TOP_KEYS, "", path)
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


def check_keys(table: Any, allowed: tuple[str, ...], where: str, path: Path | str) -> None:
    """SpecError unless `table` is a table whose keys are all in `allowed` (naming the key)."""
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
                            f"{suggest(key, list(allowed))}; allowed: {', '.join(allowed)}{hint}")


def suggest(word: str, options: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `options`, or ''."""
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
