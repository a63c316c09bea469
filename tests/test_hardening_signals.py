"""Signals on a sweep (issue 30 §1): SIGTERM to a multi-worker `run`, to its parent or to
its whole process group, finishes each running point's step, checkpoints it, prints one
line and exits 143, leaving no orbax temporary folder; Ctrl-C the same with 130; a
SIGTERM during set-up or compile exits 143 with one line.

The commands run as children with the default signal dispositions (a shell that runs
the tests in the background may ignore SIGINT, and an ignored signal stays ignored
across exec), in their own process group (so that the group can be signalled as
`timeout` and SLURM do). Every wait polls with a generous deadline: the machine may be
loaded."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scaling.runs.runfiles import read_metrics, read_result
from tests.test_sweep_run import SPEC

ROOT = Path(__file__).resolve().parent.parent


def _defaults():
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def spawn(args, **kw):
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_defaults,
                            start_new_session=True, **kw)


def long_spec(tmp_path, lrs="1e-3, 3e-3"):
    """Points of 2000 steps whose only periodic checkpoint would be at step 1000."""
    path = tmp_path / "long.toml"
    path.write_text(SPEC.format(name="long", tokens="512_000", lrs=lrs)
                    .replace("checkpoint_every = 20", "checkpoint_every = 1000"))
    return path


def logged_step(point_dir: Path) -> int:
    steps = [r["step"] for r in read_metrics(point_dir) if "loss" in r]
    return max(steps, default=0)


def wait_until(cond, proc, what, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {what}: {err[-3000:]}")
        if cond():
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def said(err: str) -> list[str]:
    """What stderr says beyond INFO log lines (a cache being filled, a resume)."""
    return [ln for ln in err.splitlines()
            if ln.strip() and not re.match(r"\d\d:\d\d:\d\d INFO ", ln)]


def checkpoint_steps(point_dir: Path) -> list[int]:
    d = point_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def orbax_temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "orbax-checkpoint-tmp" in p.name]


def _stop_a_two_worker_sweep(tmp_path, sig, group: bool):
    spec = long_spec(tmp_path)
    proc = spawn(["run_sweep.py", "run", spec, "--out", tmp_path / "sw", "--workers", "2",
                  "--no-progress"])
    pdir = tmp_path / "sw" / "long" / "points"

    def both_training():
        dirs = [d for d in pdir.iterdir() if d.is_dir()] if pdir.exists() else []
        return len(dirs) == 2 and all(logged_step(d) >= 10 for d in dirs)

    wait_until(both_training, proc, "both points to train 10 steps")
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=400)
    return proc, out, err, pdir


@pytest.mark.slow
@pytest.mark.parametrize("group", [False, True], ids=["parent", "group"])
def test_sigterm_to_a_two_worker_sweep_checkpoints_every_point(tmp_path, group):
    proc, out, err, pdir = _stop_a_two_worker_sweep(tmp_path, signal.SIGTERM, group)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = said(err)
    assert len(lines) == 1 and lines[0].startswith("stopped: SIGTERM"), err[-3000:]
    assert "2 running point(s)" in lines[0]
    for d in (p for p in pdir.iterdir() if p.is_dir()):
        saved = checkpoint_steps(d)
        assert saved, f"{d.name}: no checkpoint"
        # nothing trained went unsaved: the checkpoint is at the last logged step or later
        assert saved[-1] >= 10 and saved[-1] >= logged_step(d), (saved, logged_step(d))
        assert read_result(d) is None
    assert not orbax_temps(tmp_path)


@pytest.mark.slow
def test_ctrl_c_on_a_two_worker_sweep_is_one_line(tmp_path):
    proc, out, err, pdir = _stop_a_two_worker_sweep(tmp_path, signal.SIGINT, group=True)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Interrupted" not in err, err[-3000:]
    lines = said(err)
    assert len(lines) == 1 and lines[0].startswith("stopped: SIGINT"), err[-3000:]
    assert all(checkpoint_steps(d) for d in pdir.iterdir() if d.is_dir())
    assert not orbax_temps(tmp_path)


# The child says where it is, then waits there for the signal (at most 4 s) before it goes
# on: the signal arrives in that phase, and the test does not sleep longer than it takes.
SLOW_COMPILE = """
import sys, time
import scaling.train.loop as loop
from scaling.train import stopping
real = loop.compile_steps
def slow(*a):
    print("compiling", flush=True)
    deadline = time.time() + 4
    while stopping.requested() is None and time.time() < deadline:
        time.sleep(0.01)
    return real(*a)
loop.compile_steps = slow
from scaling.cli import main
sys.exit(main(sys.argv[1:]))
"""

SLOW_SETUP = """
import sys, time
import scaling.executors.sweep as ex
real = ex.preflight
def slow(spec):
    print("preflight", flush=True)
    time.sleep(4)
    return real(spec)
ex.preflight = slow
from scaling.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_compile_exits_143_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = spawn(["-c", SLOW_COMPILE, "train", "experiments/tiny.toml", "--run-dir", run_dir,
                  "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
                  "data.max_corpus_bytes=200000", "train.steps=50", "train.batch_size=4",
                  "train.progress=false"])
    assert proc.stdout.readline().strip() == "compiling"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    lines = said(err)
    assert len(lines) == 1 and "before training started" in lines[0], err[-3000:]
    assert not (run_dir / "metrics.jsonl").exists() or logged_step(run_dir) == 0
    assert read_result(run_dir) is None


@pytest.mark.slow  # 8 s; the compile and import cases stay in the fast tier
def test_sigterm_during_a_sweeps_set_up_exits_143_with_one_line(tmp_path):
    spec = long_spec(tmp_path)
    proc = spawn(["-c", SLOW_SETUP, "run", spec, "--out", tmp_path / "sw", "--workers", "2",
                  "--no-progress"])
    assert proc.stdout.readline().strip() == "preflight"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    lines = said(err)
    assert len(lines) == 1 and "stopped before any point started" in lines[0], err[-3000:]
    pdir = tmp_path / "sw" / "long" / "points"
    assert not any((d / "metrics.jsonl").exists() for d in pdir.iterdir())


SLOW_IMPORT = """
import builtins, runpy, sys, time
real = builtins.__import__
def slow(name, *a, **k):  # run_sweep.py importing the command line: the signal comes now
    if name == "scaling.cli":
        builtins.__import__ = real
        print("importing", flush=True)
        stopping = sys.modules["scaling.train.stopping"]  # run_sweep.py's claim_early()
        deadline = time.time() + 4
        while stopping.requested() is None and time.time() < deadline:
            time.sleep(0.01)
    return real(name, *a, **k)
builtins.__import__ = slow
sys.argv = ["run_sweep.py", *sys.argv[1:]]
runpy.run_path("run_sweep.py", run_name="__main__")
"""

TINY_RUN = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
            "data.max_corpus_bytes=200000", "train.steps=50", "train.batch_size=4",
            "train.progress=false"]


def test_sigterm_while_run_sweep_imports_exits_143_with_one_line(tmp_path):
    """From run_sweep.py's first line on, a SIGTERM is a stop request (it killed the
    interpreter with -15 while the command line was still being imported)."""
    run_dir = tmp_path / "run"
    proc = spawn(["-c", SLOW_IMPORT, "train", "experiments/tiny.toml", "--run-dir", run_dir,
                  *TINY_RUN])
    assert proc.stdout.readline().strip() == "importing"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    lines = said(err)
    assert len(lines) == 1 and "before training started" in lines[0], err[-3000:]
    assert read_result(run_dir) is None


def test_a_command_without_clean_stops_keeps_the_default_sigterm(tmp_path):
    """`plan` (like status, analyze) gives the early claim back: a SIGTERM that came
    while it was held is delivered as the default would have, killing the process."""
    proc = spawn(["-c", SLOW_IMPORT, "plan", long_spec(tmp_path)])
    assert proc.stdout.readline().strip() == "importing"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, err[-3000:])
    assert "N" not in out  # killed before it printed the plan


SLURM_JOB = """
import json, signal, sys
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # submitit's "bypass" of SIGTERM
from scaling.executors.slurm_job import PointJob
print(json.dumps(PointJob(sys.argv[1])(sys.argv[2])), flush=True)
"""


@pytest.mark.slow
def test_a_slurm_job_checkpoints_on_sigterm_and_leaves_its_point_pending(tmp_path):
    """SLURM preempts or cancels with SIGTERM (then SIGKILL after a grace time); submitit
    ignores SIGTERM. The job checkpoints at its step and ends; a requeue resumes there."""
    from scaling.executors import sweep as sweep_driver
    from scaling.runs.results import point_state
    from scaling.sweep import load_spec

    sweep = sweep_driver.prepare_sweep(load_spec(long_spec(tmp_path, lrs="1e-3")), tmp_path / "sw")
    (point,) = [d for d in (sweep / "points").iterdir() if d.is_dir()]
    proc = spawn(["-c", SLURM_JOB, sweep, point.name])
    wait_until(lambda: logged_step(point) >= 10, proc, "the job to train 10 steps")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    value = json.loads(out.strip().splitlines()[-1])
    assert value["status"] == "interrupted" and value["step"] >= 10, value
    saved = checkpoint_steps(point)
    assert saved and saved[-1] == value["step"] >= logged_step(point)
    assert read_result(point) is None and point_state(point) == "pending"
    assert not orbax_temps(tmp_path)
