"""Optimizer registry and learning-rate schedules: one path for every optimizer.

    tx, lr_at = make_optimizer(cfg.optim, total_steps=cfg.train.steps)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)   # params are needed (decay, LARS/LAMB)
    log["lr"] = float(lr_at(step))                     # lr used by the update at `step`

The chain is always

    clip_by_global_norm(clip_norm)            (only when clip_norm > 0)
    -> the optimizer, driven by `schedule(cfg, total_steps)`

The schedule is read by optax with the optimizer's own update count, so update k
(0-based) uses `schedule(k)`; with warm-up the first update is exactly zero.

Schedules (W = warmup_steps, T = total_steps, lr = peak, r = final_lr_ratio; the
warm-up is counted inside T):

    warm-up     s < W:  lr * s / W                   (linear from 0; skipped when W = 0)
    constant    s >= W: lr
    cosine      s >= W: lr * (r + (1 - r) * (1 + cos(pi * (s - W) / (T - W))) / 2)
    linear      s >= W: lr * (1 - (1 - r) * (s - W) / (T - W))
    wsd         warmup-stable-decay. D = round(decay_fraction * T) clipped to [1, T - W],
                decay starts at S = T - D (never before W):
                W <= s < S: lr (stable);  S <= s <= T: lr * (1 - (1 - r) * (s - S) / D)
                i.e. a linear ramp from lr to r * lr over the last D steps.

Every schedule ends at its final value at s = T and stays there for s > T.

Weight decay (`weight_decay`, applied only where `decay_mask` is True) is decoupled
everywhere, AdamW-style: it is never fed to a moment estimate. For sgd, momentum,
nesterov and adamw an update is

    w <- w - lr(t) * (direction + weight_decay * w)

so with a zero gradient a decayed weight shrinks by exactly (1 - lr(t) * weight_decay)
per step, and `weight_decay` means the same thing for all four (for sgd/momentum/
nesterov the decay is added after the momentum trace: SGDW, not L2). LAMB and LARS use
optax's own `weight_decay`/mask arguments, i.e. their papers' forms: the decay term is
added to the Adam direction (LAMB) or to the gradient (LARS) and then goes through the
layer-wise trust ratio (and, for LARS, through the momentum trace), so the same number
is not directly comparable across those two. Plain 'adam' with weight_decay > 0 is
refused (ConfigError): decoupled decay on Adam *is* 'adamw', and coupled L2 would give
weight_decay a different meaning than everywhere else.

Default decay mask (see `decay_mask`): only weight matrices decay -- not biases, not
norm scales/biases, not embeddings. `decay_norms_and_biases` / `decay_embeddings` turn
those on. LARS additionally excludes biases and norm parameters (but not embeddings)
from trust-ratio adaptation, whatever the decay flags.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from scaling.config import OPTIMIZERS, SCHEDULES, ConfigError, OptimConfig

Schedule = Callable[[Any], jax.Array]
Mask = Callable[[Any], Any]

__all__ = [
    "make_optimizer",
    "schedule",
    "decay_mask",
    "trust_ratio_mask",
    "param_kind",
    "describe_optimizer",
    "OPTIMIZER_BUILDERS",
    "SCHEDULE_BUILDERS",
]


# --------------------------------------------------------------------------------------
# Parameter classification (drives both the decay mask and the LARS trust-ratio mask)
# --------------------------------------------------------------------------------------

NORM_LEAVES = ("scale", "bias")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_norm_module(name: str) -> bool:
    """'LayerNorm_0', 'RMSNorm', 'final_norm', 'ln_f', 'ln1' -> True; 'linear' -> False."""
    tokens = [t for t in re.split(r"[_\W\d]+", name.lower()) if t]
    return any("norm" in t or t == "ln" for t in tokens)


def _is_input_embedding(name: str) -> bool:
    """'token_embed', 'pos_embedding', 'wte_embed' -> True; 'unembed', 'Unembed_0' -> False."""
    name = name.lower()
    return "embed" in name and not name.startswith("unembed")


def param_kind(path: tuple, leaf: Any) -> str:
    """Classify one parameter by its path: 'norm_or_bias', 'embedding', 'matrix' or 'vector'.

    Names, not shapes, decide first, because under nn.scan every block parameter carries
    a leading layer axis (a stacked bias or LayerNorm scale has ndim 2):
      - leaf named 'bias', or anything inside a norm module  -> 'norm_or_bias'
      - a path component naming an input embedding (contains
        'embed' but is not an output head: 'unembed...')     -> 'embedding'
      - otherwise ndim >= 2                                   -> 'matrix'
      - otherwise                                             -> 'vector' (decays with
        norms and biases)
    The untied output head (`unembed/kernel` in scaling.model) is a weight matrix like
    any other projection: it is decayed by default (it is a lookup table only for the
    parameter count's Kaplan convention, see scaling.accounting, not for the optimizer).
    """
    names = [_key_name(k) for k in path]
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]  # boxed (nn.Partitioned-like) leaves
    leaf_name = names[-1].lower() if names else ""
    modules = names[:-1]
    if leaf_name == "bias" or any(_is_norm_module(m) for m in modules):
        return "norm_or_bias"
    if any(_is_input_embedding(n) for n in names):
        return "embedding"
    if len(getattr(leaf, "shape", ())) >= 2:
        return "matrix"
    return "vector"


def decay_mask(params: Any, cfg: OptimConfig) -> Any:
    """Pytree of bools shaped like `params`: True where weight decay applies."""

    def decide(path, leaf):
        kind = param_kind(path, leaf)
        if kind == "matrix":
            return True
        if kind == "embedding":
            return bool(cfg.decay_embeddings)
        return bool(cfg.decay_norms_and_biases)  # 'norm_or_bias' and 'vector'

    return jax.tree_util.tree_map_with_path(decide, params)


def trust_ratio_mask(params: Any) -> Any:
    """Pytree of bools: True where LARS applies its layer-wise trust ratio (matrices and
    embeddings; never biases, norm parameters or other vectors)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: param_kind(path, leaf) in ("matrix", "embedding"), params
    )


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


def _constant(cfg: OptimConfig, steps: int) -> Schedule:
    return optax.constant_schedule(cfg.lr)


def _cosine(cfg: OptimConfig, steps: int) -> Schedule:
    return optax.cosine_decay_schedule(cfg.lr, decay_steps=steps, alpha=cfg.final_lr_ratio)


def _linear(cfg: OptimConfig, steps: int) -> Schedule:
    return optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_ratio, transition_steps=steps)


def _wsd_decay_steps(cfg: OptimConfig, total_steps: int) -> int:
    decay = int(round(cfg.decay_fraction * total_steps))
    return min(max(decay, 1), total_steps - cfg.warmup_steps)


def _wsd(cfg: OptimConfig, steps: int) -> Schedule:
    # `steps` counts from the end of warm-up; the decay is the last D of total training.
    decay = _wsd_decay_steps(cfg, steps + cfg.warmup_steps)
    ramp = optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_ratio, transition_steps=decay)
    stable = steps - decay
    if stable == 0:
        return ramp
    return optax.join_schedules([optax.constant_schedule(cfg.lr), ramp], [stable])


# name -> builder(cfg, steps after warm-up) -> schedule of (step - warmup_steps)
SCHEDULE_BUILDERS: dict[str, Callable[[OptimConfig, int], Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "linear": _linear,
    "wsd": _wsd,
}


def schedule(cfg: OptimConfig, total_steps: int) -> Schedule:
    """Learning rate as a function of the update count (int or traced array)."""
    if cfg.schedule not in SCHEDULE_BUILDERS:
        raise ConfigError(
            f"optim.schedule = {cfg.schedule!r}: unknown; allowed: {', '.join(SCHEDULE_BUILDERS)}"
        )
    total_steps = int(total_steps)
    if not 0 <= cfg.warmup_steps < total_steps:
        raise ConfigError(
            f"optim.warmup_steps = {cfg.warmup_steps} must be in [0, total_steps = {total_steps})"
        )
    main = SCHEDULE_BUILDERS[cfg.schedule](cfg, total_steps - cfg.warmup_steps)
    if cfg.warmup_steps == 0:
        fn = main
    else:
        warm = optax.linear_schedule(0.0, cfg.lr, transition_steps=cfg.warmup_steps)
        fn = optax.join_schedules([warm, main], [cfg.warmup_steps])

    def lr_at(step):
        return jnp.asarray(fn(step), jnp.float32)

    return lr_at


# --------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------


def _decoupled(direction: optax.GradientTransformation, cfg: OptimConfig, lr: Schedule,
               mask: Mask) -> optax.GradientTransformation:
    """direction -> + weight_decay * w (masked) -> * -lr(t): AdamW-style decoupled decay."""
    parts = [direction]
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(lr))
    return optax.chain(*parts)


def _sgd(cfg, lr, mask):
    return _decoupled(optax.identity(), cfg, lr, mask)


def _momentum(cfg, lr, mask):
    return _decoupled(optax.trace(decay=cfg.momentum, nesterov=False), cfg, lr, mask)


def _nesterov(cfg, lr, mask):
    return _decoupled(optax.trace(decay=cfg.momentum, nesterov=True), cfg, lr, mask)


def _adam(cfg, lr, mask):
    if cfg.weight_decay > 0:
        raise ConfigError(
            f"optim.name = 'adam' with optim.weight_decay = {cfg.weight_decay}: weight decay "
            "here is always decoupled, which for Adam is 'adamw'; set optim.name = 'adamw' "
            "(or optim.weight_decay = 0). Coupled L2 Adam is not offered."
        )
    return _decoupled(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), cfg, lr, mask)


def _adamw(cfg, lr, mask):
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=mask)


def _lamb(cfg, lr, mask):
    return optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=mask)


def _lars(cfg, lr, mask):
    return optax.lars(lr, weight_decay=cfg.weight_decay, weight_decay_mask=mask,
                      trust_coefficient=cfg.trust_coefficient, eps=cfg.eps,
                      trust_ratio_mask=trust_ratio_mask, momentum=cfg.momentum)


# name -> builder(cfg, lr schedule, decay mask fn) -> transformation (without clipping)
OPTIMIZER_BUILDERS: dict[str, Callable[[OptimConfig, Schedule, Mask],
                                       optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adam": _adam,
    "adamw": _adamw,
    "lars": _lars,
    "lamb": _lamb,
}

assert set(OPTIMIZER_BUILDERS) == set(OPTIMIZERS), "registry out of sync with config"
assert set(SCHEDULE_BUILDERS) == set(SCHEDULES), "schedules out of sync with config"


def make_optimizer(cfg: OptimConfig, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """(transformation, lr schedule) for `cfg` over `total_steps` updates.

    `transformation.update` needs `params` (weight decay, LARS/LAMB trust ratios).
    """
    if cfg.name not in OPTIMIZER_BUILDERS:
        raise ConfigError(
            f"optim.name = {cfg.name!r}: unknown; allowed: {', '.join(OPTIMIZER_BUILDERS)}"
        )
    lr = schedule(cfg, total_steps)

    def mask(tree):
        return decay_mask(tree, cfg)

    tx = OPTIMIZER_BUILDERS[cfg.name](cfg, lr, mask)
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, lr


def describe_optimizer(cfg: OptimConfig) -> str:
    """One line for reports, e.g.
    'adamw lr=3e-03 cosine(warmup=100, final=0.1x lr) b1=0.9 b2=0.95 wd=0.1 [matrices] clip=1'."""
    sched = f"{cfg.schedule}(warmup={cfg.warmup_steps}"
    if cfg.schedule != "constant":
        sched += f", final={cfg.final_lr_ratio:g}x lr"
    if cfg.schedule == "wsd":
        sched += f", decay last {cfg.decay_fraction:g}"
    sched += ")"
    parts = [cfg.name, f"lr={cfg.lr:.0e}", sched]
    if cfg.name in ("adam", "adamw", "lamb"):
        parts.append(f"b1={cfg.b1:g} b2={cfg.b2:g}")
    if cfg.name in ("momentum", "nesterov", "lars"):
        parts.append(f"momentum={cfg.momentum:g}")
    if cfg.name == "lars":
        parts.append(f"trust={cfg.trust_coefficient:g}")
    if cfg.weight_decay > 0:
        what = ["matrices"]
        if cfg.decay_embeddings:
            what.append("embeddings")
        if cfg.decay_norms_and_biases:
            what.append("norms+biases")
        parts.append(f"wd={cfg.weight_decay:g} [{'+'.join(what)}]")
    parts.append(f"clip={cfg.clip_norm:g}" if cfg.clip_norm > 0 else "no clip")
    return " ".join(parts)
