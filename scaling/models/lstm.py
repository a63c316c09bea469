"""LSTM language model in Flax linen: the recurrent baseline of a scaling study (Kaplan et
al. 2020, Fig. 7 compare LSTMs with transformers across N).

    model = LSTM(cfg)
    params = init_params(cfg, jax.random.key(0))
    logits_BxTxV = model.apply({"params": params}, tokens_BxT)   # float32

Token embedding [V, D] -> `n_layer` stacked LSTM layers of hidden size D = d_model ->
final LayerNorm -> output layer (tied to the embedding, or an untied `unembed`). No
positional encoding: the recurrence orders the tokens. Each layer (Hochreiter &
Schmidhuber 1997, with a forget gate; gates i, f, g, o):

    z_t = x_t W_x + b + h_{t-1} W_h          W_x, W_h: [D, 4D], b: [4D]
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g),    h_t = sigmoid(o) * tanh(c_t)

x W_x + b for all T positions is one matmul before the time loop; the loop (`lax.scan`
over T) does only h W_h. States start at zero for every window (as the transformer's
context starts empty). Gates and the cell state are float32; the matmuls run in
`cfg.compute_dtype`. Init: W_x, W_h ~ N(0, 1/D) (variance-preserving: 0.02 would make
the recurrent signal vanish at these widths), b = 0 except the forget gate's, 1
(Jozefowicz et al. 2015), embedding and untied head N(0, init_std).

Parameter tree (optimizer masks: kernels are decayed matrices, biases and the norm are
not, the embedding is an embedding):
    token_embed/embedding [V, D]
    blocks/{ih/kernel [L, D, 4D], ih/bias [L, 4D], hh/kernel [L, D, 4D]}   (scan_layers)
      or block_0 ... block_{L-1} with the same leaves unstacked
    ln_f/{scale,bias}       unembed/kernel [D, V] (untied head only)

Settings of the attention family (n_head, d_ff, pos_encoding, µP) do not apply and are
refused by scaling.config when set away from their defaults.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.models.transformer import Unembed, dtype_of


def _forget_bias_init(key, shape, dtype=jnp.float32):
    """Zeros, with the forget gate's quarter [D, 2D) at 1."""
    d = shape[-1] // 4
    return jnp.zeros(shape, dtype).at[..., d:2 * d].set(1.0)


def _accum(dtype):
    """Gates, cell state and logits: float32, or float64 when the compute dtype is (the
    tests' finite-difference check runs the model in float64)."""
    return jnp.promote_types(jnp.float32, dtype)


def lstm_scan(xw_BxTx4D: jax.Array, w_hh_Dx4D: jax.Array, unroll: int | bool = 1) -> jax.Array:
    """The recurrence over time given the input projections (x W_x + b) of every
    position: h [B, T, D] (in the dtype of w_hh), states starting at zero."""
    B, T, D4 = xw_BxTx4D.shape
    D = D4 // 4
    cdt = w_hh_Dx4D.dtype
    acc = _accum(cdt)

    def step(carry, xw_Bx4D):
        h_BxD, c_BxD = carry
        z_Bx4D = xw_Bx4D.astype(acc) + jnp.dot(
            h_BxD.astype(cdt), w_hh_Dx4D, preferred_element_type=acc)
        i, f, g, o = jnp.split(z_Bx4D, 4, axis=-1)
        c_BxD = jax.nn.sigmoid(f) * c_BxD + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_BxD = jax.nn.sigmoid(o) * jnp.tanh(c_BxD)
        return (h_BxD, c_BxD), h_BxD.astype(cdt)

    # zeros shaped and typed from the input, so under shard_map the carry is "varying"
    # over the data axis like the states it will hold
    zeros = jnp.zeros_like(xw_BxTx4D[:, 0, :D], dtype=acc)
    _, h_TxBxD = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(xw_BxTx4D, 0, 1),
                              unroll=unroll)
    return jnp.swapaxes(h_TxBxD, 0, 1)


class _Kernel(nn.Module):
    """A bare weight matrix `<name>/kernel`, read outside the time loop (a linen module
    cannot be called inside lax.scan's body)."""

    shape: tuple[int, ...]
    init: object
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self):
        return self.param("kernel", self.init, self.shape, self.dtype)


class LSTMLayer(nn.Module):
    """One LSTM layer over a whole window: x [B, T, D] -> h [B, T, D]."""

    cfg: ModelConfig
    time_unroll: int | bool = 1

    @nn.compact
    def __call__(self, x_BxTxD, _=None):
        cfg = self.cfg
        D = cfg.d_model
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        init = nn.initializers.normal(1.0 / math.sqrt(D))
        xw_BxTx4D = nn.Dense(4 * D, kernel_init=init, bias_init=_forget_bias_init, dtype=cdt,
                             param_dtype=pdt, name="ih")(x_BxTxD)
        w_hh_Dx4D = _Kernel((D, 4 * D), init, pdt, name="hh")()
        return lstm_scan(xw_BxTx4D, w_hh_Dx4D.astype(cdt), self.time_unroll), None


class LSTM(nn.Module):
    """LSTM LM: tokens [B, T] int -> logits [B, T, V] float32.

    time_unroll: unroll factor of the scan over time (1: a plain loop; True: fully
    unrolled, which XLA's cost analysis can count but compiles slowly for long windows).
    """

    cfg: ModelConfig
    time_unroll: int | bool = 1

    @nn.compact
    def __call__(self, tokens_BxT):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        T = tokens_BxT.shape[1]
        if T > cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len = {cfg.seq_len}")
        tok_embed = nn.Embed(cfg.vocab_size, cfg.d_model,
                             embedding_init=nn.initializers.normal(cfg.init_std), dtype=cdt,
                             param_dtype=pdt, name="token_embed")
        x_BxTxD = tok_embed(tokens_BxT)
        layer = nn.remat(LSTMLayer, prevent_cse=not cfg.scan_layers) if cfg.remat else LSTMLayer
        if cfg.scan_layers:
            stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=cfg.n_layer, in_axes=nn.broadcast)
            x_BxTxD, _ = stack(cfg, self.time_unroll, name="blocks")(x_BxTxD, None)
        else:
            for i in range(cfg.n_layer):
                x_BxTxD, _ = layer(cfg, self.time_unroll, name=f"block_{i}")(x_BxTxD, None)
        x_BxTxD = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_f")(x_BxTxD)
        if cfg.tie_embeddings:
            logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, tok_embed.embedding.astype(cdt),
                                      preferred_element_type=_accum(cdt))
        else:
            logits_BxTxV = Unembed(cfg, name="unembed")(x_BxTxD)
        return logits_BxTxV.astype(_accum(cdt))


def build(cfg: ModelConfig, attn_impl: str = "auto") -> LSTM:
    """The LSTM of `cfg` (`attn_impl` is accepted for the family interface and unused)."""
    del attn_impl
    return LSTM(cfg)


@functools.partial(jax.jit, static_argnums=(0,))
def _init(cfg: ModelConfig, rng):
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    return LSTM(cfg).init(rng, tokens)["params"]


def init_params(cfg: ModelConfig, rng) -> dict:
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return _init(cfg, rng)


def param_shapes(cfg: ModelConfig) -> dict:
    tokens = jax.ShapeDtypeStruct((1, cfg.seq_len), jnp.int32)
    return jax.eval_shape(lambda r, t: LSTM(cfg).init(r, t), jax.random.key(0), tokens)["params"]
