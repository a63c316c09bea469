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
    unembed/kernel [D, V]                (untied head only; a weight matrix, decayed
                                          like the blocks' kernels, not an embedding)
With `cfg.scan_layers` the block parameters carry a leading axis of size L under
`blocks`; otherwise they live under `block_0` ... `block_{L-1}`.

Attention: on GPU/TPU the block calls `jax.nn.dot_product_attention` (the fused cuDNN
kernel on GPUs). On CPU it uses `causal_attention_packed`, the same math organised for
XLA's CPU backend (chunked over sequences, causal block skipping, flash-style backward);
on CPU the layer scan is also unrolled (`Transformer.scan_unroll`). See
benchmarks/throughput.py for the measurements.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from scaling.runtime import tune_host_runtime
from scaling.config import ModelConfig

# CPU speed: let XLA reuse its per-step buffers instead of page-faulting them in anew each
# step (see tune_host_runtime). Process-wide, a no-op off glibc; SCALINGLAB_NO_MALLOC_TUNE=1
# turns it off. Done at import so it precedes JAX's first computation in most programs.
tune_host_runtime()

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
    """Rotate channel pairs (i, i + K/2) of each head by angle position * freq_i.

    x is [B, T, ..., K] (positions on axis 1, head size last)."""
    T, K = x_BxTxHxK.shape[1], x_BxTxHxK.shape[-1]
    if positions_T is None:
        cos_TxK, sin_TxK = (jnp.asarray(t) for t in rotary_tables(T, K))
    else:  # arbitrary (possibly shifted) positions; used by the tests
        inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K))
        ang = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
        ang_TxK = jnp.concatenate([ang, ang], axis=-1)
        cos_TxK, sin_TxK = jnp.cos(ang_TxK), jnp.sin(ang_TxK)
    dt = x_BxTxHxK.dtype
    extra = (None,) * (x_BxTxHxK.ndim - 3)  # axes between T and K (heads, or q/k and heads)
    cos = cos_TxK[(None, slice(None), *extra, slice(None))].astype(dt)
    sin = sin_TxK[(None, slice(None), *extra, slice(None))].astype(dt)
    x1, x2 = jnp.split(x_BxTxHxK, 2, axis=-1)
    rot = jnp.concatenate([-x2, x1], axis=-1)
    return x_BxTxHxK * cos + rot * sin


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


def causal_attention_reference(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, scale: float | None = None):
    """Plain causal softmax attention, float32 softmax; the definition the others match.

    Scores are q.k / sqrt(K) (scale None, SP) or q.k * scale (µP: mup_attn_mult / K)."""
    K = q_BxTxHxK.shape[-1]
    s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                           preferred_element_type=jnp.float32)
    s_BxHxTxS = s_BxHxTxS / math.sqrt(K) if scale is None else s_BxHxTxS * scale
    T, S = s_BxHxTxS.shape[-2:]
    mask_TxS = jnp.tril(jnp.ones((T, S), dtype=bool))
    s_BxHxTxS = jnp.where(mask_TxS, s_BxHxTxS, -jnp.inf)
    p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1).astype(v_BxSxHxK.dtype)
    return jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, v_BxSxHxK)


def _block_mask(t0: int, t1: int) -> np.ndarray:
    """Causal mask of query rows [t0, t1) against the keys they can see, [0, t1)."""
    return np.arange(t1)[None, :] <= np.arange(t0, t1)[:, None]


def _query_blocks(T: int, n_blocks: int):
    """(t0, t1): query rows [t0, t1), which see keys [0, t1); blocks of equal size."""
    if T % n_blocks:
        n_blocks = 1
    bq = T // n_blocks
    return [(i * bq, (i + 1) * bq) for i in range(n_blocks)]


def _score_scale(K: int, scale: float) -> float:
    """The factor on q.k: 1/sqrt(K) when `scale` is 0 (SP), else `scale` (µP)."""
    return scale if scale else 1.0 / math.sqrt(K)


# Layouts. XLA's fast CPU matmul (YNNPACK) takes a dot only when both operands are
# row-major in the canonical sense: the left one contracts its last axis, the right one
# its second-to-last. Any other dot runs on a generic path 3-4x slower, or behind a
# transpose inside the chunk loop, where XLA's transposes are slow too. So the kernel
# lays q, k, v out once per call as [C, H, T, K] ("rows") and [C, H, K, T] ("columns",
# the transposes), outside the loop over chunks, and writes every product in the loop as
# rows x rows or columns x rows:
#   scores     q    [t, k] x kT [k, s]        output  p [t, s] x v  [s, k]
#   dP         dO   [t, k] x vT [k, s]        dQ      dS [t, s] x k [s, k]
#   dK^T       qT   [k, t] x dS [t, s]        dV^T    dOT [k, t] x p [t, s]
# dK and dV are accumulated transposed, [C, H, K, S], and turned back once at the end.


def _rows(x_BxTxHxK):
    return jnp.transpose(x_BxTxHxK, (0, 2, 1, 3))  # [B, H, T, K]


def _cols(x_BxTxHxK):
    return jnp.transpose(x_BxTxHxK, (0, 2, 3, 1))  # [B, H, K, T]


def _chunk_fwd(q_CxHxTxK, kT_CxHxKxT, v_CxHxTxK, n_blocks, scale=0.0):
    """Attention of a chunk of sequences: output [C, H, T, K] and row log-sum-exp [C, H, T].

    Query rows are taken in `n_blocks` blocks, each against only the keys it can see,
    so the (all masked) upper triangle of blocks is never computed.
    """
    T, K = q_CxHxTxK.shape[2:]
    cdt = q_CxHxTxK.dtype
    outs, lses = [], []
    for t0, t1 in _query_blocks(T, n_blocks):
        s_CxHxTxS = jnp.einsum("chtk,chks->chts", q_CxHxTxK[:, :, t0:t1], kT_CxHxKxT[..., :t1],
                               preferred_element_type=jnp.float32) * _score_scale(K, scale)
        s_CxHxTxS = jnp.where(_block_mask(t0, t1), s_CxHxTxS, -jnp.inf)
        m_CxHxT = jnp.max(s_CxHxTxS, axis=-1)
        e_CxHxTxS = jnp.exp(s_CxHxTxS - m_CxHxT[..., None])
        l_CxHxT = jnp.sum(e_CxHxTxS, axis=-1)
        o_CxHxTxK = jnp.einsum("chts,chsk->chtk", e_CxHxTxS.astype(cdt), v_CxHxTxK[:, :, :t1],
                               preferred_element_type=jnp.float32)
        outs.append((o_CxHxTxK / l_CxHxT[..., None]).astype(cdt))
        lses.append(m_CxHxT + jnp.log(l_CxHxT))
    if len(outs) == 1:
        return outs[0], lses[0]
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


def _chunk_bwd(q_CxHxTxK, k_CxHxTxK, qT_CxHxKxT, kT_CxHxKxT, vT_CxHxKxT, lse_CxHxT,
               delta_CxHxT, do_CxHxTxK, doT_CxHxKxT, n_blocks, scale=0.0):
    """dQ [C, H, T, K], dK^T and dV^T [C, H, K, T] of one chunk (probabilities recomputed
    from the row log-sum-exp, flash-attention style)."""
    T, K = q_CxHxTxK.shape[2:]
    cdt = q_CxHxTxK.dtype
    scale = _score_scale(K, scale)
    dqs = []
    dkT_CxHxKxT = dvT_CxHxKxT = None
    for t0, t1 in _query_blocks(T, n_blocks):
        s_CxHxTxS = jnp.einsum("chtk,chks->chts", q_CxHxTxK[:, :, t0:t1], kT_CxHxKxT[..., :t1],
                               preferred_element_type=jnp.float32) * scale
        p_CxHxTxS = jnp.where(_block_mask(t0, t1),
                              jnp.exp(s_CxHxTxS - lse_CxHxT[:, :, t0:t1, None]), 0.0)
        dp_CxHxTxS = jnp.einsum("chtk,chks->chts", do_CxHxTxK[:, :, t0:t1],
                                vT_CxHxKxT[..., :t1], preferred_element_type=jnp.float32)
        ds_CxHxTxS = (p_CxHxTxS * (dp_CxHxTxS - delta_CxHxT[:, :, t0:t1, None])
                      * scale).astype(cdt)
        dqs.append(jnp.einsum("chts,chsk->chtk", ds_CxHxTxS, k_CxHxTxK[:, :, :t1],
                              preferred_element_type=jnp.float32))
        pad = ((0, 0), (0, 0), (0, 0), (0, T - t1))  # keys past t1 get nothing from this block
        dkT_blk = jnp.pad(jnp.einsum("chkt,chts->chks", qT_CxHxKxT[..., t0:t1], ds_CxHxTxS,
                                     preferred_element_type=jnp.float32), pad)
        dvT_blk = jnp.pad(jnp.einsum("chkt,chts->chks", doT_CxHxKxT[..., t0:t1],
                                     p_CxHxTxS.astype(cdt),
                                     preferred_element_type=jnp.float32), pad)
        dkT_CxHxKxT = dkT_blk if dkT_CxHxKxT is None else dkT_CxHxKxT + dkT_blk
        dvT_CxHxKxT = dvT_blk if dvT_CxHxKxT is None else dvT_CxHxKxT + dvT_blk
    dq_CxHxTxK = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=2)
    return dq_CxHxTxK.astype(cdt), dkT_CxHxKxT.astype(cdt), dvT_CxHxKxT.astype(cdt)


def _split(x, chunk):
    return x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])


def _merge(x):
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _pick_chunk(B, T, H, S, budget=1 << 20):
    """Largest divisor c of B with c * H * T * S floats within `budget` (1M: ~4 MB)."""
    best = 1
    for c in range(1, B + 1):
        if B % c == 0 and c * H * T * S <= budget:
            best = c
    return best


def _auto_blocks(T: int) -> int:
    """Query blocks for causal skipping: 1 up to T = 64, then blocks of >= 64 rows, at most 4."""
    return max(1, min(4, T // 64))


def _chunked(fn, chunk, *xs):
    """fn over the batch `chunk` sequences at a time (lax.map), or at once for one chunk."""
    if chunk == xs[0].shape[0]:
        return fn(*xs)
    out = jax.lax.map(lambda a: fn(*a), tuple(_split(x, chunk) for x in xs))
    return jax.tree.map(_merge, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def causal_attention_packed(qkv_BxTx3xHxK, chunk: int = 0, n_blocks: int = 0,
                            scale: float = 0.0):
    """Causal attention of packed q, k, v [B, T, 3, H, K] -> [B, T, H, K] (CPU kernel).

    Same math as `causal_attention_reference`, organised for XLA's CPU backend:
    - sequences are processed `chunk` at a time in a loop (lax.map), so the [c, H, T, T]
      score block of one chunk stays in cache instead of streaming [B, H, T, T] arrays
      through memory several times;
    - query rows are split into `n_blocks` blocks that only meet the keys they can see,
      skipping the masked upper triangle of blocks (~40% of the work at 4 blocks);
    - every matmul is in the layout XLA's fast CPU kernel takes (see "Layouts" above);
    - the backward pass recomputes the probabilities from the saved row log-sum-exp
      (flash-attention style), so only q, k, v, the output and [B, H, T] log-sum-exps
      are kept for it, and dQ, dK, dV come back packed like the input.
    `scale`: the factor on q.k; 0 means 1/sqrt(K) (SP), µP passes mup_attn_mult / K.
    """
    return _packed_fwd(qkv_BxTx3xHxK, chunk, n_blocks, scale)[0]


def _plan(qkv_BxTx3xHxK, chunk, n_blocks):
    B, T, _, H, _ = qkv_BxTx3xHxK.shape
    c = chunk if chunk and B % chunk == 0 else _pick_chunk(B, T, H, T)
    return c, n_blocks or _auto_blocks(T)


def _packed_fwd(qkv_BxTx3xHxK, chunk, n_blocks, scale=0.0):
    c, nb = _plan(qkv_BxTx3xHxK, chunk, n_blocks)
    q, k, v = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    q_BxHxTxK, kT_BxHxKxT, v_BxHxTxK = _rows(q), _cols(k), _rows(v)
    o_BxHxTxK, lse_BxHxT = _chunked(
        lambda q, kT, v: _chunk_fwd(q, kT, v, nb, scale), c, q_BxHxTxK, kT_BxHxKxT, v_BxHxTxK)
    return (jnp.transpose(o_BxHxTxK, (0, 2, 1, 3)),
            (qkv_BxTx3xHxK, o_BxHxTxK, lse_BxHxT))


def _packed_bwd(chunk, n_blocks, scale, res, do_BxTxHxK):
    qkv_BxTx3xHxK, o_BxHxTxK, lse_BxHxT = res
    c, nb = _plan(qkv_BxTx3xHxK, chunk, n_blocks)
    cdt = qkv_BxTx3xHxK.dtype
    do_BxTxHxK = do_BxTxHxK.astype(cdt)
    q, k, v = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    do_BxHxTxK = _rows(do_BxTxHxK)
    delta_BxHxT = jnp.sum(do_BxHxTxK.astype(jnp.float32) * o_BxHxTxK.astype(jnp.float32),
                          axis=-1)
    dq_BxHxTxK, dkT_BxHxKxT, dvT_BxHxKxT = _chunked(
        lambda *a: _chunk_bwd(*a, nb, scale), c,
        _rows(q), _rows(k), _cols(q), _cols(k), _cols(v), lse_BxHxT, delta_BxHxT,
        do_BxHxTxK, _cols(do_BxTxHxK))
    dqkv = jnp.stack([jnp.transpose(dq_BxHxTxK, (0, 2, 1, 3)),
                      jnp.transpose(dkT_BxHxKxT, (0, 3, 1, 2)),
                      jnp.transpose(dvT_BxHxKxT, (0, 3, 1, 2))], axis=2)
    return (dqkv,)


causal_attention_packed.defvjp(_packed_fwd, _packed_bwd)


def attention_packed(qkv_BxTx3xHxK, impl: str = "auto", scale: float | None = None):
    """Causal attention of packed q, k, v [B, T, 3, H, K] -> [B, T, H, K].

    scale: the factor on q.k; None means 1/sqrt(K) (SP), µP passes mup_attn_mult / K.

    impl "auto": the CPU kernel `causal_attention_packed` on CPU, else
    jax.nn.dot_product_attention (cuDNN's fused kernel on GPUs). "packed[<c>x<blocks>]"
    forces the CPU kernel; other names go to `attention` with q, k, v split out.
    """
    if impl == "auto":
        impl = "packed" if jax.default_backend() == "cpu" else "dpa"
    if impl.startswith("packed"):
        chunk, _, nb = impl[len("packed"):].partition("x")
        return causal_attention_packed(qkv_BxTx3xHxK, int(chunk or 0), int(nb or 0),
                                       float(scale or 0.0))
    if impl not in ("dpa", "xla", "reference"):
        raise ValueError(f"unknown attention impl {impl!r}")
    q, k, v = (qkv_BxTx3xHxK[:, :, i] for i in range(3))
    return attention(q, k, v, impl, scale)


def bidirectional_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, impl: str = "auto",
                            scale: float | None = None):
    """Unmasked (encoder) multi-head attention, [B, T, H, K] in and out: every position
    sees every other. impl "auto" or "dpa": jax.nn.dot_product_attention (its XLA form on
    CPU, the fused kernel on GPUs); "xla": its XLA form; "reference": einsum + softmax.
    The CPU kernel `causal_attention_packed` is causal only and is not used here."""
    if impl == "auto":
        impl = "xla" if jax.default_backend() == "cpu" else "dpa"
    if impl in ("dpa", "xla"):
        return jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=False, scale=scale,
            implementation="xla" if impl == "xla" else None)
    if impl == "reference":
        s_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK,
                               preferred_element_type=jnp.float32)
        K = q_BxTxHxK.shape[-1]
        s_BxHxTxS = s_BxHxTxS / math.sqrt(K) if scale is None else s_BxHxTxS * scale
        p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1).astype(v_BxSxHxK.dtype)
        return jnp.einsum("bhts,bshk->bthk", p_BxHxTxS, v_BxSxHxK)
    raise ValueError(f"unknown bidirectional attention impl {impl!r}: allowed 'auto', "
                     "'dpa', 'xla', 'reference' (the packed CPU kernel is causal only)")


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, impl: str = "auto",
              scale: float | None = None):
    """Causal multi-head attention, [B, T, H, K] in and out.

    impl: "auto" (the CPU kernel on CPU, else "dpa"), "dpa" (jax.nn.dot_product_attention,
    the fused cuDNN kernel on GPUs), "xla" (dot_product_attention's XLA formulation),
    "reference", or "packed[<chunk>x<blocks>]" (the CPU kernel). scale: the factor on
    q.k, None for 1/sqrt(K).
    """
    if impl == "auto":
        impl = "packed" if jax.default_backend() == "cpu" else "dpa"
    if impl == "dpa":
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True,
                                            scale=scale)
    if impl == "xla":
        return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, is_causal=True,
                                            implementation="xla", scale=scale)
    if impl == "reference":
        return causal_attention_reference(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, scale)
    if impl.startswith("packed"):
        qkv = jnp.stack([q_BxTxHxK, k_BxSxHxK, v_BxSxHxK], axis=2)
        return attention_packed(qkv, impl, scale)
    raise ValueError(f"unknown attention impl {impl!r}")


# --------------------------------------------------------------------------------------
# Dense layers
# --------------------------------------------------------------------------------------


def _transposed(x_MxN):
    """x^T as its own array: barriers keep XLA from folding the transpose into a dot
    (which would take the slow path again) or fusing it with x's producer (a transpose
    fused with arithmetic is emitted as a strided loop, ~10x slower than a plain one)."""
    opt = jax.lax.optimization_barrier
    return opt(opt(x_MxN).T)


def _varying_like(w, x):
    """w marked as varying over the manual (shard_map) axes x varies over. A custom VJP must
    return cotangents typed like its inputs, so the replicated weight enters it already
    varying; the reduction of its gradient over devices then happens where it does for a
    plain matmul (the transpose of this cast). A no-op outside shard_map."""
    missing = tuple(sorted(_varying_axes(x) - _varying_axes(w)))
    return jax.lax.pcast(w, missing, to="varying") if missing else w


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX 0.10; earlier releases: .vma
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


@jax.custom_vjp
def dense_rowmajor(x_MxI, kernel_IxO):
    """x @ kernel for a [M, I] matrix of rows, whose weight gradient is a row-major matmul
    (the transformer's dense layers use it on CPU).

    JAX's own transpose of the forward dot asks for dW = x^T dy as a dot contracting
    both operands' row axis M. Inside a training step XLA's CPU backend then lays dy out
    transposed and runs that dot on its generic (Eigen) path, 3-4x slower than the
    forward matmul (measured: 59 vs 218 GFLOP/s for [1024, 80] x [80, 320] on one core).
    Here x^T is made explicit behind an optimization barrier, so the weight gradient is
    the plain [I, M] x [M, O] product XLA hands to its fast (YNNPACK) kernel. The input
    gradient dy kernel^T is left to XLA, which already runs it fast.
    """
    return x_MxI @ kernel_IxO


def _dense_fwd(x_MxI, kernel_IxO):
    return x_MxI @ kernel_IxO, (x_MxI, kernel_IxO)


def _dense_bwd(res, dy_MxO):
    x_MxI, kernel_IxO = res
    dx_MxI = jax.lax.dot_general(dy_MxO, kernel_IxO, (((1,), (1,)), ((), ())))
    I, O = kernel_IxO.shape
    if I <= O:  # transpose the narrower of x and dy
        dk_IxO = _transposed(x_MxI) @ dy_MxO
    else:
        dk_IxO = jax.lax.optimization_barrier(_transposed(dy_MxO) @ x_MxI).T
    return dx_MxI.astype(x_MxI.dtype), dk_IxO.astype(kernel_IxO.dtype)


dense_rowmajor.defvjp(_dense_fwd, _dense_bwd)


def matmul_rowmajor(x_xI, kernel_IxO):
    """x [..., I] @ kernel [I, O] through `dense_rowmajor` (rows flattened, the kernel made
    varying like x under shard_map)."""
    y_MxO = dense_rowmajor(x_xI.reshape(-1, x_xI.shape[-1]), _varying_like(kernel_IxO, x_xI))
    return y_MxO.reshape(*x_xI.shape[:-1], kernel_IxO.shape[-1])


class Dense(nn.Module):
    """nn.Dense's parameters and math (kernel [I, O], bias [O], computed in `dtype`), with
    `dense_rowmajor`'s weight gradient on CPU (`rowmajor_grad` None: on CPU only)."""

    features: int
    kernel_init: object = nn.initializers.lecun_normal()
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32
    rowmajor_grad: bool | None = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        rowmajor = self.rowmajor_grad
        if rowmajor is None:
            rowmajor = jax.default_backend() == "cpu"
        if not rowmajor:
            return jnp.einsum("...i,io->...o", x, kernel) + bias
        return matmul_rowmajor(x, kernel) + bias


# --------------------------------------------------------------------------------------
# Parametrisation: SP or µP (Yang et al. 2022, Tensor Programs V)
# --------------------------------------------------------------------------------------
#
# With m = d_model / mup_base_width (`ModelConfig.width_mult`), µP differs from SP in:
#   hidden matrices (qkv, attn proj, fc, mlp proj)  init std  init_std / sqrt(m)
#       (variance ~ 1/fan_in, equal to SP's at the base width; d_ff is taken to scale
#       with d_model); their learning rates are set by scaling.train.optim.mup_lr_multipliers
#   embeddings, norms, biases                       unchanged
#   output logits                                   (mup_output_mult / m) * (h . W_out),
#       W_out initialised like SP (std init_std) or to zero (mup_zero_readout); the
#       multiplier makes the effective readout std ~ 1/width (µP's 1/fan_in^2 variance)
#       while W_out's Adam step stays unscaled (microsoft/mup's MuReadout form)
#   attention scores                                q.k * mup_attn_mult / head_dim
#       instead of q.k / sqrt(head_dim) (q and k become correlated in training, so their
#       dot product grows like head_dim, not sqrt(head_dim))
# At the base width every factor is exactly 1 and µP equals SP, except the attention
# scale, which equals SP's when mup_attn_mult = sqrt(head_dim).


def hidden_init_std(cfg: ModelConfig, std: float) -> float:
    """Init std of a hidden matrix whose SP std is `std`: std / sqrt(width_mult) under µP."""
    if cfg.parametrization != "mup":
        return std
    return std / math.sqrt(cfg.width_mult)


def attention_scale(cfg: ModelConfig) -> float | None:
    """The factor on q.k: None (meaning 1/sqrt(head_dim), SP) or mup_attn_mult / head_dim."""
    if cfg.parametrization != "mup":
        return None
    return cfg.mup_attn_mult / cfg.head_dim


def output_multiplier(cfg: ModelConfig) -> float | None:
    """µP's factor on the logits, mup_output_mult / width_mult (None under SP)."""
    if cfg.parametrization != "mup":
        return None
    return cfg.mup_output_mult / cfg.width_mult


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    cfg: ModelConfig
    attn_impl: str = "auto"
    causal: bool = True  # False: the encoder's bidirectional attention (scaling.models.encoder)

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        D, H, K = cfg.d_model, cfg.n_head, cfg.head_dim
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(hidden_init_std(cfg, cfg.init_std))
        out_init = nn.initializers.normal(
            hidden_init_std(cfg, cfg.init_std / math.sqrt(2 * cfg.n_layer)))
        qkv_BxTx3D = Dense(3 * D, kernel_init=init, dtype=cdt, param_dtype=pdt,
                           name="qkv")(x_BxTxD)
        B, T = x_BxTxD.shape[:2]
        qkv_BxTx3xHxK = qkv_BxTx3D.reshape(B, T, 3, H, K)
        if cfg.pos_encoding == "rotary":
            qk_BxTx2xHxK = apply_rotary(qkv_BxTx3xHxK[:, :, :2])
            qkv_BxTx3xHxK = jnp.concatenate([qk_BxTx2xHxK, qkv_BxTx3xHxK[:, :, 2:]], axis=2)
        if self.causal:
            o_BxTxHxK = attention_packed(qkv_BxTx3xHxK, self.attn_impl, attention_scale(cfg))
        else:
            o_BxTxHxK = bidirectional_attention(*(qkv_BxTx3xHxK[:, :, i] for i in range(3)),
                                                self.attn_impl, attention_scale(cfg))
        o_BxTxD = o_BxTxHxK.reshape(B, T, D)
        return Dense(D, kernel_init=out_init, dtype=cdt, param_dtype=pdt,
                     name="proj")(o_BxTxD)


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(hidden_init_std(cfg, cfg.init_std))
        out_init = nn.initializers.normal(
            hidden_init_std(cfg, cfg.init_std / math.sqrt(2 * cfg.n_layer)))
        h_BxTxF = Dense(cfg.ff, kernel_init=init, dtype=cdt, param_dtype=pdt,
                        name="fc")(x_BxTxD)
        h_BxTxF = nn.gelu(h_BxTxF, approximate=True)
        return Dense(cfg.d_model, kernel_init=out_init, dtype=cdt, param_dtype=pdt,
                     name="proj")(h_BxTxF)


class Block(nn.Module):
    """Pre-LayerNorm block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    cfg: ModelConfig
    attn_impl: str = "auto"
    causal: bool = True

    @nn.compact
    def __call__(self, x_BxTxD, _=None):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        h = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_1")(x_BxTxD)
        x_BxTxD = x_BxTxD + Attention(cfg, self.attn_impl, self.causal, name="attn")(h)
        h = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_2")(x_BxTxD)
        x_BxTxD = x_BxTxD + Mlp(cfg, name="mlp")(h)
        return x_BxTxD, None


class Unembed(nn.Module):
    """Untied output head: kernel [D, V]; logits accumulated and returned in float32.

    Under µP the kernel starts at zero with mup_zero_readout, and the logits are
    multiplied by `output_multiplier(cfg)`.

    Inputs and kernel are in the compute dtype (bf16 operands on the tensor cores), but
    the product is accumulated in and returned as float32, like the tied head, so a
    bf16 run still gets float32 logits (nn.Dense would round them to bf16).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(cfg.init_std)
        if cfg.parametrization == "mup" and cfg.mup_zero_readout:
            init = nn.initializers.zeros
        kernel_DxV = self.param("kernel", init, (cfg.d_model, cfg.vocab_size), pdt)
        x_BxTxD, kernel_DxV = x_BxTxD.astype(cdt), kernel_DxV.astype(cdt)
        if jax.default_backend() == "cpu" and cdt == jnp.float32:  # see dense_rowmajor
            logits_BxTxV = matmul_rowmajor(x_BxTxD, kernel_DxV)
        else:
            logits_BxTxV = jnp.einsum("btd,dv->btv", x_BxTxD, kernel_DxV,
                                      preferred_element_type=jnp.float32)
        mult = output_multiplier(cfg)
        return logits_BxTxV if mult is None else logits_BxTxV * jnp.float32(mult)


class Transformer(nn.Module):
    """Decoder-only LM: tokens [B, T] int -> logits [B, T, V] float32.

    attn_impl: see `attention_packed` ("auto" picks by backend).
    scan_unroll: unroll factor of the layer scan (cfg.scan_layers). None = auto:
    1 on accelerators; on CPU fully unrolled up to 8 layers, since there XLA's while
    loop costs a zero-filled stacked buffer and a copy for every residual the backward
    pass keeps (~1.3x slower steps), at the price of compile time growing with depth.
    """

    cfg: ModelConfig
    attn_impl: str = "auto"
    scan_unroll: int | None = None
    causal: bool = True  # False: every position attends to the whole window (the encoder)
    input_only_tokens: int = 0  # ids after the vocabulary that are read, never predicted
                                # (the encoder's [MASK]): extra embedding rows, not logits

    @nn.compact
    def __call__(self, tokens_BxT):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        B, T = tokens_BxT.shape
        if T > cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len = {cfg.seq_len}")
        init = nn.initializers.normal(cfg.init_std)
        tok_embed = nn.Embed(cfg.vocab_size + self.input_only_tokens, cfg.d_model,
                             embedding_init=init, dtype=cdt, param_dtype=pdt,
                             name="token_embed")
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
            unroll = self.scan_unroll
            if unroll is None:  # CPU: unrolled up to 8 layers (see the class docstring)
                cpu = jax.default_backend() == "cpu"
                unroll = cfg.n_layer if cpu and cfg.n_layer <= 8 else 1
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=cfg.n_layer, in_axes=nn.broadcast, unroll=unroll)
            x_BxTxD, _ = stack(cfg, self.attn_impl, self.causal, name="blocks")(x_BxTxD, None)
        else:
            for i in range(cfg.n_layer):
                x_BxTxD, _ = block(cfg, self.attn_impl, self.causal,
                                   name=f"block_{i}")(x_BxTxD, None)

        x_BxTxD = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_f")(x_BxTxD)
        if cfg.tie_embeddings:
            emb_VxD = tok_embed.embedding[:cfg.vocab_size].astype(cdt)
            logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, emb_VxD,
                                      preferred_element_type=jnp.float32)
            mult = output_multiplier(cfg)
            if mult is not None:
                logits_BxTxV = logits_BxTxV * jnp.float32(mult)
        else:
            logits_BxTxV = Unembed(cfg, name="unembed")(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32)


# --------------------------------------------------------------------------------------
# Functional helpers (the family interface of scaling.models)
# --------------------------------------------------------------------------------------


def build(cfg: ModelConfig, attn_impl: str = "auto") -> Transformer:
    return Transformer(cfg, attn_impl)


def init_module(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg, "reference", scan_unroll=1)


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
