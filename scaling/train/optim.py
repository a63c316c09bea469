"""Optimizer registry and learning-rate schedules: one path for every optimizer.

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

Schedules (W = warmup_steps, T = total_steps, lr = peak, r = final_lr_ratio; the
warm-up is counted inside T):

    warm-up     s < W:  lr * s / W                   (linear from 0; skipped when W = 0)
    constant    s >= W: lr
    cosine      s >= W: lr * (r + (1 - r) * (1 + cos(pi * (s - W) / (T - W))) / 2)
    linear      s >= W: lr * (1 - (1 - r) * (s - W) / (T - W))
    wsd         warmup-stable-decay. D = round(decay_fraction * T) clipped to [1, T - W],
                decay starts at S = T - D (never before W):
                W <= s < S: lr (stable);  S <= s <= T: lr * (r + (1 - r) * f((s - S) / D))
                with the decay shape f (`optim.decay_shape`, the cooldowns Hägele et al.
                2024 compare; default linear):
                  linear   f(x) = 1 - x
                  cosine   f(x) = (1 + cos(pi x)) / 2
                  1-sqrt   f(x) = 1 - sqrt(x)

Every schedule ends at its final value at s = T and stays there for s > T. All of them
are one formula with runtime values (`ScheduleParams`: W, T, decay start S, r and the
shape): constant is a linear decay to r = 1, cosine and linear decay from S = W. The
arithmetic follows optax's own schedules (`optax.linear_schedule`,
`optax.cosine_decay_schedule`, `optax.join_schedules`) operation for operation, so the
values are those the project's optax-built schedules gave.

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

Default decay mask (see `decay_mask`): only weight matrices decay (the untied output head
included) -- not biases, not norm scales/biases, not input embeddings.
`decay_norms_and_biases` / `decay_embeddings` turn those on. LARS and LAMB adapt only
matrices and embeddings layer-wise (`trust_ratio_mask`); see their docstrings for what
biases and norm parameters get.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.config import (OPTIMIZERS, SCHEDULES, ConfigError, ModelConfig, OptimConfig,
                            check_mup_optimizer)

Schedule = Callable[[Any], jax.Array]
Mask = Callable[[Any], Any]

__all__ = [
    "make_optimizer",
    "make_runtime_optimizer",
    "schedule",
    "schedule_params",
    "schedule_multiplier",
    "ScheduleParams",
    "DECAY_SHAPES",
    "RUNTIME_OPTIM_FIELDS",
    "decay_mask",
    "trust_ratio_mask",
    "stacked_layers_mask",
    "param_kind",
    "mup_role",
    "mup_lr_multipliers",
    "lars",
    "lamb",
    "describe_optimizer",
    "OPTIMIZER_BUILDERS",
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
    The untied output head (`unembed/kernel` in scaling.models.transformer) is a weight matrix like
    any other projection: it is decayed by default (it is a lookup table only for the
    parameter count's Kaplan convention, see scaling.accounting.counts, not for the optimizer).
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
    """Pytree of bools: True where LARS and LAMB apply their layer-wise trust ratio
    (matrices and embeddings; never biases, norm parameters or other vectors)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: param_kind(path, leaf) in ("matrix", "embedding"), params
    )


# scaling.models.transformer's nn.scan module: every parameter under it carries a leading layer axis.
STACKED_MODULE = "blocks"


def stacked_layers_mask(params: Any) -> Any:
    """Pytree of bools: True where the leading axis of a parameter indexes layers (the
    parameter lives under the model's nn.scan module `blocks` and has ndim >= 2), so a
    "per-layer" norm is one norm per slice along axis 0, exactly as if the layers were
    separate parameters (`scan_layers = False`)."""

    def decide(path, leaf):
        names = [_key_name(k) for k in path]
        return STACKED_MODULE in names[:-1] and len(getattr(leaf, "shape", ())) >= 2

    return jax.tree_util.tree_map_with_path(decide, params)


def _layer_norm(x: jax.Array, stacked: bool) -> jax.Array:
    """L2 norm in float32 of the whole tensor, or of each slice along axis 0 if stacked
    (shape [L, 1, ..., 1], broadcastable against x)."""
    x = x.astype(jnp.float32)
    if stacked:
        return jnp.sqrt(jnp.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))
    return jnp.sqrt(jnp.sum(x * x))


# --------------------------------------------------------------------------------------
# µP's per-layer learning rates (Yang et al. 2022, Tensor Programs V, Table 3)
# --------------------------------------------------------------------------------------
#
# With m = d_model / mup_base_width, the learning rate of each parameter is lr x:
#
#                         Adam family (adam, adamw)    SGD family (sgd, momentum, nesterov)
#   hidden matrices       1 / m                        1
#   embeddings, norms,    1                            m
#     biases, vectors
#   readout W_out         1                            m
#
# "hidden" = param_kind 'matrix' except the output head. The readout row is for the
# multiplier form of scaling.models.transformer (logits = (mult / m) h . W_out, W_out at SP's init):
# there W_out behaves like an input weight (one width-sized dimension), which is why
# microsoft/mup's MuAdam leaves its rate alone and MuSGD scales it by m. A tied head is
# the embedding, whose rule is the same. The multiplier scales the whole step of the
# chain, the decoupled weight decay included (w <- w - lr m_l (direction + wd w)), as a
# per-group lr does in torch's AdamW (p *= 1 - lr wd). This is a choice, and not
# microsoft/mup's: its MuAdam/MuAdamW (mup/optim.py) divide a hidden matrix group's lr by
# width_mult *and multiply its weight_decay by width_mult*, and MuSGD does the inverse pair,
# so there lr x wd, the per-step shrinkage, is the same at every width. Here a hidden
# matrix under Adam shrinks by lr wd / m per step (1/m of SP's at the same wd) and SGD's
# readout by lr wd m; tests/test_optim.py pins it. So under µP a tuned weight_decay
# transfers across widths with the update, not with the shrinkage (an optimum tuned with
# MuAdamW corresponds to wd x m here). LARS and LAMB are refused under µP
# (scaling.config.check_mup_optimizer): their trust ratios already set each layer's
# step relative to its weights. At the base width (m = 1) every multiplier is 1 and the
# update is SP's bit for bit (a multiplier of exactly 1 is not applied at all).

ADAM_FAMILY = ("adam", "adamw")
SGD_FAMILY = ("sgd", "momentum", "nesterov")


def mup_role(path: tuple, leaf: Any) -> str:
    """'readout' (the untied output head, a module named 'unembed...'), 'hidden' (other
    weight matrices) or 'vector' (embeddings, norms, biases, other vectors)."""
    names = [_key_name(k).lower() for k in path]
    if any(n.startswith("unembed") for n in names[:-1]):
        return "readout"
    return "hidden" if param_kind(path, leaf) == "matrix" else "vector"


def _mup_multiplier(role: str, optimizer: str, width_mult: float) -> float:
    if optimizer in ADAM_FAMILY:
        return 1.0 / width_mult if role == "hidden" else 1.0
    if optimizer in SGD_FAMILY:
        return 1.0 if role == "hidden" else width_mult
    raise ConfigError(f"optim.name = {optimizer!r}: µP defines no learning-rate rule for it")


def mup_lr_multipliers(params: Any, model: ModelConfig | None, optimizer: str) -> Any:
    """Pytree of python floats shaped like `params`: each parameter's learning-rate
    multiplier (all 1.0 under SP or without a model config; see the table above)."""
    if model is None or model.parametrization != "mup":
        return jax.tree.map(lambda _: 1.0, params)
    m = model.width_mult
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _mup_multiplier(mup_role(path, leaf), optimizer, m), params)


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
# Schedules: one formula, runtime values
# --------------------------------------------------------------------------------------

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")

# OptimConfig fields that enter the compiled step only as runtime values (TrainState.lr
# and TrainState.schedule), never as constants of the program. `decay_shape` is read with
# getattr so that configs without the field (before it is added to OptimConfig) work.
RUNTIME_OPTIM_FIELDS = ("lr", "schedule", "warmup_steps", "final_lr_ratio",
                        "decay_fraction", "decay_shape")


class ScheduleParams(NamedTuple):
    """A schedule's values at run time (0-d arrays or numpy scalars; see `schedule`).

    multiplier(s) = s / W                                  for s < W (warm-up)
                  = 1                                      for W <= s < S (stable)
                  = r + (1 - r) * f(min(s - S, D) / D)     for s >= S, D = T - S
    """

    warmup: Any  # int32  W
    total: Any  # int32  T
    decay_start: Any  # int32  S, W <= S < T
    final_ratio: Any  # float32  r
    decay_range: Any  # float32  1 - r, rounded once from float64 as optax does
    shape: Any  # int32  index into DECAY_SHAPES


def _decay_shape(cfg: OptimConfig) -> str:
    shape = getattr(cfg, "decay_shape", "linear")
    if shape not in DECAY_SHAPES:
        raise ConfigError(
            f"optim.decay_shape = {shape!r}: unknown; allowed: {', '.join(DECAY_SHAPES)}"
        )
    return shape


def _wsd_decay_steps(cfg: OptimConfig, total_steps: int) -> int:
    decay = int(round(cfg.decay_fraction * total_steps))
    return min(max(decay, 1), total_steps - cfg.warmup_steps)


def schedule_params(cfg: OptimConfig, total_steps: int) -> ScheduleParams:
    """The runtime values of `cfg`'s schedule over `total_steps` updates (numpy scalars).

    constant: a linear decay from S = W to r = 1 (so exactly 1 throughout); cosine and
    linear: decay from S = W; wsd: from S = T - D with `optim.decay_shape`.
    """
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(
            f"optim.schedule = {cfg.schedule!r}: unknown; allowed: {', '.join(SCHEDULES)}"
        )
    total_steps = int(total_steps)
    W = int(cfg.warmup_steps)
    if not 0 <= W < total_steps:
        raise ConfigError(
            f"optim.warmup_steps = {W} must be in [0, total_steps = {total_steps})"
        )
    shape, ratio, start = "linear", float(cfg.final_lr_ratio), W
    if cfg.schedule == "constant":
        ratio = 1.0
    elif cfg.schedule == "cosine":
        shape = "cosine"
    elif cfg.schedule == "wsd":
        shape = _decay_shape(cfg)
        start = total_steps - _wsd_decay_steps(cfg, total_steps)
    return ScheduleParams(
        warmup=np.int32(W), total=np.int32(total_steps), decay_start=np.int32(start),
        final_ratio=np.float32(ratio), decay_range=np.float32(1.0 - ratio),
        shape=np.int32(DECAY_SHAPES.index(shape)),
    )


def schedule_multiplier(step: Any, p: ScheduleParams) -> jax.Array:
    """The schedule at unit peak lr, float32; `step` and the fields of `p` may be traced.

    Operation for operation optax's arithmetic as XLA compiles it: warm-up =
    linear_schedule(0, 1, W), the decays = linear_schedule(1, r, D) /
    cosine_decay_schedule(1, D, alpha=r) evaluated at s - S, joined with jnp.where at the
    boundaries like join_schedules.
    """
    s = jnp.asarray(step, jnp.int32)
    W = jnp.asarray(p.warmup, jnp.int32)
    S = jnp.asarray(p.decay_start, jnp.int32)
    D = (jnp.asarray(p.total, jnp.int32) - S).astype(jnp.float32)
    r = jnp.asarray(p.final_ratio, jnp.float32)
    rng = jnp.asarray(p.decay_range, jnp.float32)

    # x / span is written x * (1 / span): XLA compiles a division by a constant (optax's
    # schedules with python-int spans) into that multiplication, so this reproduces the
    # compiled constant-schedule values bit for bit with the span a runtime value.
    inv_W = 1.0 / jnp.maximum(W, 1).astype(jnp.float32)  # W = 0: warm-up never taken
    warm = (0.0 - 1.0) * (1 - jnp.clip(s, 0, W).astype(jnp.float32) * inv_W) + 1.0

    inv_D = 1.0 / D
    count = jnp.clip((s - S).astype(jnp.float32), 0.0, D)
    linear = rng * (1 - count * inv_D) + r
    cosine = rng * (0.5 * (1 + jnp.cos(jnp.pi * count * inv_D))) + r
    one_minus_sqrt = rng * (1 - jnp.sqrt(count * inv_D)) + r
    decay = jnp.select([p.shape == 1, p.shape == 2], [cosine, one_minus_sqrt], linear)

    main = jnp.where(s < S, jnp.float32(1.0), decay)
    return jnp.where(s < W, warm, main).astype(jnp.float32)


def schedule(cfg: OptimConfig, total_steps: int) -> Schedule:
    """Learning rate (peak `cfg.lr` x the schedule) as a function of the update count."""
    params = schedule_params(cfg, total_steps)
    peak = float(cfg.lr)

    def lr_at(step):
        return schedule_multiplier(step, params) * jnp.float32(peak)

    return lr_at


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
    _decay_shape(cfg)
    return _build(cfg, scale_by_lr_argument(), model, packing)


def describe_optimizer(cfg: OptimConfig) -> str:
    """One line for reports, e.g.
    'adamw lr=3e-03 cosine(warmup=100, final=0.1x lr) b1=0.9 b2=0.95 wd=0.1 [matrices] clip=1'."""
    sched = f"{cfg.schedule}(warmup={cfg.warmup_steps}"
    if cfg.schedule != "constant":
        sched += f", final={cfg.final_lr_ratio:g}x lr"
    if cfg.schedule == "wsd":
        sched += f", {_decay_shape(cfg)} decay over the last {cfg.decay_fraction:g}"
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
