"""Sweep specs: readable TOML files in experiments/ -> validated, fully planned points.

Nothing here trains or imports jax at module level; `load_spec` only plans. Every point's
config is built with `scaling.config.from_dict`, so an unknown key or impossible value
fails here, before any training, with the key named.

A spec is a run config (sections [model] [data] [optim] [train], or `base = "file.toml"`
with those sections merged over it) plus the tables that make it a sweep:

    name = "demo"                     # default: the file's stem
    executor = "local"                # "local" | "slurm"
    accounting = "total"              # "total" (default) | "kaplan": how C and D/N count
    base = "tiny.toml"                # optional run config the sections below override
    extends = "other_spec.toml"       # optional spec this one deep-merges over

    [model]                           # the base config of every point
    seq_len = 64

    [sweep]
    seeds = [0]                       # axis "seed" (train.seed)
    warmup_fraction = 0.05            # every point: optim.warmup_steps = round(f * steps), or
    # warmup_tokens = "N"             #   round(m * N / tokens per step) for "N", "2N", ... (N:
    #                                 #   the accounting's N) or a number of tokens; >= 1 step
    evals_per_run = 8                 # every point: train.eval_every = ceil(steps / 8)
    # lr_law = { lr = 3e-3, n_ref = 1e5, exponent = -0.25 }  # optim.lr = lr (N / n_ref)^exponent
    # lr_batch_rule = { rule = "sqrt", base_batch = 16 }  # optim.lr is the rate at 16 sequences,
    #                                 #   x (batch_size / 16)^(1/2) ("none": ^0, "linear": ^1)
    zip = [["model", "optim.lr"]]     # axes zipped together; all others: product
    [sweep.model]                     # axis "model": the size ladder, one of
    presets = ["n25k", "n100k"]       #   named presets (scaling/config/presets.py), or
    n = [2e4, 1e5]                    #   target N, with a shape rule:
    aspect_ratio = 32                 #   d_model / n_layer (or n_layer = k fixed),
    head_dim = 16                     #   head size (or n_head = k fixed), d_multiple = 8
    [sweep.data]                      # axis "data": D per point, one of
    tokens_per_param = [20]           #   D = r * N (N exact, as the accounting counts), or
    tokens = [1e6, 4e6]               #   D absolute
    [sweep.compute]                   # axis "compute": IsoFLOP (exclusive with [sweep.data])
    budgets = [1e12, 3e12]            #   C (or a table name = C); for each C a set of N:
    tokens_per_param = [5, 20, 80]    #   the shape with D/N nearest r at C (kaplan: N =
                                      #   sqrt(C / (6 r)) snapped by the shape rule), or the
                                      #   [sweep.model] ladder (tokens_per_param_range = [lo, hi])
    [sweep.cooldown]                  # with [sweep.data] or [sweep.compute]: per size one
    fraction = 0.2                    #   constant-lr trunk, branched into wsd cooldowns (last
    shape = "1-sqrt"                  #   20 %, 1-sqrt) at each D (scaling/sweep/cooldown.py)
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
    group = "extra"                   # (warm-up, evals_per_run, lr_law: as the 1st [sweep])

    [slurm]                           # for executor = "slurm" (keys in SLURM_KEYS)
    partition = "gpu"
    [followup]                        # the seed stage: seed_followup(spec, best_lr)
    seeds = [1, 2]
    seeds_at = { size = "middle", budgets = 3 }   # IsoFLOP: the seeds at the middle size of
                                      #   the 3 smallest budgets instead (scaling/sweep/followup.py)
    bracket = { max_extra = 4 }       # IsoFLOP: add sizes outwards until each budget's minimum
                                      #   is bracketed (scaling/sweep/bracket.py)
    validate = [10]                   # IsoFLOP: then train the law's compute-optimal model at
                                      #   10x the largest budget, its loss predicted first
                                      #   (scaling/sweep/validate.py)
    [variants.large]                  # load_spec(path, variant="large") deep-merges this
    sweep.model.n = [1e6, 3e6]

Model families (`model.arch`, also as an axis or override): a size (preset name or target
N) means the same nominal N in every family, met by the family's own ladder: the LSTM has
its own presets under the same names (scaling/config/presets.py) and its shape rule uses
N ~ 8 L d^2 with d a multiple of d_multiple (default 8), needing no head_dim or n_head.

Axes are named "model", "data", "compute", "seed" and "section.key"; the grid is their
product, except the axes of each `zip` group, which advance together. Several grids: write
`[[sweep]]` tables instead of one `[sweep]`; the spec is their union (each table complete
in itself). Per point, in order: base config (+ command-line overrides) -> axis values ->
matching [[override]] tables -> steps from D -> warm-up, eval interval and lr law ->
from_dict -> (tables with [sweep.cooldown]) trunks and branches. An lr law does not replace
an optim.lr set by an [[override]] or a [[point]]'s set; it refuses an optim.lr axis.
Merging (`extends`, `base`, variants): tables merge key by key, other values replace.

A plain run config (no sweep tables, e.g. experiments/tiny.toml) is a spec with one point.

Compute accounting (`accounting`, top level; a [[sweep]] table may repeat it, but a spec
never mixes two): "total" (the default, as Chinchilla counts) spends a budget in real
training FLOPs, C_exact = 3 x every forward matmul per token (head and attention
included) x D, and N is all parameters (N_total); "kaplan" spends it in C_6ND = 6 N D with
N non-embedding. The accounting's N is what tokens_per_param, tokens_per_param_range and
Point.tokens_per_param mean; model.n targets and size labels are always non-embedding N.
Every point carries both C_6ND and C_exact; `Point.flops` is the accounting's.

Cooldown branches (`cooldown.py`): points of a table that differ only in D share one
constant-lr trunk; each is a branch (`Point.role` "branch", `Point.depends_on` its trunk's
id, train.init_from / init_step the trunk's folder and step k) whose config is that of a
separate wsd run, so its id is too. `Point.flops_spent` (C_spent) counts a branch's
cooldown steps only; `plan` prints the spec's compute spent beside separate runs'.

Points: D = steps * batch_size * seq_len exactly, where steps = round(D_requested /
(batch_size * seq_len)) (half up); C_6ND and C_exact are computed from that D. What was
asked and the rounding are kept in `Point.requested`. Warm-up: with `warmup_fraction`,
every point gets warmup_steps = min(steps - 1, round(f * steps)); with `warmup_tokens`
(Porian et al. 2024: a warm-up of about N tokens), min(steps - 1, max(1, round(m * N /
tokens per step))) with N the accounting's N (N_total under "total"); either replaces
optim.warmup_steps and they are exclusive; without them, optim.warmup_steps must be
smaller than every derived step count. `lr_law` sets optim.lr = lr * (N / n_ref)^exponent
with the accounting's N, to 4 significant digits, shown in the derivation. A [[point]]
takes warmup_fraction / warmup_tokens / evals_per_run / lr_law from the first [sweep]
unless it gives its own (its set's optim.lr always wins).

Point ids: the first 12 hex digits of sha256 over the canonical JSON (sorted keys, floats
as Python's shortest round-trip repr) of the resolved config less the keys that do not
change what is computed (`scaling.config.NON_SEMANTIC`, plus model.preset, which is only
a label once its shape is written out, and data.cache_dir). A point's id depends on its
own config only, so adding axis values leaves old ids unchanged. Duplicate points (same
id) are dropped with a warning; the first one is kept.

Where the code is: `spec.py` reads and merges the TOML and checks its keys; `checks.py`
checks the tables that are not axes (schedule keys, cooldown, slurm, followup, overrides);
`plan.py` plans the whole spec; `axes.py` builds the drafts of a [sweep] table's axes;
`resolve.py` resolves one draft into a point (overrides, D and steps, warm-up, evals, lr
law); `ladder.py` snaps target sizes to shapes;
`points.py` holds Point, SweepSpec and point ids; `display.py` the plan table and time
estimates; `fit.py` whether a point fits a device's memory, and the smallest change that
makes it fit; `followup.py` the seed stage; `cooldown.py` trunks and branches; `bracket.py`
the decisions of the IsoFLOP bracketing stage (driven by scaling.sweep.stages); `validate.py`
the validation run at a multiple of the largest budget.
"""

from __future__ import annotations

from pathlib import Path

from scaling.sweep.display import (
    ASSUMED_MFU,
    RUN_OVERHEAD_S,
    STEP_OVERHEAD_S,
    achieved_flops,
    estimate_seconds,
    format_plan,
    plan_records,
)
from scaling.sweep.followup import seed_followup
from scaling.sweep.ladder import ladder_shape
from scaling.sweep.plan import plan_spec
from scaling.sweep.points import (
    ACCOUNTINGS,
    Point,
    SweepSpec,
    param_counts,
    point_id,
    train_flops_per_token,
)
from scaling.sweep.spec import SLURM_KEYS, SpecError, read_spec

__all__ = [
    "SpecError", "Point", "SweepSpec", "load_spec", "format_plan", "estimate_seconds",
    "seed_followup", "ladder_shape", "point_id", "param_counts", "SLURM_KEYS",
    "achieved_flops", "train_flops_per_token", "ASSUMED_MFU", "RUN_OVERHEAD_S",
    "STEP_OVERHEAD_S", "plan_records", "ACCOUNTINGS",
]


def load_spec(path: str | Path, overrides: list[str] | dict | None = None,
              variant: str | None = None) -> SweepSpec:
    """Read, validate and plan a sweep spec; raises SpecError (or ConfigError) naming the field.

    `overrides`: "section.key=value" items applied to the base config of every point
    (axes and [[override]] tables still win over them); items starting with "sweep.",
    "slurm.", "followup.", "executor" or "accounting" edit the spec itself, e.g.
    "sweep.seeds=[0,1]" or "accounting=kaplan" (which then holds for every [sweep] table).
    `variant`: the name of a [variants.<name>] table to deep-merge over the spec.
    """
    path = Path(path)
    raw, base_over = read_spec(path, overrides, variant)
    return plan_spec(path, raw, base_over, variant)
