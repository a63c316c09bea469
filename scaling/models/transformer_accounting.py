"""Closed-form parameter and FLOP counts of the decoder-only transformer (transformer.py).

N (non-embedding parameters) follows Kaplan et al. (2020): every parameter except the
token and positional embeddings. With an untied output layer, its [D, V] matrix is a
second vocabulary embedding (the "unembedding") and is counted as embedding as well, so
N does not depend on `tie_embeddings`; it does include every weight, bias and layer-norm
parameter of the blocks and the final layer norm.

    N = n_layer * (4 D^2 + 2 D F + 9 D + F) + 2 D        (F = d_ff, biases and norms in)
    embedding = V D  (+ T D learned positions)  (+ D V untied unembedding)

Training FLOPs per token (3 x forward: the backward costs two forwards):
    kaplan = 6 N + 12 L T D     (6N plus the QK^T and AV products counted as 2 x 2 L T D
                                 per forward, the common "6N + 12 L T d" form; Kaplan et
                                 al.'s Table 1 writes the attention term 2 L T d_attn)
    exact  = 3 x (every matmul in the forward, multiply-add = 2 FLOPs): QKV, attention
             output, MLP, QK^T and AV over all T keys (the dense kernels compute the full
             T x T square, masked or not), and the output layer 2 D V. No biases, norms,
             softmax or optimizer, which are O(N) or O(T) and small.

Both functions return plain tuples, (non_embedding, embedding, total) and (kaplan, exact),
which `scaling.accounting.counts` wraps; this file imports nothing heavy, so a sweep can be
planned without jax.
"""

from __future__ import annotations

from scaling.config import ModelConfig


def block_params(cfg: ModelConfig) -> int:
    """Parameters of one block: QKV and output projections, MLP, two layer norms."""
    D, F = cfg.d_model, cfg.ff
    attn = (D * 3 * D + 3 * D) + (D * D + D)
    mlp = (D * F + F) + (F * D + D)
    norms = 2 * 2 * D
    return attn + mlp + norms


def param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    """Closed-form parameter counts of scaling.models.transformer.Transformer(cfg)."""
    D, V = cfg.d_model, cfg.vocab_size
    non_embedding = cfg.n_layer * block_params(cfg) + 2 * D  # + final layer norm
    embedding = V * D
    if cfg.pos_encoding == "learned":
        embedding += cfg.seq_len * D
    if not cfg.tie_embeddings:
        embedding += D * V
    return (non_embedding, embedding, non_embedding + embedding)


def forward_matmul_flops(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward matmul FLOPs per token (2 per multiply-add)."""
    D, F, V, L = cfg.d_model, cfg.ff, cfg.vocab_size, cfg.n_layer
    T = seq_len or cfg.seq_len
    per_layer = 2 * D * 3 * D + 2 * D * D + 2 * 2 * D * F + 2 * 2 * T * D
    return float(L * per_layer + 2 * D * V)


def flops_per_token(cfg: ModelConfig) -> tuple[float, float]:
    """Training FLOPs per token: Kaplan's 6N + 12 L T D and the exact matmul count."""
    N = param_counts(cfg)[0]
    kaplan = 6.0 * N + 12.0 * cfg.n_layer * cfg.seq_len * cfg.d_model
    return (kaplan, 3.0 * forward_matmul_flops(cfg))
