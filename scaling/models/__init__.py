"""Model families, one file each for the network and, beside it, its closed-form accounting.

    transformer.py             decoder-only transformer (GPT)
    transformer_accounting.py  its N and FLOPs per token
    lstm.py                    stacked LSTM language model (next-token)
    lstm_accounting.py
    encoder.py                 bidirectional masked-LM encoder (BERT; data.objective = "mlm")
    encoder_accounting.py

`model.arch` picks the family. Every family's network module offers the same functions,
so training, sampling and the coordinate check do not care which one runs:

    build(cfg, attn_impl="auto") -> linen module; apply({"params": p}, tokens_BxT) -> logits
    init_params(cfg, rng) -> params        param_shapes(cfg) -> ShapeDtypeStruct tree

and every accounting module `param_counts(cfg) -> (non_embedding, embedding, total)` and
`flops_per_token(cfg) -> (kaplan, exact)`. The accounting modules import no jax, so a
sweep is planned without it; the networks are imported on first use.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from scaling.config import ModelConfig

ARCHS = ("transformer", "lstm", "encoder")


def _family(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"model.arch = {arch!r}: allowed {', '.join(ARCHS)}")
    return arch


def network_of(cfg: ModelConfig) -> ModuleType:
    """The network module of `cfg`'s family."""
    return importlib.import_module(f"scaling.models.{_family(cfg.arch)}")


def accounting_of(cfg: ModelConfig) -> ModuleType:
    """The closed-form accounting module of `cfg`'s family."""
    return importlib.import_module(f"scaling.models.{_family(cfg.arch)}_accounting")


def build(cfg: ModelConfig, attn_impl: str = "auto"):
    """The linen module of `cfg`'s family."""
    return network_of(cfg).build(cfg, attn_impl)


def init_params(cfg: ModelConfig, rng):
    return network_of(cfg).init_params(cfg, rng)


def param_shapes(cfg: ModelConfig):
    return network_of(cfg).param_shapes(cfg)
