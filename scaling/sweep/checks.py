"""Checks of a spec's tables that are not axes, and the small value checks planning shares.

The schedule keys of a [sweep] or [[point]] table (warm-up, evaluations per run, lr law:
`Schedule`), [sweep.cooldown], [slurm], [followup] (its bracket and seeds_at tables too),
[[override]] rules and their matching, and the lists and "section.key" tables of
config values. Each raises SpecError naming the key. Reading the spec is
`scaling.sweep.spec`; planning with what is checked here is `scaling.sweep.plan`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from scaling.config import SECTIONS, ConfigError, build_section, split_key
from scaling.sweep.spec import (BRACKET_KEYS, COOLDOWN_KEYS, DECAY_SHAPES, FOLLOWUP_KEYS,
                                LR_BATCH_RULES, LR_LAW_KEYS, OVERRIDE_KEYS, SLURM_KEYS, SpecError, check_keys,
                                suggest)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-point rules of a [sweep] (or [[point]]) table that depend on the point's steps or N.

    warmup_fraction: warm-up = round(f x steps); warmup_tokens: ("N", m) for m x N tokens
    (N = the accounting's N) or ("tokens", x) for x tokens; evals: evaluations per run;
    lr_law: {"lr", "n_ref", "exponent"} for optim.lr = lr x (N / n_ref)^exponent;
    lr_batch_rule: {"rule", "base_batch"}: optim.lr (given, from an axis or the law) is the
    rate at base_batch sequences, scaled by (train.batch_size / base_batch)^k, k = 0 ("none"),
    1/2 ("sqrt") or 1 ("linear").
    """

    warmup_fraction: float | None = None
    warmup_tokens: tuple[str, float] | None = None
    evals: int | None = None
    lr_law: dict | None = None
    lr_batch_rule: dict | None = None

    def under(self, lower: "Schedule") -> "Schedule":
        """This table's own keys over `lower`'s (a [[point]] over the first [sweep]).

        The two warm-up keys go together: a table that gives either replaces both.
        """
        own_warmup = self.warmup_fraction is not None or self.warmup_tokens is not None
        return Schedule(
            warmup_fraction=self.warmup_fraction if own_warmup else lower.warmup_fraction,
            warmup_tokens=self.warmup_tokens if own_warmup else lower.warmup_tokens,
            evals=self.evals if self.evals is not None else lower.evals,
            lr_law=self.lr_law if self.lr_law is not None else lower.lr_law,
            lr_batch_rule=self.lr_batch_rule if self.lr_batch_rule is not None else lower.lr_batch_rule)


_WARMUP_N = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)?\s*\*?\s*N\s*$")


def schedule_keys(path: Path, tbl: dict, where: str) -> Schedule:
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
    if evals is not None and (not is_int(evals) or evals < 1):
        raise SpecError(f"{path}: {where}.evals_per_run = {evals!r}: must be an integer >= 1")
    lr_law = _check_lr_law(path, tbl["lr_law"], where) if "lr_law" in tbl else None
    rule = _check_lr_batch_rule(path, tbl["lr_batch_rule"], where) if "lr_batch_rule" in tbl else None
    return Schedule(warmup_fraction, warmup_tokens, evals, lr_law, rule)


def _check_lr_batch_rule(path: Path, rule: Any, where: str) -> dict:
    """lr_batch_rule = { rule = "none" | "sqrt" | "linear", base_batch = 16 }."""
    if not isinstance(rule, dict):
        raise SpecError(f"{path}: {where}.lr_batch_rule must be a table {{ rule = \"sqrt\", "
                        "base_batch = 16 }")
    check_keys(rule, ("rule", "base_batch"), f"{where}.lr_batch_rule", path)
    name = rule.get("rule")
    if name not in LR_BATCH_RULES:
        raise SpecError(f"{path}: {where}.lr_batch_rule.rule = {name!r}: allowed: "
                        f"{', '.join(repr(k) for k in LR_BATCH_RULES)}")
    base = rule.get("base_batch")
    if not is_int(base) or base < 1:
        raise SpecError(f"{path}: {where}.lr_batch_rule.base_batch = {base!r}: an integer >= 1 "
                        "(the batch, in sequences, at which optim.lr is given)")
    return {"rule": name, "base_batch": int(base)}


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
    check_keys(law, LR_LAW_KEYS, f"{where}.lr_law", path)
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
    check_keys(tbl, COOLDOWN_KEYS, f"{where}.cooldown", path)
    fraction = tbl.get("fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 < fraction < 1:
        raise SpecError(f"{path}: {where}.cooldown.fraction = {fraction!r}: must be a number "
                        "in (0, 1) (the part of each branch's steps spent cooling down)")
    shape = tbl.get("shape", "1-sqrt")
    if shape not in DECAY_SHAPES:
        raise SpecError(f"{path}: {where}.cooldown.shape = {shape!r}: unknown decay shape"
                        f"{suggest(str(shape), list(DECAY_SHAPES))}; allowed: "
                        + ", ".join(repr(x) for x in DECAY_SHAPES))
    return {"fraction": float(fraction), "shape": shape}


def check_slurm(slurm: Any, path: Path) -> dict:
    """[slurm]: every key in SLURM_KEYS, of its type and range."""
    check_keys(slurm, tuple(SLURM_KEYS), "slurm", path)
    for key, value in slurm.items():
        types_, ok, allowed = SLURM_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types_) or not ok(value):
            raise SpecError(f"{path}: slurm.{key} = {value!r}: expected {allowed}")
    return dict(slurm)


def check_followup(fu: Any, path: Path) -> dict:
    """[followup]: the learning-rate stage (seeds, metric, widen) and IsoFLOP bracketing.

    Without `bracket` or `validate` the learning-rate stage's defaults hold (seeds [1, 2],
    widen 2); with either and neither seeds nor widen given, the learning-rate stage is off
    (seeds [], widen 0): a self-bracketing IsoFLOP spec does not ask for extra seeds.
    """
    check_keys(fu, FOLLOWUP_KEYS, "followup", path)
    lr_stage = not ({"bracket", "validate"} & set(fu)) or "seeds" in fu or "widen" in fu
    seeds = fu.get("seeds", [1, 2] if lr_stage else [])
    if not isinstance(seeds, list) or not all(is_int(s) and s >= 0 for s in seeds):
        raise SpecError(f"{path}: followup.seeds = {seeds!r}: expected a list of integers >= 0")
    metric = fu.get("metric", "val_loss")
    if metric not in ("val_loss", "eval_loss", "train_loss"):
        raise SpecError(f"{path}: followup.metric = {metric!r}: allowed: 'val_loss', "
                        "'eval_loss', 'train_loss'")
    widen = fu.get("widen", 2 if lr_stage else 0)
    if not is_int(widen) or widen < 0:
        raise SpecError(f"{path}: followup.widen = {widen!r}: expected an integer >= 0")
    out = {"seeds": list(seeds), "metric": metric, "widen": int(widen)}
    if "bracket" in fu:
        out["bracket"] = _check_bracket(fu["bracket"], path)
    if "seeds_at" in fu:  # seeds at a few IsoFLOP points (scaling.sweep.followup)
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
    check_keys(tbl, BRACKET_KEYS, "followup.bracket", path)
    max_extra = tbl.get("max_extra", 4)
    if not is_int(max_extra) or max_extra < 1:
        raise SpecError(f"{path}: followup.bracket.max_extra = {max_extra!r}: expected an "
                        "integer >= 1 (extra sizes per budget)")
    return {"max_extra": int(max_extra)}


def number_list(path: Path, where: str, values: Any, *, positive: bool = True) -> list[float]:
    """The list at `where`: non-empty, numbers (> 0 unless positive=False), ints kept."""
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and (v > 0 if positive else True) for v in values):
        raise SpecError(f"{path}: {where} = {values!r}: expected a non-empty list of numbers > 0")
    return [float(v) if isinstance(v, float) else v for v in values]


def dotted_table(path: Path, where: str, tbl: Any) -> dict[str, Any]:
    """A table of "section.key" = value (dotted or nested), each value checked by its section."""
    if not isinstance(tbl, dict):
        raise SpecError(f"{path}: {where} must be a table of \"section.key\" = value")
    out = {}
    for dotted, value in flatten(tbl).items():
        try:
            section, key = split_key(dotted)
            if section == "name":
                raise ConfigError("'name' is the point's label, set by the planner")
            build_section(SECTIONS[section], section, {key: value})
        except ConfigError as e:
            raise SpecError(f"{path}: {where}: {e}") from None
        out[f"{section}.{key}"] = value
    return out


def flatten(tbl: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} and {"optim.lr": 1} both -> {"optim.lr": 1}."""
    out = {}
    for k, v in tbl.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- overrides -------------------------------------------------------------------------

_CMP = re.compile(r"^\s*(<=|>=|<|>|==|!=)\s*([-+0-9.eE_]+)\s*$")
_META_KEYS = ("group", "n_params", "size")


def check_overrides(rules: Any, path: Path) -> list[tuple[dict, dict, int]]:
    """The [[override]] tables -> [(conditions, dotted sets, index)], keys and values checked."""
    if not isinstance(rules, list):
        raise SpecError(f"{path}: override must be an array of tables: [[override]]")
    out = []
    for i, rule in enumerate(rules):
        where = f"override[{i}]"
        check_keys(rule, OVERRIDE_KEYS, where, path)
        if "set" not in rule:
            raise SpecError(f"{path}: {where} needs set = {{ \"section.key\" = value }}")
        where_tbl = rule.get("where", {})
        if not isinstance(where_tbl, dict):
            raise SpecError(f"{path}: {where}.where must be a table")
        conds = {}
        for key, cond in flatten(where_tbl).items():
            if key not in _META_KEYS:
                try:
                    section, k = split_key(key)
                    if section == "name" or k not in config_fields(SECTIONS[section]):
                        raise ConfigError(f"unknown config key {key!r}")
                    key = f"{section}.{k}"
                except ConfigError as e:
                    raise SpecError(f"{path}: {where}.where: {e}; or one of "
                                    f"{', '.join(_META_KEYS)}") from None
            if isinstance(cond, str) and _CMP.match(cond) is None and key in ("n_params",):
                raise SpecError(f"{path}: {where}.where.{key} = {cond!r}: expected a number, "
                                "a list, or a comparison such as \"< 1e5\"")
            conds[key] = cond
        out.append((conds, dotted_table(path, f"{where}.set", rule["set"]), i))
    return out


def matches(cond: Any, value: Any) -> bool:
    """Whether a config value meets an [[override]] condition: equal, any of a list, or "< 1e5"."""
    if isinstance(cond, list):
        return any(matches(c, value) for c in cond)
    if isinstance(cond, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        m = _CMP.match(cond)
        if m:
            op, x = m.group(1), float(m.group(2).replace("_", ""))
            return {"<": value < x, "<=": value <= x, ">": value > x, ">=": value >= x,
                    "==": value == x, "!=": value != x}[op]
    if isinstance(cond, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(float(cond), float(value), rel_tol=1e-12)
    return cond == value


def config_fields(cls: type) -> list[str]:
    """The field names of a config section class."""
    return [f.name for f in dataclasses.fields(cls)]


def is_int(v: Any) -> bool:
    """An int, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


SEEDS_AT_KEYS = ("size", "budgets")
SEEDS_AT_SIZES = ("middle",)


def check_seeds_at(value: Any, path: Any, seeds=()) -> dict:
    """followup.seeds_at = { size = "middle", budgets = K }: the middle size of each IsoFLOP
    budget (the lower of two middles), in the K smallest budgets (default: all); it re-runs
    them with followup.seeds, which must not be empty."""
    if not seeds:
        raise SpecError(f"{path}: followup.seeds_at needs followup.seeds (e.g. seeds = [1, 2])")
    if not isinstance(value, dict):
        raise SpecError(f"{path}: followup.seeds_at = {value!r}: expected a table "
                        "{ size = \"middle\", budgets = 3 }")
    bad = sorted(set(value) - set(SEEDS_AT_KEYS))
    if bad:
        raise SpecError(f"{path}: unknown key followup.seeds_at.{bad[0]}; allowed: {', '.join(SEEDS_AT_KEYS)}")
    size = value.get("size", "middle")
    if size not in SEEDS_AT_SIZES:
        raise SpecError(f"{path}: followup.seeds_at.size = {size!r}: allowed: "
                        + ", ".join(repr(s) for s in SEEDS_AT_SIZES))
    budgets = value.get("budgets")
    if budgets is not None and (isinstance(budgets, bool) or not isinstance(budgets, int) or budgets < 1):
        raise SpecError(f"{path}: followup.seeds_at.budgets = {budgets!r}: expected an integer >= 1 "
                        "(the number of smallest budgets to re-run)")
    return {"size": size, "budgets": budgets}
