"""Closed-form parameter and FLOP counts of the masked-LM encoder (encoder.py).

The encoder runs the transformer's matmuls (same blocks, same output layer over the V real
tokens), so N and the FLOPs per token are the transformer's (transformer_accounting):

    N = n_layer * (4 D^2 + 2 D F + 9 D + F) + 2 D
    embedding = (V + 1) D  (the [MASK] row)  (+ T D learned positions)  (+ D V untied head)
    kaplan = 6 N + 12 L T D
    exact  = 3 x forward matmuls; the attention's T x T square is computed in full (no mask),
             as the transformer's count already assumes for its dense kernels.

The output layer runs at every position although the masked-LM loss reads ~15 % of them;
C counts what is computed (every position), and D counts every input token of a window.
"""

from __future__ import annotations

from scaling.config import ModelConfig
from scaling.models import transformer_accounting as _t


def param_counts(cfg: ModelConfig) -> tuple[int, int, int]:
    non_embedding, embedding, _ = _t.param_counts(cfg)
    embedding += cfg.d_model  # the [MASK] token's embedding row
    return (non_embedding, embedding, non_embedding + embedding)


def forward_matmul_flops(cfg: ModelConfig, seq_len: int | None = None) -> float:
    return _t.forward_matmul_flops(cfg, seq_len)


def flops_per_token(cfg: ModelConfig) -> tuple[float, float]:
    N = param_counts(cfg)[0]
    kaplan = 6.0 * N + 12.0 * cfg.n_layer * cfg.seq_len * cfg.d_model
    return (kaplan, 3.0 * forward_matmul_flops(cfg))
