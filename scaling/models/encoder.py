"""BERT-style masked-LM encoder (Devlin et al. 2019) in Flax linen: the transformer's blocks
with bidirectional attention.

    model = Encoder(cfg)
    params = init_params(cfg, jax.random.key(0))
    logits_BxTxV = model.apply({"params": params}, tokens_BxT)   # float32, every position

Same blocks, numerics, positional encodings and parametrisation (SP or µP) as
scaling.models.transformer; only the attention is unmasked (every position sees the whole
window), so the logits at a position depend on the tokens after it too. Trained with the
masked-LM objective (`data.objective = "mlm"`, scaling.masking): the loss is read at the
selected positions only.

The [MASK] token: id `cfg.vocab_size` (one past the vocabulary), so the input embedding
has vocab_size + 1 rows; the output layer predicts the vocab_size real tokens only (a tied
head uses the first vocab_size rows of the embedding). No [CLS]/[SEP] tokens and no
next-sentence objective (RoBERTa drops it too).

Parameter tree: as the transformer's (token_embed/embedding is [V + 1, D]):
    token_embed/embedding [V+1, D]       pos_embed/embedding [T, D] (learned only)
    blocks/...                           ln_f/{scale,bias}      unembed/kernel [D, V] (untied)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling.config import ModelConfig
from scaling.models.transformer import (Block, Unembed, dtype_of, output_multiplier,
                                        sinusoidal_table)


def mask_id(cfg: ModelConfig) -> int:
    """The [MASK] token id: one past the model's vocabulary."""
    return cfg.vocab_size


class Encoder(nn.Module):
    """Bidirectional encoder: tokens [B, T] int (ids < vocab_size, or the mask id) ->
    logits [B, T, V] float32. attn_impl: see transformer.bidirectional_attention."""

    cfg: ModelConfig
    attn_impl: str = "auto"
    scan_unroll: int | None = None

    @nn.compact
    def __call__(self, tokens_BxT):
        cfg = self.cfg
        cdt, pdt = dtype_of(cfg.compute_dtype), dtype_of(cfg.param_dtype)
        T = tokens_BxT.shape[1]
        if T > cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len = {cfg.seq_len}")
        init = nn.initializers.normal(cfg.init_std)
        tok_embed = nn.Embed(cfg.vocab_size + 1, cfg.d_model, embedding_init=init, dtype=cdt,
                             param_dtype=pdt, name="token_embed")
        x_BxTxD = tok_embed(tokens_BxT)
        if cfg.pos_encoding == "learned":
            pos = nn.Embed(cfg.seq_len, cfg.d_model, embedding_init=init, dtype=cdt,
                           param_dtype=pdt, name="pos_embed")
            x_BxTxD = x_BxTxD + pos.embedding[None, :T].astype(cdt)
        elif cfg.pos_encoding == "sinusoidal":
            x_BxTxD = x_BxTxD + jnp.asarray(sinusoidal_table(T, cfg.d_model), cdt)[None]

        block = nn.remat(Block, prevent_cse=not cfg.scan_layers) if cfg.remat else Block
        if cfg.scan_layers:
            unroll = self.scan_unroll
            if unroll is None:  # as the transformer: unrolled on CPU up to 8 layers
                cpu = jax.default_backend() == "cpu"
                unroll = cfg.n_layer if cpu and cfg.n_layer <= 8 else 1
            stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                            length=cfg.n_layer, in_axes=nn.broadcast, unroll=unroll)
            x_BxTxD, _ = stack(cfg, self.attn_impl, False, name="blocks")(x_BxTxD, None)
        else:
            for i in range(cfg.n_layer):
                x_BxTxD, _ = block(cfg, self.attn_impl, False, name=f"block_{i}")(x_BxTxD, None)

        x_BxTxD = nn.LayerNorm(dtype=cdt, param_dtype=pdt, name="ln_f")(x_BxTxD)
        if cfg.tie_embeddings:
            emb_VxD = tok_embed.embedding[:cfg.vocab_size].astype(cdt)  # not the mask row
            logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, emb_VxD,
                                      preferred_element_type=jnp.float32)
            mult = output_multiplier(cfg)
            if mult is not None:
                logits_BxTxV = logits_BxTxV * jnp.float32(mult)
        else:
            logits_BxTxV = Unembed(cfg, name="unembed")(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32)


def build(cfg: ModelConfig, attn_impl: str = "auto") -> Encoder:
    return Encoder(cfg, attn_impl)


@functools.partial(jax.jit, static_argnums=(0,))
def _init(cfg: ModelConfig, rng):
    tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
    return Encoder(cfg, "reference", scan_unroll=1).init(rng, tokens)["params"]


def init_params(cfg: ModelConfig, rng) -> dict:
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return _init(cfg, rng)


def param_shapes(cfg: ModelConfig) -> dict:
    tokens = jax.ShapeDtypeStruct((1, cfg.seq_len), jnp.int32)
    out = jax.eval_shape(lambda r, t: Encoder(cfg, "reference", 1).init(r, t),
                         jax.random.key(0), tokens)
    return out["params"]
