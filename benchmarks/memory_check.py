"""The plan's memory per device (scaling/accounting/memory.py) against the compiled step's own.

    python benchmarks/memory_check.py            # CPU: two small shapes
    python benchmarks/memory_check.py --gpu      # on a GPU: adds GPT-2 small in bfloat16

For each shape it compiles the real training step on the default device under the plain
driver and the mesh driver on a (1, 1, 1) mesh, and prints XLA's memory_analysis()
(arguments: the training state and the batch; temporaries: activations, gradients and the
rest) beside the closed form's state + batch and activations + gradients, and the ratio.
On a GPU this is the check tests/test_memory.py makes on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from scaling.accounting.memory import estimate  # noqa: E402
from scaling.config import load_config  # noqa: E402
from scaling.train.mesh import MeshDriver  # noqa: E402
from scaling.train.parallel import Driver  # noqa: E402
from scaling.train.step import Trainer, runtime_values  # noqa: E402

CPU_SHAPES = [
    ("L4 d128 T128 B16", ["model.n_layer=4", "model.d_model=128", "model.n_head=4",
                          "model.seq_len=128", "train.batch_size=16"]),
    ("L10 d256 T64 B8", ["model.n_layer=10", "model.d_model=256", "model.n_head=8",
                         "model.seq_len=64", "train.batch_size=8"]),
]
GPU_SHAPES = [
    ("GPT-2 small T1024 B16 bf16", ["model.n_layer=12", "model.d_model=768", "model.n_head=12",
                                    "model.seq_len=1024", "model.vocab_size=50304",
                                    "model.compute_dtype=bfloat16", "train.batch_size=16"]),
]


def measure(overrides: list[str], mesh: bool) -> tuple:
    one = [jax.local_devices()[0]]
    extra = ["train.mesh={data=1,fsdp=1,model=1}"] if mesh else ["train.parallel=none"]
    cfg = load_config(None, overrides + ["optim.name=adamw", "train.steps=100"] + extra)
    trainer = Trainer(cfg)
    driver = MeshDriver(cfg.train.mesh_axes, devices=one) if mesh else Driver("none", devices=one)
    lr, schedule = runtime_values(cfg)
    state = jax.eval_shape(trainer.init_fn(), jax.random.key(0), lr, schedule)
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.model.seq_len + 1), "int32")
    mem = driver.compile(trainer.train_step_body, state, batch, donate=True).memory_analysis()
    est = estimate(cfg, 1, jax.default_backend())
    return mem, est


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu", action="store_true", help="also GPT-2 small in bf16 (needs a GPU)")
    args = p.parse_args()
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
    print(f"{'shape':28s} {'driver':6s} {'args MiB':>9s} {'closed':>8s} {'ratio':>6s} "
          f"{'temp MiB':>9s} {'closed':>8s} {'ratio':>6s}")
    for name, overrides in CPU_SHAPES + (GPU_SHAPES if args.gpu else []):
        for mesh in (False, True):
            mem, est = measure(overrides, mesh)
            arg, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
            c_arg, c_temp = est.state + est.batch, est.activations + est.gradients + est.gathered
            print(f"{name:28s} {'mesh' if mesh else 'none':6s} {arg / 2**20:9.1f} "
                  f"{c_arg / 2**20:8.1f} {arg / c_arg:6.2f} {temp / 2**20:9.1f} "
                  f"{c_temp / 2**20:8.1f} {temp / c_temp:6.2f}")


if __name__ == "__main__":
    main()
