"""Packed parameters (scaling.train.packing): the step on packed vectors computes what the step
on the tree computes; checkpoints still hold the tree."""

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
from scaling.train.loop import train
from scaling.train.packing import ParamPacking
from scaling.runtime import compiler_options
from scaling.train.step import Trainer

MODEL = ModelConfig(n_layer=2, d_model=32, n_head=2, vocab_size=256, seq_len=16,
                    tie_embeddings=False)
MUP = dataclasses.replace(MODEL, parametrization="mup", mup_base_width=16)  # width x2


def config(model=MODEL, **optim) -> Config:
    base = dict(name="adamw", lr=1e-2, schedule="constant", warmup_steps=0,
                weight_decay=0.1, clip_norm=0.0)
    return Config(model=model, optim=OptimConfig(**{**base, **optim}),
                  train=TrainConfig(steps=50, batch_size=4)).validate()


def batch(seed: int):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, MODEL.vocab_size, (4, MODEL.seq_len + 1)), jnp.int32)


def tree_run(trainer: Trainer, steps: int):
    """The same training on the parameter tree: the step body with packing turned off."""
    tree = ParamPacking(jax.eval_shape(lambda: models.init_params(trainer.model_config,
                                                                  jax.random.key(0))),
                        {}, {}, enabled=False)
    original = train_mod._packing
    train_mod._packing = lambda *_: tree
    try:
        state = jax.jit(train_mod._init(trainer.model_config, trainer.step_optim, None))(
            jax.random.key(trainer.config.train.seed), *train_mod.runtime_values(trainer.config))
        step = jax.jit(trainer.train_step_body, compiler_options=compiler_options("step"))
        out = []
        for k in range(steps):
            state, m = step(state, batch(k))
            out.append(m)
        return jax.device_get(state), jax.device_get(out)
    finally:
        train_mod._packing = original


def packed_run(trainer: Trainer, steps: int):
    state, step, out = trainer.init_state(), trainer.compile_step(), []
    for k in range(steps):
        state, m = step(state, batch(k))
        out.append(m)
    return trainer.to_checkpoint(jax.device_get(state)), jax.device_get(out)


def test_groups_follow_decay_multiplier_and_size():
    """Leaves the optimizer treats alike share a vector; a large one stays whole."""
    t = Trainer(config(MUP))
    packing = t.packing  # what the step uses
    names = {g.name for g in packing.groups}
    # hidden matrices (decayed, lr x 1/2 under µP with Adam), the readout (decayed, x1),
    # embeddings, norms and biases (not decayed, x1)
    assert names == {"packed:decayed:lr_x0.5:float32", "packed:decayed:lr_x1:float32",
                     "packed:not_decayed:lr_x1:float32"}
    assert sorted(i for g in packing.groups for i in g.leaves) == list(range(len(packing.sizes)))
    abstract = jax.eval_shape(lambda: models.init_params(t.model_config, jax.random.key(0)))
    small = ParamPacking(abstract, jax.tree.map(lambda _: True, abstract),
                         jax.tree.map(lambda _: 1.0, abstract), enabled=True, max_elements=100)
    whole = [g for g in small.groups if g.whole]
    assert whole and all(small.sizes[g.leaves[0]] > 100 for g in whole)
    assert all(small.sizes[i] <= 100 for g in small.groups if not g.whole for i in g.leaves)
    # pack and unpack are exact inverses, on the host and in a jitted function
    params = jax.device_get(models.init_params(t.model_config, jax.random.key(1)))
    for p in (packing, small):
        back = p.unpack(p.pack(params))
        assert jax.tree.structure(back) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)
        jitted = jax.device_get(jax.jit(lambda x, p=p: p.unpack(p.pack(x)))(params))
        for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optim,model", [
    (dict(name="sgd", lr=0.1), MODEL),
    (dict(name="momentum", momentum=0.9, lr=0.1, clip_norm=0.5), MODEL),
    # slow (3 s): the µP case below packs the same AdamW with these groups (decayed and not,
    # lr x1) and a third (lr x1/2), and clips: it stays in the fast tier
    pytest.param(dict(name="adamw", eps=1e-4), MODEL, marks=pytest.mark.slow),
    (dict(name="adamw", eps=1e-4, clip_norm=0.5), MUP),
])
def test_packed_step_is_the_tree_step_to_float32_rounding(optim, model):
    """Six steps on packed vectors against six on the tree: the same losses, and every
    weight and moment tensor within 2e-6 of the tree's (norm-wise; measured <= 6e-7).
    The two are compiled as different programs, so XLA may order a gradient's sums
    differently (and the clip's global norm adds its squares in another order): float32
    rounding, nothing more. A wrong decay mask or µP multiplier for a group moves its
    tensors by ~lr per step instead. (Adam's eps is raised to 1e-4 here: the query and
    key biases have gradient 0 in exact arithmetic, and with eps = 1e-8 Adam scales
    their rounding noise up to steps of ~lr, in either program.)"""
    t = Trainer(config(model, **optim))
    assert t.packing.enabled and len(t.packing.groups) >= 2
    want, want_m = tree_run(t, 6)
    got, got_m = packed_run(t, 6)
    if optim.get("clip_norm"):
        assert any(m["grad_norm"] > optim["clip_norm"] for m in want_m)  # the clip acts
    for g, w in zip(got_m, want_m):
        for key in ("loss", "grad_norm", "param_norm", "update_norm"):
            assert float(g[key]) == pytest.approx(float(w[key]), rel=1e-6)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves((got.params, got.opt_state)),
                    jax.tree.leaves((want.params, want.opt_state))):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.ndim:
            assert np.linalg.norm(a - b) <= 2e-6 * np.linalg.norm(b)
        else:
            assert a == b  # step counts


@pytest.mark.parametrize("optim,model", [
    (dict(name="sgd"), MODEL), (dict(name="momentum", clip_norm=1.0), MODEL),
    (dict(name="nesterov"), MODEL), (dict(name="adam", weight_decay=0.0), MODEL),
    (dict(name="adamw", clip_norm=1.0), MUP), (dict(name="lamb"), MODEL),
])
def test_the_checkpoint_form_is_the_tree_a_restore_expects(optim, model):
    """to_checkpoint gives exactly the structure, shapes and dtypes of abstract_checkpoint
    (what a restore reads), and from_checkpoint takes it back to the step's state."""
    t = Trainer(config(model, **optim))
    state = jax.device_get(t.init_state())
    on_disk = t.to_checkpoint(state)
    want = t.abstract_checkpoint()
    assert jax.tree.structure(on_disk) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(on_disk), jax.tree.leaves(want)):
        assert np.shape(a) == b.shape and np.asarray(a).dtype == b.dtype
    back = t.from_checkpoint(on_disk)
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_lars_and_lamb_keep_the_tree():
    for name in ("lars", "lamb"):
        t = Trainer(config(name=name, weight_decay=0.0))
        assert not t.packing.enabled
        params = jax.device_get(t.init_state().params)
        assert "token_embed" in params  # the model's own tree


def test_a_runs_checkpoints_hold_the_tree_and_resume_exactly(tmp_path):
    """What a run writes is the tree it always wrote; a run stopped and resumed ends
    where the uninterrupted one ends."""
    cfg = dataclasses.replace(config(clip_norm=1.0), train=TrainConfig(
        steps=12, batch_size=4, checkpoint_every=4, progress=False, eval_tokens=256,
        curve_eval_tokens=0))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus="stdlib",
                                                            max_corpus_bytes=200_000))
    whole = train(cfg, tmp_path / "whole")
    assert train(cfg, tmp_path / "parts", stop_after_steps=5)["status"] == "stopped"
    parts = train(cfg, tmp_path / "parts")
    assert parts["final_eval_loss"] == whole["final_eval_loss"]
    t = Trainer(cfg)
    ckpt = Checkpointer(tmp_path / "whole" / "checkpoints", create=False)
    on_disk, meta = ckpt.restore_latest(t.abstract_checkpoint())
    ckpt.close()
    assert meta["step"] == 12
    assert set(on_disk.params) == set(models.init_params(t.model_config, jax.random.key(0)))
    # (clip, (scale_by_adam, decayed weights, lr)): Adam's moments are trees like params
    adam = on_disk.opt_state[1][0]
    for moment in (adam.mu, adam.nu):
        assert jax.tree.structure(moment) == jax.tree.structure(on_disk.params)
