"""`plan` knows memory, `run` refuses a point that cannot fit: scaling/sweep/fit.py, the plan's
memory table and JSON, the command line's --device / --device-memory / --devices, and the
pre-flight check. Fast: nothing trains, nothing compiles (the XLA check of the closed form
itself is tests/test_memory.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scaling.accounting import memory as mem
from scaling.accounting.memory import (Capacity, DEVICE_MEMORY, GiB, device_capacity, estimate,
                                       layout, parse_size)
from scaling.accounting.counts import param_counts
from scaling.cli import main
from scaling.config import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig
from scaling.executors import sweep as sweep_driver
from scaling.sweep import load_spec
from scaling.sweep.fit import Target, apply_change, check_fit, memory_target, refuse_unfit

ROOT = Path(__file__).resolve().parents[1]
# A 12 x 768 model (~110M parameters with a 32k vocabulary), batch 64 x 1024, bfloat16.
BIG = dict(n_layer=12, d_model=768, n_head=12, seq_len=1024, vocab_size=32768,
           compute_dtype="bfloat16")

SPEC = """
name = "mem"
[model]
n_layer = 2
d_model = 64
n_head = 2
seq_len = 32
[data]
max_corpus_bytes = 200_000
[train]
batch_size = 8
eval_tokens = 2048
[sweep]
data = {{ tokens = [10_240] }}
[sweep.axes]
"model.d_model" = [{widths}]
"""


@pytest.fixture(autouse=True)
def _no_device_probe(monkeypatch):
    monkeypatch.setenv("SCALINGLAB_ACHIEVED_FLOPS", "5e10")  # time estimates without a probe
    for env in mem.FRACTION_ENV:
        monkeypatch.delenv(env, raising=False)


def cfg_of(model=None, optim=None, train=None) -> Config:
    return Config(model=ModelConfig(**(model or {})), optim=OptimConfig(**(optim or {})),
                  train=TrainConfig(**(train or {}))).validate()


def gpu(gib: float, devices: int = 1) -> Target:
    return Target(Capacity(int(gib * GiB), "gpu", f"{gib} GiB"), devices)


# ---- device memory --------------------------------------------------------------------

def test_sizes_parse_and_bad_ones_name_the_option():
    assert parse_size("80GB") == 80 * 10**9 and parse_size("80GiB") == 80 * GiB
    assert parse_size("512 MiB") == 512 << 20 and parse_size("7.5e10") == 75 * 10**9
    for bad in ("lots", "80XB", "-1GB", "0"):
        with pytest.raises(ConfigError, match="--device-memory"):
            parse_size(bad)


def test_device_table_and_its_rule(monkeypatch):
    """GPUs: memory x 0.75 (XLA's default), or the fraction of the environment; TPUs x 0.95."""
    assert device_capacity("h100-80gb").usable == int(80 * GiB * 0.75)
    assert device_capacity("tpu-v5e").usable == int(16 * GiB * 0.95)
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    cap = device_capacity("a100-40gb")
    assert cap.usable == int(40 * GiB * 0.9) and "XLA_PYTHON_CLIENT_MEM_FRACTION" in cap.source
    with pytest.raises(ConfigError, match="--device 'h100'.*h100-80gb, h200-141gb"):
        device_capacity("h100")
    assert {"h100-80gb", "h200-141gb", "a100-40gb", "a100-80gb", "v100-32gb", "l4-24gb",
            "tpu-v4", "tpu-v5e", "tpu-v5p"} <= set(DEVICE_MEMORY)


# ---- the closed form's layout and factors -----------------------------------------------

def test_layouts_of_the_drivers_and_the_mesh():
    t = TrainConfig()
    assert layout(t, 1) == mem.Layout(1, 1, 1, 1, "none")
    assert layout(t, 8) == mem.Layout(8, 1, 8, 1, "shard_map")
    assert layout(dataclasses.replace(t, parallel="none"), 8).batch_shards == 1
    mesh = dataclasses.replace(t, mesh={"fsdp": 4, "model": 2})
    assert layout(mesh, 16) == mem.Layout(16, 8, 8, 2, "mesh")  # data = -1 -> 2
    with pytest.raises(ConfigError, match="train.mesh.*need 8 devices"):
        layout(mesh, 4)


def test_sharding_divides_state_batch_and_the_split_activations():
    one = estimate(cfg_of(BIG, train={"batch_size": 64}), 1)
    dp = estimate(cfg_of(BIG, train={"batch_size": 64}), 8)
    fsdp = estimate(cfg_of(BIG, train={"batch_size": 64, "mesh": {"fsdp": 8}}), 8)
    tp = estimate(cfg_of(BIG, train={"batch_size": 64, "mesh": {"model": 2}}), 8)
    assert dp.params == one.params and dp.activations == pytest.approx(one.activations / 8, 1e-6)
    assert fsdp.params == pytest.approx(one.params / 8, abs=1)
    assert fsdp.optimizer == pytest.approx(one.optimizer / 8, abs=64)
    assert fsdp.activations == dp.activations
    # fsdp gathers parameters whole and holds whole gradients before the reduce-scatter:
    # on a GPU (a rolled layer loop) one layer's and the embeddings' at a time; on the CPU
    # with the layers unrolled (8 or fewer) all of them
    n, emb, _ = param_counts(cfg_of(BIG).model)
    layer_and_embeddings = emb + -(-n // BIG["n_layer"])  # 12 layers: a rolled loop anywhere
    assert fsdp.gathered == 2 * layer_and_embeddings * 4 and dp.gathered == tp.gathered == 0
    assert fsdp.gathered < 0.7 * 2 * one.params  # the 32k x 768 embedding is 23 % of N
    six = dict(BIG, n_layer=6)  # unrolled on the CPU, rolled on a GPU
    cpu = estimate(cfg_of(six, train={"batch_size": 64, "mesh": {"fsdp": 8}}), 8, "cpu")
    gpu = estimate(cfg_of(six, train={"batch_size": 64, "mesh": {"fsdp": 8}}), 8, "gpu")
    assert cpu.gathered == 2 * cpu.params * 8 > 2 * gpu.gathered
    # model = 2: data 4, so twice the rows of dp, with the split terms halved
    assert dp.activations < tp.activations < 2 * dp.activations
    assert tp.params == pytest.approx(one.params / 2, abs=1)


def test_remat_micro_batches_and_moments():
    base = estimate(cfg_of(BIG, train={"batch_size": 64}))
    remat = estimate(cfg_of({**BIG, "remat": True}, train={"batch_size": 64}))
    # the blocks' 12 x 30 KB per token fall to 1.5 KB + one block; the float32 logits
    # (2 x 4 x 32768 = 256 KB per token) stay
    assert remat.activations == base.activations_remat < base.activations_no_remat / 2
    micro4 = estimate(cfg_of(BIG, train={"batch_size": 64, "micro_batches": 4}))
    assert micro4.activations == pytest.approx(base.activations / 4, 1e-6)
    assert micro4.gradients == base.gradients  # float32 parameters: the accumulator's size
    micro2 = estimate(cfg_of(BIG, train={"batch_size": 64, "micro_batches": 2}))
    assert micro2.activations == base.activations  # both micro-batches live (see memory.py)
    n = mem.param_counts(ModelConfig(**BIG)).total
    for name, k in mem.MOMENTS.items():
        assert estimate(cfg_of(BIG, {"name": name})).optimizer - mem.STATE_SCALARS \
            - 4 * (k == 2) == k * n * 4


def test_kept_scores_by_platform():
    fp32, bf16 = ModelConfig(), ModelConfig(compute_dtype="bfloat16")
    assert not mem.keeps_scores(fp32, "cpu") and mem.keeps_scores(fp32, "gpu")
    assert not mem.keeps_scores(bf16, "gpu") and mem.keeps_scores(bf16, "tpu")
    assert mem.keeps_scores(ModelConfig(arch="encoder"), "cpu")


# ---- the smallest change that fits --------------------------------------------------------

def test_changes_are_tried_in_order():
    cfg = cfg_of(BIG, train={"batch_size": 64})
    e = estimate(cfg, 1)
    # room for the remat activations: remat alone
    fit = check_fit(cfg, gpu((e.total - e.activations + e.activations_remat) / GiB + 0.1))
    assert not fit.fits and fit.change == {"model.remat": True}
    assert fit.override == "model.remat=true" and fit.changed.total <= fit.usable
    # remat already on and still too big: the smallest micro-batching that fits
    on = cfg_of({**BIG, "remat": True}, train={"batch_size": 64})
    e = estimate(on, 1)
    fit = check_fit(on, gpu((e.total - e.activations * 5 / 6) / GiB))  # room for 1/6 of them
    assert fit.change == {"train.micro_batches": 8}  # 64 rows: 4 keeps 1/4, 8 keeps 1/8
    assert fit.override == "train.micro_batches=8"
    # one row per device (batch 8 on 8 devices): no micro-batching left, fsdp it is, the
    # smallest axis that fits
    rows1 = cfg_of({**BIG, "remat": True}, train={"batch_size": 8})
    need = estimate(apply_change(rows1, {"train.mesh": {"fsdp": 4}}), 8).total
    fit = check_fit(rows1, Target(Capacity(need, "gpu", "fsdp 4's total"), 8))
    assert fit.change == {"train.mesh": {"fsdp": 4}}
    assert fit.override == "'train.mesh={fsdp = 4}'"
    assert fit.changed.total == need and fit.changed.layout.state_shards == 4
    # nothing tried fits on one device
    nothing = check_fit(on, gpu(e.state / 2 / GiB))
    assert not nothing.fits and nothing.change is None and "more devices" in nothing.advice()


def test_refuse_names_the_point_and_its_fix(tmp_path):
    path = tmp_path / "mem.toml"
    path.write_text(SPEC.format(widths="64, 128"))
    spec = load_spec(path)
    big = max(check_fit(p.config, gpu(1)).estimate.total for p in spec.points)
    refuse_unfit(spec.points, gpu(big / GiB))  # every point fits: nothing raised
    small = min(check_fit(p.config, gpu(1)).estimate.total for p in spec.points)
    with pytest.raises(ConfigError, match=r"point .*needs .* per device.*fits with model.remat"
                                          r"=true.*1 more point does"):
        refuse_unfit(spec.points, gpu(small / GiB * 0.9), " --device-memory 1MB")


# ---- the command line -------------------------------------------------------------------

def test_plan_shows_memory_and_marks_the_points_that_do_not_fit(tmp_path, capsys):
    path = tmp_path / "mem.toml"
    path.write_text(SPEC.format(widths="64, 128"))
    assert main(["plan", str(path)]) == 0
    plain = capsys.readouterr().out
    assert "memory per device" not in plain
    assert main(["plan", str(path), "--device-memory", "8MiB"]) == 0
    out = capsys.readouterr().out
    assert plain.strip() in out  # the plan as before, then the memory table
    assert "memory per device: 8 MiB usable" in out and "act(remat)" in out
    table = out[out.index("memory per device"):]
    assert " yes" in table and " NO" in table and "1 of 2 points fit" in table
    # d_model 128: 12.4 MiB; remat alone leaves 10.1 MiB, micro-batches of 1 row 7.3 MiB
    assert "fits with train.micro_batches=8" in table


def test_plan_json_carries_the_same_numbers(tmp_path, capsys):
    path = tmp_path / "mem.toml"
    path.write_text(SPEC.format(widths="64, 128"))
    assert main(["plan", str(path), "--json"]) == 0
    assert "memory" not in json.loads(capsys.readouterr().out)[0]
    assert main(["plan", str(path), "--json", "--device-memory", "4MiB", "--devices", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    spec = load_spec(path)
    target = memory_target(device_memory="4MiB", devices=2)
    for r, p in zip(rows, spec.points):
        fit = check_fit(p.config, target)
        m = r["memory"]
        assert m["total"] == fit.estimate.total and m["fits"] == fit.fits
        assert m["usable"] == 4 << 20 and m["devices"] == 2 and m["driver"] == "shard_map"
        assert {"params", "optimizer", "gradients", "activations_no_remat",
                "activations_remat"} <= set(m)
        assert fit.fits or m["fix"] == fit.override


@pytest.mark.parametrize("args, words", [
    (["--device", "h100"], ["--device 'h100'", "h100-80gb", "tpu-v5p"]),
    (["--device-memory", "eighty"], ["--device-memory 'eighty'", "80GiB"]),
    (["--devices", "0"], ["--devices 0"]),
])
def test_bad_options_exit_2_before_the_spec_is_read(args, words, capsys):
    commands = ["plan", "run"] if args[0] != "--devices" else ["plan"]  # run: the devices at hand
    for command in commands:
        assert main([command, "no/such/spec.toml", *args]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "no/such" not in err, err


def test_run_refuses_a_point_that_cannot_fit_and_writes_nothing(tmp_path):
    path = tmp_path / "mem.toml"
    path.write_text(SPEC.format(widths="64"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), SCALINGLAB_ACHIEVED_FLOPS="5e10")
    out = subprocess.run([sys.executable, "run_sweep.py", "run", str(path), "--out",
                          str(tmp_path / "sw"), "--device-memory", "3MiB", "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "needs 4.95 MiB per device, more than the 3 MiB usable" in out.stderr
    assert "fits with train.micro_batches=4 (2.59 MiB)" in out.stderr
    assert not (tmp_path / "sw").exists()


def test_run_checks_the_local_accelerator_when_no_option_is_given(tmp_path, monkeypatch):
    """No --device: the local accelerator's allocator limit (here a stand-in GPU of 1 MiB);
    a CPU reports none and nothing is checked."""
    path = tmp_path / "mem.toml"
    path.write_text(SPEC.format(widths="64"))
    spec = load_spec(path)
    assert sweep_driver.memory_check(spec, None, 1) is None  # this CPU: no check
    monkeypatch.setattr(mem, "local_capacity",
                        lambda: Capacity(1 << 20, "gpu", "stand-in: bytes_limit 1 MiB"))
    import scaling.sweep.fit as fit_module

    monkeypatch.setattr(fit_module, "local_capacity", mem.local_capacity)
    with pytest.raises(ConfigError, match="1 MiB usable per device \\(stand-in"):
        sweep_driver.memory_check(spec, None, 1)
    with pytest.raises(ConfigError, match="1 MiB usable"):
        sweep_driver.run_sweep(path, out=tmp_path / "sw", progress=False)
    assert not (tmp_path / "sw").exists()
    target, how = sweep_driver.memory_check(spec, {"device": "h100-80gb"}, 1)
    assert target.capacity.usable == int(80 * GiB * 0.75) and how == " --device h100-80gb"
