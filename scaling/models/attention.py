"""Attention kernels: the causal reference, the CPU kernel, and the dispatch by backend.

On GPU/TPU the transformer calls `jax.nn.dot_product_attention` (the fused cuDNN kernel on
GPUs). On CPU it uses `causal_attention_packed`, the same math organised for XLA's CPU
backend (chunked over sequences, causal block skipping, a flash-style backward as a
custom VJP); `causal_attention_reference` is the definition both are tested against.
Measurements: benchmarks/throughput.py.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from scaling.models import platform


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
        impl = platform.attention_impl() or ("packed" if platform.backend() == "cpu" else "dpa")
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
        impl = platform.attention_impl() or ("xla" if platform.backend() == "cpu" else "dpa")
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
        impl = platform.attention_impl() or ("packed" if platform.backend() == "cpu" else "dpa")
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
