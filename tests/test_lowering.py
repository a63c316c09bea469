"""Readiness without an accelerator: the training step of the plain driver and of every mesh,
in bfloat16, built as a GPU or TPU would build it, lowers for the `cuda` and `tpu`
platforms on this CPU-only machine (tests/multidevice/lower_worker.py, 8 emulated devices).

A GPU-only code path that cannot even lower fails here, in CI, not on a rented machine.
What only a device can check (benchmarks/gpu_check.sh): cuDNN's fused attention (traced
only where cuDNN is present, so the XLA attention stands in for it here:
scaling.models.platform), XLA's compilation for the device (lowering stops at StableHLO),
its numerics in bfloat16 on tensor cores, collectives over NCCL, and memory.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "multidevice" / "lower_worker.py"
MESHES = ["none", [8, 1, 1], [2, 4, 1], [2, 2, 2], [1, 1, 8], [1, 8, 1]]
BF16 = ["model.n_layer=2", "model.d_model=64", "model.n_head=8", "model.seq_len=32",
        "train.batch_size=16", "optim.name=adamw", "model.compute_dtype=bfloat16"]


def lower(overrides, cases):
    spec = {"overrides": overrides, "cases": cases}
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["cases"]


@pytest.fixture(scope="module")
def lowered():
    return lower(BF16, [[m, p] for m in MESHES for p in ("cuda", "tpu")]
                 + [["none", "cpu"], [[2, 2, 2], "cpu"]])


def test_every_mesh_and_the_plain_driver_lower_for_cuda_and_tpu(lowered):
    accel = [c for c in lowered if c["platform"] != "cpu"]
    assert len(accel) == 2 * len(MESHES)
    for c in accel:
        assert c["ok"], c
        assert c["bf16_dots"], c  # the matmuls in bfloat16, as configured
        assert not c["cpu_paths"], c  # built as the accelerator would: no CPU kernels
        assert c["sharded"] == (c["mesh"] != "none"), c
        assert c["custom_calls"] == [], c  # nothing that needs a vendor library


def test_the_cpu_build_is_not_what_the_accelerators_get(lowered):
    """The control: lowered for the CPU, the same step uses the CPU kernels, so the check
    above can tell the two builds apart."""
    cpu = [c for c in lowered if c["platform"] == "cpu"]
    assert cpu and all(c["ok"] and c["cpu_paths"] for c in cpu), cpu
