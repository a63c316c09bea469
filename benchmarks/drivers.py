"""Per-step cost of the drivers of the one step body, on one device.

    python benchmarks/drivers.py                 # CPU: a few small shapes
    python benchmarks/drivers.py --gpu           # GPU: adds a GPT-2-small-like shape (bf16)

For each shape it compiles the project's real train step under `none` (plain jit),
`shard_map` (jit of shard_map over a 1-device mesh), `pmap` (1 device) and `mesh` (the
mesh driver on a (1, 1, 1) mesh: GSPMD with nothing to split, and the state unpacked, so
the optimizer runs per tensor instead of per packed group), runs them on
the same batches, and prints the median step time and the overhead of each against
`none` (target: <= 5 %). Run with the machine otherwise idle; medians of several
repeats are printed, since a shared CPU makes single timings noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scaling.config import load_config  # noqa: E402
from scaling.train.mesh import MeshDriver  # noqa: E402
from scaling.train.parallel import Driver  # noqa: E402
from scaling.train.step import Trainer  # noqa: E402

CPU_SHAPES = [  # (name, overrides)
    ("L2 d128 T128 B32", ["model.n_layer=2", "model.d_model=128", "model.n_head=4",
                          "model.seq_len=128", "train.batch_size=32"]),
    ("L4 d256 T256 B16", ["model.n_layer=4", "model.d_model=256", "model.n_head=8",
                          "model.seq_len=256", "train.batch_size=16"]),
]
GPU_SHAPES = [
    ("GPT-2 small T1024 B16 bf16", ["model.n_layer=12", "model.d_model=768", "model.n_head=12",
                                    "model.seq_len=1024", "model.vocab_size=50304",
                                    "model.compute_dtype=bfloat16", "train.batch_size=16"]),
]


def time_driver(kind: str, overrides: list[str], steps: int, repeats: int) -> list[float]:
    one = [jax.local_devices()[0]]
    if kind == "mesh":
        cfg = load_config(None, overrides + ["train.steps=1000", "train.mesh={data=1,fsdp=1,model=1}"])
        driver = MeshDriver(cfg.train.mesh_axes, devices=one)
    else:
        cfg = load_config(None, overrides + ["train.steps=1000", f"train.parallel={kind}"])
        driver = Driver(kind, devices=one)
    trainer = Trainer(cfg)
    state = driver.fresh_state(trainer)
    rng = np.random.default_rng(0)
    shape = (cfg.train.batch_size, cfg.model.seq_len + 1)
    batches = [driver.place_batch(rng.integers(0, 256, shape, dtype=np.int32)) for _ in range(4)]
    step = driver.compile(trainer.train_step_body, state, batches[0], donate=True)
    for i in range(3):  # warm-up
        state, m = step(state, batches[i % 4])
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            state, m = step(state, batches[i % 4])
        jax.block_until_ready((state, m))
        times.append((time.perf_counter() - t0) / steps)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="also the GPU shape (needs a GPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--drivers", default="none,shard_map,pmap,mesh",
                   help="comma-separated, the first is the baseline")
    args = p.parse_args()
    shapes = CPU_SHAPES + (GPU_SHAPES if args.gpu else [])
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(f"{'shape':28s} {'driver':10s} {'median ms/step':>15s} {'vs none':>9s}")
    for name, overrides in shapes:
        base = None
        for kind in args.drivers.split(","):
            t = statistics.median(time_driver(kind, overrides, args.steps, args.repeats))
            base = base or t
            print(f"{name:28s} {kind:10s} {t * 1e3:15.2f} {100 * (t / base - 1):+8.1f}%")


if __name__ == "__main__":
    main()
