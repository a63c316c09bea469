"""The training step: one pure per-device body that every parallel driver reuses.

`train_step_body(state, batch) -> (state, metrics)` computes the loss and gradient on
its (local) batch, optionally accumulated over micro-batches, averages gradients and
metrics with `lax.pmean` over `axis_name` when one is bound (the data-parallel
drivers in `scaling.train.parallel` bind "data"), and applies the optimizer update. The
same function runs under plain `jit` on one device, under `jax.pmap` and under
`jax.jit(jax.shard_map(...))`, so the three drivers cannot drift apart.

What the compiled step depends on (`compile_key`): the model, the optimizer's kind and
constants (name, betas, momentum, weight decay and its masks, clipping...), the batch
size and micro-batching. The peak learning rate and the whole schedule (total steps,
warm-up, decay start, final ratio, decay shape) are values in the TrainState, read by
the step at run time, so one compiled step serves every point of a sweep that shares a
model shape, optimizer and batch -- different D, warm-up or lr included -- and the
persistent compilation cache serves later processes.

The state the step takes holds its parameters and optimizer moments packed into a few
flat vectors (`scaling.train.packing`: one kernel per group for the optimizer's elementwise
work instead of one per tensor); `Trainer.to_checkpoint` / `from_checkpoint` convert
to and from the tree that checkpoints hold.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.config import Config, ModelConfig, OptimConfig
from scaling import models
from scaling.runtime import compiler_options
from scaling.train.optimizers import make_runtime_optimizer
from scaling.train.schedules import (RUNTIME_OPTIM_FIELDS, ScheduleParams, schedule_multiplier,
                                     schedule_params)
from scaling.train.noise_scale import RAW, squared_norm
from scaling.train.packing import ParamPacking


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: Any  # packed while training (scaling.train.packing), the tree in a checkpoint
    opt_state: Any  # the moments likewise
    lr: jax.Array  # float32 scalar: the peak learning rate (optim.lr), a value, not a constant
    schedule: ScheduleParams  # the schedule's values (warm-up, total, decay start, ...)


# The learning rate of update k is lr * schedule_multiplier(k, schedule), computed inside
# the step from the state, and handed to the optimizer where its algorithm applies it.


def next_token_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Mean cross-entropy of the next token, in float32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


def masked_lm_losses(logits_BxTxV: jax.Array, labels_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(loss sum, scored count) per row, float32 [B] each: cross-entropy of the labels at
    the positions the masking selected (labels >= 0; scaling.data.masking), in float32."""
    scored_BxT = labels_BxT >= 0
    ce_BxT = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), jnp.where(scored_BxT, labels_BxT, 0))
    scored_BxT = scored_BxT.astype(jnp.float32)
    return (ce_BxT * scored_BxT).sum(axis=1), scored_BxT.sum(axis=1)


def _mean_over(axis_name: str | None, tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _step_optim(optim: OptimConfig) -> OptimConfig:
    """`optim` with every runtime field (RUNTIME_OPTIM_FIELDS) at its default: the part of
    the optimizer config the compiled step is built from."""
    defaults = OptimConfig()
    names = {f.name for f in dataclasses.fields(OptimConfig)}
    return dataclasses.replace(
        optim, **{k: getattr(defaults, k) for k in RUNTIME_OPTIM_FIELDS if k in names})


def _step_model(model: ModelConfig) -> ModelConfig:
    """`model` without its preset name (the resolved fields define the shape)."""
    return dataclasses.replace(model, preset="")


def compile_key(cfg: Config) -> str:
    """What the compiled train/eval step of `cfg` depends on, as a string: equal keys
    mean one compiled step serves both configs (on the same driver and devices, which
    the caller adds). Model (preset name dropped), optimizer without its runtime fields
    (lr and schedule), batch size and micro-batches; not train.steps, seeds, data."""
    optim = _step_optim(cfg.optim)
    parts = {
        "model": dataclasses.asdict(_step_model(cfg.model)),
        "optim": {k: v for k, v in dataclasses.asdict(optim).items()
                  if k not in RUNTIME_OPTIM_FIELDS},
        "batch": cfg.train.batch_size,
        "micro": cfg.train.micro_batches,
        "objective": cfg.data.objective,
        **({"noise_scale": True} if cfg.train.noise_scale else {}),
    }
    return repr(parts)


def runtime_values(cfg: Config) -> tuple[np.float32, ScheduleParams]:
    """(peak lr, schedule values) of `cfg`: what TrainState.lr and .schedule hold."""
    return np.float32(cfg.optim.lr), schedule_params(cfg.optim, cfg.train.steps)


@functools.lru_cache(maxsize=64)
def _packing(model_cfg: ModelConfig, step_optim: OptimConfig) -> ParamPacking:
    abstract = jax.eval_shape(lambda: models.init_params(model_cfg, jax.random.key(0)))
    return ParamPacking.build(abstract, step_optim, model_cfg)


def _init(model_cfg: ModelConfig, step_optim: OptimConfig, packing: ParamPacking | None):
    """(rng, peak lr, schedule) -> fresh TrainState, packed by `packing` (None: the tree)."""
    optimizer = make_runtime_optimizer(step_optim, model_cfg, packing)

    def init(rng, lr, sched):
        params = models.init_params(model_cfg, rng)
        if packing is not None:
            params = packing.pack(params)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), lr, sched)

    return init


def _state_initializer(model_cfg: ModelConfig, step_optim: OptimConfig, packed: bool = True
                       ) -> Callable:
    """Jitted (rng, peak lr, schedule) -> fresh TrainState (packed, or the trees); compiled
    once per model shape and optimizer, not per point (with the CPU's "init" options)."""
    return _cached_initializer(model_cfg, step_optim, packed)


@functools.lru_cache(maxsize=64)
def _cached_initializer(model_cfg: ModelConfig, step_optim: OptimConfig, packed: bool) -> Callable:
    packing = _packing(model_cfg, step_optim) if packed else None
    return jax.jit(_init(model_cfg, step_optim, packing), compiler_options=compiler_options("init"))


@dataclass(frozen=True)
class Trainer:
    """Model, optimizer and the pure step functions for one configuration.

    Everything compiled is built from `compile_key`'s fields only (`model_config`,
    `step_optim`, the batch); the run's lr and schedule enter through the state.
    """

    config: Config

    @property
    def model_config(self) -> ModelConfig:
        return _step_model(self.config.model)

    @property
    def step_optim(self) -> OptimConfig:
        return _step_optim(self.config.optim)

    @property
    def model(self):
        return models.build(self.model_config)

    @property
    def packed(self) -> bool:
        """Whether the state the step takes is packed (scaling.train.packing). Not under a
        device mesh (train.mesh): a packed vector concatenates every tensor of a group, so
        a tensor's own dimensions -- which one holds the heads, which one FSDP splits --
        are gone; there the state is the trees, each tensor sharded by its own
        PartitionSpec (scaling.train.mesh), and the optimizer runs per tensor."""
        return self.config.train.mesh_axes is None

    @property
    def packing(self) -> ParamPacking | None:
        """How the state's parameters and moments are packed; None when not `packed`."""
        return _packing(self.model_config, self.step_optim) if self.packed else None

    @property
    def optimizer(self) -> optax.GradientTransformationExtraArgs:
        """The optimizer without a schedule, on the state's (packed) parameters:
        `update(..., lr=...)` (see scaling.train.optimizers)."""
        return make_runtime_optimizer(self.step_optim, self.model_config, self.packing)

    def _initializer(self) -> Callable:
        return _state_initializer(self.model_config, self.step_optim, self.packed)

    def init_fn(self) -> Callable:
        """The un-jitted (rng, peak lr, schedule) -> fresh TrainState, for a driver that
        compiles it with its own output shardings (scaling.train.mesh)."""
        return _init(self.model_config, self.step_optim, self.packing)

    def init_state(self, seed: int | None = None) -> TrainState:
        """A fresh (packed) state on the default device (params from `seed`, default
        train.seed): what the step takes."""
        seed = self.config.train.seed if seed is None else seed
        lr, sched = runtime_values(self.config)
        return self._initializer()(jax.random.key(seed), lr, sched)

    def abstract_checkpoint(self) -> TrainState:
        """Shapes and dtypes of the state as checkpoints hold it (parameters and moments
        as trees), without allocating it: the target of a restore."""
        lr, sched = runtime_values(self.config)
        init = _init(self.model_config, self.step_optim, None)
        return jax.eval_shape(init, jax.random.key(0), lr, sched)

    def to_checkpoint(self, host_state: TrainState) -> TrainState:
        """A host (numpy) training state as checkpoints hold it: parameters and moments
        unpacked into trees (views of the packed vectors, no copy)."""
        return self.packing.unpack_state(host_state) if self.packed else host_state

    def from_checkpoint(self, host_state: TrainState) -> TrainState:
        """A host state read from a checkpoint (trees), packed for the step."""
        return self.packing.pack_state(host_state) if self.packed else host_state

    def params_tree(self, params: Any) -> Any:
        """The model's parameter tree from a training state's (packed) params."""
        return self.packing.unpack(params) if self.packed else params

    def reschedule(self, state: TrainState) -> TrainState:
        """`state` with this config's peak lr and schedule values (e.g. a checkpoint of
        another run of the same shape, continued under a different schedule)."""
        lr, sched = runtime_values(self.config)
        like = lambda new, old: np.asarray(new, np.asarray(old).dtype)  # noqa: E731
        return state._replace(lr=like(lr, state.lr),
                              schedule=ScheduleParams(*map(like, sched, state.schedule)))

    @property
    def masked_lm(self) -> bool:
        """data.objective = "mlm": batches are int32 [B, 2, T] (inputs, labels; scaling.data.masking)."""
        return self.config.data.objective == "mlm"

    def loss(self, params, batch_BxT1: jax.Array) -> jax.Array:
        """The training loss of a batch; `params` as the state holds them (packed)."""
        params = self.params_tree(params)
        if self.masked_lm:  # mean over the selected positions of the batch
            logits_BxTxV = self.model.apply({"params": params}, batch_BxT1[:, 0])
            loss_B, count_B = masked_lm_losses(logits_BxTxV, batch_BxT1[:, 1])
            return loss_B.sum() / jnp.maximum(count_B.sum(), 1.0)
        inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
        logits_BxTxV = self.model.apply({"params": params}, inputs_BxT)
        return next_token_loss(logits_BxTxV, targets_BxT)

    def train_step_body(
        self, state: TrainState, batch_BxT1: jax.Array, axis_name: str | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update on this device's batch; pmean over `axis_name` if bound."""
        optimizer = self.optimizer
        micro = self.config.train.micro_batches
        noise = self.config.train.noise_scale  # scaling.train.noise_scale
        devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
        if noise and micro == 1 and devices == 1:
            micro = 2  # two half-batch gradients: the noise scale's small batch, same FLOPs
        grad_fn = jax.value_and_grad(self.loss)
        # Under shard_map the replicated parameters are device-invariant, and the gradient
        # of this device's loss with respect to an invariant value comes back already
        # summed over the devices (n x the mean; the pmean below then changed nothing):
        # differentiate with respect to a device-varying view, so that each device holds
        # its own batch's gradient and the pmean averages them. (A no-op under pmap.)
        params = state.params if axis_name is None else _varying(state.params, axis_name)

        if micro == 1:
            loss, grads = grad_fn(params, batch_BxT1)
            small_sq = squared_norm(grads) if noise else None
        else:
            # Gradient accumulation: scan over micro-batches, summing in float32.
            b = batch_BxT1.shape[0]
            micro_MxBxT1 = batch_BxT1.reshape(micro, b // micro, *batch_BxT1.shape[1:])

            def accumulate(carry, mb_BxT1):
                loss_sum, grad_sum, sq_sum = carry
                loss, grads = grad_fn(params, mb_BxT1)
                grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
                if noise:
                    sq_sum = sq_sum + squared_norm(grads)
                return (loss_sum + loss, grad_sum, sq_sum), None

            # The first micro-batch seeds the carry, so the carry has the same type as the
            # body's output (under shard_map: varying over the data axis).
            loss0, grads0 = grad_fn(params, micro_MxBxT1[0])
            grads0 = jax.tree.map(lambda g: g.astype(jnp.float32), grads0)
            sq0 = squared_norm(grads0) if noise else jnp.zeros((), jnp.float32)
            (loss, grads, sq_sum), _ = jax.lax.scan(accumulate, (loss0, grads0, sq0),
                                                    micro_MxBxT1[1:])
            small_sq = sq_sum / micro if noise else None
            loss = loss / micro
            grads = jax.tree.map(lambda g, p: (g / micro).astype(p.dtype), grads, state.params)

        loss, grads = _mean_over(axis_name, (loss, grads))
        noise_metrics = {}
        if noise:  # |G_B|^2 at one micro-batch on one device and at the global batch
            rows = batch_BxT1.shape[0] // micro
            tokens_per_row = self.config.model.seq_len
            noise_metrics = dict(zip(RAW, (
                _mean_over(axis_name, small_sq), squared_norm(grads),
                jnp.float32(rows * tokens_per_row), jnp.float32(rows * micro * devices * tokens_per_row))))
        lr = schedule_multiplier(state.step, state.schedule) * state.lr
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, lr=lr)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "update_norm": optax.tree.norm(updates),
            "lr": lr,
            **noise_metrics,
        }
        return TrainState(state.step + 1, params, opt_state, state.lr, state.schedule), metrics

    def eval_step_body(
        self, params, batch_BxT1: jax.Array, axis_name: str | None = None,
        per_position: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """float32[B]: the mean next-token loss of every window (row) of the batch (masked
        LM: the mean over the window's selected positions), gathered
        over `axis_name` when bound, so every device returns the global batch's losses
        (the eval set's standard error needs them per window, not averaged).
        `per_position` (next-token objective only): (that, float32[B, T] the loss at every
        position of every window). `params` as the state holds them (packed)."""
        params = self.params_tree(params)
        if self.masked_lm:  # per window: mean over its selected positions
            loss_B, count_B = masked_lm_losses(
                self.model.apply({"params": params}, batch_BxT1[:, 0]), batch_BxT1[:, 1])
            return _gather_rows(loss_B / jnp.maximum(count_B, 1.0), axis_name)
        logits_BxTxV = self.model.apply({"params": params}, batch_BxT1[:, :-1])
        ce_BxT = optax.softmax_cross_entropy_with_integer_labels(
            logits_BxTxV.astype(jnp.float32), batch_BxT1[:, 1:])
        losses_B = ce_BxT.mean(axis=1)
        if per_position:
            return _gather_rows(losses_B, axis_name), _gather_rows(ce_BxT, axis_name)
        return _gather_rows(losses_B, axis_name)

    def compile_step(self) -> Callable:
        """The single-device step, jitted with the state donated (the `none` driver);
        one jitted function per compile_key (shared by every config with that key)."""
        return _jitted_step(self.model_config, self.step_optim, self.config.train.micro_batches,
                            self.config.data.objective, self.config.train.noise_scale)


def _varying(tree, axis_name: str):
    """`tree` as a device-varying value along `axis_name` (jax.lax.pcast; pvary before it)."""
    if hasattr(jax.lax, "pcast"):
        return jax.tree.map(lambda x: jax.lax.pcast(x, axis_name, to="varying"), tree)
    return jax.tree.map(lambda x: jax.lax.pvary(x, axis_name), tree)


def _gather_rows(x: jax.Array, axis_name: str | None) -> jax.Array:
    """The global batch's rows of `x` (leading axis: this device's rows) on every device."""
    if axis_name is None:
        return x
    # Each device writes its rows into the global array; the sum is then replicated
    # (an all_gather's result is not inferred replicated under shard_map).
    b = x.shape[0]
    full = jnp.zeros((jax.lax.axis_size(axis_name) * b, *x.shape[1:]), x.dtype)
    start = (jax.lax.axis_index(axis_name) * b,) + (0,) * (x.ndim - 1)
    return jax.lax.psum(jax.lax.dynamic_update_slice(full, x, start), axis_name)


@functools.lru_cache(maxsize=64)
def _jitted_step(model_cfg: ModelConfig, step_optim: OptimConfig, micro_batches: int,
                 objective: str = "next_token", noise_scale: bool = False):
    cfg = Config(model=model_cfg, optim=step_optim,
                 data=dataclasses.replace(Config().data, objective=objective),
                 train=dataclasses.replace(Config().train, micro_batches=micro_batches,
                                           noise_scale=noise_scale))
    return jax.jit(partial(Trainer(cfg).train_step_body, axis_name=None), donate_argnums=0,
                   compiler_options=compiler_options("step"))
