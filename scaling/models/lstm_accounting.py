"""Closed-form parameter and FLOP counts of the LSTM language model (lstm.py).

N (non-embedding, Kaplan's convention as for the transformer): every LSTM weight and bias
and the final LayerNorm; the token embedding and an untied output layer are embedding.

    N = n_layer * (8 D^2 + 4 D) + 2 D       (W_x, W_h: [D, 4D] each, b: [4D]; ln_f)
    embedding = V D  (+ D V untied head)

Training FLOPs per token (3 x forward; multiply-add = 2 FLOPs):
    kaplan = 6 N                             (no context term: an LSTM's cost per token
                                              does not grow with the window)
    exact  = 3 x (n_layer * (2 D 4D + 2 D 4D) + 2 D V) = 3 x (16 L D^2 + 2 D V)
             (input and recurrent projections of every layer and the output layer; no
             gates' elementwise work, biases or the norm, which are O(D) per token)
"""

from __future__ import annotations

from scaling.config import ModelConfig


def layer_params(cfg: ModelConfig) -> int:
    D = cfg.d_model
    return 8 * D * D + 4 * D


def param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    D, V = cfg.d_model, cfg.vocab_size
    non_embedding = cfg.n_layer * layer_params(cfg) + 2 * D
    embedding = V * D + (0 if cfg.tie_embeddings else D * V)
    return (non_embedding, embedding, non_embedding + embedding)


def forward_matmul_flops(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Forward matmul FLOPs per token (independent of the window length)."""
    del seq_len
    D, V = cfg.d_model, cfg.vocab_size
    return float(cfg.n_layer * 16 * D * D + 2 * D * V)


def flops_per_token(cfg: ModelConfig) -> tuple[float, float]:
    return (6.0 * param_counts(cfg)[0], 3.0 * forward_matmul_flops(cfg))
