"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training", appendix A.1), measured while a run trains (`train.noise_scale = true`).

The gradient of a batch of B tokens, G_B, has E|G_B|^2 = |G|^2 + tr(Sigma) / B, where G is
the true gradient and Sigma the per-token gradient covariance. The step measures |G_B|^2
at two batch sizes it already has: B_small, one micro-batch on one device (its squared
norm averaged over the micro-batches and devices of the step), and B_big, the whole
global batch. Unbiased estimates of the two parts follow:

    |G|^2      = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma)  = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the simple noise scale B_simple = tr(Sigma) / |G|^2 (in tokens) is the ratio of the two
parts EACH AVERAGED over steps first (a ratio of single-step estimates is biased and
often negative). metrics.jsonl has, at each logged step, the two single-step estimates
(`noise_scale/grad_sq`, `noise_scale/trace_sigma`) and `noise_scale/b_simple`: the ratio
of their means over the logged steps of the second half of the run so far, [t/2, t];
result.json has the same over the run's last half (`noise_scale_b_simple`, its parts and
the number of logged steps averaged).

Cost: with accumulation (train.micro_batches > 1) or data parallelism the small-batch
gradients exist already and the extra work is one squared norm per micro-batch. On one
device without accumulation the step splits its batch in two micro-batches (the same
FLOPs, less parallel work per pass; the loss and update are the accumulated ones):
benchmarks/README.md gives the measured cost.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# the step's raw outputs (popped from the metrics row) and what the row gets instead
RAW = ("noise_scale/small_sq", "noise_scale/big_sq", "noise_scale/b_small", "noise_scale/b_big")
GRAD_SQ, TRACE, B_SIMPLE = "noise_scale/grad_sq", "noise_scale/trace_sigma", "noise_scale/b_simple"


def squared_norm(tree) -> jax.Array:
    """Sum of squares of every leaf, in float32."""
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree))


def parts(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)): the unbiased single-step estimates (module docstring)."""
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace


def log_row(row: dict, logged: list[dict]) -> None:
    """Replace the step's raw outputs in `row` (a logged step) by the two estimates and
    B_simple over the logged steps in [step / 2, step] (`logged`: the earlier rows)."""
    if RAW[0] not in row:
        return
    small, big, bs, bb = (float(row.pop(k)) for k in RAW)
    row[GRAD_SQ], row[TRACE] = parts(small, big, bs, bb)
    row[B_SIMPLE] = window(logged + [row], row["step"])["b_simple"]


def window(rows: list[dict], step: int) -> dict:
    """B_simple and its parts averaged over the logged rows with step in [step / 2, step]."""
    use = [r for r in rows if GRAD_SQ in r and step / 2 <= r["step"] <= step
           and math.isfinite(r[GRAD_SQ]) and math.isfinite(r[TRACE])]
    if not use:
        return {"b_simple": math.nan, "grad_sq": math.nan, "trace_sigma": math.nan, "n": 0}
    g = sum(r[GRAD_SQ] for r in use) / len(use)
    t = sum(r[TRACE] for r in use) / len(use)
    return {"b_simple": t / g if g > 0 else math.nan, "grad_sq": g, "trace_sigma": t, "n": len(use)}


def result_fields(rows: list[dict], step: int) -> dict:
    """result.json's noise-scale fields (the run's last half), or {} when it was not measured."""
    w = window(rows, step)
    if not w["n"]:
        return {}
    return {"noise_scale_b_simple": w["b_simple"], "noise_scale_grad_sq": w["grad_sq"],
            "noise_scale_trace_sigma": w["trace_sigma"], "noise_scale_steps_averaged": w["n"],
            "noise_scale_units": "tokens"}
