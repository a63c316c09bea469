"""Memory per device and time per step of each mesh on 8 emulated CPU devices.

    python benchmarks/mesh_table.py [--steps 10]

Runs tests/multidevice/mesh_worker.py (a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=8) on one model: the plain driver on one
device, shard_map on all 8, and the meshes of tests/test_mesh.py. Prints a markdown table
of the compiled step's memory_analysis() per device (arguments: parameters, optimizer
moments and the batch; temporaries: activations, gradients, gathered parameters) and the
median time per step after compilation.

The 8 "devices" are threads sharing this machine's cores: the times measure the
overhead of each sharding (collectives, resharding, smaller kernels), not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ["model.n_layer=4", "model.d_model=128", "model.n_head=8", "model.seq_len=64",
         "train.batch_size=32", "optim.name=adamw", "optim.clip_norm=1.0", "train.steps=1000"]
CASES = ["none", "shard_map", [8, 1, 1], [2, 4, 1], [2, 2, 2], [1, 1, 8], [1, 8, 1]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    args = p.parse_args()
    spec = {"overrides": MODEL, "meshes": CASES, "steps": 3, "timed_steps": args.steps}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(ROOT / "tests/multidevice/mesh_worker.py"),
                          json.dumps(spec)], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    cases = result["cases"]
    ref = cases[0]
    print(f"model: {' '.join(MODEL)}\n")
    print("| driver / mesh (data, fsdp, model) | arguments per device | / one device's "
          "| temporaries per device | compile s | ms per step | vs shard_map |")
    print("|---|---|---|---|---|---|---|")
    sm = next(c for c in cases if c["mesh"] == "shard_map")["step_s"]
    for c in cases:
        name = c["mesh"] if isinstance(c["mesh"], str) else "mesh ({}, {}, {})".format(*c["mesh"])
        print(f"| {name} | {c['argument_bytes'] / 2**20:.2f} MiB | "
              f"{ref['argument_bytes'] / c['argument_bytes']:.2f}x | "
              f"{c['temp_bytes'] / 2**20:.2f} MiB | {c['compile_s']:.1f} | "
              f"{c['step_s'] * 1e3:.1f} | {c['step_s'] / sm:.2f}x |")
    worst = max(abs(a - b) / b for c in cases[1:] for a, b in zip(c["losses"], ref["losses"]))
    print(f"\nlargest relative loss gap to one device over the first 3 steps: {worst:.1e}")


if __name__ == "__main__":
    main()
