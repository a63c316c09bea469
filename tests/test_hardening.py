"""Hardening: corrupt run files, the run-folder lock, leftovers of killed writers, modes,
bad input at the command line, the checkpoint fallback's message, the executor modules."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scaling.runs import lock
from scaling.config import ConfigError
from scaling.runs.results import format_status, is_locked, point_lock, point_state, write_tables
from scaling.runs.lock import RunFolderBusy, lock_owner, run_lock
from scaling.runs.runfiles import LOCK_FILE, CorruptRunFile, atomic_write_text, clean_stale_temps, read_result

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "run_sweep.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------------------
# Reading run files
# --------------------------------------------------------------------------------------


def test_read_result_contract(tmp_path):
    assert read_result(tmp_path) is None  # missing: not finished
    (tmp_path / "result.json").write_text('{"status": "done", "N": 3}')
    assert read_result(tmp_path) == {"status": "done", "N": 3}
    for garbage, why in [("{\"status\": \"do", "not JSON"), ("", "empty"), ("[1, 2]", "no 'status'"),
                         ('{"N": 3}', "no 'status'")]:
        (tmp_path / "result.json").write_text(garbage)
        with pytest.raises(CorruptRunFile) as err:
            read_result(tmp_path)
        assert str(tmp_path / "result.json") in str(err.value) and why in str(err.value)
        assert isinstance(err.value, ConfigError)  # the command line prints one line, exit 2


# --------------------------------------------------------------------------------------
# Atomic writes: modes and leftovers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_of_a_plain_write(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == mode


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".results.csv.{host}.{dead_pid()}.abcd_123.tmp"
    live = tmp_path / f".results.csv.{host}.{os.getpid()}.efgh_456.tmp"
    other_host = tmp_path / f".results.csv.elsewhere.{dead_pid()}.ijkl_789.tmp"
    legacy_old = tmp_path / ".result.json.x1y2z3w4.tmp"  # the older writer's names
    legacy_new = tmp_path / ".config.json.a1b2c3d4.tmp"
    keep = tmp_path / "results.csv"
    for p in (dead, live, other_host, legacy_old, legacy_new, keep):
        p.write_text("x")
    hours_ago = time.time() - 2 * 3600
    os.utime(legacy_old, (hours_ago, hours_ago))
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead, legacy_old])
    assert live.exists() and other_host.exists() and legacy_new.exists() and keep.exists()


def test_a_kill_during_the_table_write_leaves_nothing_after_the_next_write(tmp_path):
    """A writer SIGKILLed inside atomic_write leaves its temp file; the next write_tables
    removes it (the writer is dead), and the tables come out readable by others."""
    sweep = tmp_path / "sw"
    (sweep / "points").mkdir(parents=True)
    script = textwrap.dedent(f"""
        import os, signal
        from scaling.runs.runfiles import atomic_write
        def die(tmp):
            tmp.write_text("half a tab")
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(sweep / 'results.csv')!r}, die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env())
    assert proc.returncode == -9
    left = [p.name for p in sweep.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".results.csv.")
    old = os.umask(0o022)
    try:
        write_tables(sweep)
    finally:
        os.umask(old)
    assert not [p for p in sweep.iterdir() if p.name.endswith(".tmp")]
    for name in ("results.csv", "results.parquet", "curves.parquet"):
        assert stat.S_IMODE((sweep / name).stat().st_mode) == 0o644


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


# --------------------------------------------------------------------------------------
# The run-folder lock
# --------------------------------------------------------------------------------------

HOLDER = """
import sys
from scaling.runs.lock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/run until the test ends."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=ROOT, env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.stdin.close()
    proc.wait(timeout=30)


def test_second_process_gets_run_folder_busy_with_pid_and_host(holder):
    run, proc = holder
    with pytest.raises(RunFolderBusy) as err:
        with run_lock(run):
            pass
    host = socket.gethostname()
    assert str(err.value) == f"run folder {run} is in use by pid {proc.pid} on host {host}"
    assert lock_owner(run) == {"pid": proc.pid, "host": host, "since": lock_owner(run)["since"]}
    # The point lock is the same lock: a sweep sees the folder as running, cannot claim it.
    assert is_locked(run) and point_state(run) == "running"
    with point_lock(run) as mine:
        assert mine is False


def test_lock_is_released_with_the_holder(holder):
    run, proc = holder
    proc.stdin.close()
    proc.wait(timeout=30)
    assert lock_owner(run) is None
    with run_lock(run):
        assert lock_owner(run)["pid"] == os.getpid()
    assert (run / LOCK_FILE).read_text() == ""  # released: no holder recorded


def test_lock_is_reentrant_in_one_process(tmp_path):
    run = tmp_path / "run"
    with point_lock(run) as mine:
        assert mine
        with run_lock(run):  # what loop.train does inside a sweep point
            with run_lock(run):
                assert lock_owner(run)["pid"] == os.getpid()
        # the inner release keeps the outer hold: another process still cannot take it
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(run)], cwd=ROOT, env=_env(),
                               input="", capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "RunFolderBusy" in probe.stderr
        assert f"pid {os.getpid()}" in probe.stderr
    assert lock_owner(run) is None


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pid = dead_pid()
    (run / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    assert lock_owner(run) is None and point_state(run) == "pending"
    with run_lock(run):
        assert lock_owner(run)["pid"] == os.getpid()


def test_lock_of_another_host_counts_until_its_heartbeat_is_stale(tmp_path):
    """Where flock does not reach across hosts, another host's record is honoured while
    its holder keeps touching it, and taken over once it is LOCK_STALE_S old."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": 4242, "host": "node-elsewhere"}))
    with pytest.raises(RunFolderBusy, match="in use by pid 4242 on host node-elsewhere"):
        with run_lock(run):
            pass
    old = time.time() - lock.LOCK_STALE_S - 60
    os.utime(run / LOCK_FILE, (old, old))
    with run_lock(run):
        assert lock_owner(run)["pid"] == os.getpid()


def test_lock_without_flock_uses_the_record(tmp_path, monkeypatch):
    """A filesystem without flock (ENOLCK): the pid/host record is the lock."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    me = socket.gethostname()
    (run / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": me}))  # alive
    with pytest.raises(RunFolderBusy, match=f"pid {os.getppid()} on host {me}"):
        with run_lock(run):
            pass
    (run / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": me}))
    with run_lock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (run / LOCK_FILE).read_text() == ""


def test_lock_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with run_lock(tmp_path / "run"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / LOCK_FILE).stat().st_mode) == 0o644


# --------------------------------------------------------------------------------------
# Corrupt results in a sweep
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_corrupt_result_is_shown_and_rebuilt_and_the_sweep_goes_on(tmp_path, caplog):
    from scaling.executors import sweep as sweep_driver
    from tests.test_sweep_run import write_spec

    spec = write_spec(tmp_path, tokens="5_120", lrs="1e-3, 3e-3")  # 2 points x 20 steps
    first = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False)
    sweep = first["sweep_dir"]
    assert first["counts"] == {"done": 2}
    rebuilt, retrained = sorted((sweep / "points").glob("*"))
    before = {d.name: read_result(d) for d in (rebuilt, retrained)}
    (rebuilt / "result.json").write_text('{"status": "do')  # cut by a disk failure
    (retrained / "result.json").write_bytes(b"\x00\x00garbage")
    for ck in (retrained / "checkpoints").iterdir():  # nothing to rebuild from
        subprocess.run(["rm", "-rf", str(ck)], check=True)

    assert point_state(rebuilt) == point_state(retrained) == "corrupt"
    text = format_status(sweep)
    assert "corrupt 2" in text
    assert str(rebuilt / "result.json") in text and str(retrained / "result.json") in text
    status = cli("status", sweep)
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert str(rebuilt / "result.json") in status.stdout

    with caplog.at_level(logging.WARNING):  # workers=1: the warnings are logged here
        again = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False, workers=1)
    assert again["counts"] == {"done": 2}
    for d in (rebuilt, retrained):
        assert any(str(d / "result.json") in r.getMessage() for r in caplog.records)
        assert len(list(d.glob("result.json.corrupt-*"))) == 1  # kept for inspection
        r = read_result(d)
        assert r["final_eval_loss"] == before[d.name]["final_eval_loss"]
        assert r["steps"] == before[d.name]["steps"] == 20
    assert read_result(rebuilt)["resumed_from_step"] == 20  # from the final checkpoint
    assert read_result(retrained)["resumed_from_step"] == 0  # trained again
    assert "corrupt" not in format_status(sweep)


# --------------------------------------------------------------------------------------
# Command line: status, checkpoints, modules
# --------------------------------------------------------------------------------------


def test_status_of_a_missing_or_non_sweep_folder_is_an_error(tmp_path, run_sweep_main):
    # in this process; `status` through run_sweep.py: tests/test_hardening_files.py,
    # tests/test_executors_order.py
    for folder, words in [(tmp_path / "nope", "no such sweep folder"),
                          (tmp_path, "not a sweep folder")]:
        out = run_sweep_main("status", folder)
        assert out.returncode == 2, out.stderr
        assert words in out.stderr and str(folder) in out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "nope").exists()


CORRUPT_CKPT = """
import glob, sys
import jax, numpy as np
from scaling.train.checkpoint import Checkpointer
from scaling.runtime import setup_logging
setup_logging()
d, what = sys.argv[1], sys.argv[2]
state = {"a": np.arange(10, dtype=np.float32)}
c = Checkpointer(d)
c.save(1, state, {"step": 1}); c.save(2, state, {"step": 2}); c.close()
open(f"{d}/2/{what}", "w").write("garbage")
c = Checkpointer(d)
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
print("restored", c.restore_latest(abstract)[1]["step"])
"""


@pytest.mark.parametrize("what, step, words", [
    ("meta/metadata", 1, "cannot be restored"),  # unusable: the older one is used
    ("_CHECKPOINT_METADATA", 2, "restored, but orbax reported"),  # orbax logs, yet it loads
])
def test_corrupt_checkpoint_gives_one_warning_line(tmp_path, what, step, words):
    out = subprocess.run([sys.executable, "-c", CORRUPT_CKPT, str(tmp_path / "ck"), what],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"restored {step}" in out.stdout
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert words in lines[0] and "step 2" in lines[0] and "WARNING" in lines[0]
    assert "ERROR" not in out.stderr and "UserWarning" not in out.stderr


def test_slurm_and_executors_do_not_import_each_other():
    code = ("import sys, scaling.executors.slurm; assert 'scaling.executors.local' not in sys.modules; "
            "import scaling.executors.local as e, scaling.executors.point_runner as p; assert e.run_point is p.run_point")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
