"""Cooldown branches (warmup-stable-decay): one constant-lr trunk per size, branched at each D.

Hägele et al. 2024 ("Scaling laws and compute-optimal training beyond fixed training
durations"; code: epfml/schedules-and-scaling) show that a constant learning rate followed
by a short cooldown (~20 % of the run, 1-sqrt shape best) matches a cosine schedule tuned
to the run's length, and that one constant-lr run per size can be branched into cooldowns
at several lengths. A [sweep] table asks for it with

    [sweep.cooldown]
    fraction = 0.2        # the part of each branch's steps spent cooling down
    shape = "1-sqrt"      # decay shape of the cooldown: "1-sqrt" (default), "linear", "cosine"

together with the [sweep.data] or [sweep.compute] axis that gives each point its D.

Rule. Points of the table that differ only in D (same shape, same other axes and seed:
their configs agree on every key but train.steps, train.eval_every and
optim.warmup_steps) form a group. Each point S_b of a group becomes a BRANCH: the wsd
schedule with decay_fraction = fraction and decay_shape = shape, its own train.steps
S_b, starting from the trunk's checkpoint at step

    k_b = S_b - D_b,   D_b = min(max(round(fraction x S_b), 1), S_b - W)

which is exactly where scaling.train.schedules' wsd schedule starts decaying (Python's round,
half to even, as optim rounds). The group's TRUNK is the same config with a constant
learning rate, train.steps = max k_b and a checkpoint kept at every k_b
(train.save_steps), whose final eval covers only the curve's eval sample
(train.eval_tokens = curve_eval_tokens: a trunk's loss is no result, analysis.branches
leaves it out), and which also evaluates at every step where a branch's separate run
evaluates before the branch's k (train.eval_steps), so that a branch's curve evals, best
eval loss and divergence monitor are exactly the separate run's (a trunk without them is
not branched from: scaling.train.loop trains the branch from step 0). The warm-up W is the same for the trunk and all its branches, since a
branch continues the trunk: it is the warm-up the planner gives the group's SHORTEST
point (from warmup_tokens, warmup_fraction or optim.warmup_steps), the one that fits
every member. A branch's k_b must lie after the warm-up (k_b > W), else the spec is
refused naming sweep.cooldown.fraction.

A branch's config is exactly the config of a separate wsd run of its length, and
train.init_from / init_step are not semantic (scaling.config.NON_SEMANTIC), so its point
id is the id of that separate run: results are interchangeable. A group of one point (a
single length) needs no trunk: it is planned as that separate wsd run (role "run").

Compute: a trunk spends its steps once; a branch spends only its cooldown, S_b - k_b
steps (`Point.spent_steps`); separate runs would spend every branch's S_b steps and no
trunk. `plan` prints both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from scaling.sweep.points import Point, LABEL_ONLY, format_si, point_id, train_flops_per_token
from scaling.sweep.spec import SpecError

# Config keys in which the points of one group may differ (all derived from D).
_PER_LENGTH = ("train.steps", "train.eval_every", "optim.warmup_steps")
# Keys of `requested` that describe a D and so do not describe a trunk.
_D_KEYS = ("tokens", "tokens_per_param", "compute", "steps_exact", "rounding", "derivation",
           "tokens_per_param_target", "tokens_per_param_range")


def decay_start(steps: int, fraction: float, warmup: int) -> int:
    """Step at which scaling.train.schedules' wsd schedule starts its decay: S - D.

    D = min(max(round(fraction x S), 1), S - W) with Python's round (half to even), as
    scaling.train.schedules.wsd_decay_steps counts it; the tests check the two agree.
    """
    decay = min(max(int(round(fraction * steps)), 1), steps - warmup)
    return steps - decay


def group_key(point: Point) -> str:
    """What the points of one trunk share: the semantic config less the per-length keys."""
    d = point.config.semantic_dict()
    for dotted in (*_PER_LENGTH, *LABEL_ONLY):
        section, key = dotted.split(".")
        d.get(section, {}).pop(key, None)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def apply_cooldown(path: Path, points: list[Point], cooldown: dict, evals: int | None,
                   where: str = "sweep") -> tuple[list[Point], dict[str, Point]]:
    """The points of one [sweep] table -> trunks and branches (rule in the module docstring).

    Returns (points in plan order: each trunk just before its branches, groups in order of
    first appearance; {input point id: the branch or run it became}).
    """
    groups: dict[str, list[Point]] = {}
    for p in points:
        members = groups.setdefault(group_key(p), [])
        if all(q.point_id != p.point_id for q in members):
            members.append(p)
    out: list[Point] = []
    made: dict[str, list[Point]] = {}
    for key, members in groups.items():
        made[key] = _branch_group(path, members, cooldown, evals, where)
        out += made[key]
    became = {p.point_id: next(q for q in made[group_key(p)]
                               if q.role != "trunk" and q.steps == p.steps) for p in points}
    return out, became


def _branch_group(path: Path, members: list[Point], cooldown: dict, evals: int | None,
                  where: str) -> list[Point]:
    f, shape = cooldown["fraction"], cooldown["shape"]
    lengths = sorted({p.steps for p in members})
    shortest = min(members, key=lambda p: p.steps)
    warmup = shortest.config.optim.warmup_steps
    starts = {}
    for p in members:
        k = decay_start(p.steps, f, warmup)
        if k < 1 or k <= warmup:
            raise SpecError(
                f"{path}: {where}.cooldown.fraction = {f}: point {p.label} ({p.steps} steps) "
                f"would start its cooldown at step k = {k}, "
                + ("before any training" if k < 1 else
                   f"not after the warm-up of {warmup} steps (the group's shortest point's)")
                + "; a branch must leave its trunk after warm-up: lower the fraction, shorten "
                "the warm-up (sweep.warmup_fraction / sweep.warmup_tokens / "
                "optim.warmup_steps) or raise D")
        starts[p.steps] = k
    wsd = {"optim.schedule": "wsd", "optim.decay_fraction": f, "optim.decay_shape": shape,
           "optim.warmup_steps": warmup}
    if len(lengths) == 1:
        p = members[0]
        cfg = p.config.replace(wsd)
        req = {**p.requested, "role": "run", "cooldown": {"fraction": f, "shape": shape},
               "derivation": p.requested.get("derivation", "")
               + f"; wsd, {shape} cooldown from step {starts[p.steps]} (one length: no trunk)"}
        return [dataclasses.replace(p, point_id=point_id(cfg), config=cfg, requested=req)]

    longest = max(members, key=lambda p: p.steps)
    # the curve evals each branch's separate run makes before its k: the trunk makes them
    # (train.eval_steps), so a branch's curve and best eval loss are that run's
    branch_evals = {j for p in members if p.config.train.eval_every
                    for j in range(p.config.train.eval_every, starts[p.steps],
                                   p.config.train.eval_every)}
    trunk = _trunk(longest, sorted(set(starts.values())), warmup, evals, members, branch_evals)
    out = [trunk]
    for p in members:
        k = starts[p.steps]
        cfg = p.config.replace({**wsd, "train.init_from": f"../{trunk.point_id}",
                                "train.init_step": k})
        deriv = p.requested.get("derivation", "")
        deriv += (f"; branch of trunk {trunk.point_id} at k = S - round({f:g}·S) = "
                  f"{p.steps} - {p.steps - k} = {k}, {shape} cooldown, warm-up {warmup}")
        req = {**p.requested, "role": "branch", "trunk": trunk.point_id,
               "branched_at_step": k, "cooldown": {"fraction": f, "shape": shape},
               "derivation": deriv}
        out.append(dataclasses.replace(p, point_id=point_id(cfg), config=cfg, requested=req))
    return out


def _trunk(longest: Point, starts: list[int], warmup: int, evals: int | None,
           members: list[Point], branch_evals: set[int] = frozenset()) -> Point:
    """The constant-lr run every branch of the group starts from (module docstring)."""
    steps = starts[-1]
    per_step = longest.config.train.batch_size * longest.config.model.seq_len
    tokens = steps * per_step
    name = longest.label
    if longest.compute_budget is not None and name.startswith(longest.group + "_"):
        name = name[len(longest.group) + 1:]
    name, n = re.subn(r"(^|_)D[0-9.]+[kMGT]?(?=_|$)", rf"\1trunk_D{format_si(tokens)}", name, count=1)
    if not n:
        name = f"{name}_trunk"
    changes = {"optim.schedule": "constant", "optim.warmup_steps": warmup,
               "train.steps": steps, "train.save_steps": ",".join(str(k) for k in starts),
               "name": name}
    if evals is not None:
        changes["train.eval_every"] = max(1, math.ceil(steps / evals))
    every = changes.get("train.eval_every", longest.config.train.eval_every)
    extra = sorted(j for j in branch_evals if j < steps and not (every and j % every == 0))
    if extra:
        changes["train.eval_steps"] = ",".join(str(j) for j in extra)
    # A trunk's final loss is no result (analysis.branches leaves trunks out): its last eval
    # is one more learning-curve point, on the curve's eval sample, not the full eval set.
    curve_tokens = longest.config.train.curve_eval_tokens
    if 0 < curve_tokens < longest.config.train.eval_tokens:
        changes["train.eval_tokens"] = curve_tokens
    cfg = longest.config.replace(changes)
    tid = point_id(cfg)
    groups = {p.group for p in members}
    group = f"{groups.pop()}/trunk" if len(groups) == 1 and "" not in groups else "trunk"
    flops_6nd = 6.0 * longest.n_params * tokens
    flops_exact = train_flops_per_token(cfg.model) * tokens
    req = {k: v for k, v in longest.requested.items() if k not in _D_KEYS}
    req.update({"role": "trunk", "trunk": tid, "branched_at_step": None,
                "branch_steps": starts,
                "derivation": (f"trunk: constant lr, warm-up {warmup} (the shortest branch's); "
                               f"steps = the latest branch start = {steps}; checkpoints kept "
                               f"at {', '.join(str(k) for k in starts)}")})
    return dataclasses.replace(
        longest, point_id=tid, config=cfg, group=group, compute_budget=None, tokens=tokens,
        flops=flops_exact if longest.accounting == "total" else flops_6nd,
        flops_6nd=flops_6nd, flops_exact=flops_exact,
        tokens_per_param=tokens / longest.n_accounted, requested=req)
