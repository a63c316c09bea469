"""Decoder-only transformer in Flax linen (pure functional: params are a pytree).

    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(0))
    logits_BxTxV = model.apply({"params": params}, tokens_BxT)   # float32

Shape suffixes name the axes (as in google-deepmind/nanodo):
    B batch, T sequence (query) positions, S key positions, D d_model, H heads,
    K head size, F feed-forward width, V vocabulary, L layers.

Numerics: parameters are stored in `cfg.param_dtype`, activations and matmuls run in
`cfg.compute_dtype`, layer-norm statistics, softmax and logits are float32.

Parameter tree (the optimizer's weight-decay mask relies on these names):
    token_embed/embedding [V, D]         pos_embed/embedding [T, D] (learned only)
    blocks/{ln_1,ln_2}/{scale,bias}      blocks/attn/{qkv,proj}/{kernel,bias}
    blocks/mlp/{fc,proj}/{kernel,bias}   ln_f/{scale,bias}
    unembed/kernel [D, V]                (untied head only)
With `cfg.scan_layers` the block parameters carry a leading axis of size L under
`blocks`; otherwise they live under `block_0` ... `block_{L-1}`.

Attention: on GPU/TPU the block calls `jax.nn.dot_product_attention` (the fused cuDNN
kernel on GPUs). On CPU it uses `causal_attention_cpu`, the same math with a
hand-written backward pass that XLA's CPU backend runs about twice as fast
(see benchmarks/throughput.py and the notes there).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from scaling.config import ModelConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str):
    return _DTYPES[name]


# --------------------------------------------------------------------------------------
# Positional encodings
# --------------------------------------------------------------------------------------


def sinusoidal_table(seq_len: int, d_model: int) -> np.ndarray:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos_T = np.arange(seq_len, dtype=np.float64)[:, None]
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, d_model, 2, dtype=np.float64) / d_model))
    ang_TxD2 = pos_T * inv_freq[None, :]
    pe_TxD = np.zeros((seq_len, d_model), dtype=np.float64)
    pe_TxD[:, 0::2] = np.sin(ang_TxD2)
    pe_TxD[:, 1::2] = np.cos(ang_TxD2[:, : d_model // 2])
    return pe_TxD.astype(np.float32)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0):
    """cos/sin tables [T, K] for rotary embeddings (rotate-half convention, GPT-NeoX)."""
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang_TxK2 = np.arange(seq_len, dtype=np.float64)[:, None] * inv_freq[None, :]
    ang_TxK = np.concatenate([ang_TxK2, ang_TxK2], axis=-1)
    return np.cos(ang_TxK).astype(np.float32), np.sin(ang_TxK).astype(np.float32)


def apply_rotary(x_BxTxHxK: jax.Array, positions_T=None) -> jax.Array:
    """Rotate channel pairs (i, i + K/2) of each head by angle position * freq_i."""
    T, K = x_BxTxHxK.shape[1], x_BxTxHxK.shape[3]
    if positions_T is None:
        cos_TxK, sin_TxK = (jnp.asarray(t) for t in rotary_tables(T, K))
    else:  # arbitrary (possibly shifted) positions; used by the tests
        inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K))
        ang = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
        ang_TxK = jnp.concatenate([ang, ang], axis=-1)
        cos_TxK, sin_TxK = jnp.cos(ang_TxK), jnp.sin(ang_TxK)
    dt = x_BxTxHxK.dtype
    cos = cos_TxK[None, :, None, :].astype(dt)
    sin = sin_TxK[None, :, None, :].astype(dt)
    x1, x2 = jnp.split(x_BxTxHxK, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return x_BxTxHxK * cos + rot * sin


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


def causal_attention_reference(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK):
    """Plain causal softmax attention, float32 softmax; the definition the others match."""
    K = q_BxTxHxK.shape[-1]
    s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                           preferred_element_type=jnp.float32) / math.sqrt(K)
    T, S = s_BxHxTxS.shape[-2:]
    mask_TxS = jnp.tril(jnp.ones((T, S), dtype=bool))
    s_BxHxTxS = jnp.where(mask_TxS, s_BxHxTxS, -jnp.inf)
    p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1).astype(v_BxSxHxK.dtype)
    return jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, v_BxSxHxK)


def _causal_mask(T: int, S: int) -> np.ndarray:
    return np.tril(np.ones((T, S), dtype=bool), k=S - T)


def _attn_fwd_core(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK):
    """Forward in head-major layout; returns output and the residuals for the backward."""
    K = q_BxTxHxK.shape[-1]
    T, S = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
    cdt = q_BxTxHxK.dtype
    q_BxHxTxK = (q_BxTxHxK * jnp.asarray(1.0 / math.sqrt(K), cdt)).transpose(0, 2, 1, 3)
    k_BxHxSxK = k_BxSxHxK.transpose(0, 2, 1, 3)
    v_BxHxSxK = v_BxSxHxK.transpose(0, 2, 1, 3)
    s_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK,
                           preferred_element_type=jnp.float32)
    s_BxHxTxS = jnp.where(_causal_mask(T, S), s_BxHxTxS, -jnp.inf)
    m_BxHxT = jnp.max(s_BxHxTxS, axis=-1, keepdims=True)
    e_BxHxTxS = jnp.exp(s_BxHxTxS - m_BxHxT)
    p_BxHxTxS = (e_BxHxTxS / jnp.sum(e_BxHxTxS, axis=-1, keepdims=True)).astype(cdt)
    o_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", p_BxHxTxS, v_BxHxSxK)
    return o_BxHxTxK, (q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, p_BxHxTxS, o_BxHxTxK)


@jax.custom_vjp
def causal_attention_cpu(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK):
    """Causal softmax attention with a hand-written backward (same math as the reference).

    Autodiff of the reference formulation makes XLA's CPU backend build the softmax
    gradient from several [B, H, T, S] passes (the where, max, exp, the division and
    their transposes). The backward here is the textbook one:
        dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K,  dK = dS^T Q
    i.e. four batched matmuls and one elementwise pass over [B, H, T, S].
    """
    o_BxHxTxK, _ = _attn_fwd_core(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    return o_BxHxTxK.transpose(0, 2, 1, 3)


def _attn_fwd(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK):
    o_BxHxTxK, res = _attn_fwd_core(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    return o_BxHxTxK.transpose(0, 2, 1, 3), res


def _attn_bwd(res, do_BxTxHxK):
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, p_BxHxTxS, o_BxHxTxK = res
    cdt = q_BxHxTxK.dtype
    K = q_BxHxTxK.shape[-1]
    do_BxHxTxK = do_BxTxHxK.transpose(0, 2, 1, 3).astype(cdt)
    dv_BxHxSxK = jnp.einsum("bhts,bhtk->bhsk", p_BxHxTxS, do_BxHxTxK)
    dp_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", do_BxHxTxK, v_BxHxSxK,
                            preferred_element_type=jnp.float32)
    delta_BxHxT = jnp.sum(do_BxHxTxK.astype(jnp.float32) * o_BxHxTxK.astype(jnp.float32),
                          axis=-1, keepdims=True)
    ds_BxHxTxS = (p_BxHxTxS.astype(jnp.float32) * (dp_BxHxTxS - delta_BxHxT)).astype(cdt)
    dq_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", ds_BxHxTxS, k_BxHxSxK)
    dq_BxHxTxK = dq_BxHxTxK * jnp.asarray(1.0 / math.sqrt(K), cdt)
    dk_BxHxSxK = jnp.einsum("bhts,bhtk->bhsk", ds_BxHxTxS, q_BxHxTxK)  # q is pre-scaled
    back = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    return back(dq_BxHxTxK), back(dk_BxHxSxK), back(dv_BxHxSxK)


causal_attention_cpu.defvjp(_attn_fwd, _attn_bwd)


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, impl: str = "auto"):
    """Causal multi-head attention, [B, T, H, K] in and out.

    impl: "auto" (dot_product_attention on GPU/TPU, the CPU kernel on CPU), "xla"
    (jax.nn.dot_product_attention, XLA formulation), "cpu", "reference".
    """
    if impl == "auto":
        impl = "cpu" if jax.default_backend() == "cpu" else "dpa"
    if impl == "dpa":
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True)
    if impl == "xla":
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True,
                                            implementation="xla")
    if impl == "cpu":
        return causal_attention_cpu(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    if impl == "reference":
        return causal_attention_reference(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    raise ValueError(f"unknown attention impl {impl!r}")


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    cfg: ModelConfig
    attn_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        D, H, K = cfg.d_model, cfg.n_head, cfg.head_dim
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.n_layer))
        qkv_BxTx3D = nn.Dense(3 * D, kernel_init=init, dtype=cdt, param_dtype=pdt,
                              name="qkv")(x_BxTxD)
        B, T = x_BxTxD.shape[:2]
        qkv_BxTx3xHxK = qkv_BxTx3D.reshape(B, T, 3, H, K)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
        if cfg.pos_encoding == "rotary":
            q_BxTxHxK, k_BxTxHxK = apply_rotary(q_BxTxHxK), apply_rotary(k_BxTxHxK)
        o_BxTxHxK = attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, self.attn_impl)
        o_BxTxD = o_BxTxHxK.reshape(B, T, D)
        return nn.Dense(D, kernel_init=out_init, dtype=cdt, param_dtype=pdt,
                        name="proj")(o_BxTxD)


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.init_std)
        out_init = nn.initializers.normal(cfg.init_std / math.sqrt(2 * cfg.n_layer))
        h_BxTxF = nn.Dense(cfg.ff, kernel_init=init, dtype=cdt, param_dtype=pdt,
                           name="fc")(x_BxTxD)
        h_BxTxF = nn.gelu(h_BxTxF, approximate=True)
        return nn.Dense(cfg.d_model, kernel_init=out_init, dtype=cdt, param_dtype=pdt,
                        name="proj")(h_BxTxF)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    cfg: ModelConfig
    attn_impl: str = "auto"

    @nn.compact
    def __call__(self, x_BxTxD, _=None):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        h = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_1")(x_BxTxD)
        x_BxTxD = x_BxTxD + Attention(cfg, self.attn_impl, name="attn")(h)
        h = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_2")(x_BxTxD)
        x_BxTxD = x_BxTxD + Mlp(cfg, name="mlp")(h)
        return x_BxTxD, None


class Transformer(nn.Module):
    """Decoder-only LM: tokens [B, T] int -> logits [B, T, V] float32."""

    cfg: ModelConfig
    attn_impl: str = "auto"

    @nn.compact
    def __call__(self, tokens_BxT):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        B, T = tokens_BxT.shape
        if T > cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len = {cfg.seq_len}")
        init = nn.initializers.normal(cfg.init_std)
        tok_embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, dtype=cdt,
                             param_dtype=pdt, name="token_embed")
        x_BxTxD = tok_embed(tokens_BxT)
        if cfg.pos_encoding == "learned":
            pos = nn.Embed(cfg.seq_len, cfg.d_model, embedding_init=init, dtype=cdt,
                           param_dtype=pdt, name="pos_embed")
            x_BxTxD = x_BxTxD + pos.embedding[None, :T].astype(cdt)
        elif cfg.pos_encoding == "sinusoidal":
            x_BxTxD = x_BxTxD + jnp.asarray(sinusoidal_table(T, cfg.d_model), cdt)[None]

        block = Block
        if cfg.remat:
            block = nn.remat(block, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=cfg.n_layer, in_axes=nn.broadcast)
            x_BxTxD, _ = stack(cfg, self.attn_impl, name="blocks")(x_BxTxD, None)
        else:
            for i in range(cfg.n_layer):
                x_BxTxD, _ = block(cfg, self.attn_impl, name=f"block_{i}")(x_BxTxD, None)

        x_BxTxD = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_f")(x_BxTxD)
        if cfg.tie_embeddings:
            emb_VxD = tok_embed.embedding.astype(cdt)
            logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, emb_VxD,
                                      preferred_element_type=jnp.float32)
        else:
            logits_BxTxV = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=init,
                                    dtype=cdt, param_dtype=pdt, name="unembed")(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32)


# --------------------------------------------------------------------------------------
# Functional helpers
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init(cfg: ModelConfig, rng, attn_impl: str = "auto"):
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    return Transformer(cfg, attn_impl).init(rng, tokens)["params"]


def init_params(cfg: ModelConfig, rng) -> dict:
    """Parameters for `cfg` (jitted init; the attention impl does not change the tree)."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return _init(cfg, rng, "reference")


def param_shapes(cfg: ModelConfig) -> dict:
    """The parameter pytree as ShapeDtypeStructs, without allocating anything."""
    tokens = jax.ShapeDtypeStruct((1, cfg.seq_len), jnp.int32)
    out = jax.eval_shape(lambda r, t: Transformer(cfg, "reference").init(r, t),
                         jax.random.key(0), tokens)
    return out["params"]


def cross_entropy(logits_BxTxV, targets_BxT) -> jax.Array:
    """Mean next-token cross-entropy in float32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    tgt_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return jnp.mean(lse_BxT - tgt_BxT)


def loss_fn(params, batch_Bx1T, cfg: ModelConfig, attn_impl: str = "auto"):
    """Mean next-token cross-entropy of a batch int[B, T+1]."""
    inputs_BxT, targets_BxT = batch_Bx1T[:, :-1], batch_Bx1T[:, 1:]
    logits_BxTxV = Transformer(cfg, attn_impl).apply({"params": params}, inputs_BxT)
    return cross_entropy(logits_BxTxV, targets_BxT)
