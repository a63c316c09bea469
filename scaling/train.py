"""The training step: one pure per-device body that every parallel driver reuses.

`train_step_body(state, batch) -> (state, metrics)` computes the loss and gradient on
its (local) batch, optionally accumulated over micro-batches, averages gradients and
metrics with `lax.pmean` over `axis_name` when one is bound (the data-parallel
drivers in `scaling.parallel` bind "data"), and applies the optimizer update. The
same function runs under plain `jit` on one device, under `jax.pmap` and under
`jax.jit(jax.shard_map(...))`, so the three drivers cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scaling.config import Config
from scaling.model import Transformer, init_params
from scaling.optim import make_optimizer


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: number of optimizer updates applied
    params: Any
    opt_state: Any
    lr: jax.Array  # float32 scalar: the peak learning rate (optim.lr), a value, not a constant


# Every optimizer here is linear in its peak learning rate: the update is the unit-lr
# update (schedule shape included) times optim.lr. Carrying the peak rate in the state
# rather than baking it into the program lets a learning-rate sweep compile its step
# once per shape, not once per point.


def next_token_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
    """Mean cross-entropy of the next token, in float32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


def _mean_over(axis_name: str | None, tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


@functools.lru_cache(maxsize=64)
def _state_initializer(model_cfg, unit_optim_cfg, steps: int) -> Callable:
    """Jitted (rng, peak lr) -> fresh TrainState; compiled once per shape, not per point."""
    optimizer, _ = make_optimizer(unit_optim_cfg, steps)

    def init(rng, lr):
        params = init_params(model_cfg, rng)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), lr)

    return jax.jit(init)


@dataclass(frozen=True)
class Trainer:
    """Model, optimizer and the pure step functions for one configuration."""

    config: Config

    @property
    def model(self) -> Transformer:
        return Transformer(self.config.model)

    @property
    def optimizer_and_schedule(self) -> tuple[optax.GradientTransformation, Callable]:
        """The optimizer and schedule at unit peak learning rate (see TrainState.lr)."""
        unit = dataclasses.replace(self.config.optim, lr=1.0)
        return make_optimizer(unit, self.config.train.steps)

    def init_state(self, seed: int | None = None) -> TrainState:
        """A fresh state on the default device (params from `seed`, default train.seed)."""
        seed = self.config.train.seed if seed is None else seed
        init = _state_initializer(self.config.model, dataclasses.replace(self.config.optim, lr=1.0),
                                  self.config.train.steps)
        return init(jax.random.key(seed), jnp.float32(self.config.optim.lr))

    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of the state, without allocating it."""
        init = _state_initializer(self.config.model, dataclasses.replace(self.config.optim, lr=1.0),
                                  self.config.train.steps)
        return jax.eval_shape(init, jax.random.key(0), jnp.float32(0))

    def loss(self, params, batch_BxT1: jax.Array) -> jax.Array:
        inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
        logits_BxTxV = self.model.apply({"params": params}, inputs_BxT)
        return next_token_loss(logits_BxTxV, targets_BxT)

    def train_step_body(
        self, state: TrainState, batch_BxT1: jax.Array, axis_name: str | None = None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update on this device's batch; pmean over `axis_name` if bound."""
        optimizer, schedule = self.optimizer_and_schedule
        micro = self.config.train.micro_batches
        grad_fn = jax.value_and_grad(self.loss)

        if micro == 1:
            loss, grads = grad_fn(state.params, batch_BxT1)
        else:
            # Gradient accumulation: scan over micro-batches, summing in float32.
            b = batch_BxT1.shape[0]
            micro_MxBxT1 = batch_BxT1.reshape(micro, b // micro, batch_BxT1.shape[1])

            def accumulate(carry, mb_BxT1):
                loss_sum, grad_sum = carry
                loss, grads = grad_fn(state.params, mb_BxT1)
                grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
                return (loss_sum + loss, grad_sum), None

            # The first micro-batch seeds the carry, so the carry has the same type as the
            # body's output (under shard_map: varying over the data axis).
            loss0, grads0 = grad_fn(state.params, micro_MxBxT1[0])
            grads0 = jax.tree.map(lambda g: g.astype(jnp.float32), grads0)
            (loss, grads), _ = jax.lax.scan(accumulate, (loss0, grads0), micro_MxBxT1[1:])
            loss = loss / micro
            grads = jax.tree.map(lambda g, p: (g / micro).astype(p.dtype), grads, state.params)

        loss, grads = _mean_over(axis_name, (loss, grads))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: (u * state.lr).astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "update_norm": optax.tree.norm(updates),
            "lr": jnp.asarray(schedule(state.step), jnp.float32) * state.lr,
        }
        return TrainState(state.step + 1, params, opt_state, state.lr), metrics

    def eval_step_body(
        self, params, batch_BxT1: jax.Array, axis_name: str | None = None
    ) -> dict[str, jax.Array]:
        return {"eval_loss": _mean_over(axis_name, self.loss(params, batch_BxT1))}

    def compile_step(self) -> Callable:
        """The single-device step, jitted with the state donated (the `none` driver)."""
        return jax.jit(partial(self.train_step_body, axis_name=None), donate_argnums=0)
