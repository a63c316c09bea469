"""Learning-rate schedules: one formula with runtime values, for every schedule.

The optimizers that read them are in scaling.train.optimizers; scaling.train.step reads
`schedule_multiplier` with values from the train state.

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
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import SCHEDULES, ConfigError, OptimConfig

Schedule = Callable[[Any], jax.Array]

__all__ = [
    "schedule",
    "schedule_params",
    "schedule_multiplier",
    "ScheduleParams",
    "DECAY_SHAPES",
    "RUNTIME_OPTIM_FIELDS",
    "decay_shape",
    "Schedule",
]


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


def decay_shape(cfg: OptimConfig) -> str:
    """`optim.decay_shape` (linear when the config has no such field), checked."""
    shape = getattr(cfg, "decay_shape", "linear")
    if shape not in DECAY_SHAPES:
        raise ConfigError(
            f"optim.decay_shape = {shape!r}: unknown; allowed: {', '.join(DECAY_SHAPES)}"
        )
    return shape


def wsd_decay_steps(cfg: OptimConfig, total_steps: int) -> int:
    """Steps of a wsd schedule's decay: decay_fraction x total, at least 1, after warm-up."""
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
        shape = decay_shape(cfg)
        start = total_steps - wsd_decay_steps(cfg, total_steps)
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
