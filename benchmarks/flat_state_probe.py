"""Probe: the train step with parameters and optimizer state kept as one flat vector,
against the project's step over the parameter tree (compile time, fusions, step time).

    taskset -c 0 python benchmarks/flat_state_probe.py 1x16x64x16 2x48x64x16 2x128x128x32

Each argument is LxDxTxB (layers, d_model, seq_len, batch). The flat step keeps an f32
vector of every parameter in its state; the loss reads the model's tree through
`jax.flatten_util.ravel_pytree`'s unravel, and clipping, Adam (b2 0.95), decoupled weight
decay on matrices and the three logged norms act on vectors. Same model, loss and
batch; constant lr; both compiled with the CPU step options (scaling.runtime). Not a
drop-in step: see benchmarks/README.md ("A whole sweep") for what adopting it needs.
"""

from __future__ import annotations

import argparse
import time

from scaling.runtime import compiler_options, tune_host_runtime

tune_host_runtime()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from scaling.train import Trainer  # noqa: E402


def flat_step(trainer: Trainer, state):
    """(step function, its initial carry) over flat parameters and Adam state."""
    flat, unravel = ravel_pytree(state.params)
    decay, _ = ravel_pytree(jax.tree.map(
        lambda p: jnp.full(p.shape, float(p.ndim >= 2), jnp.float32), state.params))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(b1=0.9, b2=0.95))
    lr, wd = trainer.config.optim.lr, trainer.config.optim.weight_decay

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda f: trainer.loss(unravel(f), batch))(params)
        direction, opt_state = tx.update(grads, opt_state, params)
        new = params - lr * (direction + wd * decay * params)
        metrics = {"loss": loss, "grad_norm": jnp.linalg.norm(grads),
                   "param_norm": jnp.linalg.norm(new), "update_norm": jnp.linalg.norm(new - params)}
        return (new, opt_state), metrics

    return step, (flat, tx.init(flat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="+", help="LxDxTxB, e.g. 1x16x64x16")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30, help="steps per round and variant")
    args = ap.parse_args()
    options = compiler_options("step")
    for shape in args.shapes:
        L, d, T, B = map(int, shape.split("x"))
        model = ModelConfig(n_layer=L, d_model=d, n_head=max(1, d // 16), seq_len=T,
                            vocab_size=256, pos_encoding="learned", tie_embeddings=True)
        cfg = Config(name="probe", model=model,
                     optim=OptimConfig(name="adamw", lr=3e-3, schedule="constant",
                                       weight_decay=0.1, clip_norm=1.0),
                     train=TrainConfig(steps=1000, batch_size=B, progress=False)).validate()
        trainer = Trainer(cfg)
        batch = np.random.default_rng(0).integers(0, 256, (B, T + 1)).astype(np.int32)
        state = trainer.init_state(0)
        fstep, carry = flat_step(trainer, state)
        runs = {}
        for name, fn, first in (("tree", trainer.train_step_body, state), ("flat", fstep, carry)):
            jax.clear_caches()
            lowered = jax.jit(fn, donate_argnums=0).lower(first, batch)
            t0 = time.perf_counter()
            compiled = lowered.compile(compiler_options=options)
            runs[name] = {"fn": compiled, "carry": first, "compile": time.perf_counter() - t0,
                          "fusions": compiled.as_text().count(" fusion("), "ms": []}
        for _ in range(args.rounds):  # alternate the variants
            for run in runs.values():
                carry, t0 = run["carry"], time.perf_counter()
                for _ in range(args.steps):
                    carry, metrics = run["fn"](carry, batch)
                jax.block_until_ready(metrics)
                run["ms"].append((time.perf_counter() - t0) / args.steps * 1e3)
                run["carry"] = carry
        print(f"{shape}: " + " | ".join(
            f"{name} compile {r['compile']:.2f} s, {r['fusions']} fusions, step "
            f"{np.median(r['ms']):.3f} ms" for name, r in runs.items()), flush=True)


if __name__ == "__main__":
    main()
