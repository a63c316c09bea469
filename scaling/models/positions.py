"""Positional encodings of the transformer: sinusoidal tables (Vaswani et al. 2017) and
rotary embeddings (RoPE, Su et al. 2021), as pure functions of the sequence length."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
