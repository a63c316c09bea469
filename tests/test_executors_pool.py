"""Side-by-side workers with real training: trunks before branches, a failed trunk's
branch blocked, every point exactly once. (Branch configs here are plain runs: what is
tested is the executor's order and dependency handling, not the cooldown itself.)"""

import json

import pandas as pd
import pytest

from scaling.executors import local as executors
from scaling.executors import sweep as sweep_driver
from scaling.runs.results import point_state
from scaling.runs.runfiles import read_result
from scaling.sweep import load_spec
from tests.test_sweep_run import write_spec


def _make_branch(point_dir, trunk: str, step: int = 10) -> None:
    meta = json.loads((point_dir / "point.json").read_text())
    meta.update(role="branch", trunk=trunk, branched_at_step=step)
    (point_dir / "point.json").write_text(json.dumps(meta))


def _prepare(tmp_path, lrs):
    spec = write_spec(tmp_path, tokens="5_120", lrs=lrs)  # 20 steps each
    sweep = sweep_driver.prepare_sweep(load_spec(spec), tmp_path / "sw")
    ids = [json.loads((d / "point.json").read_text())["point_id"]
           for d in sorted((sweep / "points").iterdir())]
    return sweep, ids


def test_two_workers_run_a_branch_only_after_its_trunk(tmp_path):
    sweep, (t, b, x) = _prepare(tmp_path, "1e-3, 2e-3, 3e-3")
    _make_branch(sweep / "points" / b, t)
    cores = executors._cores()
    slots = [{"env": executors._thread_env(1), "cores": [cores[i % len(cores)]]} for i in range(2)]
    executors._run_pool(sweep, [b, x, t], slots, progress=False)
    pdir = sweep / "points"
    assert all(point_state(pdir / p) == "done" for p in (t, b, x))
    trunk_done = (pdir / t / "result.json").stat().st_mtime
    branch_started = (pdir / b / "config.json").stat().st_mtime
    assert branch_started >= trunk_done
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 3 and (table["status"] == "done").all()
    # Rerun: nothing trains again.
    mtimes = {p: (pdir / p / "result.json").stat().st_mtime for p in (t, b, x)}
    executors._run_pool(sweep, [t, b, x], slots, progress=False)
    assert {p: (pdir / p / "result.json").stat().st_mtime for p in (t, b, x)} == mtimes


@pytest.mark.slow  # 8 s; test_two_workers_run_a_branch_only_after_its_trunk stays in the fast tier
def test_branch_of_a_trunk_that_fails_in_a_worker_is_not_run(tmp_path):
    sweep, (t, b, x) = _prepare(tmp_path, "1e-3, 2e-3, 3e-3")
    pdir = sweep / "points"
    _make_branch(pdir / b, t)
    meta = json.loads((pdir / t / "point.json").read_text())
    meta["config"]["data"]["corpus"] = str(tmp_path / "no-such-corpus.txt")
    (pdir / t / "point.json").write_text(json.dumps(meta))
    executors.run_local(sweep, [t, b, x], progress=False, workers=2)
    assert point_state(pdir / t) == "failed"
    assert point_state(pdir / b) == "blocked"
    assert not (pdir / b / "config.json").exists()  # never started
    assert read_result(pdir / x)["status"] == "done"
    row = pd.read_csv(sweep / "results.csv").set_index("point_id").loc[b]
    assert row["status"] == "blocked" and f"trunk {t} failed" in row["error"]
