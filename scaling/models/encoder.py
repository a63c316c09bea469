"""BERT-style masked-LM encoder (Devlin et al. 2019) in Flax linen: the transformer's blocks
with bidirectional attention.

    model = Encoder(cfg)
    params = init_params(cfg, jax.random.key(0))
    logits_BxTxV = model.apply({"params": params}, tokens_BxT)   # float32, every position

Same blocks, numerics, positional encodings and parametrisation (SP or µP) as
scaling.models.transformer; only the attention is unmasked (every position sees the whole
window), so the logits at a position depend on the tokens after it too. Trained with the
masked-LM objective (`data.objective = "mlm"`, scaling.data.masking): the loss is read at the
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

from scaling.config import ModelConfig
from scaling.models.transformer import Transformer


def mask_id(cfg: ModelConfig) -> int:
    """The [MASK] token id: one past the model's vocabulary."""
    return cfg.vocab_size


def Encoder(cfg: ModelConfig, attn_impl: str = "auto", scan_unroll: int | None = None):
    """Bidirectional encoder: tokens [B, T] int (ids < vocab_size, or the mask id) ->
    logits [B, T, V] float32: the transformer's module with unmasked attention and one
    input-only token. attn_impl: see attention.bidirectional_attention."""
    return Transformer(cfg, attn_impl, scan_unroll, causal=False, input_only_tokens=1)


def build(cfg: ModelConfig, attn_impl: str = "auto"):
    return Encoder(cfg, attn_impl)


def init_module(cfg: ModelConfig):
    return Encoder(cfg, "reference", scan_unroll=1)
