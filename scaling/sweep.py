"""Sweep specs: readable TOML files in experiments/ -> validated, fully planned points.

Nothing here trains or imports jax at module level; `load_spec` only plans. Every point's
config is built with `scaling.config.from_dict`, so an unknown key or impossible value
fails here, before any training, with the key named.

A spec is a run config (sections [model] [data] [optim] [train], or `base = "file.toml"`
with those sections merged over it) plus the tables that make it a sweep:

    name = "demo"                     # default: the file's stem
    executor = "local"                # "local" | "slurm"
    base = "tiny.toml"                # optional run config the sections below override
    extends = "other_spec.toml"       # optional spec this one deep-merges over

    [model]                           # the base config of every point
    seq_len = 64

    [sweep]
    seeds = [0]                       # axis "seed" (train.seed)
    warmup_fraction = 0.05            # every point: optim.warmup_steps = round(f * steps)
    evals_per_run = 8                 # every point: train.eval_every = ceil(steps / 8)
    zip = [["model", "optim.lr"]]     # axes zipped together; all others: product
    [sweep.model]                     # axis "model": the size ladder, one of
    presets = ["n25k", "n100k"]       #   named presets (scaling/presets.py), or
    n = [2e4, 1e5]                    #   target N, with a shape rule:
    aspect_ratio = 32                 #   d_model / n_layer (or n_layer = k fixed),
    head_dim = 16                     #   head size (or n_head = k fixed), d_multiple = 8
    [sweep.data]                      # axis "data": D per point, one of
    tokens_per_param = [20]           #   D = r * N (N exact), or
    tokens = [1e6, 4e6]               #   D absolute
    [sweep.compute]                   # axis "compute": IsoFLOP (exclusive with [sweep.data])
    budgets = [1e12, 3e12]            #   C (or a table name = C); for each C a set of N:
    tokens_per_param = [5, 20, 80]    #   N = sqrt(C / (6 r)) snapped by the shape rule, or the
                                      #   [sweep.model] ladder (tokens_per_param_range = [lo, hi])
    [sweep.axes]                      # any config field "section.key" = [values]
    "optim.name" = ["sgd", "adamw"]
    [sweep.axes."optim.lr"]           # values that depend on another axis: a table keyed
    sgd = [0.1, 0.3]                  #   by that axis' values (here optim.name)
    adamw = [1e-3, 3e-3]

    [[override]]                      # per-point overrides, applied after the axes, matched
    where = { "optim.name" = ["sgd", "momentum"], n_params = "< 1e5" }   # on config keys,
    set = { "optim.clip_norm" = 0.5 } #   group, size (label) or n_params; a list = any of
    [[point]]                         # explicit extra points (base + set, then overrides,
    set = { "model.preset" = "n800k" }  # which never change the keys of `set`)
    tokens_per_param = 40             # or tokens = ...; neither: train.steps as given
    group = "extra"                   # (warmup_fraction, evals_per_run: as the 1st [sweep])

    [slurm]                           # for executor = "slurm" (keys in SLURM_KEYS)
    partition = "gpu"
    [followup]                        # the seed stage: seed_followup(spec, best_lr)
    seeds = [1, 2]
    [variants.large]                  # load_spec(path, variant="large") deep-merges this
    sweep.model.n = [1e6, 3e6]

Axes are named "model", "data", "compute", "seed" and "section.key"; the grid is their
product, except the axes of each `zip` group, which advance together. Several grids: write
`[[sweep]]` tables instead of one `[sweep]`; the spec is their union (each table complete
in itself). Per point, in order: base config (+ command-line overrides) -> axis values ->
matching [[override]] tables -> steps from D -> warm-up and eval interval -> from_dict.
Merging (`extends`, `base`, variants): tables merge key by key, other values replace.

A plain run config (no sweep tables, e.g. experiments/tiny.toml) is a spec with one point.

Points: D = steps * batch_size * seq_len exactly, C = 6 * N * D (N non-embedding, Kaplan),
where steps = round(D_requested / (batch_size * seq_len)) (half up). What was asked and the
rounding are kept in `Point.requested`. Warm-up: with `warmup_fraction`, every point gets
warmup_steps = min(steps - 1, round(f * steps)), replacing optim.warmup_steps; without
it, optim.warmup_steps must be smaller than every derived step count.

Point ids: the first 12 hex digits of sha256 over the canonical JSON (sorted keys, floats
as Python's shortest round-trip repr) of the resolved config less the keys that do not
change what is computed (`scaling.config.NON_SEMANTIC`, plus model.preset, which is only
a label once its shape is written out, and data.cache_dir). A point's id depends on its
own config only, so adding axis values leaves old ids unchanged. Duplicate points (same
id) are dropped with a warning; the first one is kept.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import itertools
import json
import math
import os
import re
import sys
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scaling import accounting
from scaling.config import (
    SECTIONS,
    Config,
    ConfigError,
    ModelConfig,
    build_section,
    from_dict,
    parse_overrides,
    preset_values,
    split_key,
)

__all__ = [
    "SpecError", "Point", "SweepSpec", "load_spec", "format_plan", "estimate_seconds",
    "seed_followup", "ladder_shape", "point_id", "param_counts", "SLURM_KEYS",
]


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the field."""


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One run of a sweep, fully resolved: what it will compute, exactly."""

    point_id: str
    config: Config
    group: str
    compute_budget: float | None
    n_params: int  # N, non-embedding
    n_params_total: int
    tokens: int  # D = steps * batch_size * seq_len
    flops: float  # C = 6 N D
    tokens_per_param: float
    requested: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.config.train.steps

    @property
    def label(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    executor: str
    slurm: dict
    points: tuple[Point, ...]
    raw: dict
    description: str = ""
    variant: str | None = None
    followup: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # dropped sizes, de-duplicated points, ...


EXECUTORS = ("local", "slurm")
TOP_KEYS = ("name", "description", "executor", "base", "extends", *SECTIONS, "sweep",
            "override", "point", "slurm", "followup", "variants")
SWEEP_KEYS = ("seeds", "model", "data", "compute", "axes", "zip", "warmup_fraction",
              "evals_per_run")
MODEL_AXIS_KEYS = ("presets", "n", "aspect_ratio", "n_layer", "head_dim", "n_head",
                   "d_multiple")
DATA_AXIS_KEYS = ("tokens", "tokens_per_param")
COMPUTE_KEYS = ("budgets", "tokens_per_param", "tokens_per_param_range")
OVERRIDE_KEYS = ("where", "set")
POINT_KEYS = ("set", "tokens", "tokens_per_param", "group", "warmup_fraction",
              "evals_per_run")
FOLLOWUP_KEYS = ("seeds", "metric", "widen")
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
# Keys that do not change what a point computes (beyond scaling.config.NON_SEMANTIC).
_LABEL_ONLY = ("model.preset", "data.cache_dir")
_SHAPE_KEYS = ("n_layer", "d_model", "n_head", "d_ff")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_spec(path: str | Path, overrides: list[str] | dict | None = None,
              variant: str | None = None) -> SweepSpec:
    """Read, validate and plan a sweep spec; raises SpecError (or ConfigError) naming the field.

    `overrides`: "section.key=value" items applied to the base config of every point
    (axes and [[override]] tables still win over them); items starting with "sweep.",
    "slurm.", "followup." or "executor" edit the spec itself, e.g. "sweep.seeds=[0,1]".
    `variant`: the name of a [variants.<name>] table to deep-merge over the spec.
    """
    path = Path(path)
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
        if head in ("sweep", "slurm", "followup", "executor"):
            _set_dotted(raw, dotted, value)
        else:
            section, key = split_key(dotted)  # ConfigError names an unknown key
            base_over["name" if section == "name" else f"{section}.{key}"] = value
    return _plan(path, raw, base_over, variant)


def _read_spec(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.exists():
        raise SpecError(f"spec file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: cannot parse: {e}") from None
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
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {dotted!r}: {p!r} is not a table")
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


# --------------------------------------------------------------------------------------
# Accounting (scaling.accounting when present; the closed form otherwise)
# --------------------------------------------------------------------------------------


def param_counts(m: ModelConfig) -> tuple[int, int]:
    """(N non-embedding, N total), from scaling.accounting's closed form."""
    pc = accounting.param_counts(m)
    return int(pc.non_embedding), int(pc.total)


def train_flops_per_token(m: ModelConfig) -> float:
    """Training FLOPs per token including attention and the head (3 x forward)."""
    return float(accounting.flops_per_token(m).exact)


# --------------------------------------------------------------------------------------
# Size ladders
# --------------------------------------------------------------------------------------


def ladder_shape(target_n: float, base_model: ModelConfig | None = None, *,
                 aspect_ratio: float | None = 32.0, n_layer: int | None = None,
                 head_dim: int | None = None, n_head: int | None = None,
                 d_multiple: int | None = None) -> dict[str, int]:
    """The (n_layer, d_model, n_head) whose exact non-embedding N is closest to `target_n`.

    Shape rule: d_model / n_layer near `aspect_ratio` (or `n_layer` fixed); d_model a
    multiple of `head_dim` (n_head = d_model / head_dim) or, with `n_head` fixed, of
    lcm(n_head, d_multiple); d_ff = 4 d_model. Depth is the integer nearest
    (N / (12 a^2))^(1/3) or a neighbour, width the best multiple for that depth; among
    these the score |ln(N / target)| + 0.5 |ln(aspect / a)| is minimised, so N lands
    within a few per cent of the target once d_model spans several multiples.
    """
    if (head_dim is None) == (n_head is None):
        raise SpecError("sweep.model: give exactly one of head_dim or n_head")
    if (aspect_ratio is None) == (n_layer is None):
        raise SpecError("sweep.model: give exactly one of aspect_ratio or n_layer")
    base_model = base_model or ModelConfig()
    if head_dim is not None:
        mult = math.lcm(head_dim, d_multiple or head_dim)
    else:
        mult = math.lcm(n_head, d_multiple or 8)

    def count(L: int, d: int) -> int:
        m = dataclasses.replace(base_model, preset="", n_layer=L, d_model=d, d_ff=0,
                                n_head=d // head_dim if head_dim else n_head)
        return param_counts(m)[0]

    if n_layer is not None:
        depths = [n_layer]
    else:
        l_star = (target_n / (12.0 * aspect_ratio**2)) ** (1.0 / 3.0)
        depths = sorted({max(1, math.floor(l_star) + k) for k in (-1, 0, 1, 2)})
    best = None
    for L in depths:
        d_star = math.sqrt(target_n / (12.0 * L))
        k0 = max(1, math.floor(d_star / mult))
        for k in range(max(1, k0 - 1), k0 + 3):
            d = k * mult
            n = count(L, d)
            score = abs(math.log(n / target_n))
            if aspect_ratio is not None:
                score += 0.5 * abs(math.log((d / L) / aspect_ratio))
            key = (round(score, 12), L, d)
            if best is None or key < best[0]:
                best = (key, L, d)
    _, L, d = best
    return {"n_layer": L, "d_model": d, "n_head": d // head_dim if head_dim else n_head,
            "d_ff": 0}


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


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
    schedule: tuple = (None, None)  # (warmup_fraction, evals_per_run)


def _plan(path: Path, raw: dict, base_over: dict, variant: str | None) -> SweepSpec:
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
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{path}: description must be a string")

    base = _base_dict(raw, base_over, path)
    notes: list[str] = []
    rules = _check_overrides(raw.get("override", []), path)
    grids = raw.get("sweep", {})
    grids = grids if isinstance(grids, list) else [grids]  # [sweep] or several [[sweep]]
    drafts: list[_Draft] = []
    first_schedule: tuple = (None, None)
    for i, sweep in enumerate(grids):
        where = "sweep" if len(grids) == 1 else f"sweep[{i}]"
        try:
            _check_keys(sweep, SWEEP_KEYS, "sweep", path)
            schedule = _schedule_keys(path, sweep, "sweep")
            grid = _grid(path, sweep, base, notes)
        except SpecError as e:
            if where == "sweep":
                raise
            raise SpecError(f"{e} (in the [[sweep]] table number {i}, counting from 0)") from None
        if i == 0:
            first_schedule = schedule
        for d in grid:
            d.schedule = schedule
        drafts += grid
    drafts += _explicit_points(path, raw.get("point", []), first_schedule)

    points: list[Point] = []
    dropped: dict[tuple[str, float], list[str]] = {}
    for draft in drafts:
        point = _resolve(path, base, draft, rules, dropped)
        if point is not None:
            points.append(point)
    for (gname, budget), reasons in dropped.items():
        if not any(p.group == gname and p.compute_budget == budget for p in points):
            raise SpecError(f"{path}: sweep.compute.budgets: budget {gname} (C = {budget:.3g}) "
                            f"fits no model size: {'; '.join(reasons)}")
        notes.append(f"budget {gname}: dropped {'; '.join(reasons)}")

    unique: dict[str, Point] = {}
    for p in points:
        if p.point_id in unique:
            msg = (f"point {p.label} (group {p.group or '-'}) duplicates {unique[p.point_id].label} "
                   f"(id {p.point_id}); kept the first")
            warnings.warn(f"{path}: {msg}", stacklevel=3)
            notes.append(msg)
            continue
        unique[p.point_id] = p
    if not unique:
        raise SpecError(f"{path}: the spec plans no points")
    return SweepSpec(name=name, path=path, executor=executor, slurm=slurm,
                     points=tuple(unique.values()), raw=raw, description=description,
                     variant=variant, followup=followup, notes=tuple(notes))


def _schedule_keys(path: Path, tbl: dict, where: str) -> tuple[float | None, int | None]:
    """(warmup_fraction, evals_per_run) of a [sweep] or [[point]] table, checked."""
    warmup_fraction = tbl.get("warmup_fraction")
    if warmup_fraction is not None and (
            isinstance(warmup_fraction, bool) or not isinstance(warmup_fraction, (int, float))
            or not 0 <= warmup_fraction < 1):
        raise SpecError(f"{path}: {where}.warmup_fraction = {warmup_fraction!r}: "
                        "must be a number in [0, 1)")
    evals = tbl.get("evals_per_run")
    if evals is not None and (not _is_int(evals) or evals < 1):
        raise SpecError(f"{path}: {where}.evals_per_run = {evals!r}: must be an integer >= 1")
    return warmup_fraction, evals


def _check_slurm(slurm: Any, path: Path) -> dict:
    _check_keys(slurm, tuple(SLURM_KEYS), "slurm", path)
    for key, value in slurm.items():
        types_, ok, allowed = SLURM_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types_) or not ok(value):
            raise SpecError(f"{path}: slurm.{key} = {value!r}: expected {allowed}")
    return dict(slurm)


def _check_followup(fu: Any, path: Path) -> dict:
    _check_keys(fu, FOLLOWUP_KEYS, "followup", path)
    seeds = fu.get("seeds", [1, 2])
    if not isinstance(seeds, list) or not all(_is_int(s) and s >= 0 for s in seeds):
        raise SpecError(f"{path}: followup.seeds = {seeds!r}: expected a list of integers >= 0")
    metric = fu.get("metric", "val_loss")
    if metric not in ("val_loss", "eval_loss", "train_loss"):
        raise SpecError(f"{path}: followup.metric = {metric!r}: allowed: 'val_loss', "
                        "'eval_loss', 'train_loss'")
    widen = fu.get("widen", 2)
    if not _is_int(widen) or widen < 0:
        raise SpecError(f"{path}: followup.widen = {widen!r}: expected an integer >= 0")
    return {"seeds": list(seeds), "metric": metric, "widen": int(widen)}


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
    out = {f"model.{k}": v for k, v in preset_values(preset).items()}
    out.update(sets)
    return out


def _apply(sets: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """sets <- new, where a new preset also brings its shape (over the older shape keys)."""
    out = dict(sets)
    if new.get("model.preset"):
        for k in _SHAPE_KEYS:
            out.pop(f"model.{k}", None)
        out.update({f"model.{k}": v for k, v in preset_values(new["model.preset"]).items()})
    out.update(new)
    return out


# --- axes ------------------------------------------------------------------------------


def _grid(path: Path, sweep: dict, base: dict, notes: list[str]) -> list[_Draft]:
    """Drafts of the grid: the product of the axes (or of zip groups of them)."""
    axes: dict[str, list[_Draft]] = {}  # axis name -> one partial draft per value
    has_compute = "compute" in sweep
    if "data" in sweep and has_compute:
        raise SpecError(f"{path}: [sweep.data] and [sweep.compute] are exclusive: with a compute "
                        "budget D = C / (6 N) is derived")
    model_tbl = sweep.get("model")
    if has_compute:
        axes["compute"] = _compute_axis(path, sweep["compute"], model_tbl, base)
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


def _number_list(path: Path, where: str, values: Any, *, positive: bool = True) -> list[float]:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and (v > 0 if positive else True) for v in values):
        raise SpecError(f"{path}: {where} = {values!r}: expected a non-empty list of numbers > 0")
    return [float(v) if isinstance(v, float) else v for v in values]


def _shape_rule(path: Path, tbl: dict) -> dict[str, Any]:
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
    if rule["head_dim"] is None and rule["n_head"] is None:
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
                    shape = preset_values(name)
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
    rule = _shape_rule(path, tbl)
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


def _compute_axis(path: Path, tbl: Any, model_tbl: Any, base: dict) -> list[_Draft]:
    """IsoFLOP: for each budget C, sizes N; D = C / (6 N) is derived per point."""
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


def _explicit_points(path: Path, pts: Any, schedule: tuple) -> list[_Draft]:
    if not isinstance(pts, list):
        raise SpecError(f"{path}: point must be an array of tables: [[point]]")
    out = []
    for i, p in enumerate(pts):
        where = f"point[{i}]"
        _check_keys(p, POINT_KEYS, where, path)
        own = _schedule_keys(path, p, where)
        sched = tuple(o if o is not None else s for o, s in zip(own, schedule))
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


# --- one point -------------------------------------------------------------------------


def _resolve(path: Path, base: dict, draft: _Draft, rules: list, dropped: dict) -> Point | None:
    warmup_fraction, evals = draft.schedule
    sets = _apply(base, draft.sets)
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
    for conds, new, i in rules:
        if all(_matches(c, flat_before.get(k)) for k, c in conds.items()):
            new = {k: v for k, v in new.items() if k not in draft.protected}
            sets = _apply(sets, new)
            applied.append(i)
    try:
        model = _model_of(sets)
    except ConfigError as e:
        raise SpecError(f"{path}: point {where_label}: {e}") from None
    n, n_total = param_counts(model)
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
            d_req = float(x) * n
            how = f"D = {_num(x)}·N = {_si(d_req)}"
        else:
            d_req = x / (6.0 * n)
            how = f"D = C/(6N) = {_num(x)}/(6·{_si(n)}) = {_si(d_req)}"
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
        if window is not None and not window[0] <= d_req / n <= window[1]:
            dropped.setdefault((draft.group, draft.budget), []).append(
                f"{size_label} (D/N = {d_req / n:.3g} outside tokens_per_param_range {window})")
            return None
    sets["train.steps"] = steps
    if warmup_fraction is not None:
        sets["optim.warmup_steps"] = min(steps - 1, math.floor(warmup_fraction * steps + 0.5))
    else:
        wu = sets.get("optim.warmup_steps", 0)
        if wu >= steps and draft.data is not None:
            msg = f"(N = {_si(n)}): optim.warmup_steps = {wu} >= the {steps} steps derived from D"
            if draft.data[0] == "compute":
                dropped.setdefault((draft.group, draft.budget), []).append(f"{size_label} {msg}")
                return None
            raise SpecError(f"{path}: point {where_label} {msg}; give sweep.warmup_fraction "
                            "(warm-up as a fraction of each point's steps) instead")
    if evals is not None:
        sets["train.eval_every"] = max(1, math.ceil(steps / evals))

    tokens = steps * per_step
    flops = 6.0 * n * tokens
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
        deriv += f"; C = 6ND = {flops:.4g} ({100 * (flops / draft.budget - 1):+.2f}%)"
    if "n_target" in req:
        deriv = f"N target {_si(req['n_target'])} -> {model.n_layer}x{model.d_model} = {_si(n)}; " + deriv
    req["derivation"] = deriv
    return Point(point_id=point_id(config), config=config, group=draft.group,
                 compute_budget=draft.budget, n_params=n, n_params_total=n_total,
                 tokens=tokens, flops=flops, tokens_per_param=tokens / n, requested=req)


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


def point_id(config: Config) -> str:
    """First 12 hex digits of sha256 of the config's canonical JSON, less non-semantic keys."""
    if hasattr(config, "semantic_dict"):
        d = config.semantic_dict()
    else:
        d = config.to_dict()
        d.pop("name", None)
        for k in ("progress", "parallel", "log_every", "checkpoint_every", "keep_checkpoints"):
            d["train"].pop(k, None)
    for dotted in _LABEL_ONLY:
        section, key = dotted.split(".")
        d.get(section, {}).pop(key, None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------
# Labels and numbers
# --------------------------------------------------------------------------------------

_SHORT = {"optim.lr": "lr", "train.batch_size": "bs", "train.seed": "s",
          "optim.weight_decay": "wd", "optim.warmup_steps": "wu", "model.seq_len": "T",
          "optim.clip_norm": "clip", "optim.schedule": ""}


def _axis_label(dotted: str, value: Any) -> str:
    if dotted == "optim.name":
        return str(value)
    short = _SHORT.get(dotted, dotted.split(".", 1)[1] + "-")
    return f"{short}{_num(value)}"


def _num(x: Any) -> str:
    """3e-3, 0.05, 20, 1e13: short and exact enough for labels and budget names."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    mant, exp = f"{x:.2e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def _si(x: float) -> str:
    """98.3k, 1.97M, 4.2G."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _size_label(n: int) -> str:
    return "n" + _si(n)


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------
# Follow-up stage: more seeds at the best learning rates
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Time estimates and the plan table
# --------------------------------------------------------------------------------------

ASSUMED_MFU = {"cpu": 0.3, "gpu": 0.35, "tpu": 0.4}
# Used only where scaling.accounting knows no peak (an unknown accelerator string).
_FALLBACK_PEAK = {"cpu": 5.0e10, "gpu": 1.0e14, "tpu": 2.0e14}
RUN_OVERHEAD_S = {"cpu": 8.0, "gpu": 30.0, "tpu": 30.0}  # start, data, compile
STEP_OVERHEAD_S = {"cpu": 2e-3, "gpu": 5e-3, "tpu": 5e-3}  # dispatch, logging, per step


def _family(device: Any) -> str:
    if isinstance(device, str):
        low = device.lower()
    elif device is None:
        jax = sys.modules.get("jax")
        low = jax.default_backend() if jax is not None else "cpu"
    else:
        low = str(getattr(device, "platform", device)).lower()
    return "tpu" if "tpu" in low else "cpu" if "cpu" in low else "gpu"


def achieved_flops(device: Any = None, dtype: str = "float32") -> tuple[float, str]:
    """(FLOP/s assumed achieved, how it was obtained) for the time estimates.

    `device`: None (jax's default device), a jax Device, or a device-kind string such as
    "cpu" or "NVIDIA H100 80GB HBM3". Peak from scaling.accounting (CPUs: measured once
    and cached, or $SCALINGLAB_CPU_PEAK_FLOPS), times ASSUMED_MFU. Setting
    $SCALINGLAB_ACHIEVED_FLOPS replaces the whole estimate.
    """
    env = os.environ.get("SCALINGLAB_ACHIEVED_FLOPS")
    if env:
        return float(env), "$SCALINGLAB_ACHIEVED_FLOPS"
    if device is None:
        import jax  # noqa: PLC0415 - only for the estimate, never at module level

        device = jax.devices()[0]
    fam = _family(device)
    acc = accounting
    peak, source = None, "fallback guess"
    try:
        if fam == "cpu" and os.environ.get("SCALINGLAB_CPU_PEAK_FLOPS"):
            peak, source = float(os.environ["SCALINGLAB_CPU_PEAK_FLOPS"]), "$SCALINGLAB_CPU_PEAK_FLOPS"
        elif isinstance(device, str):
            if fam == "cpu":
                peak, source = acc.measured_cpu_peak(dtype), "measured matmul peak"
            else:
                peak, source = acc.lookup_peak(device, dtype), "accounting table"
        else:
            peak = acc.peak_flops(device, dtype)
            source = "measured matmul peak" if fam == "cpu" else "accounting table"
    except (KeyError, ValueError, TypeError, LookupError):
        peak = None
    if not peak:
        peak, source = _FALLBACK_PEAK[fam], "fallback guess"
    mfu = ASSUMED_MFU[fam]
    return peak * mfu, (f"{fam} peak {peak / 1e9:.0f} GFLOP/s ({source}) x assumed MFU {mfu}")


def estimate_seconds(point: Point, device: Any = None) -> float:
    """Rough wall time of a point: overhead + steps x per-step overhead + FLOPs / achieved.

    FLOPs are the training FLOPs per token including attention and the head
    (accounting.flops_per_token(...).exact, or the same closed form) x D, plus the
    evaluations (forward only, a third of that per token); achieved FLOP/s = peak x an
    assumed MFU (ASSUMED_MFU; peak from scaling.accounting, else a fallback table;
    SCALINGLAB_ACHIEVED_FLOPS overrides both). Small models on a CPU run far below
    peak; expect a factor 2 either way until the runner's measured throughput is used.
    """
    cfg = point.config
    fam = _family(device)
    thr, _ = achieved_flops(device, cfg.model.compute_dtype)
    fpt = train_flops_per_token(cfg.model)
    tr = cfg.train
    n_evals = (tr.steps // tr.eval_every if tr.eval_every else 0) + 1
    eval_tokens = n_evals * tr.eval_batches * tr.batch_size * cfg.model.seq_len
    flops = fpt * point.tokens + fpt / 3.0 * eval_tokens
    return RUN_OVERHEAD_S[fam] + STEP_OVERHEAD_S[fam] * tr.steps + flops / thr


def format_plan(spec: SweepSpec, tokens_per_s: Callable[[Point], float | None] | None = None,
                device: Any = None) -> str:
    """The plan as a table: id, label, group, N, D, C, steps, D/N, warm-up, est. time, derivation.

    `tokens_per_s(point)` (e.g. the runner's measured throughput record) gives the time
    as D / tokens_per_s plus the run overhead; where it returns None, or without it,
    `estimate_seconds` is used and the column says "~".
    """
    rows = []
    total_s = 0.0
    measured_any = False
    for p in spec.points:
        tps = tokens_per_s(p) if tokens_per_s is not None else None
        if tps:
            secs = RUN_OVERHEAD_S[_family(device)] + p.tokens / tps
            measured_any = True
            mark = ""
        else:
            secs = estimate_seconds(p, device)
            mark = "~"
        total_s += secs
        cfg = p.config
        rows.append([p.point_id, cfg.name, p.group or "-", _si(p.n_params), _si(p.n_params_total),
                     _si(p.tokens), f"{p.flops:.3g}", str(cfg.train.steps),
                     f"{p.tokens_per_param:.1f}", str(cfg.optim.warmup_steps),
                     mark + _hms(secs), p.requested.get("derivation", "")])
    head = ["id", "label", "group", "N", "N_tot", "D", "C=6ND", "steps", "D/N", "warmup",
            "est.time", "derivation"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = [f"sweep {spec.name}: {len(spec.points)} points, executor {spec.executor}"
             + (f", variant {spec.variant}" if spec.variant else "")
             + f"  ({spec.path})"]
    if spec.description:
        lines.append(spec.description.strip())
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  " + head[-1])
    for r in rows:
        cells = [c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells) + "  " + r[-1])
    total_c = sum(p.flops for p in spec.points)
    total_d = sum(p.tokens for p in spec.points)
    lines.append(f"total: C = {total_c:.3g} FLOPs (6ND), D = {_si(total_d)} tokens, "
                 f"est. time {_hms(total_s)} run one after another")
    if not measured_any or any(r[10].startswith("~") for r in rows):
        dtype = spec.points[0].config.model.compute_dtype if spec.points else "float32"
        _, how = achieved_flops(device, dtype)
        lines.append(f"~ rough estimate: training FLOPs (incl. attention and head) / ({how}) "
                     "+ overheads; small models on CPUs may be 2x off either way")
    for note in spec.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _hms(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
