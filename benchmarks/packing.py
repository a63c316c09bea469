"""Packed parameters (scaling.train.packing) against the tree: compile time, kernels, step time.

    taskset -c 0 python benchmarks/packing.py 1x16x64x16 1x32x64x16 2x48x64x16 2x128x128x32
    taskset -c 0 python benchmarks/packing.py 2x128x128x32 --limits 0 4096 65536 1e9

Each shape is LxDxTxB (layers, d_model, seq_len, batch; vocab 256, learned positions,
tied embeddings, head size 16, AdamW with clipping and decay: the demo's step). For each
packing limit (scaling.train.packing.PACK_MAX_ELEMENTS: parameters with more elements stay
whole; 0 = nothing packed, the step on the tree) the real step is built
(`Trainer.compile_step`'s body, the CPU step compiler options), compiled from an empty
cache, and timed in alternating rounds; the table gives the median step time. Run it on
one core (taskset), as a sweep's side-by-side points run.
"""

from __future__ import annotations

import argparse
import time

from scaling.runtime import compiler_options, tune_host_runtime

tune_host_runtime()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scaling.train import packing  # noqa: E402

from scaling.train import step as train_mod
from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from scaling.train.step import Trainer  # noqa: E402


def build(shape: str, limit: int):
    """(compiled step, its first state, compile seconds, kernels) at packing `limit`."""
    L, d, T, B = map(int, shape.split("x"))
    model = ModelConfig(n_layer=L, d_model=d, n_head=max(1, d // 16), seq_len=T,
                        vocab_size=256, pos_encoding="learned", tie_embeddings=True)
    cfg = Config(name="probe", model=model,
                 optim=OptimConfig(name="adamw", lr=3e-3, schedule="cosine",
                                   weight_decay=0.1, clip_norm=1.0),
                 train=TrainConfig(steps=1000, batch_size=B, progress=False)).validate()
    packing.PACK_MAX_ELEMENTS = limit
    train_mod._packing.cache_clear()
    train_mod._state_initializer.cache_clear()
    jax.clear_caches()
    trainer = Trainer(cfg)
    state = trainer.init_state(0)
    batch = np.random.default_rng(0).integers(0, 256, (B, T + 1)).astype(np.int32)
    lowered = jax.jit(trainer.train_step_body, donate_argnums=0).lower(state, batch)
    t0 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options("step"))
    seconds = time.perf_counter() - t0
    return compiled, state, batch, seconds, compiled.as_text().count(" fusion("), trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="+", help="LxDxTxB, e.g. 1x16x64x16")
    ap.add_argument("--limits", nargs="+", type=float, default=[0, packing.PACK_MAX_ELEMENTS],
                    help="packing limits to compare (0: the tree)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30, help="steps per round and variant")
    args = ap.parse_args()
    default = packing.PACK_MAX_ELEMENTS
    print(f"{'shape':<14} {'limit':>10} {'groups':>7} {'kernels':>8} {'compile_s':>10} "
          f"{'step_ms':>8} {'vs_tree':>8}")
    for shape in args.shapes:
        runs = []
        for limit in map(int, args.limits):
            fn, state, batch, secs, kernels, trainer = build(shape, limit)
            groups = len(trainer.packing.groups)
            runs.append({"limit": limit, "fn": fn, "state": state, "batch": batch,
                         "compile": secs, "kernels": kernels, "groups": groups, "ms": []})
        for _ in range(args.rounds):  # alternate the variants
            for run in runs:
                state, t0 = run["state"], time.perf_counter()
                for _ in range(args.steps):
                    state, metrics = run["fn"](state, run["batch"])
                jax.block_until_ready(metrics)
                run["ms"].append((time.perf_counter() - t0) / args.steps * 1e3)
                run["state"] = state
        base = np.median(runs[0]["ms"])
        for run in runs:
            ms = np.median(run["ms"])
            print(f"{shape:<14} {run['limit']:>10} {run['groups']:>7} {run['kernels']:>8} "
                  f"{run['compile']:>10.2f} {ms:>8.3f} {ms / base:>8.3f}", flush=True)
    packing.PACK_MAX_ELEMENTS = default


if __name__ == "__main__":
    main()
