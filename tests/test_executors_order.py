"""The local executor's order and dependencies: trunks before branches, blocked branches,
the side-by-side rule, point.json's new keys, the results table's role columns, and
`status --watch`. Points are hand-written folders; nothing here trains."""

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from scaling.executors import local as executors
from scaling.executors import order
from scaling.executors import sweep as sweep_driver
from scaling.config import Config, ModelConfig, TrainConfig
from scaling.runs.results import collect, format_status, point_state, watch_summary

ROOT = Path(__file__).resolve().parent.parent


def config(d_model: int = 32, n_layer: int = 2, batch: int = 8, steps: int = 20) -> dict:
    m = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=2, seq_len=32, vocab_size=256)
    return Config(name="p", model=m, train=TrainConfig(steps=steps, batch_size=batch)).to_dict()


def make_point(sweep: Path, pid: str, *, trunk: str | None = None, d_model: int = 32,
               role: str = "run", branched_at_step: int | None = None) -> Path:
    d = sweep / "points" / pid
    d.mkdir(parents=True)
    meta = {"sweep": sweep.name, "point_id": pid, "label": f"label-{pid}", "group": "",
            "N": 1000, "D": 5000, "C": 3e7, "config": config(d_model), "role": role,
            "trunk": trunk, "branched_at_step": branched_at_step}
    (d / "point.json").write_text(json.dumps(meta))
    return d


def finish(d: Path, status: str = "done") -> None:
    (d / "result.json").write_text(json.dumps({"status": status, "steps": 20,
                                               "final_eval_loss": 3.0}))


def fail(d: Path, error: str = "RuntimeError: boom") -> None:
    (d / "failed.json").write_text(json.dumps({"error": error}))


@pytest.fixture
def sweep(tmp_path):
    s = tmp_path / "sw"
    (s / "points").mkdir(parents=True)
    return s


def test_order_puts_every_trunk_before_its_branches_and_largest_first(sweep):
    make_point(sweep, "b1", trunk="t1", role="branch", branched_at_step=10)  # listed first
    make_point(sweep, "small", d_model=16)
    make_point(sweep, "t1", role="trunk")
    make_point(sweep, "big", d_model=128)
    make_point(sweep, "b2", trunk="t1", role="branch", branched_at_step=15)
    ids = ["b1", "small", "t1", "big", "b2"]
    plan_order = order.order_points(sweep, ids, largest_first=False)
    assert plan_order == ["t1", "b1", "small", "big", "b2"]
    sized = order.order_points(sweep, ids, largest_first=True)
    assert sized[0] == "big" and sized[-1] == "small"  # same steps: FLOPs decide
    by_time = order.order_points(sweep, ids, largest_first=True, seconds={"small": 99.0})
    assert by_time[0] == "small"  # the planner's time estimate decides first
    assert sized.index("t1") < sized.index("b1") and sized.index("t1") < sized.index("b2")
    flops = [order.step_flops(sweep / "points" / p) for p in ("big", "t1", "small")]
    assert flops[0] > flops[1] > flops[2] > 0


def test_queue_skips_a_branch_until_its_trunk_is_done(sweep):
    t = make_point(sweep, "t", role="trunk")
    make_point(sweep, "b", trunk="t", role="branch")
    make_point(sweep, "x")
    q = order.Queue(sweep, ["b", "t", "x"])  # the branch first: it must be skipped
    assert q.take() == "t"
    assert q.take() == "x"  # the branch waits: its trunk is handed out, not done
    assert q.take() is None and q.todo == ["b"] and not q.blocked
    finish(t)
    q.finished("t")
    assert q.take() == "b"


def test_branch_of_a_failed_trunk_is_blocked_with_the_reason(sweep):
    t = make_point(sweep, "t", role="trunk")
    b = make_point(sweep, "b", trunk="t", role="branch", branched_at_step=12)
    q = order.Queue(sweep, ["t", "b"])
    assert q.take() == "t"
    fail(t, "RuntimeError: trunk exploded")
    q.finished("t")
    assert q.take() is None
    assert "b" in q.blocked and "trunk t failed: RuntimeError: trunk exploded" in q.blocked["b"]
    assert point_state(b) == "blocked"
    results, _ = collect(sweep)
    row = results.set_index("point_id").loc["b"]
    assert row["status"] == "blocked" and "trunk exploded" in row["error"]
    assert row["role"] == "branch" and row["trunk"] == "t" and row["branched_at_step"] == 12
    assert "blocked 1" in format_status(sweep)
    assert "trunk t failed" in format_status(sweep)
    # A diverged trunk blocks too; a trunk that is done again unblocks.
    (t / "failed.json").unlink()
    (t / "result.json").write_text(json.dumps({"status": "diverged",
                                               "divergence_reason": "loss is nan"}))
    assert point_state(b) == "blocked"
    finish(t)
    assert point_state(b) == "pending"


def test_run_local_runs_trunks_first_and_never_a_branch_of_a_failed_trunk(sweep, monkeypatch):
    for pid, trunk in [("b1", "t1"), ("t1", None), ("b2", "t2"), ("t2", None), ("x", None)]:
        make_point(sweep, pid, trunk=trunk, role="branch" if trunk else "trunk")
    ran = []

    def fake_run_point(sweep_dir, pid, **kw):
        ran.append(pid)
        d = Path(sweep_dir) / "points" / pid
        if pid == "t2":
            fail(d)
            return {"status": "failed"}
        finish(d)
        return {"status": "done"}

    monkeypatch.setattr(executors, "run_point", fake_run_point)
    executors.run_local(sweep, ["b1", "t1", "b2", "t2", "x"], progress=False, workers=1)
    assert ran == ["t1", "b1", "t2", "x"]  # b2 never ran: its trunk failed
    assert point_state(sweep / "points" / "b2") == "blocked"
    results, _ = collect(sweep)
    assert sorted(results["status"]) == ["blocked", "done", "done", "done", "failed"]


def test_branch_whose_trunk_is_not_in_this_run_waits_or_is_blocked(sweep, monkeypatch):
    make_point(sweep, "t", role="trunk")  # planned, never run here, never run at all
    make_point(sweep, "b", trunk="t", role="branch")
    monkeypatch.setattr(executors, "run_point", lambda *a, **k: pytest.fail("ran a branch"))
    q = order.Queue(sweep, ["b"])
    assert q.take() is None and "trunk t is not done" in q.blocked["b"]


def test_side_by_side_rule(sweep, monkeypatch):
    monkeypatch.delenv("SCALINGLAB_SIDE_BY_SIDE", raising=False)
    monkeypatch.setattr(executors, "_cores", lambda: [0, 1])
    monkeypatch.setattr(executors, "_available_memory", lambda: 64 * 2**30)
    for pid in ("a", "b", "c"):
        make_point(sweep, pid)
    make_point(sweep, "huge", d_model=2048)
    ids = ["a", "b", "c", "huge"]
    plan = executors.side_by_side_plan(sweep, ids, None)
    assert plan["big"] == ["huge"] and plan["small"] == ["a", "b", "c"]
    assert plan["workers"] == 2 and plan["cores_each"] == 1  # 2 x 1 thread on 2 cores
    assert executors.side_by_side_plan(sweep, ids, 1)["small"] == []  # the old rule
    monkeypatch.setenv("SCALINGLAB_SIDE_BY_SIDE", "0")
    assert executors.side_by_side_plan(sweep, ids, None)["small"] == []
    monkeypatch.setenv("SCALINGLAB_SIDE_BY_SIDE", "8")  # never more workers than cores
    forced = executors.side_by_side_plan(sweep, ids, None)
    assert forced["workers"] == 2 and set(forced["small"]) == set(ids)
    monkeypatch.delenv("SCALINGLAB_SIDE_BY_SIDE")
    monkeypatch.setattr(executors, "_available_memory", lambda: 2 * 2**30)  # room for one
    assert executors.side_by_side_plan(sweep, ids, None)["small"] == []
    monkeypatch.setattr(executors, "_available_memory", lambda: 64 * 2**30)
    for pid in ("a", "b"):
        finish(sweep / "points" / pid)  # one small point left: still one core, as before
    last = executors.side_by_side_plan(sweep, ids, None)
    assert (last["workers"], last["cores_each"]) == (1, 1) and "c" in last["small"]
    assert executors.side_by_side_plan(sweep, ["c"], None)["small"] == []  # alone in its sweep
    monkeypatch.setenv("SCALINGLAB_SIDE_BY_SIDE", "two")
    with pytest.raises(Exception, match="SCALINGLAB_SIDE_BY_SIDE"):
        executors.side_by_side_plan(sweep, ids, None)


def _point(requested: dict):
    cfg = SimpleNamespace(name="lbl", to_dict=lambda: {"model": {}})
    return SimpleNamespace(point_id="p1", config=cfg, group="g", compute_budget=1e9,
                           n_params=10, n_params_total=20, tokens=100, accounting="total",
                           flops=1.5e9, flops_6nd=6e3, flops_exact=1.5e9,
                           tokens_per_param=5.0, requested=requested)


def test_point_meta_has_accounting_and_the_branch_keys():
    plain = sweep_driver.point_meta("s", _point({"lr": 1e-3}))
    assert plain["accounting"] == "total" and plain["C"] == 1.5e9
    assert plain["C_6ND"] == 6e3 and plain["C_exact"] == 1.5e9
    assert plain["role"] == "run" and plain["trunk"] is None
    assert plain["branched_at_step"] is None
    branch = sweep_driver.point_meta("s", _point({"role": "branch", "trunk": "abc",
                                               "branched_at_step": 80}))
    assert (branch["role"], branch["trunk"], branch["branched_at_step"]) == ("branch", "abc", 80)


def test_results_role_columns_fall_back_to_result_json(sweep):
    d = make_point(sweep, "r")
    meta = json.loads((d / "point.json").read_text())
    for k in ("role", "trunk", "branched_at_step"):
        meta.pop(k)
    (d / "point.json").write_text(json.dumps(meta))
    (d / "result.json").write_text(json.dumps({"status": "done", "role": "branch",
                                               "trunk": "zz", "branched_at_step": 7}))
    row = collect(sweep)[0].iloc[0]
    assert (row["role"], row["trunk"], row["branched_at_step"]) == ("branch", "zz", 7)


# --------------------------------------------------------------------------------------
# status --watch
# --------------------------------------------------------------------------------------


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "run_sweep.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_watch_of_a_finished_sweep_ends_by_itself(sweep):
    finish(make_point(sweep, "a"))
    fail(make_point(sweep, "f"))
    out = cli("status", sweep, "--watch", "--interval", "0.1", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "done 1" in out.stdout and "failed 1" in out.stdout and "Traceback" not in out.stderr
    assert out.stdout.count(f"sweep {sweep.name}:") == 2  # one refresh, then the full table


def test_watch_shows_running_points_and_ctrl_c_exits_0(sweep):
    from scaling.runs.lock import acquire_run_lock, release_run_lock

    d = make_point(sweep, "r")
    make_point(sweep, "p")
    (d / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 4.25}) + "\n" +
                                     json.dumps({"step": 10, "eval_loss": 4.5}) + "\n")
    key = acquire_run_lock(d)
    try:
        text, active = watch_summary(sweep)
        assert active and "running 1" in text and "pending 1" in text and "corrupt 0" in text
        row = next(line for line in text.splitlines() if line.startswith("r "))
        assert "10/20" in row and "4.2500" in row
        proc = subprocess.Popen([sys.executable, "run_sweep.py", "status", str(sweep), "--watch",
                                 "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                # a background shell's ignored SIGINT stays ignored across exec
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        # two refreshes printed (the first at once, the next 0.2 s later): it is in its loop
        # (not importing, where Ctrl-C would be another path), and it keeps watching
        seen = []
        while sum(line.startswith(f"sweep {sweep.name}:") for line in seen) < 2:
            line = proc.stdout.readline()
            if not line:  # it ended: the assertions below say how
                break
            seen.append(line)
        assert proc.poll() is None  # still watching: a point is running
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        out = "".join(seen) + out
    finally:
        release_run_lock(key)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "10/20" in out


def test_watch_interval_must_be_positive(sweep, run_sweep_main):
    out = run_sweep_main("status", sweep, "--watch", "--interval", "-1")  # in this process
    assert out.returncode == 2 and "--interval" in out.stderr and "Traceback" not in out.stderr


def test_run_workers_must_be_at_least_one(tmp_path, run_sweep_main):
    # in this process; `run` through run_sweep.py: tests/test_hardening_files.py
    out = run_sweep_main("run", ROOT / "experiments" / "demo.toml", "--workers", "0", "--out",
                         tmp_path)
    assert out.returncode == 2 and "--workers = 0" in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written
