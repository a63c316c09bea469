"""Model families, one file each for the network and, beside it, its closed-form accounting.

    transformer.py             decoder-only transformer (GPT)
    positions.py               its positional encodings (sinusoidal, rotary)
    attention.py               its attention kernels (cuDNN's on GPUs, a CPU kernel)
    dense.py                   its dense layers (row-major weight gradient on CPU)
    sharding.py                how its tensors split over a device mesh (scaling.train.mesh)
    platform.py                the backend its kernels are chosen for (lowering for cuda/tpu)
    transformer_accounting.py  its N and FLOPs per token
    lstm.py                    stacked LSTM language model (next-token)
    lstm_accounting.py
    encoder.py                 bidirectional masked-LM encoder (BERT; data.objective = "mlm")
    encoder_accounting.py

`model.arch` picks the family. Every family's network module offers the same functions,
so training, sampling and the coordinate check do not care which one runs:

    build(cfg, attn_impl="auto") -> linen module; apply({"params": p}, tokens_BxT) -> logits
    init_module(cfg) -> the module whose init gives the parameter tree (any attention impl
                        gives the same tree; the cheapest to trace is used)

from which this registry makes `init_params(cfg, rng)` (jitted, once per config) and
`param_shapes(cfg)` (ShapeDtypeStructs, nothing allocated) for every family,

and every accounting module `param_counts(cfg) -> (non_embedding, embedding, total)` and
`flops_per_token(cfg) -> (kaplan, exact)`. The accounting modules import no jax, so a
sweep is planned without it; the networks are imported on first use.
"""

from __future__ import annotations

import functools
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
    """Parameters of `cfg`'s model (`rng` a key or an int seed)."""
    import jax

    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return _jitted_init()(cfg, rng)


def param_shapes(cfg: ModelConfig):
    """The parameter tree as ShapeDtypeStructs, without allocating anything."""
    import jax
    import jax.numpy as jnp

    tokens = jax.ShapeDtypeStruct((1, cfg.seq_len), jnp.int32)
    out = jax.eval_shape(lambda r, t: network_of(cfg).init_module(cfg).init(r, t),
                         jax.random.key(0), tokens)
    return out["params"]


@functools.cache
def _jitted_init():
    import jax
    import jax.numpy as jnp

    def init(cfg: ModelConfig, rng):
        tokens = jnp.zeros((1, cfg.seq_len), jnp.int32)
        return network_of(cfg).init_module(cfg).init(rng, tokens)["params"]

    return jax.jit(init, static_argnums=0)
