"""Running sweeps: kill -9 and rerun, every point exactly once; failures recorded; extension."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.executors import sweep as sweep_driver
from scaling.runs.results import format_status, point_state
from scaling.runs.runfiles import read_metrics, read_result

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
name = "{name}"
[model]
n_layer = 2
d_model = 32
n_head = 2
seq_len = 32
[data]
max_corpus_bytes = 1_000_000
[optim]
lr = 3e-3
[train]
batch_size = 8
eval_tokens = 2048
log_every = 5
checkpoint_every = 20
[sweep]
warmup_fraction = 0.05
evals_per_run = 4
data = {{ tokens = [{tokens}] }}
[sweep.axes]
"optim.lr" = [{lrs}]
"""


def write_spec(tmp_path, name="s", tokens="40_960", lrs="1e-3, 3e-3"):
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(name=name, tokens=tokens, lrs=lrs))
    return path


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "run_sweep.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def results(sweep_dir):
    return pd.read_csv(sweep_dir / "results.csv")


@pytest.mark.slow
def test_kill_and_rerun_finishes_every_point_exactly_once(tmp_path):
    # 3 points x 320 steps (81,920 tokens / 256 per step); checkpoints every 20 steps.
    spec = write_spec(tmp_path, tokens="81_920", lrs="1e-3, 2e-3, 3e-3")
    out = tmp_path / "sweeps"
    sweep_dir = out / "s"
    args = [sys.executable, "run_sweep.py", "run", str(spec), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once the first point is done and another has a checkpoint in its first half, so
    # that it is still far from finishing when the kill lands.
    deadline = time.time() + 300
    interrupted = None
    while time.time() < deadline and interrupted is None:
        time.sleep(0.05)
        dirs = sorted((sweep_dir / "points").glob("*")) if (sweep_dir / "points").exists() else []
        done = [d for d in dirs if (d / "result.json").exists()]
        for d in dirs:
            ck = d / "checkpoints"
            steps = [int(p.name) for p in ck.iterdir() if p.name.isdigit()] if ck.exists() else []
            if done and not (d / "result.json").exists() and steps and max(steps) <= 160:
                interrupted = d
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert interrupted is not None, "the sweep never reached a mid-point checkpoint"
    assert not (interrupted / "result.json").exists()
    before = {d.name: (d / "result.json").stat().st_mtime
              for d in (sweep_dir / "points").glob("*") if (d / "result.json").exists()}

    rerun = cli("run", spec, "--out", out, "--no-progress")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    table = results(sweep_dir)
    assert len(table) == 3 and table["point_id"].is_unique
    assert (table["status"] == "done").all()
    for pid, mtime in before.items():  # finished points were not touched
        assert (sweep_dir / "points" / pid / "result.json").stat().st_mtime == mtime
    r = read_result(interrupted)
    assert r["resumed_from_step"] >= 20  # did not restart from 0
    steps = [m["step"] for m in read_metrics(interrupted) if "loss" in m]
    assert steps == sorted(set(steps))  # no step logged twice
    assert table["D"].tolist() == [81_920] * 3

    # A second rerun trains nothing at all.
    mtimes = {p: p.stat().st_mtime for p in (sweep_dir / "points").rglob("*") if p.is_file()
              and p.name != ".lock"}
    again = cli("run", spec, "--out", out, "--no-progress")
    assert again.returncode == 0
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes
    assert "done 3" in cli("status", sweep_dir).stdout


def test_failure_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import scaling.train.loop

    real_train = scaling.train.loop.train

    def flaky(cfg, run_dir, **kw):
        if cfg.optim.lr == 1e-3:
            raise RuntimeError("boom in point")
        return real_train(cfg, run_dir, **kw)

    monkeypatch.setattr(scaling.train.loop, "train", flaky)
    spec = write_spec(tmp_path, tokens="5_120")
    # workers=1: in this process, where the patched train() is seen
    summary = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False, workers=1)
    assert summary["counts"] == {"done": 1, "failed": 1}
    table = results(summary["sweep_dir"])
    bad = table[table["status"] == "failed"].iloc[0]
    assert "boom in point" in bad["error"]
    failed = json.loads((summary["sweep_dir"] / "points" / bad["point_id"] / "failed.json").read_text())
    assert "Traceback" in failed["traceback"] and "boom in point" in failed["traceback"]
    # Fixed, the rerun retries only the failed point.
    monkeypatch.setattr(scaling.train.loop, "train", real_train)
    summary = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False, workers=1)
    assert summary["counts"] == {"done": 2}
    assert not (summary["sweep_dir"] / "points" / bad["point_id"] / "failed.json").exists()


@pytest.mark.slow
def test_extending_a_spec_adds_points_and_keeps_the_old(tmp_path):
    spec = write_spec(tmp_path, tokens="5_120", lrs="1e-3")
    first = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False)
    (pid,) = results(first["sweep_dir"])["point_id"]
    old = (first["sweep_dir"] / "points" / pid / "result.json").read_text()
    write_spec(tmp_path, tokens="5_120", lrs="1e-3, 3e-3")
    second = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False)
    table = results(second["sweep_dir"])
    assert len(table) == 2 and pid in set(table["point_id"])
    assert (second["sweep_dir"] / "points" / pid / "result.json").read_text() == old
    assert list((second["sweep_dir"] / "specs").glob("spec.*.toml"))  # the old spec is kept


@pytest.mark.parametrize("body, words", [
    ("[sweep.axes]\n\"optim.lrr\" = [1e-3]\n", ["optim.lrr"]),
    ("[sweep]\nmodle = { n = [1e4] }\n", ["modle"]),
    ("[sweep]\ndata = { tokens = [10] }\n", ["tokens", "batch"]),
    ("[sweep]\nmodel = { aspect_ratio = 32, n_head = 2 }\n"
     "compute = { budgets = [1e3], tokens_per_param = [20] }\n", ["1e+03", "fits no model size"]),
])
def test_malformed_specs_fail_before_training(tmp_path, body, words, run_sweep_main):
    spec = tmp_path / "bad.toml"
    spec.write_text("name = \"bad\"\n[model]\nn_layer = 2\nd_model = 32\nn_head = 2\n"
                    "seq_len = 32\n[train]\nbatch_size = 8\n" + body)
    # in this process; `run` through run_sweep.py: tests/test_hardening_files.py
    out = run_sweep_main("run", spec, "--out", tmp_path / "sw", "--no-progress")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    for w in words:
        assert w.lower() in out.stderr.lower(), out.stderr
    assert not (tmp_path / "sw").exists()


def test_status_of_a_fresh_sweep_lists_pending_points(tmp_path):
    spec = write_spec(tmp_path, tokens="5_120")
    from scaling.sweep import load_spec

    sweep_dir = sweep_driver.prepare_sweep(load_spec(spec), tmp_path / "sw")
    text = format_status(sweep_dir)
    assert "pending 2" in text
    assert all(point_state(d) == "pending" for d in (sweep_dir / "points").glob("*"))
