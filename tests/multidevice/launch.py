"""Starting the workers of this folder in fresh processes (XLA_FLAGS and the jax.distributed
coordinator must be set before JAX starts), and reading their RESULT line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "multidevice" / "worker.py"


def device_env(devices: int, **extra: str) -> dict:
    """This environment with `devices` emulated CPU devices."""
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", **extra}


def result_of(stdout: str) -> dict:
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def two_processes(run_dir, *args: str, devices_each: int = 2) -> tuple[dict, list[str]]:
    """worker.py RUN_DIR ARGS as two processes joined by jax.distributed, `devices_each`
    CPU devices each: (process 0's RESULT, both processes' stdout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, str(WORKER), str(run_dir), *args], cwd=ROOT, text=True,
        env=device_env(devices_each, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for pid in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return result_of(outs[0][0]), [out for out, _ in outs]
