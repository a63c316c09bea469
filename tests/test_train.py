"""The train step (scaling.train.step): one compile per shape, runtime lr and schedule, exact
checkpoint round trip."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling import models

from scaling.train import step as train_mod
from scaling.train.checkpoint import Checkpointer
from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig
from scaling.train.optimizers import make_runtime_optimizer
from scaling.train.schedules import schedule
from scaling.runtime import compiler_options
from scaling.train.step import Trainer, compile_key

MODEL = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=32, seq_len=8)


def config(**optim) -> Config:
    base = dict(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=0, weight_decay=0.1)
    steps = optim.pop("steps", 50)
    return Config(model=MODEL, optim=OptimConfig(**{**base, **optim}),
                  train=TrainConfig(steps=steps, batch_size=4))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, MODEL.vocab_size, (4, MODEL.seq_len + 1)), jnp.int32)


def test_compile_key_ignores_the_schedule_and_lr():
    a = config(steps=50, warmup_steps=0, lr=3e-3)
    b = config(steps=80, warmup_steps=10, lr=1e-2, final_lr_ratio=0.3, schedule="wsd",
               decay_fraction=0.5)
    assert compile_key(a) == compile_key(b)
    named = dataclasses.replace(a, model=dataclasses.replace(MODEL, preset="x"))
    assert compile_key(named) == compile_key(a)  # a preset name is not a shape
    for other in (dataclasses.replace(a, model=dataclasses.replace(MODEL, d_model=32)),
                  config(name="lamb"), config(weight_decay=0.0),
                  dataclasses.replace(a, train=dataclasses.replace(a.train, batch_size=8)),
                  dataclasses.replace(a, train=dataclasses.replace(a.train, micro_batches=2))):
        assert compile_key(other) != compile_key(a)


def test_two_points_of_one_shape_compile_once():
    """Different D (steps) and warm-up: one jitted initializer and one jitted step, each
    traced and compiled once, and each point still follows its own schedule."""
    a = config(steps=50, warmup_steps=0, lr=3e-3)
    b = config(steps=80, warmup_steps=10, lr=1e-2)
    ta, tb = Trainer(a), Trainer(b)
    step = ta.compile_step()
    assert tb.compile_step() is step
    init = train_mod._state_initializer(ta.model_config, ta.step_optim)
    assert train_mod._state_initializer(tb.model_config, tb.step_optim) is init

    sa, sb = ta.init_state(), tb.init_state()
    assert init._cache_size() == 1
    lr_a, lr_b = schedule(a.optim, 50), schedule(b.optim, 80)
    pb0 = jax.device_get(sb.params)
    for k in range(3):
        sa, ma = step(sa, batch(k))
        sb, mb = step(sb, batch(k))
        assert float(ma["lr"]) == pytest.approx(float(lr_a(k)), rel=1e-6)
        assert float(mb["lr"]) == pytest.approx(float(lr_b(k)), rel=1e-6)
        if k == 0:  # b warms up: its first update is exactly zero
            for x, y in zip(jax.tree.leaves(jax.device_get(sb.params)), jax.tree.leaves(pb0)):
                np.testing.assert_array_equal(x, y)
    assert step._cache_size() == 1
    assert init._cache_size() == 1

    # the shared step computes exactly what b's own, separately traced step computes
    # (compiled as the trainer compiles steps: scaling.runtime.compiler_options)
    own = jax.jit(lambda s, x: tb.train_step_body(s, x),
                  compiler_options=compiler_options("step"))
    sb2 = tb.init_state()
    for k in range(3):
        sb2, _ = own(sb2, batch(k))
    for x, y in zip(jax.tree.leaves(jax.device_get(sb)), jax.tree.leaves(jax.device_get(sb2))):
        np.testing.assert_array_equal(x, y)


def test_state_carries_the_schedule_and_restores_exactly(tmp_path):
    cfg = config(steps=40, warmup_steps=4, schedule="wsd", final_lr_ratio=0.2)
    t = Trainer(cfg)
    state = t.init_state()
    step = t.compile_step()
    for k in range(2):
        state, _ = step(state, batch(k))
    host = jax.device_get(state)
    assert int(host.schedule.warmup) == 4 and int(host.schedule.total) == 40
    assert int(host.schedule.decay_start) == 40 - 8
    assert float(host.lr) == np.float32(3e-3)
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(2, t.to_checkpoint(host), {"step": 2})  # as scaling.train.loop saves: the tree
    on_disk, meta = ckpt.restore_latest(t.abstract_checkpoint())
    ckpt.close()
    assert meta["step"] == 2
    restored = t.from_checkpoint(on_disk)
    assert jax.tree.structure(restored) == jax.tree.structure(host)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(host)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)
    # the restored state continues exactly like the live one
    live, _ = step(state, batch(2))
    again, _ = step(jax.device_put(restored), batch(2))
    for x, y in zip(jax.tree.leaves(jax.device_get(live)), jax.tree.leaves(jax.device_get(again))):
        np.testing.assert_array_equal(x, y)


def test_reschedule_puts_another_configs_schedule_in_a_state():
    a = config(steps=50, warmup_steps=0)
    b = config(steps=120, warmup_steps=6, lr=1e-2, schedule="linear")
    state = jax.device_get(Trainer(a).init_state())
    moved = Trainer(b).reschedule(state)
    fresh = jax.device_get(Trainer(b).init_state())
    assert float(moved.lr) == float(fresh.lr)
    for x, y in zip(moved.schedule, fresh.schedule):
        assert np.asarray(x).dtype == np.asarray(y).dtype and x == y
    for x, y in zip(jax.tree.leaves(moved.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's compiler options")
@pytest.mark.parametrize("arch,tie,pos", [("transformer", True, "learned"),
                                          ("transformer", False, "rotary"),
                                          ("lstm", True, "learned")])
def test_unoptimized_initializer_matches_the_optimized_one(arch, tie, pos):
    """On the CPU the state initializer is compiled unoptimized (runtime.compiler_options):
    every value is within 3e-7 (relative) of a default (-O3) build's: the float
    transforms of the same random bits, rounded differently (measured: ~4 % of the
    elements of a normal-initialized matrix differ, by at most 3 ulp); the tree is the same."""
    model = dataclasses.replace(MODEL, arch=arch, tie_embeddings=tie, pos_encoding=pos,
                                d_model=48, vocab_size=256, n_layer=2)
    if arch == "transformer":
        model = dataclasses.replace(model, n_head=3)
    cfg = dataclasses.replace(config(), model=model)
    trainer = Trainer(cfg)
    opt = make_runtime_optimizer(trainer.step_optim, trainer.model_config)
    optimized = jax.jit(lambda rng: models.init_params(trainer.model_config, rng))
    state = trainer.to_checkpoint(jax.device_get(trainer.init_state(3)))  # the trees
    params, want = state.params, jax.device_get(optimized(jax.random.key(3)))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=3e-7, atol=0)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(opt.init(want))
