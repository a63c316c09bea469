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

Beside it: positions.py (sinusoidal and rotary encodings), attention.py (the attention
kernels: cuDNN's fused one on GPUs, a CPU kernel with a flash-style backward), dense.py
(dense layers with a row-major weight gradient on CPU). On CPU the layer scan is also
unrolled (`Transformer.scan_unroll`). See benchmarks/throughput.py for the measurements.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from scaling.config import ModelConfig
from scaling.models.attention import attention_packed, bidirectional_attention
from scaling.models.dense import Dense, matmul_rowmajor
from scaling.models import platform
from scaling.models.positions import apply_rotary, sinusoidal_table
from scaling.models.sharding import on_mesh, shard
from scaling.runtime import tune_host_runtime

# CPU speed: let XLA reuse its per-step buffers instead of page-faulting them in anew each
# step (see tune_host_runtime). Process-wide, a no-op off glibc; SCALINGLAB_NO_MALLOC_TUNE=1
# turns it off. Done at import so it precedes JAX's first computation in most programs.
tune_host_runtime()

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str):
    return _DTYPES[name]


# --------------------------------------------------------------------------------------
# Parametrisation: SP or µP (Yang et al. 2022, Tensor Programs V)
# --------------------------------------------------------------------------------------
#
# With m = d_model / mup_base_width (`ModelConfig.width_mult`), µP differs from SP in:
#   hidden matrices (qkv, attn proj, fc, mlp proj)  init std  init_std / sqrt(m)
#       (variance ~ 1/fan_in, equal to SP's at the base width; d_ff is taken to scale
#       with d_model); their learning rates are set by scaling.train.param_groups.mup_lr_multipliers
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
        qkv_BxTx3xHxK = shard(qkv_BxTx3D.reshape(B, T, 3, H, K), "batch", None, None, "heads", None)
        if cfg.pos_encoding == "rotary":
            qk_BxTx2xHxK = apply_rotary(qkv_BxTx3xHxK[:, :, :2])
            qkv_BxTx3xHxK = jnp.concatenate([qk_BxTx2xHxK, qkv_BxTx3xHxK[:, :, 2:]], axis=2)
        if self.causal:
            o_BxTxHxK = attention_packed(qkv_BxTx3xHxK, self.attn_impl, attention_scale(cfg))
        else:
            o_BxTxHxK = bidirectional_attention(*(qkv_BxTx3xHxK[:, :, i] for i in range(3)),
                                                self.attn_impl, attention_scale(cfg))
        o_BxTxD = shard(o_BxTxHxK, "batch", None, "heads", None).reshape(B, T, D)
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
        h_BxTxF = nn.gelu(shard(h_BxTxF, "batch", None, "hidden"), approximate=True)
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
        if platform.backend() == "cpu" and cdt == jnp.float32:  # see dense_rowmajor
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
        if on_mesh():  # nn.Embed's lookup, its table first gathered whole along fsdp (the
            # vocabulary stays split over "model"): from a table split two ways XLA's
            # partitioner can only gather by replicating it (scaling/models/sharding.py)
            table_VxD = shard(tok_embed.embedding, "vocab", None).astype(cdt)
            x_BxTxD = jnp.take(table_VxD, tokens_BxT, axis=0)
        else:
            x_BxTxD = tok_embed(tokens_BxT)
        if cfg.pos_encoding == "learned":
            pos = nn.Embed(cfg.seq_len, cfg.d_model, embedding_init=init, dtype=cdt,
                           param_dtype=pdt, name="pos_embed")
            x_BxTxD = x_BxTxD + pos.embedding[None, :T].astype(cdt)
        elif cfg.pos_encoding == "sinusoidal":
            x_BxTxD = x_BxTxD + jnp.asarray(sinusoidal_table(T, cfg.d_model), cdt)[None]
        x_BxTxD = shard(x_BxTxD, "batch", None, None)  # the residual stream: rows split only

        block = Block
        if cfg.remat:
            block = nn.remat(block, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            unroll = self.scan_unroll
            if unroll is None:  # CPU: unrolled up to 8 layers (see the class docstring)
                cpu = platform.backend() == "cpu"
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
        return shard(logits_BxTxV.astype(jnp.float32), "batch", None, "vocab")


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
