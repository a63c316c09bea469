#!/usr/bin/env bash
# Everything GPU-specific, checked and measured in one go (~5 minutes on an H100/H200).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR default: $OUT or /tmp/gpu_check
#
# Runs from a bare checkout (no install; no network): JAX, flax, optax and orbax must be
# importable. Prints, in order:
#   1. the device and JAX's view of it;
#   2. GPT-2 small (12 x 768, T 1024, vocab 50304, bf16 compute) training throughput and
#      MFU against the dense bf16 peak (target >= 45 %), plus the CPU-sized shapes;
#   3. the per-step overhead of the shard_map, pmap and mesh drivers against plain jit
#      (mesh: FSDP/tensor-parallel's driver on a (1, 1, 1) mesh, state unpacked), and the
#      memory a step needs on the device against the plan's closed form;
#   4. the model tests that matter on a GPU (causality, bf16 against fp32, goldens);
#   5. one real run end to end (bf16 compute, checkpoint, resume, result.json).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_check}}"
mkdir -p "$out"
export SCALINGLAB_CACHE="$out/cache"
step() { echo; echo "=== $* ==="; }

step "1. device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"

step "2. throughput (GPU section: GPT-2 small, bf16)"
timeout 240 python3 benchmarks/throughput.py --no-torch --quick 2>&1 | tee "$out/throughput.txt"

step "3. drivers: none vs shard_map vs pmap vs mesh (1,1,1), one device"
timeout 200 python3 benchmarks/drivers.py --gpu --steps 10 --repeats 3 2>&1 | tee "$out/drivers.txt"

step "3b. memory per device: XLA's memory_analysis against the plan's closed form"
timeout 200 python3 benchmarks/memory_check.py --gpu 2>&1 | tee "$out/memory.txt"

step "4. model tests on the GPU"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_model.py 2>&1 | tail -15 | tee "$out/tests.txt"

step "5. a real run: train 150 steps, stop, resume to 300, bf16"
run="$out/run_tiny"
rm -rf "$run"
args=(experiments/tiny.toml --run-dir "$run" model.compute_dtype=bfloat16 train.steps=300
      train.checkpoint_every=150 train.progress=false)
timeout 120 python3 -c "
import sys; sys.argv=['x']
from scaling.config import load_config; from scaling.train.loop import train
cfg = load_config('experiments/tiny.toml', ['model.compute_dtype=bfloat16', 'train.steps=300',
                  'train.checkpoint_every=150', 'train.progress=false'])
print(train(cfg, '$run', stop_after_steps=150))"
timeout 120 python3 run_sweep.py train "${args[@]}" 2>&1 | tail -14 | tee "$out/run.txt"
