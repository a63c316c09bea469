"""Device meshes (train.mesh): every mesh computes the one-device step; the state per device
falls by fsdp x model; a run resumes across meshes and drivers.

The meshes run in fresh subprocesses with 8 emulated CPU devices (XLA_FLAGS set before
JAX starts; tests/multidevice/mesh_worker.py and worker.py).

Tolerance of the loss comparisons, rtol 1e-5: a mesh changes the order of float32
reductions (partial sums over the model axis joined by an all-reduce, gradients summed
by a reduce-scatter over fsdp and data, the batch mean over shards), which moves each
result by a few ulp (1.2e-7 relative); over 20 AdamW steps the measured gap stays below
3e-7 (benchmarks/README.md, "Meshes"). A wrong sharding is not a rounding error: the one
XLA got wrong here was off by 6e-5 at the first step (scaling/models/sharding.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from scaling.config import ConfigError, load_config
from scaling.models.sharding import param_spec, replicated_along
from scaling.train.mesh import resolve_mesh
from tests.multidevice.launch import two_processes

ROOT = Path(__file__).resolve().parent.parent
MESH_WORKER = ROOT / "tests" / "multidevice" / "mesh_worker.py"
WORKER = ROOT / "tests" / "multidevice" / "worker.py"
MESHES = [[8, 1, 1], [2, 4, 1], [2, 2, 2], [1, 1, 8], [1, 8, 1]]
# heads, d_model, d_ff, 3 d_model, vocab and seq_len all divide by 8: every tensor splits
MODEL = ["model.n_layer=2", "model.d_model=64", "model.n_head=8", "model.seq_len=32",
         "train.batch_size=16", "optim.lr=1e-2", "optim.warmup_steps=2", "train.steps=20"]
ADAMW = MODEL + ["optim.name=adamw", "optim.clip_norm=0.5", "optim.weight_decay=0.1"]
MUP = ADAMW + ["model.parametrization=mup", "model.mup_base_width=32"]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu"}


def _result(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def meshes(overrides: list[str], cases: list) -> dict:
    spec = {"overrides": overrides, "meshes": ["none", *cases], "steps": 20}
    out = subprocess.run([sys.executable, str(MESH_WORKER), json.dumps(spec)], env=_env(8),
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    return _result(out)


def train(run_dir, *args, devices=8, check=True):
    out = subprocess.run([sys.executable, str(WORKER), str(run_dir), *args], env=_env(devices),
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    return _result(out) if check else out


def _check_against_one_device(result: dict) -> None:
    assert result["devices"] == 8
    ref, *cases = result["cases"]
    assert ref["mesh"] == "none" and len(ref["losses"]) == 20
    assert ref["losses"][-1] < ref["losses"][0] - 0.5  # it trains
    for c in cases:
        np.testing.assert_allclose(c["losses"], ref["losses"], rtol=1e-5, err_msg=str(c["mesh"]))
        np.testing.assert_allclose(c["grad_norms"], ref["grad_norms"], rtol=1e-4,
                                   err_msg=str(c["mesh"]))
        assert c["param_sum"] == pytest.approx(ref["param_sum"], rel=1e-5), c["mesh"]


@pytest.fixture(scope="module")
def adamw():
    """µP with AdamW and clipping on every mesh: one process covers both (µP's per-layer
    learning rates and output multiplier, AdamW's decay, the global-norm clip)."""
    return meshes(MUP, ["shard_map", *MESHES])


def test_every_mesh_trains_as_one_device_mup_adamw_with_clipping(adamw):
    """... and the data-only mesh (8, 1, 1) as shard_map on the same 8 devices."""
    _check_against_one_device(adamw)
    by_mesh = {str(c["mesh"]): c for c in adamw["cases"]}
    np.testing.assert_allclose(by_mesh["[8, 1, 1]"]["losses"], by_mesh["shard_map"]["losses"],
                               rtol=1e-5)


def test_state_per_device_falls_by_fsdp_times_model(adamw):
    """memory_analysis() of each compiled step: the arguments (parameters, AdamW's two
    moments, the batch) per device are the one device's / (fsdp x model), within 10 %."""
    ref, *cases = adamw["cases"]
    for c in cases:
        data, fsdp, model = (8, 1, 1) if c["mesh"] == "shard_map" else c["mesh"]
        ratio = ref["argument_bytes"] / c["argument_bytes"]
        assert ratio == pytest.approx(fsdp * model, rel=0.10), (c["mesh"], ratio)
        assert c["unsharded"] == [], c  # every tensor divides here


@pytest.mark.slow
def test_sp_adamw_trains_as_one_device_on_every_mesh():
    _check_against_one_device(meshes(ADAMW, MESHES))


def test_run_resumes_across_meshes_and_onto_one_device(tmp_path):
    """Checkpoints are mesh-independent: 10 steps on a (2, 2, 2) mesh, 5 more on (1, 8, 1),
    the last 5 under the plain driver on one device = 20 steps on one device."""
    single = train(tmp_path / "single", "parallel=none", devices=1)
    train(tmp_path / "run", "train.mesh={data=2,fsdp=2,model=2}", "stop=10")
    train(tmp_path / "run", "train.mesh={data=1,fsdp=8,model=1}", "stop=15")
    last = train(tmp_path / "run", "parallel=none", devices=1)
    assert last["status"] == "done" and len(last["losses"]) == 20
    np.testing.assert_allclose(last["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(last["evals"], single["evals"], rtol=1e-5)


def cli_train(run_dir, *overrides):
    """`run_sweep.py train` on experiments/tiny.toml with 8 devices: (exit code, stderr)."""
    out = subprocess.run([sys.executable, "run_sweep.py", "train", "experiments/tiny.toml",
                          *overrides, "--run-dir", str(run_dir)], env=_env(8),
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    return out.returncode, out.stderr


def test_mesh_that_does_not_fit_the_devices_is_refused_before_anything_is_written(tmp_path):
    code, err = cli_train(tmp_path / "run", "train.mesh={data=3,fsdp=2,model=1}")
    assert code == 2, err[-2000:]
    assert "train.mesh = { data = 3, fsdp = 2, model = 1 } needs 6 devices, found 8" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    code, err = cli_train(tmp_path / "run", "train.mesh={fsdp=4}", "train.batch_size=12")
    assert code == 2, err[-2000:]
    assert "train.batch_size = 12 does not divide evenly over 8 batch shards" in err
    assert not (tmp_path / "run").exists()


SPEC = """name = "meshes"
[model]
n_layer = 2
d_model = 32
n_head = 4
seq_len = 32
[data]
max_corpus_bytes = 1000000
[optim]
warmup_steps = 2
[train]
steps = 12
batch_size = 16
eval_every = 0
eval_tokens = 1024
checkpoint_every = 0
mesh = {mesh}
[sweep]
seeds = [0, 1]
"""


def test_a_sweep_of_mesh_points_runs_and_a_mesh_that_cannot_be_is_refused_up_front(tmp_path):
    spec = tmp_path / "meshes.toml"
    spec.write_text(SPEC.format(mesh="{ fsdp = 2, model = 2 }"))
    out = subprocess.run([sys.executable, "run_sweep.py", "run", str(spec), "--out",
                          str(tmp_path / "sweeps"), "--no-progress"], env=_env(8),
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    points = sorted((tmp_path / "sweeps" / "meshes" / "points").iterdir())
    results = [json.loads((p / "result.json").read_text()) for p in points]
    assert len(results) == 2 and {r["status"] for r in results} == {"done"}
    assert {r["parallel"] for r in results} == {"mesh"}
    spec.write_text(SPEC.format(mesh="{ data = 3, fsdp = 2 }").replace('"meshes"', '"bad"'))
    out = subprocess.run([sys.executable, "run_sweep.py", "run", str(spec), "--out",
                          str(tmp_path / "sweeps"), "--no-progress"], env=_env(8),
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "needs 6 devices, found 8" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "sweeps" / "bad").exists()


@pytest.mark.slow
def test_two_processes_share_one_mesh(tmp_path):
    """Two processes x 2 CPU devices joined by jax.distributed, one (1, 2, 2) mesh across
    them (fsdp across the processes, model within each) = one process with 4 devices."""
    one = train(tmp_path / "one", "train.mesh={data=1,fsdp=2,model=2}", devices=4)
    two, _ = two_processes(tmp_path / "two", "train.mesh={data=1,fsdp=2,model=2}")
    assert two["processes"] == 2 and two["device_count"] == 4 and two["parallel"] == "mesh"
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(two["evals"], one["evals"], rtol=1e-5)


# ---- the sharding rules, without devices ---------------------------------------------

def test_megatron_rules_column_then_row_parallel_and_fsdp_on_the_rest():
    shape = {"data": 2, "fsdp": 2, "model": 2}
    assert param_spec(("blocks", "attn", "qkv", "kernel"), (2, 64, 192), shape, True) == \
        P(None, "fsdp", "model")
    assert param_spec(("blocks", "mlp", "proj", "kernel"), (2, 256, 64), shape, True) == \
        P(None, "model", "fsdp")
    assert param_spec(("blocks", "mlp", "fc", "bias"), (2, 256), shape, True) == \
        P(None, ("model", "fsdp"))
    # the vocabulary on "model" (as the logits), d_model on fsdp
    assert param_spec(("token_embed", "embedding"), (256, 64), shape) == P("model", "fsdp")
    # no rule: fsdp on the largest dimension, model on the next
    assert param_spec(("pos_embed", "embedding"), (32, 64), shape) == P("model", "fsdp")
    # the stacked layer axis is never split, even when nothing else divides
    spec = param_spec(("blocks", "ln_1", "scale"), (2, 3), shape, True)
    assert spec == P(None, None) and replicated_along(spec, shape) == ["fsdp", "model"]
    # one device's worth of axes: nothing split
    assert param_spec(("blocks", "attn", "qkv", "kernel"), (2, 64, 192),
                      {"data": 8, "fsdp": 1, "model": 1}, True) == P(None, None, None)


def test_mesh_sizes_resolve_against_the_device_count():
    assert resolve_mesh({"data": -1, "fsdp": 2, "model": 1}, 8) == {"data": 4, "fsdp": 2, "model": 1}
    assert resolve_mesh({"data": 1, "fsdp": -1, "model": 2}, 8)["fsdp"] == 4
    with pytest.raises(ConfigError, match="8 devices do not split into 3 x the rest"):
        resolve_mesh({"data": -1, "fsdp": 3, "model": 1}, 8)
    cfg = load_config(None, ["train.mesh={fsdp=2}"])
    assert cfg.train.mesh_axes == {"data": -1, "fsdp": 2, "model": 1}
    # execution only: a run resumes on another mesh, and a sweep point keeps its id
    assert cfg.semantic_dict() == load_config(None).semantic_dict()
