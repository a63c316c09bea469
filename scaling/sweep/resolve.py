"""One point: a draft (what the axes and [[point]] tables asked) resolved into a Point.

`resolve_point` applies the matching [[override]] tables, derives D and the steps from the
draft's data (given, r x N or a compute budget), then the warm-up (`warmup_fraction`,
`warmup_tokens`), the eval interval (`evals_per_run`) and the lr law, and builds the
point's config with `scaling.config.from_dict`. `Draft` and the helpers that write a size
(preset or ladder shape) into dotted sets are shared with `scaling.sweep.axes` and
`scaling.sweep.plan`.

Compute accounting (the spec's `accounting`, `points.charged_per_token`): a budget C buys
D = C / (FLOPs charged per token), i.e. D = C / (3 x forward matmul FLOPs per token)
under "total" and D = C / (6 N) under "kaplan", and "tokens per parameter" is D / N with
that accounting's N (N_total, or N non-embedding). Size ladders stay targets of
non-embedding N (the shape rule and the size labels speak of it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaling.config import SECTIONS, Config, ConfigError, ModelConfig, build_section, from_dict, preset_values
from scaling.sweep.checks import Schedule, flatten, matches
from scaling.sweep.ladder import ladder_shape
from scaling.sweep.points import (Point, charged_per_token, format_num, format_si, param_counts,
                                  point_id, size_label_of, train_flops_per_token)
from scaling.sweep.spec import LR_BATCH_RULES, SpecError

SHAPE_KEYS = ("n_layer", "d_model", "n_head", "d_ff")


@dataclass
class Draft:
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


def arch_of(sets: dict[str, Any]) -> str:
    """The model family of dotted sets (model.arch, default "transformer")."""
    return sets.get("model.arch", "transformer")


def _family_shape(sets: dict[str, Any], draft: "Draft", base: dict) -> dict[str, Any]:
    """`sets` with the draft's size re-derived for the point's family, where a sweep axis
    or a [[point]] set model.arch away from the base config's: a size (preset name or
    target N) means the same nominal N in every family, met by that family's ladder
    (scaling.config.presets, ladder_shape). Unchanged when the family is the base's."""
    arch, req = arch_of(sets), draft.requested
    other_family = arch != arch_of(base)
    if "n_target" in req:
        if not other_family:
            return sets
        rule = {"aspect_ratio": None, "n_layer": None, "head_dim": None, "n_head": None,
                "d_multiple": None, **req.get("shape_rule", {})}
        shape = ladder_shape(req["n_target"],
                             dataclasses.replace(base_model(base), arch=arch), **rule)
    elif sets.get("model.preset") and (other_family or
                                       ("preset" in req and arch != "transformer")):
        # (a preset axis's drafts are merged before they meet the base, so their preset
        # may have been written out under the transformer's ladder: rewrite it)
        shape = preset_values(sets["model.preset"], arch)
    else:
        return sets
    out = {k: v for k, v in sets.items() if k.split(".", 1)[-1] not in SHAPE_KEYS
           or not k.startswith("model.")}
    out.update({f"model.{k}": v for k, v in shape.items()})
    return out


def apply_sets(sets: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """sets <- new, where a new preset also brings its shape (over the older shape keys)."""
    out = dict(sets)
    if new.get("model.preset"):
        for k in SHAPE_KEYS:
            out.pop(f"model.{k}", None)
        arch = new.get("model.arch", arch_of(out))
        out.update({f"model.{k}": v for k, v in preset_values(new["model.preset"], arch).items()})
    out.update(new)
    return out


def base_model(base: dict) -> ModelConfig:
    """The [model] section of the base config (dotted keys), unvalidated: a ladder's template."""
    values = {k.split(".", 1)[1]: v for k, v in base.items() if k.startswith("model.")}
    return build_section(ModelConfig, "model", values)




def resolve_point(path: Path, base: dict, draft: Draft, rules: list, dropped: dict,
             acc: str) -> Point | None:
    """One draft -> a Point, or None where an IsoFLOP size is dropped (reason in `dropped`).

    D comes from the draft's data: given, r x N, or C / (FLOPs charged per token), with N
    and the charge counted by `acc` (module docstring); steps = round(D / tokens per
    step), and D, C_6ND, C_exact are then what those steps really train.
    """
    sched = draft.schedule
    sets = _family_shape(apply_sets(base, draft.sets), draft, base)
    where_label = "_".join([draft.size_label, *draft.label]).strip("_") or "(base)"
    try:
        model = _model_of(sets)
    except ConfigError as e:
        raise SpecError(f"{path}: point {where_label}: {e}") from None
    n, _ = param_counts(model)
    size_label = draft.size_label or size_label_of(n)
    where_label = "_".join([size_label, *draft.label])
    # [[override]] tables, matched on the point before any of them applies
    flat_before = {**_defaults_flat(), **sets, "group": draft.group, "n_params": n,
                   "size": size_label}
    applied = []
    # an lr law does not replace an lr set by a [[point]]'s set or an [[override]]
    lr_given = "optim.lr" in draft.protected
    for conds, new, i in rules:
        if all(matches(c, flat_before.get(k)) for k, c in conds.items()):
            new = {k: v for k, v in new.items() if k not in draft.protected}
            sets = apply_sets(sets, new)
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
        size_label = sets.get("model.preset") or size_label_of(n)
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
            how = f"D = {format_si(d_req)} (given)"
        elif kind == "tokens_per_param":
            d_req = float(x) * n_acc
            how = f"D = {format_num(x)}·{n_name} = {format_num(x)}·{format_si(n_acc)} = {format_si(d_req)}"
        elif acc == "kaplan":
            d_req = x / per_token
            how = f"D = C/(6N) = {format_num(x)}/(6·{format_si(n)}) = {format_si(d_req)}"
        else:
            d_req = x / per_token
            how = f"D = C/(FLOPs/tok) = {format_num(x)}/{per_token:.4g} = {format_si(d_req)}"
        exact = d_req / per_step
        steps = math.floor(exact + 0.5)
        deriv = f"{how}; steps = round({exact:.1f}) = {steps} x {per_step} tok"
        req["tokens"] = d_req
        req["steps_exact"] = exact
        if steps < 1:
            msg = (f"(N = {format_si(n)}): D = {format_si(d_req)} tokens is less than one batch "
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
            msg = f"(N = {format_si(n)}): optim.warmup_steps = {wu} >= the {steps} steps derived from D"
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
    if sched.lr_batch_rule is not None:
        lr0 = float(sets.get("optim.lr", _defaults_flat()["optim.lr"]))
        sets["optim.lr"], how_lr = _lr_for_batch(sched.lr_batch_rule, lr0, tr.batch_size)
        deriv += f"; {how_lr}"
        req["lr_batch_rule"] = dict(sched.lr_batch_rule)

    tokens = steps * per_step
    flops_6nd = 6.0 * n * tokens
    flops_exact = train_flops_per_token(model) * tokens
    flops = flops_exact if acc == "total" else flops_6nd
    label_parts = [draft.group] if draft.budget is not None else []
    label = "_".join(label_parts + [size_label, f"D{format_si(tokens)}"] + draft.label)
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
        deriv = f"N target {format_si(req['n_target'])} -> {model.n_layer}x{model.d_model} = {format_si(n)}; " + deriv
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
    what = (f"{format_num(x)}·{n_name} = {format_si(tokens)}" if kind == "N" else f"{format_si(tokens)} (given)")
    return steps_wu, f"warm-up {what} tok = {exact:.1f} -> {steps_wu} steps"


def _lr_from_law(law: dict, n_acc: int, n_name: str) -> tuple[float, str]:
    """optim.lr = lr x (N / n_ref)^exponent, N the accounting's N; 4 significant digits."""
    lr = law["lr"] * (n_acc / law["n_ref"]) ** law["exponent"]
    lr = float(f"{lr:.4g}")
    return lr, (f"lr = {format_num(law['lr'])}·({n_name}/{format_num(law['n_ref'])})^{law['exponent']:g}"
                f" = {lr:.4g}")


def _lr_for_batch(rule: dict, lr: float, batch: int) -> tuple[float, str]:
    """optim.lr = lr x (batch / base_batch)^k (checks.Schedule.lr_batch_rule); 4 digits."""
    k = LR_BATCH_RULES[rule["rule"]]
    out = float(f"{lr * (batch / rule['base_batch']) ** k:.4g}")
    return out, (f"lr = {format_num(lr)}·({batch}/{rule['base_batch']})^{k:g} = {out:.4g} "
                 f"({rule['rule']} batch rule)")


@functools.lru_cache(maxsize=1)
def _defaults_flat_cached() -> tuple:
    return tuple(flatten(Config().to_dict()).items())


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
