"""Data parallelism: the one step body under none, shard_map and pmap gives the same run.

Every case runs in a fresh subprocess with XLA_FLAGS=--xla_force_host_platform_device_count
set before JAX starts (8 emulated CPU devices, or 2 per process for the two-process case).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.multidevice.launch import two_processes

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "multidevice" / "worker.py"

pytestmark = pytest.mark.multidevice


def run(run_dir, *args, devices=8, env=None, check=True):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", **(env or {})}
    out = subprocess.run([sys.executable, str(WORKER), str(run_dir), *args], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    if not check:
        return out
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: plain jit on one device."""
    return run(tmp_path_factory.mktemp("none") / "run", "parallel=none", devices=1)


@pytest.mark.slow
def test_shard_map_pmap_and_accumulation_match_one_device(single, tmp_path):
    assert single["devices"] == 1 and len(single["losses"]) == 20
    sm = run(tmp_path / "sm", "parallel=shard_map")
    pm = run(tmp_path / "pm", "parallel=pmap")
    acc = run(tmp_path / "acc", "parallel=shard_map", "train.micro_batches=2")
    for r in (sm, pm, acc):
        assert r["device_count"] == 8 and r["D"] == single["D"]
        close(r["losses"], single["losses"])
        close(r["evals"], single["evals"])
        # the gradient itself, not only the (clipped, scale-free Adam) updates: under
        # shard_map it came back summed over the 8 devices (8 x the norm)
        close(r["grad_norms"], single["grad_norms"], rtol=1e-4)
        # XLA's count, every loop trip, one device's program x the devices (scaling.accounting.xla_count):
        # each device repeats the optimizer's update, +6 % here (2 sequences per device)
        assert 1 <= r["C_xla_ratio"] / single["C_xla_ratio"] < 1.15, (r["C_xla_ratio"], single)
    assert (sm["parallel"], pm["parallel"]) == ("shard_map", "pmap")


@pytest.mark.slow
def test_noise_scale_from_8_devices_equals_8_micro_batches_on_one(tmp_path):
    """Data parallelism gives the noise scale's small-batch gradients for free (one per
    device, no accumulation): on 8 devices with 2 sequences each it measures what one
    device measures with 8 micro-batches of the same 2 sequences."""
    dp = run(tmp_path / "dp", "parallel=shard_map", "train.noise_scale=true")
    one = run(tmp_path / "one", "parallel=none", "train.micro_batches=8", "train.noise_scale=true",
              devices=1)
    assert len(dp["noise_rows"]) == len(one["noise_rows"]) == 20
    close(dp["noise_rows"], one["noise_rows"], rtol=2e-3)
    assert dp["b_simple"] == pytest.approx(one["b_simple"], rel=2e-3) and dp["b_simple"] > 0


@pytest.mark.slow
def test_checkpoint_from_pmap_on_8_restores_under_none_on_1(single, tmp_path):
    first = run(tmp_path / "run", "parallel=pmap", "stop=10")
    assert first["status"] == "stopped" if "status" in first else True
    resumed = run(tmp_path / "run", "parallel=none", devices=1)
    assert resumed["status"] == "done"
    close(resumed["losses"], single["losses"])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Two processes x 2 CPU devices, joined by jax.distributed, = one process x 4."""
    one = run(tmp_path / "one", "parallel=shard_map", devices=4)
    two, stdouts = two_processes(tmp_path / "two", "parallel=shard_map")
    assert two["processes"] == 2 and two["devices"] == 4 and two["device_count"] == 4
    close(two["losses"], one["losses"])
    assert not any(l.startswith("RESULT") for l in stdouts[1].splitlines())  # only process 0 reports


def test_batch_that_does_not_divide_is_refused_before_compiling(tmp_path):
    out = run(tmp_path / "run", "parallel=shard_map", "train.batch_size=12", check=False)
    assert out.returncode != 0
    assert "train.batch_size = 12 does not divide evenly over 8 devices" in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
