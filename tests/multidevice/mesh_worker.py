"""Train one tiny model 20 steps under several meshes in one process; print the losses,
each compiled step's memory per device and its time per step as JSON.

Started by tests/test_mesh.py (and benchmarks/mesh_table.py) in a fresh process with 8
emulated CPU devices (XLA_FLAGS set before JAX starts):

    python tests/multidevice/mesh_worker.py '{"overrides": [...], "meshes": ["none",
        "shard_map", [2, 2, 2], ...], "steps": 20, "timed_steps": 0}'

"none" is plain jit on one device (the reference), "shard_map" the data-parallel driver
on every device, [data, fsdp, model] a mesh. Every case starts from the same fresh state
(built under its own driver) and takes the same batches.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scaling.config import load_config  # noqa: E402
from scaling.train.parallel import Driver  # noqa: E402
from scaling.train.mesh import MeshDriver  # noqa: E402
from scaling.train.step import Trainer  # noqa: E402


def one_case(base: list[str], mesh, steps: int, timed: int) -> dict:
    if mesh in ("none", "shard_map"):
        cfg = load_config(None, base + [f"train.parallel={mesh}"])
        driver = Driver(mesh)
    else:
        data, fsdp, model = mesh
        cfg = load_config(None, base + [f"train.mesh={{data={data},fsdp={fsdp},model={model}}}"])
        driver = MeshDriver(cfg.train.mesh_axes)
    trainer = Trainer(cfg)
    rng = np.random.default_rng(0)
    B, T, V = cfg.train.batch_size, cfg.model.seq_len, cfg.model.vocab_size
    # counting sequences from random starts: learnable, so the losses move
    batches = [((rng.integers(0, V, (B, 1)) + np.arange(T + 1)) % V).astype(np.int32)
               for _ in range(steps + timed)]
    state = driver.fresh_state(trainer)
    t0 = time.perf_counter()
    step = driver.compile(trainer.train_step_body, state, driver.place_batch(batches[0]),
                          donate=True)
    compile_s = time.perf_counter() - t0
    losses, grad_norms = [], []
    for b in batches[:steps]:
        state, metrics = step(state, driver.place_batch(b))
        m = driver.fetch_metrics(metrics)
        losses.append(m["loss"])
        grad_norms.append(m["grad_norm"])
    step_s = None
    if timed:
        placed = [driver.place_batch(b) for b in batches[steps:]]
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for b in placed:
            state, metrics = step(state, b)
        jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - t0) / timed
    mem = step.memory_analysis()
    host = trainer.to_checkpoint(driver.fetch_state(state))
    return {
        "mesh": mesh, "losses": losses, "grad_norms": grad_norms, "compile_s": compile_s,
        "step_s": step_s, "argument_bytes": int(mem.argument_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
        "param_sum": float(sum(np.abs(np.asarray(x, np.float64)).sum()
                               for x in jax.tree.leaves(host.params))),
        "unsharded": driver.unsharded(host.params) if isinstance(driver, MeshDriver) else [],
    }


def main(spec: dict) -> None:
    out = [one_case(spec["overrides"], m, spec.get("steps", 20), spec.get("timed_steps", 0))
           for m in spec["meshes"]]
    print("RESULT " + json.dumps({"devices": jax.device_count(), "cases": out}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
