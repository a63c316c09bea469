"""Model: shapes, dtypes, causality, golden values, scan vs loop, bf16, rotary, attention."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import ModelConfig
from scaling.models import init_params
from scaling.models.attention import attention, attention_packed
from scaling.models.transformer import Transformer, cross_entropy, loss_fn

TINY = ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=64, seq_len=16)


def tokens(cfg, B=2, seed=0, T=None):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T or cfg.seq_len)), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def apply(cfg, params, toks):
    return Transformer(cfg).apply({"params": params}, toks)


@functools.partial(jax.jit, static_argnums=2)
def loss_and_grad(params, batch, cfg):
    return jax.value_and_grad(loss_fn)(params, batch, cfg)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("tie", [True, False])
def test_shapes_and_dtype(pos, tie):
    cfg = dataclasses.replace(TINY, pos_encoding=pos, tie_embeddings=tie)
    params = init_params(cfg, jax.random.key(0))
    logits = apply(cfg, params, tokens(cfg))
    assert logits.shape == (2, cfg.seq_len, cfg.vocab_size)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    # shorter sequences than seq_len work too
    assert apply(cfg, params, tokens(cfg, T=5)).shape == (2, 5, cfg.vocab_size)


def test_param_names_follow_contract():
    cfg = dataclasses.replace(TINY, tie_embeddings=False)
    params = init_params(cfg, jax.random.key(0))
    paths = {"/".join(str(k.key) for k in p): leaf.shape
             for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    assert paths["token_embed/embedding"] == (64, 32)
    assert paths["pos_embed/embedding"] == (16, 32)
    assert paths["unembed/kernel"] == (32, 64)
    assert paths["blocks/ln_1/scale"] == (2, 32)  # scanned: leading layer axis
    assert paths["ln_f/bias"] == (32,)
    embeds = [p for p in paths if "embed" in p]
    assert sorted(embeds) == ["pos_embed/embedding", "token_embed/embedding", "unembed/kernel"]


def test_init_scale():
    cfg = ModelConfig(n_layer=8, d_model=64, n_head=2, vocab_size=64, seq_len=16)
    p = init_params(cfg, jax.random.key(1))
    np.testing.assert_allclose(np.std(p["blocks"]["mlp"]["fc"]["kernel"]), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(p["blocks"]["mlp"]["proj"]["kernel"]), 0.02 / 4, rtol=0.05)
    np.testing.assert_allclose(np.std(p["blocks"]["attn"]["proj"]["kernel"]), 0.02 / 4, rtol=0.05)
    assert float(jnp.abs(p["blocks"]["attn"]["qkv"]["bias"]).max()) == 0.0
    assert float(p["ln_f"]["scale"].min()) == 1.0


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rotary"])
def test_causal(pos):
    cfg = dataclasses.replace(TINY, pos_encoding=pos)
    params = init_params(cfg, jax.random.key(0))
    a = tokens(cfg, B=1)
    t = 7
    b = a.at[0, t + 1:].set((a[0, t + 1:] + 1) % cfg.vocab_size)
    la, lb = apply(cfg, params, a), apply(cfg, params, b)
    np.testing.assert_allclose(la[0, : t + 1], lb[0, : t + 1], atol=1e-6)
    assert float(jnp.abs(la[0, t + 1:] - lb[0, t + 1:]).max()) > 1e-4


# Golden values. Computed once on CPU (jax 0.10.2, flax 0.12.8) with
#   cfg = GOLDEN_CFG; params = init_params(cfg, jax.random.key(42))
#   batch = np.random.default_rng(0).integers(0, 64, (2, 17))
#   print(float(loss_fn(params, batch, cfg)), float(jnp.sum(logits)), float(jnp.sum(logits**2)))
# where logits = apply(cfg, params, batch[:, :-1]); a change means the model's math,
# initialisation or parameter layout changed.
GOLDEN_CFG = ModelConfig(n_layer=2, d_model=32, n_head=4, vocab_size=64, seq_len=16,
                         pos_encoding="rotary", tie_embeddings=False)
GOLDEN = {"loss": 4.179001808166504, "sum": -2.786511182785034, "sumsq": 27.462265014648438}


def test_golden_values():
    cfg = GOLDEN_CFG
    params = init_params(cfg, jax.random.key(42))
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 17)), jnp.int32)
    logits = apply(cfg, params, batch[:, :-1])
    got = {"loss": float(jax.jit(loss_fn, static_argnums=2)(params, batch, cfg)),
           "sum": float(jnp.sum(logits)),
           "sumsq": float(jnp.sum(logits**2))}
    print(got)
    for k, v in GOLDEN.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5, err_msg=k)


def _stack_blocks(params_loop, n_layer):
    blocks = [params_loop[f"block_{i}"] for i in range(n_layer)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    rest = {k: v for k, v in params_loop.items() if not k.startswith("block_")}
    return {**rest, "blocks": stacked}


@pytest.mark.parametrize("remat", [False, True])
def test_scan_matches_loop(remat):
    cfg_loop = dataclasses.replace(TINY, scan_layers=False, remat=remat)
    cfg_scan = dataclasses.replace(TINY, scan_layers=True, remat=remat)
    p_loop = init_params(cfg_loop, jax.random.key(3))
    p_scan = _stack_blocks(p_loop, TINY.n_layer)
    assert jax.tree.structure(p_scan) == jax.tree.structure(init_params(cfg_scan, jax.random.key(3)))
    batch = tokens(TINY, B=2, T=TINY.seq_len + 1)
    l1, g1 = loss_and_grad(p_loop, batch, cfg_loop)
    l2, g2 = loss_and_grad(p_scan, batch, cfg_scan)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(_stack_blocks(g1, TINY.n_layer)), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bf16_close_to_fp32():
    cfg = dataclasses.replace(TINY, init_std=0.1)
    cfg16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    toks = tokens(cfg)
    l32 = apply(cfg, params, toks)
    l16 = apply(cfg16, params, toks)
    assert l16.dtype == jnp.float32
    err = float(jnp.abs(l16 - l32).max()) / float(jnp.abs(l32).max())
    assert err < 0.05, err
    batch = tokens(cfg, T=cfg.seq_len + 1)
    _, g = loss_and_grad(params, batch, cfg16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g))


def test_bf16_params():
    cfgp = dataclasses.replace(TINY, compute_dtype="bfloat16", param_dtype="bfloat16")
    batch = tokens(cfgp, T=cfgp.seq_len + 1)
    pp = init_params(cfgp, jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(pp))
    loss, g = loss_and_grad(pp, batch, cfgp)
    assert np.isfinite(float(loss))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(g))


@pytest.mark.parametrize("impl", ["packed", "packed1x1", "packed2x4", "packed3x2", "xla"])
@pytest.mark.parametrize("T", [24, 64])
def test_attention_impls_match_reference(impl, T):
    rng = np.random.default_rng(0)
    q, k, v, do = (jnp.asarray(rng.standard_normal((6, T, 3, 8)), jnp.float32) for _ in range(4))
    ref = attention(q, k, v, "reference")
    np.testing.assert_allclose(attention(q, k, v, impl), ref, atol=2e-6)
    grad = lambda i: jax.grad(lambda *a: jnp.sum(attention(*a, i) * do), argnums=(0, 1, 2))(q, k, v)  # noqa: E731
    for a, b in zip(grad(impl), grad("reference")):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_packed_attention_bf16_close():
    rng = np.random.default_rng(1)
    qkv = jnp.asarray(rng.standard_normal((2, 64, 3, 2, 16)), jnp.float32)
    ref = attention_packed(qkv, "reference")
    got = attention_packed(qkv.astype(jnp.bfloat16), "packed")
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), ref, atol=0.05)
    g = jax.grad(lambda x: jnp.sum(attention_packed(x, "packed").astype(jnp.float32)))(
        qkv.astype(jnp.bfloat16))
    assert g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all()


def test_scan_unroll_does_not_change_results():
    cfg = dataclasses.replace(TINY, n_layer=2)
    params = init_params(cfg, jax.random.key(0))
    toks = tokens(cfg)
    a = jax.jit(Transformer(cfg, scan_unroll=1).apply)({"params": params}, toks)
    b = jax.jit(Transformer(cfg, scan_unroll=2).apply)({"params": params}, toks)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rotary_scores_are_relative():
    from scaling.models.positions import apply_rotary
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.standard_normal((1, 10, 2, 8)), jnp.float32) for _ in range(2))
    pos = jnp.arange(10)
    def scores(shift):
        qr, kr = apply_rotary(q, pos + shift), apply_rotary(k, pos + shift)
        return jnp.einsum("bthk,bshk->bhts", qr, kr)
    np.testing.assert_allclose(scores(0), scores(37), atol=1e-4)
    np.testing.assert_allclose(apply_rotary(q), apply_rotary(q, pos), atol=1e-6)


def test_untied_head_differs_from_tied():
    cfg = dataclasses.replace(TINY, tie_embeddings=False)
    p = init_params(cfg, jax.random.key(0))
    assert "unembed" in p
    assert "unembed" not in init_params(TINY, jax.random.key(0))


def test_cross_entropy_matches_log_softmax():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 5, 11)), jnp.float32)
    tgt = jnp.asarray(rng.integers(0, 11, (2, 5)))
    want = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1))
    np.testing.assert_allclose(cross_entropy(logits, tgt), want, rtol=1e-6)


@pytest.mark.parametrize("tie", [True, False])
def test_bf16_compute_gives_float32_logits(tie):
    """The head accumulates in float32 and returns it, tied or untied (the untied head
    once returned bf16-rounded logits)."""
    cfg = dataclasses.replace(TINY, tie_embeddings=tie, compute_dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    toks = tokens(cfg)
    logits, state = Transformer(cfg).apply({"params": params}, toks,
                                           capture_intermediates=True)
    assert logits.dtype == jnp.float32
    got = np.asarray(logits)
    # values bf16 cannot represent: the logits were not rounded to bf16 anywhere
    rounded = np.asarray(jnp.asarray(got, jnp.bfloat16).astype(jnp.float32))
    assert np.mean(got != rounded) > 0.5
    # and they are the float32-accumulated product of the bf16 final hidden state and head
    h_BxTxD = state["intermediates"]["ln_f"]["__call__"][0]
    assert h_BxTxD.dtype == jnp.bfloat16
    head_DxV = (params["token_embed"]["embedding"].T if tie else params["unembed"]["kernel"])
    want = np.asarray(h_BxTxD.astype(jnp.float32)) @ np.asarray(
        head_DxV.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("I,O", [(8, 24), (24, 8)])  # x or dy is the one transposed
def test_dense_rowmajor_gradient_matches_plain_matmul(I, O):
    from scaling.models.dense import dense_rowmajor
    rng = np.random.default_rng(0)
    x, w, dy = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                for s in ((40, I), (I, O), (40, O)))
    with jax.default_matmul_precision("highest"):  # not TF32 on a GPU
        got = jax.grad(lambda x, w: jnp.sum(jax.jit(dense_rowmajor)(x, w) * dy),
                       argnums=(0, 1))(x, w)
        ref = jax.grad(lambda x, w: jnp.sum((x @ w) * dy), argnums=(0, 1))(x, w)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_matches_flax_dense(dtype):
    """The transformer's Dense keeps nn.Dense's parameters, values and gradients."""
    import flax.linen as nn
    from scaling.models.dense import Dense
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, 16)), jnp.float32)
    theirs = nn.Dense(12, dtype=dtype)
    params = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(Dense(12).init(jax.random.key(0), x)) == jax.tree.structure(params)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    loss = lambda p, m: jnp.sum(m.apply(p, x).astype(jnp.float32) ** 2)  # noqa: E731
    with jax.default_matmul_precision("highest"):  # not TF32 on a GPU
        ref_y, ref_g = theirs.apply(params, x), jax.grad(loss)(params, theirs)
        for rowmajor in (True, False):
            ours = Dense(12, dtype=dtype, rowmajor_grad=rowmajor)
            np.testing.assert_allclose(np.asarray(ours.apply(params, x), np.float32),
                                       np.asarray(ref_y, np.float32), atol=tol)
            for a, b in zip(jax.tree.leaves(jax.grad(loss)(params, ours)), jax.tree.leaves(ref_g)):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
