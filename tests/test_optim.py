"""Optimizer registry, schedules, weight-decay masks, clipping, warm-up
(scaling.train.optimizers, schedules, param_groups)."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling.config import OPTIMIZERS, SCHEDULES, ConfigError, OptimConfig
from scaling.train.optimizers import describe_optimizer, make_optimizer, make_runtime_optimizer
from scaling.train.param_groups import decay_mask, param_kind, trust_ratio_mask
from scaling.train.schedules import schedule, schedule_multiplier, schedule_params

# Few distinct shapes on purpose: eager optax updates compile once per (op, shape).
L, V, T, D, F = 2, 8, 8, 8, 8  # layers, vocab, positions, width, hidden


# --------------------------------------------------------------------------------------
# A hand-built parameter tree shaped like the model's (nn.scan stacks block params)
# --------------------------------------------------------------------------------------


def model_like_params(seed=0) -> dict:
    rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile per shape

    def w(*shape, std=0.3):
        return jnp.asarray(std * rng.normal(size=shape), jnp.float32)

    return {
        "embed": {"embedding": w(V, D)},
        "pos_embed": {"embedding": w(T, D)},
        "blocks": {  # stacked: leading layer axis L
            "LayerNorm_0": {"scale": 1.0 + w(L, D, std=0.05), "bias": w(L, D, std=0.05)},
            "attn": {
                "query": {"kernel": w(L, D, D), "bias": w(L, D, std=0.05)},
                "key": {"kernel": w(L, D, D), "bias": w(L, D, std=0.05)},
                "value": {"kernel": w(L, D, D), "bias": w(L, D, std=0.05)},
                "out": {"kernel": w(L, D, D), "bias": w(L, D, std=0.05)},
            },
            "LayerNorm_1": {"scale": 1.0 + w(L, D, std=0.05), "bias": w(L, D, std=0.05)},
            "mlp": {
                "Dense_0": {"kernel": w(L, D, F), "bias": w(L, F, std=0.05)},
                "Dense_1": {"kernel": w(L, F, D), "bias": w(L, D, std=0.05)},
            },
        },
        "ln_f": {"scale": 1.0 + w(D, std=0.05), "bias": w(D, std=0.05)},
        "LayerNorm_0": {"scale": 1.0 + w(D, std=0.05), "bias": w(D, std=0.05)},
        "head": {"kernel": w(D, D), "bias": jnp.zeros((D,))},
    }


# Which leaves the default mask must decay, by path.
DEFAULT_DECAYED = {
    "blocks/attn/query/kernel",
    "blocks/attn/key/kernel",
    "blocks/attn/value/kernel",
    "blocks/attn/out/kernel",
    "blocks/mlp/Dense_0/kernel",
    "blocks/mlp/Dense_1/kernel",
    "head/kernel",
}
EMBEDDINGS = {"embed/embedding", "pos_embed/embedding"}


def flat(tree) -> dict[str, object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in leaves}


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(D)(x))
        x = nn.LayerNorm()(x)
        return nn.Dense(1)(x)[:, 0]


def stacked_regression_params(rng) -> dict:
    """A small stacked-layers tree: embedding, L residual layers (leading layer axis) with
    norm-like scale/bias and a dense layer each, and a linear head."""

    def w(*shape, std=0.3):
        return jnp.asarray(std * rng.normal(size=shape), jnp.float32)

    return {
        "embed": {"embedding": w(V, D)},
        "blocks": {
            "LayerNorm_0": {"scale": 1.0 + w(L, D, std=0.05), "bias": w(L, D, std=0.05)},
            "Dense_0": {"kernel": w(L, D, D), "bias": w(L, D, std=0.05)},
        },
        "head": {"kernel": w(D, D), "bias": jnp.zeros((D,))},
    }


def stacked_regression_apply(p, tokens):
    x = p["embed"]["embedding"][tokens].mean(1)  # bag of tokens, [B, D]

    def layer(x, b):
        h = x * b["LayerNorm_0"]["scale"] + b["LayerNorm_0"]["bias"]
        return x + jnp.tanh(h @ b["Dense_0"]["kernel"] + b["Dense_0"]["bias"]), None

    x, _ = jax.lax.scan(layer, x, p["blocks"])
    return (x @ p["head"]["kernel"] + p["head"]["bias"]).mean(-1)


def make_problem():
    """Params {'stack': stacked regression tree, 'mlp': flax MLP}; a sum of two MSE losses."""
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, V, size=(32, T)))
    y_tok = jnp.asarray(rng.normal(size=32), jnp.float32)
    x_mlp = jnp.asarray(rng.normal(size=(64, D)), jnp.float32)
    y_mlp = jnp.sin(x_mlp.sum(-1))
    mlp = TinyMLP()
    shapes = jax.eval_shape(mlp.init, jax.random.PRNGKey(1), x_mlp)["params"]
    mlp_params = jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), jnp.float32), shapes
    )
    params = {"stack": stacked_regression_params(rng), "mlp": mlp_params}

    def loss(p):
        a = jnp.mean((stacked_regression_apply(p["stack"], tokens) - y_tok) ** 2)
        b = jnp.mean((mlp.apply({"params": p["mlp"]}, x_mlp) - y_mlp) ** 2)
        return a + b

    return params, loss


# --------------------------------------------------------------------------------------
# Every optimizer x every schedule trains
# --------------------------------------------------------------------------------------

# Per-optimizer settings that make 20 steps on this problem meaningful.
TRAIN_SETTINGS = {
    "sgd": dict(lr=0.1),
    "momentum": dict(lr=0.05),
    "nesterov": dict(lr=0.05),
    "adam": dict(lr=1e-2, weight_decay=0.0),
    "adamw": dict(lr=1e-2),
    "lars": dict(lr=0.1, trust_coefficient=0.1),
    "lamb": dict(lr=1e-2),
}
STEPS = 20

_problem = None


# Adding the updates to the parameters: one program for every case (the same tree).
apply_updates = jax.jit(optax.apply_updates)


def problem():
    """(params, loss, jitted value_and_grad), built and compiled once for all cases."""
    global _problem
    if _problem is None:
        params, loss = make_problem()
        _problem = params, loss, jax.jit(jax.value_and_grad(loss))
    return _problem


@pytest.mark.parametrize("sched", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_and_schedule_reduces_loss(name, sched):
    # The updates run eagerly: compiling 28 optimizer loops would dominate the test time
    # (from an empty compilation cache: 33 s against 20 s eagerly).
    params, loss, value_and_grad = problem()
    settings = {"weight_decay": 0.01, **TRAIN_SETTINGS[name]}
    cfg = OptimConfig(name=name, schedule=sched, warmup_steps=3, clip_norm=1.0, **settings)
    tx, _ = make_optimizer(cfg, STEPS)
    state = tx.init(params)
    losses = []
    for _ in range(STEPS):
        value, grads = value_and_grad(params)
        losses.append(float(value))
        updates, state = tx.update(grads, state, params)
        params = apply_updates(params, updates)
    final = float(value_and_grad(params)[0])
    assert np.all(np.isfinite(losses)) and np.isfinite(final)
    assert final < 0.9 * losses[0], (name, sched, losses[0], final)


# --------------------------------------------------------------------------------------
# Schedules: exact values at the key points
# --------------------------------------------------------------------------------------

# lr = 2, warm-up 10 of 100 steps, final ratio 0.1, wsd decays over the last 20 steps.
# Points: 0, mid warm-up, end of warm-up, middle of the post-warm-up span (55),
# wsd decay start (80), middle of the wsd decay (90), end (100), past the end (150).
POINTS = (0, 5, 10, 55, 80, 90, 100, 150)
EXPECTED = {
    "constant": (0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0),
    # 2 * (0.1 + 0.9 * (1 + cos(pi * (s - 10) / 90)) / 2)
    "cosine": (0.0, 1.0, 2.0, 1.1,
               0.2 + 1.8 * (1 + math.cos(math.pi * 70 / 90)) / 2,
               0.2 + 1.8 * (1 + math.cos(math.pi * 80 / 90)) / 2, 0.2, 0.2),
    # 2 * (1 - 0.9 * (s - 10) / 90)
    "linear": (0.0, 1.0, 2.0, 1.1, 0.6, 0.4, 0.2, 0.2),
    # stable at 2 until 80, then 2 * (1 - 0.9 * (s - 80) / 20)
    "wsd": (0.0, 1.0, 2.0, 2.0, 2.0, 1.1, 0.2, 0.2),
}


def sched_cfg(name, **kw):
    base = dict(lr=2.0, schedule=name, warmup_steps=10, final_lr_ratio=0.1, decay_fraction=0.2)
    return OptimConfig(**{**base, **kw})


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_values_at_key_points(name):
    lr_at = schedule(sched_cfg(name), 100)
    got = [float(lr_at(s)) for s in POINTS]
    np.testing.assert_allclose(got, EXPECTED[name], rtol=1e-6, atol=1e-7)
    # traced steps (inside jit) give the same numbers
    traced = jax.jit(jax.vmap(lr_at))(jnp.asarray(POINTS))
    np.testing.assert_allclose(np.asarray(traced), EXPECTED[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_without_warmup_starts_at_peak(name):
    lr_at = schedule(sched_cfg(name, warmup_steps=0), 100)
    assert float(lr_at(0)) == pytest.approx(2.0)
    assert float(lr_at(100)) == pytest.approx(2.0 if name == "constant" else 0.2)


def test_wsd_shape_edges():
    # decay_fraction = 1: the decay would start before warm-up ends, so it starts right
    # after warm-up and is the linear schedule.
    full = schedule(sched_cfg("wsd", decay_fraction=1.0), 100)
    lin = schedule(sched_cfg("linear"), 100)
    for s in POINTS:
        assert float(full(s)) == pytest.approx(float(lin(s)))
    # D = round(0.25 * 40) = 10: stable until 30, then down to 0.2 at 40.
    short = schedule(sched_cfg("wsd", warmup_steps=0, decay_fraction=0.25), 40)
    np.testing.assert_allclose([float(short(s)) for s in (0, 29, 30, 35, 40)],
                               [2.0, 2.0, 2.0, 1.1, 0.2], rtol=1e-6)


def test_schedule_is_the_lr_the_updates_use():
    # SGD on one scalar with gradient 1: update k is exactly -lr(k).
    cfg = OptimConfig(name="sgd", schedule="wsd", clip_norm=0.0, lr=0.5, warmup_steps=4,
                      final_lr_ratio=0.1, decay_fraction=0.5)
    tx, lr_at = make_optimizer(cfg, 20)
    p = {"w": jnp.zeros(())}
    state = tx.init(p)
    for k in range(24):
        u, state = tx.update({"w": jnp.ones(())}, state, p)
        assert float(u["w"]) == pytest.approx(-float(lr_at(k)), abs=1e-7)
    np.testing.assert_allclose([float(lr_at(s)) for s in (0, 2, 4, 10, 15, 20)],
                               [0.0, 0.25, 0.5, 0.5, 0.275, 0.05], rtol=1e-6)


def test_bad_schedule_arguments():
    with pytest.raises(ConfigError):
        schedule(sched_cfg("cosine", warmup_steps=100), 100)
    with pytest.raises(ConfigError):
        make_optimizer(dataclasses.replace(sched_cfg("cosine"), schedule="step"), 100)
    with pytest.raises(ConfigError):
        make_optimizer(dataclasses.replace(sched_cfg("cosine"), name="adagrad"), 100)


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


def decayed_paths(params, **kw) -> set[str]:
    return {k for k, v in flat(decay_mask(params, OptimConfig(**kw))).items() if v}


def test_default_mask_decays_only_non_embedding_matrices():
    params = model_like_params()
    assert decayed_paths(params) == DEFAULT_DECAYED
    # stacked biases and LayerNorm parameters have ndim 2 and are still excluded
    assert params["blocks"]["LayerNorm_0"]["scale"].ndim == 2
    mask = decay_mask(params, OptimConfig())
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    assert all(isinstance(v, bool) for v in jax.tree.leaves(mask))


def test_mask_switches():
    params = model_like_params()
    every = set(flat(params))
    norms_biases = every - DEFAULT_DECAYED - EMBEDDINGS
    assert decayed_paths(params, decay_embeddings=True) == DEFAULT_DECAYED | EMBEDDINGS
    assert decayed_paths(params, decay_norms_and_biases=True) == DEFAULT_DECAYED | norms_biases
    assert decayed_paths(params, decay_embeddings=True, decay_norms_and_biases=True) == every


def test_mask_on_flax_params_and_frozendict():
    from flax.core import freeze

    params = jax.eval_shape(TinyMLP().init, jax.random.PRNGKey(0), jnp.zeros((2, D)))["params"]
    assert decayed_paths(params) == {"Dense_0/kernel", "Dense_1/kernel"}
    assert decayed_paths(freeze({"params": model_like_params()})) == {
        f"params/{p}" for p in DEFAULT_DECAYED
    }


@pytest.mark.parametrize("module,leaf,shape,kind", [
    ("ln_f", "scale", (4, 8), "norm_or_bias"),
    ("ln_2", "bias", (4, 8), "norm_or_bias"),
    ("ln1", "weight", (8,), "norm_or_bias"),
    ("RMSNorm_0", "scale", (8,), "norm_or_bias"),
    ("final_norm", "gain", (8,), "norm_or_bias"),
    ("Dense_3", "bias", (4, 8), "norm_or_bias"),
    ("embed_ln", "scale", (8,), "norm_or_bias"),  # a norm inside an embedding stays a norm
    ("unembed", "kernel", (8, 11), "matrix"),  # the untied output head is a weight matrix
    ("Unembed_0", "kernel", (8, 11), "matrix"),
    ("token_embed", "embedding", (11, 8), "embedding"),
    ("token_embedding", "weight", (11, 8), "embedding"),
    ("kernel_linear", "kernel", (4, 8, 8), "matrix"),
    ("gate", "alpha", (8,), "vector"),
])
def test_param_kind(module, leaf, shape, kind):
    path = (jax.tree_util.DictKey(module), jax.tree_util.DictKey(leaf))
    assert param_kind(path, jnp.zeros(shape)) == kind


def test_trust_ratio_mask_is_matrices_and_embeddings():
    got = {k for k, v in flat(trust_ratio_mask(model_like_params())).items() if v}
    assert got == DEFAULT_DECAYED | EMBEDDINGS


# --------------------------------------------------------------------------------------
# Weight decay, clipping, warm-up
# --------------------------------------------------------------------------------------

DECAYING = [n for n in OPTIMIZERS if n != "adam"]
EXACT_DECOUPLED = ("sgd", "momentum", "nesterov", "adamw")  # w <- w * (1 - lr * wd)


def one_update(cfg, params, grads, total_steps=10):
    tx, _ = make_optimizer(cfg, total_steps)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)


@pytest.mark.parametrize("decay_embeddings", [False, True])
@pytest.mark.parametrize("name", DECAYING)
def test_weight_decay_shrinks_masked_in_weights_only(name, decay_embeddings):
    params = model_like_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    cfg = OptimConfig(name=name, lr=0.1, schedule="constant", weight_decay=0.1, clip_norm=0.0,
                      decay_embeddings=decay_embeddings)
    new = flat(one_update(cfg, params, zeros))
    old = flat(params)
    decayed = DEFAULT_DECAYED | (EMBEDDINGS if decay_embeddings else set())
    for path in old:
        before, after = np.asarray(old[path]), np.asarray(new[path])
        if path in decayed:
            assert np.linalg.norm(after) < np.linalg.norm(before), path
            if name in EXACT_DECOUPLED:
                np.testing.assert_allclose(after, before * (1 - 0.1 * 0.1), rtol=1e-6)
        else:
            np.testing.assert_array_equal(after, before, err_msg=path)


@pytest.mark.parametrize("name", DECAYING)
def test_weight_decay_follows_the_schedule(name):
    # With warm-up the first lr is 0, so even decay does nothing on the first update.
    params = model_like_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    cfg = OptimConfig(name=name, lr=0.1, warmup_steps=3, weight_decay=0.1, clip_norm=0.0)
    new = one_update(cfg, params, zeros)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_adam_with_weight_decay_is_refused():
    with pytest.raises(ConfigError, match="adamw"):
        make_optimizer(OptimConfig(name="adam", weight_decay=0.1), 10)
    make_optimizer(OptimConfig(name="adam", weight_decay=0.0), 10)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov"])
def test_clipping_bounds_a_huge_gradient(name):
    params = model_like_params()
    huge = jax.tree.map(lambda x: jnp.full_like(x, 1e6), params)
    # the clipped gradient has norm `clip`; Nesterov's first step is (1 + momentum) * g
    factor = 1.9 if name == "nesterov" else 1.0
    for clip in (1.0, 0.25):
        bound = clip * factor
        cfg = OptimConfig(name=name, lr=1.0, schedule="constant", clip_norm=clip)
        tx, _ = make_optimizer(cfg, 10)
        updates, _ = tx.update(huge, tx.init(params), params)
        assert float(optax.tree.norm(updates)) == pytest.approx(bound, rel=1e-5)
    cfg = OptimConfig(name=name, lr=1.0, schedule="constant", clip_norm=0.0)  # disabled
    tx, _ = make_optimizer(cfg, 10)
    updates, _ = tx.update(huge, tx.init(params), params)
    assert float(optax.tree.norm(updates)) > 1e6


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_warmup_first_update_is_zero(name):
    params = model_like_params()
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 0.1, params)
    wd = 0.0 if name == "adam" else 0.1
    cfg = OptimConfig(name=name, lr=0.1, warmup_steps=5, weight_decay=wd)
    tx, lr_at = make_optimizer(cfg, 50)
    assert float(lr_at(0)) == 0.0 and float(lr_at(1)) == pytest.approx(0.02)
    state = tx.init(params)
    first, state = tx.update(grads, state, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(first))
    second, _ = tx.update(grads, state, params)
    assert float(optax.tree.norm(second)) > 0.0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_describe_optimizer_is_one_line(name):
    text = describe_optimizer(OptimConfig(name=name, schedule="wsd", warmup_steps=10,
                                          weight_decay=0.0 if name == "adam" else 0.1))
    assert text.startswith(name + " ") and "\n" not in text and "wsd" in text


# --------------------------------------------------------------------------------------
# The real model's parameter tree (tied and untied head, scanned and unrolled blocks)
# --------------------------------------------------------------------------------------


def real_model_params(tie: bool, scan: bool):
    from scaling.config import ModelConfig
    from scaling.models import init_params

    cfg = ModelConfig(n_layer=2, d_model=16, n_head=2, vocab_size=24, seq_len=8,
                      tie_embeddings=tie, scan_layers=scan)
    return init_params(cfg, jax.random.key(0))


def real_model_kernels(tie: bool, scan: bool) -> set[str]:
    blocks = ["blocks"] if scan else ["block_0", "block_1"]
    kernels = {f"{b}/{m}/kernel" for b in blocks
               for m in ("attn/qkv", "attn/proj", "mlp/fc", "mlp/proj")}
    return kernels if tie else kernels | {"unembed/kernel"}


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_default_mask_on_the_real_model(tie, scan):
    params = real_model_params(tie, scan)
    kernels = real_model_kernels(tie, scan)
    assert decayed_paths(params) == kernels  # the untied head decays like every kernel
    embeddings = {"token_embed/embedding", "pos_embed/embedding"}
    assert decayed_paths(params, decay_embeddings=True) == kernels | embeddings
    assert {k for k, v in flat(trust_ratio_mask(params)).items() if v} == kernels | embeddings


@pytest.mark.parametrize("name", EXACT_DECOUPLED)
def test_untied_head_is_weight_decayed(name):
    params = real_model_params(tie=False, scan=True)
    zeros = jax.tree.map(jnp.zeros_like, params)
    cfg = OptimConfig(name=name, lr=0.1, schedule="constant", weight_decay=0.1, clip_norm=0.0)
    new = one_update(cfg, params, zeros)
    np.testing.assert_allclose(np.asarray(new["unembed"]["kernel"]),
                               np.asarray(params["unembed"]["kernel"]) * (1 - 0.1 * 0.1),
                               rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(new["token_embed"]["embedding"]),
                                  np.asarray(params["token_embed"]["embedding"]))


# --------------------------------------------------------------------------------------
# Runtime schedules: the same values as the optax-built schedules they replace
# --------------------------------------------------------------------------------------


def optax_reference(cfg: OptimConfig, total_steps: int):
    """The project's schedule as it was built from optax schedules (before the schedule
    became runtime values): the reference the runtime formula must reproduce."""
    steps = total_steps - cfg.warmup_steps
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps=steps, alpha=cfg.final_lr_ratio)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_ratio, transition_steps=steps)
    else:
        decay = min(max(int(round(cfg.decay_fraction * total_steps)), 1), steps)
        ramp = optax.linear_schedule(cfg.lr, cfg.lr * cfg.final_lr_ratio, transition_steps=decay)
        main = ramp if steps == decay else optax.join_schedules(
            [optax.constant_schedule(cfg.lr), ramp], [steps - decay])
    if cfg.warmup_steps == 0:
        return main
    warm = optax.linear_schedule(0.0, cfg.lr, transition_steps=cfg.warmup_steps)
    return optax.join_schedules([warm, main], [cfg.warmup_steps])


# The schedule with every value traced, as the train step computes it: one program per
# length of `steps`, shared by every case, schedule and lr of that length (the values are
# arguments, not constants).
traced_multiplier = jax.jit(jax.vmap(schedule_multiplier, in_axes=(0, None)))

SCHEDULE_CASES = [  # (total steps, warm-up, final ratio, wsd decay fraction)
    (100, 0, 0.1, 0.2), (100, 10, 0.1, 0.2), (37, 5, 0.0, 0.5), (1544, 77, 0.1, 0.2),
    (20, 19, 0.3, 0.2), (500, 25, 0.05, 1.0), (7, 0, 1.0, 0.1),
]


@pytest.mark.parametrize("case", SCHEDULE_CASES)
@pytest.mark.parametrize("name", SCHEDULES)
def test_runtime_schedule_equals_the_optax_schedule(name, case):
    total, warmup, ratio, frac = case
    steps = jnp.arange(total + 20, dtype=jnp.int32)
    for lr in (1.0, 3e-3, 2.5):
        cfg = OptimConfig(lr=lr, schedule=name, warmup_steps=warmup, final_lr_ratio=ratio,
                          decay_fraction=frac)
        want = np.asarray(jax.jit(jax.vmap(optax_reference(cfg, total)))(steps), np.float32)
        got = np.asarray(jax.jit(jax.vmap(schedule(cfg, total)))(steps))
        # Two differently compiled programs (ours and optax's; below, the schedule with its
        # constants traced and untraced) round differently: XLA folds constants, fuses and
        # contracts multiply-adds per program and per CPU (AVX2 vs AVX-512: 1 ulp apart
        # there). Each is a chain of a few float32 roundings of terms as large as the peak
        # (e.g. 1 - (1 - r) t), so the error is a few ulp of the peak, not of the value
        # (0.25 vs 0.24999993 at the end of a 2.5 -> 0.25 decay: 5 ulp of 0.25, 0.3 of 2.5).
        # Tolerance: 4 ulp of the peak; a wrong formula is off by far more. Bitwise equality
        # is a test for reruns of one compiled program only.
        tol = dict(rtol=0, atol=4 * float(np.spacing(np.float32(lr))))
        np.testing.assert_allclose(got, want, **tol)
        # and with every schedule value traced, as in the train step
        sp = schedule_params(cfg, total)
        traced = traced_multiplier(steps, sp)
        np.testing.assert_allclose(np.asarray(traced) * np.float32(lr), got, **tol)


@dataclasses.dataclass(frozen=True)
class ShapedOptim(OptimConfig):
    """OptimConfig with the proposed `decay_shape` field (read with getattr by optim)."""

    decay_shape: str = "linear"


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_decay_shapes(shape):
    # lr 2, warm-up 10 of 100, final ratio 0.1, decay over the last 20 steps (80..100)
    f = {"linear": lambda x: 1 - x,
         "cosine": lambda x: (1 + math.cos(math.pi * x)) / 2,
         "1-sqrt": lambda x: 1 - math.sqrt(x)}[shape]
    lr_at = schedule(ShapedOptim(**{**SCHED_BASE, "schedule": "wsd"}, decay_shape=shape), 100)
    points = (0, 5, 10, 50, 79, 80, 85, 90, 95, 99, 100, 130)
    want = [2.0 * s / 10 if s < 10 else 2.0 if s < 80
            else 2.0 * (0.1 + 0.9 * f(min(s - 80, 20) / 20)) for s in points]
    got = [float(lr_at(s)) for s in points]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert got[points.index(100)] == pytest.approx(0.2)  # every shape ends at r * lr


def test_decay_shapes_differ_and_default_is_linear():
    cfgs = {s: ShapedOptim(**{**SCHED_BASE, "schedule": "wsd"}, decay_shape=s)
            for s in ("linear", "cosine", "1-sqrt")}
    mid = {s: float(schedule(c, 100)(90)) for s, c in cfgs.items()}
    # at the middle of the cooldown: 1-sqrt is lowest, linear and cosine meet at the midpoint
    assert mid["1-sqrt"] < mid["linear"] == pytest.approx(mid["cosine"])
    assert float(schedule(cfgs["cosine"], 100)(85)) > float(schedule(cfgs["linear"], 100)(85))
    plain = schedule(OptimConfig(**{**SCHED_BASE, "schedule": "wsd"}), 100)
    lin = schedule(cfgs["linear"], 100)
    assert all(float(plain(s)) == float(lin(s)) for s in range(0, 110, 3))
    with pytest.raises(ConfigError, match="optim.decay_shape"):
        schedule(ShapedOptim(**{**SCHED_BASE, "schedule": "wsd"}, decay_shape="exp"), 100)


SCHED_BASE = dict(lr=2.0, warmup_steps=10, final_lr_ratio=0.1, decay_fraction=0.2)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_runtime_optimizer_matches_the_scheduled_one(name):
    """make_runtime_optimizer with lr = lr_at(k) gives make_optimizer's updates."""
    params = real_model_params(tie=False, scan=True)
    rng = np.random.default_rng(1)
    cfg = OptimConfig(name=name, lr=0.3, schedule="cosine", warmup_steps=2,
                      weight_decay=0.0 if name == "adam" else 0.1, trust_coefficient=0.01)
    tx, lr_at = make_optimizer(cfg, 6)
    rt = make_runtime_optimizer(cfg)
    s1, s2 = tx.init(params), rt.init(params)
    p1 = p2 = params
    for k in range(5):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.05, x.dtype), params)
        u1, s1 = tx.update(g, s1, p1)
        u2, s2 = rt.update(g, s2, p2, lr=lr_at(k))
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# LARS and LAMB against hand computations (numpy, float64)
# --------------------------------------------------------------------------------------


def np_leaves(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float64) for k, v in flat(tree).items()}


def hand_kind(path: str, w: np.ndarray) -> tuple[bool, bool, bool]:
    """(decayed by default, trust-adapted, stacked per layer), written out for the model:
    kernels decay and adapt, embeddings adapt only, the rest (biases, LayerNorms) neither;
    under 'blocks/' the leading axis indexes layers."""
    leaf = path.rsplit("/", 1)[-1]
    return leaf == "kernel", leaf in ("kernel", "embedding"), \
        path.startswith("blocks/") and w.ndim >= 2


def norms(x: np.ndarray, stacked: bool) -> np.ndarray:
    if stacked:
        return np.sqrt((x.reshape(x.shape[0], -1) ** 2).sum(1)).reshape(
            (-1,) + (1,) * (x.ndim - 1))
    return np.sqrt((x ** 2).sum())


def random_grads(params, rng, scale=0.05):
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * scale, x.dtype),
                        params)


def run_runtime(cfg, params, grads_seq, lrs):
    tx = make_runtime_optimizer(cfg)
    state = tx.init(params)
    for g, lr in zip(grads_seq, lrs):
        updates, state = tx.update(g, state, params, lr=jnp.float32(lr))
        params = optax.apply_updates(params, updates)
    return params


def test_lars_update_by_hand():
    eta, wd, m = 0.02, 0.1, 0.9
    cfg = OptimConfig(name="lars", trust_coefficient=eta, weight_decay=wd, momentum=m,
                      clip_norm=0.0)
    params = real_model_params(tie=False, scan=True)
    rng = np.random.default_rng(0)
    grads_seq = [random_grads(params, rng) for _ in range(2)]
    lrs = (2.0, 0.7)  # the global rate changes between the steps: it sits inside momentum
    got = np_leaves(run_runtime(cfg, params, grads_seq, lrs))

    w = np_leaves(params)
    v = {k: np.zeros_like(x) for k, x in w.items()}
    for grads, lr in zip(grads_seq, lrs):
        g_all = np_leaves(grads)
        for k in w:
            decayed, adapted, stacked = hand_kind(k, w[k])
            beta = wd if decayed else 0.0
            if adapted:
                wn, gn = norms(w[k], stacked), norms(g_all[k], stacked)
                local = eta * wn / (gn + beta * wn)  # You et al. 2017, per layer
            else:
                local = eta  # biases and LayerNorm parameters: eta as their local rate
            v[k] = m * v[k] + lr * local * (g_all[k] + beta * w[k])
            w[k] = w[k] - v[k]
    assert set(got) == set(w)
    for k in w:
        np.testing.assert_allclose(got[k], w[k], rtol=2e-5, atol=1e-7, err_msg=k)
    # the stacked kernels really got one ratio per layer (not one for the stack)
    assert any(hand_kind(k, w[k])[2] and hand_kind(k, w[k])[1] for k in w)


def test_lamb_update_by_hand():
    b1, b2, eps, wd = 0.9, 0.95, 1e-8, 0.1
    cfg = OptimConfig(name="lamb", b1=b1, b2=b2, eps=eps, weight_decay=wd, clip_norm=0.0)
    params = real_model_params(tie=False, scan=True)
    rng = np.random.default_rng(2)
    grads_seq = [random_grads(params, rng) for _ in range(2)]
    lrs = (0.01, 0.004)
    got = np_leaves(run_runtime(cfg, params, grads_seq, lrs))

    w = np_leaves(params)
    mu = {k: np.zeros_like(x) for k, x in w.items()}
    nu = {k: np.zeros_like(x) for k, x in w.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        g_all = np_leaves(grads)
        for k in w:
            decayed, adapted, stacked = hand_kind(k, w[k])
            g = g_all[k]
            mu[k] = b1 * mu[k] + (1 - b1) * g
            nu[k] = b2 * nu[k] + (1 - b2) * g * g
            r = (mu[k] / (1 - b1 ** t)) / (np.sqrt(nu[k] / (1 - b2 ** t)) + eps)
            u = r + (wd * w[k] if decayed else 0.0)
            ratio = norms(w[k], stacked) / norms(u, stacked) if adapted else 1.0
            w[k] = w[k] - lr * ratio * u
    for k in w:
        np.testing.assert_allclose(got[k], w[k], rtol=2e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_layerwise_ratio_is_the_same_scanned_or_unrolled(name):
    cfg = OptimConfig(name=name, weight_decay=0.1, trust_coefficient=0.01, clip_norm=0.0)
    scanned = real_model_params(tie=True, scan=True)
    # the same numbers in both layouts: layer i of the stack is block_i
    unrolled = {k: v for k, v in scanned.items() if k != "blocks"}
    for i in range(2):
        unrolled[f"block_{i}"] = jax.tree.map(lambda x: x[i], scanned["blocks"])
    rng = np.random.default_rng(3)
    g_scan = random_grads(scanned, rng)
    g_unrolled = {k: v for k, v in g_scan.items() if k != "blocks"}
    for i in range(2):
        g_unrolled[f"block_{i}"] = jax.tree.map(lambda x: x[i], g_scan["blocks"])
    a = run_runtime(cfg, scanned, [g_scan], [0.5])
    b = run_runtime(cfg, unrolled, [g_unrolled], [0.5])
    for i in range(2):
        for x, y in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], a["blocks"])),
                        jax.tree.leaves(b[f"block_{i}"])):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("opt,role_mult", [("adamw", {"hidden": 0.25, "readout": 1.0}),
                                            ("sgd", {"hidden": 1.0, "readout": 4.0})])
def test_mup_decoupled_decay_is_scaled_by_the_learning_rate_multiplier(opt, role_mult):
    """Under µP at width_mult 4 with a zero gradient, one step shrinks a decayed matrix by
    lr x m_l x wd x w, m_l its learning-rate multiplier (1/4 for Adam's hidden matrices,
    4 for SGD's readout): the decay goes through the multiplier, as torch's AdamW applies
    decay with a group's lr. microsoft/mup's MuAdamW/MuSGD also multiply weight_decay by
    1/m_l, keeping lr x wd width-independent: not what this code does
    (scaling/train/param_groups.py)."""
    from scaling.config import from_dict
    from scaling.models import init_params

    lr, wd = 1e-2, 0.1
    cfg = from_dict({"model": dict(n_layer=2, d_model=128, n_head=8, vocab_size=256, seq_len=16,
                                   tie_embeddings=False, parametrization="mup",
                                   mup_base_width=32, mup_attn_mult=4.0),
                     "optim": dict(name=opt, lr=lr, schedule="constant", weight_decay=wd,
                                   clip_norm=0.0),
                     "train": {"steps": 10, "batch_size": 4}})
    assert cfg.model.width_mult == 4.0
    params = init_params(cfg.model, 0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    opt_ = make_runtime_optimizer(cfg.optim, cfg.model)
    upd = jax.jit(lambda g, p: opt_.update(g, opt_.init(p), p, lr=lr)[0])(zeros, params)
    for role, path in (("hidden", ("blocks", "mlp", "fc", "kernel")),
                       ("readout", ("unembed", "kernel"))):
        w, u = params, upd
        for k in path:
            w, u = w[k], u[k]
        w, u = np.asarray(w), np.asarray(u)
        np.testing.assert_allclose(-u, lr * role_mult[role] * wd * w, rtol=1e-5, atol=1e-12,
                                   err_msg=role)
