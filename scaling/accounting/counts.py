"""Parameter counts and FLOPs per token: what a model costs, by the closed forms and by XLA.

The counts are each model family's own closed forms, kept beside the family in
`scaling/models/<family>_accounting.py` (the transformer's: Kaplan's N and the exact matmul
count); `param_counts` and `flops_per_token` here dispatch on `model.arch`. Every family
uses the same conventions:
    N (non_embedding)  every parameter except the token/positional embeddings and an
                       untied unembedding (Kaplan et al. 2020); N_total = all of them
    kaplan             6 N + the family's context term, the "6ND" accounting
    exact              3 x every matmul of the forward pass (multiply-add = 2 FLOPs),
                       output layer included: the C_exact accounting

Also `xla_flops` (XLA's own count from a compiled executable: a rolled loop's body counted
once; a run's C_xla comes from `scaling.accounting.xla_count`, which counts every trip), a table of dense peak
FLOP/s for accelerators and a measured peak for CPUs. MFU is measured against the peak
of the arithmetic the matmuls really run in (`peak_precision`: TF32 for float32 on
GPUs at jax's default precision), which the run records beside the MFU.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from scaling import models
from scaling.config import ModelConfig


class ParamCounts(NamedTuple):
    non_embedding: int  # N (Kaplan): everything but token/positional embeddings and unembedding
    embedding: int
    total: int


class FlopCounts(NamedTuple):
    kaplan: float  # 6 N + 12 L T D training FLOPs per token
    exact: float  # 3 x all forward matmul FLOPs per token, output layer included


# --------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------


def param_counts(cfg: ModelConfig) -> ParamCounts:
    """Closed-form parameter counts of the model `cfg` describes (its family's formula)."""
    return ParamCounts(*models.accounting_of(cfg).param_counts(cfg))


def count_tree(params: Any) -> ParamCounts:
    """Counts of a real (or eval_shape) parameter tree, split by the 'embed' naming rule."""
    import jax

    emb = non = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        size = 1
        for s in leaf.shape:
            size *= int(s)
        if any("embed" in str(getattr(p, "key", p)) for p in path):
            emb += size
        else:
            non += size
    return ParamCounts(non, emb, non + emb)


# --------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------


def flops_per_token(cfg: ModelConfig) -> FlopCounts:
    """Training FLOPs per token of the model `cfg` describes: (kaplan, exact)."""
    return FlopCounts(*models.accounting_of(cfg).flops_per_token(cfg))


def xla_flops(compiled: Any) -> float | None:
    """FLOPs XLA's cost analysis reports for a compiled executable (None if unavailable).

    `compiled.cost_analysis()` returns a dict in recent jax, a list with one dict per
    program in older releases, and may raise or return None on some backends.
    """
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without a cost model
        return None
    if ca is None:
        return None
    if isinstance(ca, (list, tuple)):
        ca = [c for c in ca if c]
        if not ca:
            return None
        total = sum(float(c.get("flops", 0.0)) for c in ca)
        return total if total > 0 else None
    flops = ca.get("flops") if hasattr(ca, "get") else None
    return float(flops) if flops is not None and flops > 0 else None
