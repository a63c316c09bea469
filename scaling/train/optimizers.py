"""Optimizers: one path for every optimizer (sgd, momentum, nesterov, adam, adamw, lars,
lamb), with a fixed schedule inside or the learning rate given per update.

Learning-rate schedules are in scaling.train.schedules; which parameters decay, which
LARS and LAMB adapt and what µP multiplies each one's rate by, in
scaling.train.param_groups.

Two forms of one optimizer:

    tx, lr_at = make_optimizer(cfg.optim, total_steps=cfg.train.steps)   # fixed schedule
    updates, state = tx.update(grads, state, params)   # params are needed (decay, LARS/LAMB)
    log["lr"] = float(lr_at(step))                     # lr used by the update at `step`

    tx = make_runtime_optimizer(cfg.optim)             # no schedule inside
    updates, state = tx.update(grads, state, params, lr=lr_t)

The second is what scaling.train.step compiles: the learning rate of each update is a traced
value computed from the train state (peak lr x `schedule_multiplier(step, ScheduleParams)`),
so the compiled step does not depend on the peak lr, the step count or the schedule's
shape, and one compiled step serves every point of a sweep with the same model, batch and
optimizer. Both forms build the same chain with only the lr scaling swapped, so they
compute the same updates.

The chain is always

    clip_by_global_norm(clip_norm)            (only when clip_norm > 0)
    -> the optimizer, its learning rate at the place its algorithm puts it

The fixed schedule is read by optax with the optimizer's own update count, so update k
(0-based) uses `schedule(k)`; with warm-up the first update is exactly zero.

Weight decay (`weight_decay`, applied only where `decay_mask` is True) is decoupled for
sgd, momentum, nesterov and adamw: it is never fed to a moment estimate, and an update is

    w <- w - lr(t) * (direction + weight_decay * w)

so with a zero gradient a decayed weight shrinks by exactly (1 - lr(t) * weight_decay)
per step, and `weight_decay` means the same thing for all four (for sgd/momentum/
nesterov the decay is added after the momentum trace: SGDW, not L2). LARS and LAMB use
their papers' forms (see `lars` and `lamb`): the decay term goes through the layer-wise
trust ratio (and, for LARS, through the momentum), so the same number is not directly
comparable across those two. Plain 'adam' with weight_decay > 0 is refused
(ConfigError): decoupled decay on Adam *is* 'adamw', and coupled L2 would give
weight_decay a different meaning than everywhere else.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from scaling.config import OPTIMIZERS, ConfigError, ModelConfig, OptimConfig, check_mup_optimizer
from scaling.train.param_groups import (decay_mask, mup_lr_multipliers, stacked_layers_mask,
                                        trust_ratio_mask)
from scaling.train.schedules import Schedule, decay_shape, schedule

Mask = Callable[[Any], Any]

__all__ = [
    "make_optimizer",
    "make_runtime_optimizer",
    "scale_by_mup",
    "lars",
    "lamb",
    "describe_optimizer",
    "OPTIMIZER_BUILDERS",
]


def _layer_norm(x: jax.Array, stacked: bool) -> jax.Array:
    """L2 norm in float32 of the whole tensor, or of each slice along axis 0 if stacked
    (shape [L, 1, ..., 1], broadcastable against x)."""
    x = x.astype(jnp.float32)
    if stacked:
        return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))
    return jnp.sqrt(jnp.sum(x * x))


def scale_by_mup(model: ModelConfig, optimizer: str,
                 multipliers: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
    """Multiply each leaf of the update by its µP learning-rate multiplier (static
    floats from the tree's paths and the model config, or from `multipliers(updates)`
    when given: scaling.train.packing's per group; 1.0 leaves are left untouched)."""
    if multipliers is None:
        multipliers = lambda tree: mup_lr_multipliers(tree, model, optimizer)  # noqa: E731

    def update(updates, state, params=None):
        del params
        mults = multipliers(updates)
        scaled = jax.tree.map(lambda u, k: u if k == 1.0 else (u * k).astype(u.dtype),
                              updates, mults)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# --------------------------------------------------------------------------------------
# Learning-rate scaling: from a schedule (count in the state) or given per update
# --------------------------------------------------------------------------------------


def scale_by_lr_argument() -> optax.GradientTransformationExtraArgs:
    """Multiply updates by -lr, where `lr` is a keyword of `update` (a traced scalar)."""

    def update(updates, state, params=None, *, lr, **extra):
        del params, extra
        lr = jnp.asarray(lr, jnp.float32)
        return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


# --------------------------------------------------------------------------------------
# LARS and LAMB
# --------------------------------------------------------------------------------------

LAMB_TRUST_COEFFICIENT = 1.0  # You et al. 2019 (LAMB): phi(z) = z, no extra coefficient


def _trust_masks(params: Any, decay: Mask) -> tuple[Any, Any, Any]:
    """(decayed, adapted, stacked) bool pytrees for `params` (see the masks above)."""
    return decay(params), trust_ratio_mask(params), stacked_layers_mask(params)


def _scale_by_lars(trust_coefficient: float, weight_decay: float,
                   decay: Mask) -> optax.GradientTransformation:
    """g -> lambda * (g + beta * w) per layer; LARS's local learning rate (see `lars`)."""
    eta = float(trust_coefficient)

    def one(g, w, decayed, adapted, stacked):
        beta = float(weight_decay) if decayed else 0.0
        g32, w32 = g.astype(jnp.float32), w.astype(jnp.float32)
        direction = g32 + beta * w32 if beta else g32
        if not adapted:
            return (eta * direction).astype(g.dtype)
        w_norm, g_norm = _layer_norm(w32, stacked), _layer_norm(g32, stacked)
        denom = g_norm + beta * w_norm
        ok = (w_norm > 0) & (denom > 0)
        ratio = jnp.where(ok, eta * w_norm / jnp.where(ok, denom, 1.0), eta)
        return (ratio * direction).astype(g.dtype)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("LARS's trust ratio needs params")
        masks = _trust_masks(params, decay)
        return jax.tree.map(one, updates, params, *masks), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _scale_by_lamb_trust(decay: Mask) -> optax.GradientTransformation:
    """u -> ||w|| / ||u|| * u per layer on matrices and embeddings; 1 elsewhere and where
    either norm is 0 (see `lamb`)."""

    def one(u, w, adapted, stacked):
        if not adapted:
            return u
        w_norm = _layer_norm(w, stacked)
        u_norm = _layer_norm(u, stacked)
        ok = (w_norm > 0) & (u_norm > 0)
        ratio = jnp.where(ok, LAMB_TRUST_COEFFICIENT * w_norm / jnp.where(ok, u_norm, 1.0),
                          1.0)
        return (ratio * u.astype(jnp.float32)).astype(u.dtype)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("LAMB's trust ratio needs params")
        _, adapted, stacked = _trust_masks(params, decay)
        return jax.tree.map(one, updates, params, adapted, stacked), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def lars(cfg: OptimConfig, lr: optax.GradientTransformation,
         mask: Mask) -> optax.GradientTransformation:
    """LARS (You, Gitman & Ginsburg 2017, Algorithm 1), per layer l:

        lambda_l = eta * ||w_l|| / (||g_l|| + beta * ||w_l||)      (local lr)
        v_l <- m * v_l + gamma(t) * lambda_l * (g_l + beta * w_l)
        w_l <- w_l - v_l

    eta = `trust_coefficient` (default 0.001, the paper's), beta = `weight_decay` where
    `decay_mask` is True (else 0), m = `momentum`, gamma(t) the scheduled global rate.
    The weight decay is inside the update and the trust ratio, as in the paper, and the
    global rate is inside the momentum (a rate change does not rescale past velocity).
    "Layer" = one parameter tensor, or one slice of a stacked nn.scan tensor (a norm per
    layer, identical to scan_layers = False). Where ||w_l|| = 0 or the denominator is 0,
    lambda_l = eta.

    Biases, LayerNorm scales/biases and other vectors are excluded from the adaptation,
    as in the paper's reference implementations and later large-batch practice (Goyal et
    al. 2017, MLPerf's LARS, SimCLR): the norm ratio is meaningless for them (a bias
    starts at 0, a norm scale at 1). Those implementations then give them the plain
    momentum step at the global rate gamma -- at the rates LARS runs at (gamma ~ 1-10
    with eta = 1e-3) that is a step 1000x larger than the adapted weights' scale and
    blows the norms up. Here they get the trust coefficient as their fixed local rate,
    lambda = eta: v <- m v + gamma eta (g + beta w), the step an adapted layer takes
    when ||w_l|| = ||g_l||, so one gamma suits both. They get no weight decay by
    default (decay_norms_and_biases turns it on). `eps` is not used (the paper has none).
    """
    return optax.chain(
        _scale_by_lars(cfg.trust_coefficient, cfg.weight_decay, mask),
        lr,
        optax.trace(decay=cfg.momentum, nesterov=False),
    )


def lamb(cfg: OptimConfig, lr: optax.GradientTransformation,
         mask: Mask) -> optax.GradientTransformation:
    """LAMB (You et al. 2019, Algorithm 2), per layer l:

        r_l = m_hat_l / (sqrt(v_hat_l) + eps)                      (Adam, bias-corrected)
        u_l = r_l + beta * w_l                                     (beta where decayed)
        w_l <- w_l - gamma(t) * ||w_l|| / ||u_l|| * u_l

    with phi = identity (trust coefficient 1); where ||w_l|| or ||u_l|| is 0 the ratio
    is 1. "Layer" as in `lars` (one slice per layer of a stacked nn.scan tensor).
    Biases, LayerNorm parameters and other vectors are excluded from the adaptation
    (ratio 1: a plain AdamW step, already of size ~gamma), as in the LAMB reference
    implementation's `exclude_from_layer_adaptation` (which defaults to the weight-decay
    exclusions); adapting them instead would freeze zero-initialised biases (||w|| = 0
    then ~gamma). No weight decay on them by default either.
    """
    return optax.chain(
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=mask),
        _scale_by_lamb_trust(mask),
        lr,
    )


# --------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------


def _decoupled(direction: optax.GradientTransformation, cfg: OptimConfig,
               lr: optax.GradientTransformation, mask: Mask) -> optax.GradientTransformation:
    """direction -> + weight_decay * w (masked) -> * -lr(t): AdamW-style decoupled decay."""
    parts = [direction]
    if cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
    parts.append(lr)
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
    # optax.adamw's chain: scale_by_adam -> add_decayed_weights(mask) -> lr
    return optax.chain(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                       optax.add_decayed_weights(cfg.weight_decay, mask=mask), lr)


# name -> builder(cfg, lr scaling transformation, decay mask fn) -> transformation
# (without clipping); the builder puts the lr scaling where its algorithm applies it.
OPTIMIZER_BUILDERS: dict[str, Callable[[OptimConfig, optax.GradientTransformation, Mask],
                                       optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adam": _adam,
    "adamw": _adamw,
    "lars": lars,
    "lamb": lamb,
}

assert set(OPTIMIZER_BUILDERS) == set(OPTIMIZERS), "registry out of sync with config"


def _build(cfg: OptimConfig, lr: optax.GradientTransformation,
           model: ModelConfig | None = None, packing: Any = None) -> optax.GradientTransformation:
    if cfg.name not in OPTIMIZER_BUILDERS:
        raise ConfigError(
            f"optim.name = {cfg.name!r}: unknown; allowed: {', '.join(OPTIMIZER_BUILDERS)}"
        )
    packed = packing is not None and packing.enabled
    if model is not None and model.parametrization == "mup":
        check_mup_optimizer(model, cfg)
        lr = optax.chain(lr, scale_by_mup(model, cfg.name,  # per-layer lr = lr x multiplier
                                          packing.lr_multipliers if packed else None))

    def mask(tree):
        return packing.decay_mask(tree) if packed else decay_mask(tree, cfg)

    tx = OPTIMIZER_BUILDERS[cfg.name](cfg, lr, mask)
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx


def make_optimizer(cfg: OptimConfig, total_steps: int, model: ModelConfig | None = None
                   ) -> tuple[optax.GradientTransformation, Schedule]:
    """(transformation, lr schedule) for `cfg` over `total_steps` updates.

    `model`: the model config; under model.parametrization = 'mup' each parameter's
    learning rate is multiplied by its µP multiplier (`mup_lr_multipliers`). None or
    an SP model: one learning rate for all.

    `transformation.update(grads, state, params)` needs `params` (weight decay, LARS/LAMB
    trust ratios); the schedule is read at the optimizer's own update count.
    """
    if cfg.name not in OPTIMIZER_BUILDERS:
        raise ConfigError(
            f"optim.name = {cfg.name!r}: unknown; allowed: {', '.join(OPTIMIZER_BUILDERS)}"
        )
    lr_at = schedule(cfg, total_steps)
    return _build(cfg, optax.scale_by_learning_rate(lr_at), model), lr_at


def make_runtime_optimizer(cfg: OptimConfig, model: ModelConfig | None = None,
                           packing: Any = None) -> optax.GradientTransformationExtraArgs:
    """The transformation of `cfg` without a schedule: `update(grads, state, params, lr=x)`
    applies learning rate x (a traced scalar) where the algorithm puts it, times each
    parameter's µP multiplier when `model` is a µP config. Depends on no field of
    RUNTIME_OPTIM_FIELDS.

    `packing` (a scaling.train.packing.ParamPacking): the transformation takes the packed dict
    of parameters, gradients and moments instead of the tree, its decay mask and µP
    multipliers one per group."""
    decay_shape(cfg)
    return _build(cfg, scale_by_lr_argument(), model, packing)


def describe_optimizer(cfg: OptimConfig) -> str:
    """One line for reports, e.g.
    'adamw lr=3e-03 cosine(warmup=100, final=0.1x lr) b1=0.9 b2=0.95 wd=0.1 [matrices] clip=1'."""
    sched = f"{cfg.schedule}(warmup={cfg.warmup_steps}"
    if cfg.schedule != "constant":
        sched += f", final={cfg.final_lr_ratio:g}x lr"
    if cfg.schedule == "wsd":
        sched += f", {decay_shape(cfg)} decay over the last {cfg.decay_fraction:g}"
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
