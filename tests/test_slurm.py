"""The SLURM executor against a real cluster (`.ci/slurm_local.sh up` on one machine).

The cluster tests skip, with the reason, where `sbatch` is missing or no controller
answers; CI brings the cluster up before the tests. Every job trains a tiny model on one
CPU core (single-threaded XLA), so two jobs run side by side on a 2-core machine. The
run lengths of the cancel and time-limit tests are sized from the throughput the first
sweep measured, so that they outlast the event they wait for on any machine speed.

The first tests (sbatch flags, parsing) need no cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.config import ConfigError
from scaling.runs.results import format_status
from scaling.runs.runfiles import read_metrics, read_result
from scaling.executors.slurm import read_record, refresh, sbatch_parameters
from scaling.executors.slurm_states import _expand, _parse, query_states

ROOT = Path(__file__).resolve().parent.parent
BATCH, SEQ = 8, 32


# --------------------------------------------------------------------------------------
# No cluster needed
# --------------------------------------------------------------------------------------


def test_sbatch_parameters_from_the_slurm_table():
    p = sbatch_parameters({"partition": "gpu", "gpus_per_job": 8, "cpus_per_job": 32, "mem_gb": 64,
                           "time_min": 720, "account": "lab", "qos": "high", "nodes": 2,
                           "array_parallelism": 4, "setup": ["module load cuda"],
                           "extra": {"constraint": "h100", "exclusive": True, "requeue": False,
                                     "ntasks_per_node": 2}}, "demo")
    assert p == {"job_name": "demo", "nodes": 2, "ntasks_per_node": 2, "time": 720,
                 "signal_delay_s": 90, "partition": "gpu", "account": "lab", "qos": "high",
                 "mem": "65536M", "cpus_per_task": 8, "gpus_per_node": 4, "array_parallelism": 4,
                 "setup": ["module load cuda"],
                 "additional_parameters": {"constraint": "h100", "exclusive": True}}
    short = sbatch_parameters({"time_min": 1}, "x")
    assert short["signal_delay_s"] == 10 and short["time"] == 1 and "partition" not in short
    with pytest.raises(ConfigError, match="cpus_per_job = 3"):
        sbatch_parameters({"cpus_per_job": 3, "nodes": 2}, "x")
    with pytest.raises(ConfigError, match="gpus_per_job = 3"):
        sbatch_parameters({"gpus_per_job": 3, "nodes": 2}, "x")


def test_sbatch_script_has_the_flags():
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="true", folder="/tmp/x",
                               **sbatch_parameters({"partition": "p", "time_min": 30, "mem_gb": 2,
                                                    "extra": {"constraint": "a100"}}, "s"))
    for flag in ("--partition=p", "--time=30", "--mem=2048M", "--constraint=a100", "--signal=USR2@90",
                 "--job-name=s"):
        assert f"#SBATCH {flag}" in text
    assert submitit


def test_branches_are_submitted_after_their_trunk_job(tmp_path, monkeypatch):
    """A branch's job depends (afterok) on its trunk's job, new or already queued; a branch
    whose trunk is done goes with the free points; one whose trunk failed and is not
    resubmitted is not submitted. No cluster: submitit's executor is replaced."""
    from scaling.executors import slurm

    pdir = tmp_path / "sw" / "points"
    trunks = {"b1": "t", "b3": "t2", "b4": "t4", "b5": "t5"}
    for pid in ("t", "x", "t2", "t4", "t5", *trunks):
        (pdir / pid).mkdir(parents=True)
        (pdir / pid / "point.json").write_text(json.dumps({"label": pid, "trunk": trunks.get(pid)}))
    (pdir / "t2" / "result.json").write_text('{"status": "done"}')
    (pdir / "t4" / "failed.json").write_text('{"error": "OOM"}')
    (pdir / "t5" / "slurm.json").write_text('{"job_id": "77_3", "state": "PENDING"}')
    submissions = []

    class Job:
        def __init__(self, job_id):
            self.job_id, self.num_tasks = job_id, 1
            self.paths = type("P", (), {"stdout": tmp_path / "o", "stderr": tmp_path / "e"})

    class Executor:
        def __init__(self):
            self.parameters = {"additional_parameters": {"constraint": "cpu"}}

        def update_parameters(self, **kw):
            self.parameters.update(kw)

        def map_array(self, fn, ids):
            n = 100 + len(submissions)
            submissions.append((dict(self.parameters), list(ids)))
            return [Job(f"{n}_{i}") for i in range(len(ids))]

    monkeypatch.setattr(slurm, "_executor", lambda sweep_dir, spec: Executor())
    spec = type("Spec", (), {"name": "sw"})
    records = slurm.submit_with_trunks(spec, tmp_path / "sw", ["b1", "t", "x", "b3", "b4", "b5"])
    assert [ids for _, ids in submissions] == [["t", "x", "b3"], ["b1"], ["b5"]]
    free, after_new, after_queued = (params for params, _ in submissions)
    assert "dependency" not in free
    trunk_job = records["t"]["job_id"]
    assert trunk_job == "100_0" and after_new["dependency"] == f"afterok:{trunk_job}"
    assert after_queued["dependency"] == "afterok:77_3"
    assert after_new["additional_parameters"] == {"constraint": "cpu", "kill-on-invalid-dep": "yes"}
    assert records["b1"]["after"] == trunk_job and "b4" not in records
    assert read_record(pdir / "b1")["after"] == trunk_job


def test_sbatch_script_of_a_branch_has_the_dependency():
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="true", folder="/tmp/x", job_name="s",
                               dependency="afterok:12_3",
                               additional_parameters={"kill-on-invalid-dep": "yes"})
    assert "#SBATCH --dependency=afterok:12_3" in text
    assert "#SBATCH --kill-on-invalid-dep=yes" in text


def test_parse_squeue_and_sacct_lines():
    assert _expand("12") == ["12"] and _expand("12_3") == ["12_3"]
    assert _expand("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    text = "40_0|COMPLETED\n40_0.batch|COMPLETED\n40_1|CANCELLED by 0\n40_[2-3%2]|PENDING\n41|RUNNING\n"
    assert _parse(text) == {"40_0": "COMPLETED", "40_1": "CANCELLED", "40_2": "PENDING",
                            "40_3": "PENDING", "41": "RUNNING"}


def test_coordinator_falls_back_to_localhost_when_the_node_name_does_not_resolve(monkeypatch):
    from scaling.executors.slurm_job import _coordinator_fallback

    # a private copy: what the function sets must not leak to the jobs later tests submit
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if not k.startswith("JAX_")})
    os.environ.update(SLURM_STEP_NODELIST="no-such-node.invalid", SLURM_JOB_NUM_NODES="1",
                      SLURM_JOB_ID="4100", SLURM_NTASKS="2", SLURM_PROCID="1")
    _coordinator_fallback()
    assert os.environ["JAX_COORDINATOR_ADDRESS"] == f"127.0.0.1:{4100 % 4096 + 61440}"
    assert (os.environ["JAX_NUM_PROCESSES"], os.environ["JAX_PROCESS_ID"]) == ("2", "1")
    del os.environ["JAX_COORDINATOR_ADDRESS"]
    os.environ["SLURM_STEP_NODELIST"] = "localhost"  # resolves: JAX's own SLURM path
    _coordinator_fallback()
    assert "JAX_COORDINATOR_ADDRESS" not in os.environ


# --------------------------------------------------------------------------------------
# A real cluster
# --------------------------------------------------------------------------------------


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (bring a local cluster up: sudo .ci/slurm_local.sh up)"
    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"SLURM does not answer: {e}"
    if "UP" not in ping.stdout:
        said = (ping.stdout + ping.stderr).strip().splitlines()
        return f"no SLURM controller answers `scontrol ping` ({said[0] if said else ping.returncode})"
    if not any(s.strip().rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
               for s in nodes.stdout.split()):
        return f"no usable SLURM node (sinfo: {nodes.stdout.strip() or nodes.stderr.strip()})"
    return None


PROBLEM = _cluster_problem()


@pytest.fixture(autouse=True)
def _job_env(monkeypatch):
    """sbatch exports this environment to the jobs: one CPU thread each, quick polling."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("SCALINGLAB_SLURM_POLL_S", "1")
    monkeypatch.delenv("SCALINGLAB_SLURM_NO_WAIT", raising=False)


def write_spec(path: Path, name: str, *, steps: int, seeds=(0,), checkpoint_every: int = 0,
               eval_every: int = 0, log_every: int = 10, slurm: str = "time_min = 10",
               cpus: int = 1, data: str = "max_corpus_bytes = 1000000", train: str = "") -> Path:
    # schedule "constant": the compiled step does not depend on the step count, so every
    # job after the first one loads it from the persistent compilation cache
    text = textwrap.dedent(f"""\
        name = "{name}"
        executor = "slurm"
        [model]
        n_layer = 2
        d_model = 32
        n_head = 2
        seq_len = {SEQ}
        [data]
        {data}
        [optim]
        schedule = "constant"
        warmup_steps = 0
        [train]
        steps = {steps}
        batch_size = {BATCH}
        log_every = {log_every}
        eval_every = {eval_every}
        eval_tokens = 2048
        checkpoint_every = {checkpoint_every}
        {train}
        [sweep]
        seeds = {list(seeds)}
        [slurm]
        cpus_per_job = {cpus}
        """) + textwrap.dedent(slurm) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sweep(spec: Path, out: Path, *, wait: bool = True) -> dict:
    from scaling.executors.sweep import run_sweep

    return run_sweep(spec, out=out, executor="slurm", progress=False, wait=wait)


def point_dirs(sweep_dir: Path) -> dict[int, Path]:
    """seed -> point folder."""
    out = {}
    for d in sorted((sweep_dir / "points").iterdir()):
        meta = json.loads((d / "point.json").read_text())
        out[meta["config"]["train"]["seed"]] = d
    return out


def wait_until(what: str, check, timeout: float, every: float = 0.25):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Scenario 1: a sweep of four tiny points submitted through sbatch (one job array)."""
    if PROBLEM is not None:
        pytest.skip(f"no SLURM cluster: {PROBLEM}")
    mp = pytest.MonkeyPatch()
    mp.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    mp.setenv("JAX_PLATFORMS", "cpu")
    mp.setenv("SCALINGLAB_SLURM_POLL_S", "1")
    try:
        tmp = tmp_path_factory.mktemp("four")
        spec = write_spec(tmp / "four.toml", "four", steps=800, seeds=(0, 1, 2, 3),
                          checkpoint_every=400, eval_every=400)
        t0 = time.time()
        summary = sweep(spec, tmp / "sweeps")
        elapsed = time.time() - t0
    finally:
        mp.undo()
    return {"spec": spec, "out": tmp / "sweeps", "summary": summary, "elapsed": elapsed,
            "dir": Path(summary["sweep_dir"])}


@pytest.fixture(scope="module")
def steps_per_s(four):
    """Training throughput of one single-threaded job on this machine, as measured.

    The logged tokens_per_s is cumulative from the first step, which is slow; the rate over
    the second half of each run is what a long run sees.
    """
    import numpy as np

    rates = []
    for d in point_dirs(four["dir"]).values():
        rows = [r for r in read_metrics(d) if "tokens_per_s" in r]
        seconds = [r["step"] * BATCH * SEQ / r["tokens_per_s"] for r in rows]
        half = len(rows) // 2
        if rows and seconds[-1] > seconds[half]:
            rates.append((rows[-1]["step"] - rows[half]["step"]) / (seconds[-1] - seconds[half]))
    assert rates, "no throughput in the four points' metrics"
    return float(np.median(rates))


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(300)
def test_four_points_through_sbatch_all_finish(four):
    sweep_dir = four["dir"]
    assert four["summary"]["counts"] == {"done": 4}, four["summary"]
    res = pd.read_csv(sweep_dir / "results.csv")
    assert len(res) == 4 and set(res["status"]) == {"done"}
    assert res["final_eval_loss"].notna().all() and (res["steps"] == 800).all()
    records = {d.name: read_record(d) for d in point_dirs(sweep_dir).values()}
    arrays = {r["array_job_id"] for r in records.values()}
    assert len(arrays) == 1, records  # one job array for the sweep
    assert sorted(r["array_task_id"] for r in records.values()) == [0, 1, 2, 3]
    assert all(r["state"] == "COMPLETED" for r in records.values()), records
    assert all(Path(r["stdout"]).exists() for r in records.values())
    script = next((sweep_dir / "slurm").glob("*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%4" in script and "#SBATCH --cpus-per-task=1" in script
    status = format_status(sweep_dir)  # what `run_sweep.py status` prints
    for pid, r in records.items():
        line = next(ln for ln in status.splitlines() if ln.startswith(pid))
        assert "done" in line and f"{r['job_id']} COMPLETED" in line
    # Running the sweep again submits nothing and changes no record.
    again = sweep(four["spec"], four["out"])
    assert again["counts"] == {"done": 4}
    assert {d.name: read_record(d)["job_id"] for d in point_dirs(sweep_dir).values()} == \
        {pid: r["job_id"] for pid, r in records.items()}
    print(f"\nfour points through sbatch: {four['elapsed']:.1f} s")


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(400)
def test_cancelled_job_is_resubmitted_alone_and_resumes(tmp_path, steps_per_s):
    steps = max(2000, int(steps_per_s * 30))  # ~30 s of training: it outlasts scancel's grace
    every = max(50, steps // 10)
    spec = write_spec(tmp_path / "cancel.toml", "cancel", steps=steps, seeds=(0, 1),
                      checkpoint_every=every, log_every=50)
    first = sweep(spec, tmp_path / "sweeps", wait=False)  # submit and return
    sweep_dir = Path(first["sweep_dir"])
    assert set(first["counts"]) <= {"queued", "running"} and sum(first["counts"].values()) == 2
    dirs = point_dirs(sweep_dir)
    victim, other = dirs[0], dirs[1]
    job = read_record(victim)["job_id"]
    other_job = read_record(other)["job_id"]
    wait_until("a checkpoint of the first point",
               lambda: any(p.name.isdigit() for p in (victim / "checkpoints").glob("*")),
               timeout=180)
    refresh(sweep_dir)  # what `run_sweep.py status` does first: ask SLURM
    line = next(ln for ln in format_status(sweep_dir).splitlines() if ln.startswith(victim.name))
    assert "running" in line and f"{job} RUNNING" in line, line
    subprocess.run(["scancel", job], check=True)
    wait_until(f"job {job} to be CANCELLED",
               lambda: query_states([job]).get(job) == "CANCELLED", timeout=90, every=1)
    assert read_result(victim) is None, "the run finished before it could be cancelled"

    # The sweep command, run again, resubmits the cancelled point only.
    t0 = time.time()
    out = subprocess.run([sys.executable, "run_sweep.py", "run", str(spec), "--out",
                          str(tmp_path / "sweeps"), "--executor", "slurm", "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"done": 2}
    rec, other_rec = read_record(victim), read_record(other)
    assert rec["job_id"] != job and rec["attempt"] == 2
    assert rec["history"][-1]["job_id"] == job and rec["history"][-1]["slurm_state"] == "CANCELLED"
    assert other_rec["job_id"] == other_job and other_rec["attempt"] == 1  # left alone
    resumed = read_result(victim)
    assert resumed["status"] == "done" and resumed["resumed_from_step"] >= every
    # scancel sends SIGTERM first: the job checkpoints the step it is at and exits (so the resume
    # starts there, not at the last periodic checkpoint); the other point never stopped
    assert read_result(other)["resumed_from_step"] == 0
    steps_logged = [r["step"] for r in read_metrics(victim) if "loss" in r]
    assert steps_logged == sorted(set(steps_logged))  # no duplicated steps after the resume
    res = pd.read_csv(sweep_dir / "results.csv").set_index("point_id")
    assert res.loc[victim.name, "resumed_from_step"] == resumed["resumed_from_step"]
    print(f"\ncancel: {steps} steps, resumed from {resumed['resumed_from_step']}; "
          f"rerun took {time.time() - t0:.1f} s")


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(60)
def test_sbatch_refusal_is_one_clear_error(tmp_path):
    spec = write_spec(tmp_path / "bad.toml", "bad", steps=10,
                      slurm='time_min = 10\npartition = "no_such_partition"')
    with pytest.raises(ConfigError, match="sbatch refused .*[Pp]artition"):
        sweep(spec, tmp_path / "sweeps")
    point = next((tmp_path / "sweeps" / "bad" / "points").iterdir())
    assert read_record(point) is None  # nothing recorded as submitted


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(200)
def test_job_that_raises_comes_back_failed_with_its_traceback(tmp_path):
    corpus = tmp_path / "corpus.jsonl"  # exists when planned; its 2nd line breaks loading
    corpus.write_text('{"text": "fine"}\n{this is not json\n')
    spec = write_spec(tmp_path / "boom.toml", "boom", steps=20,
                      data=f'corpus = "{corpus}"\nmax_corpus_bytes = 1000000')
    summary = sweep(spec, tmp_path / "sweeps")
    assert summary["counts"] == {"failed": 1}, summary
    sweep_dir = Path(summary["sweep_dir"])
    point = next((sweep_dir / "points").iterdir())
    failed = json.loads((point / "failed.json").read_text())
    assert "not JSON" in failed["error"]
    assert "Traceback (most recent call last)" in failed["traceback"]
    assert "DataError" in failed["traceback"] and failed["host"]
    rec = read_record(point)
    assert rec["state"] == "FAILED", rec
    from submitit.core.utils import pickle_load  # submitit's copy of the remote traceback

    kind, tb = pickle_load(Path(rec["folder"]) / f"{rec['job_id']}_0_result.pkl")
    assert kind == "error" and "PointFailed" in tb and "not JSON" in tb
    line = next(ln for ln in format_status(sweep_dir).splitlines() if ln.startswith(point.name))
    assert "failed" in line and f"{rec['job_id']} FAILED" in line
    res = pd.read_csv(sweep_dir / "results.csv")
    assert "not JSON" in res.loc[0, "error"]


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(600)
def test_job_at_its_time_limit_is_requeued_and_finishes(tmp_path, steps_per_s):
    # time_min = 1: SLURM sends USR2 some 20-50 s after the start (signal_delay_s = 10 and
    # SLURM's 30 s timer), so ~75 s of training cannot fit in the first attempt. The measured
    # throughput is only a guide (the machine's load changes): should the run end before the
    # signal, it is tried again, longer.
    steps = max(3000, int(steps_per_s * 75))
    for attempt in range(3):
        spec = write_spec(tmp_path / f"limit{attempt}.toml", f"limit{attempt}", steps=steps,
                          checkpoint_every=steps // 10, log_every=50, slurm="time_min = 1")
        t0 = time.time()
        summary = sweep(spec, tmp_path / "sweeps")
        elapsed = time.time() - t0
        sweep_dir = Path(summary["sweep_dir"])
        point = next((sweep_dir / "points").iterdir())
        assert summary["counts"] == {"done": 1}, (summary, _logs(point))
        rec = read_record(point)
        log_text = Path(rec["stderr"]).read_text()
        if "Requeued job" in log_text:
            break
        steps = int(steps * 2.5)
    else:
        raise AssertionError("no run was ever requeued at its time limit:\n" + _logs(point))
    result = read_result(point)
    assert result["resumed_from_step"] > 0 and result["steps"] == steps
    assert rec["state"] == "COMPLETED" and rec["attempt"] == 1  # requeued by SLURM, same job id
    assert "this job is timed-out" in log_text
    assert "saved at step" in log_text  # checkpointed on the signal, not only periodically
    steps_logged = [r["step"] for r in read_metrics(point) if "loss" in r]
    assert steps_logged == sorted(set(steps_logged))
    print(f"\ntime limit: {steps} steps, {log_text.count('Requeued job')} requeue(s), "
          f"resumed from {result['resumed_from_step']}, {elapsed:.1f} s (try {attempt + 1})")


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(300)
def test_two_task_job_trains_like_one_process(tmp_path):
    """Two srun tasks on the node, one CPU device each, joined by jax.distributed."""
    from scaling.executors.sweep import run_sweep

    spec = write_spec(tmp_path / "dp.toml", "dp", steps=20, log_every=1, eval_every=10, cpus=2,
                      slurm='time_min = 10\nextra = { "ntasks-per-node" = 2 }')
    summary = sweep(spec, tmp_path / "sweeps")
    point = next((Path(summary["sweep_dir"]) / "points").iterdir())
    rec = read_record(point)
    assert summary["counts"] == {"done": 1}, (summary, _logs(point))
    result = read_result(point)
    assert rec["tasks"] == 2 and result["process_count"] == 2 and result["device_count"] == 2
    assert result["parallel"] == "shard_map"
    local = run_sweep(spec, out=tmp_path / "local", executor="local", progress=False)
    assert local["counts"] == {"done": 1}
    ref = next((Path(local["sweep_dir"]) / "points").iterdir())
    assert read_result(ref)["device_count"] == 1

    _same_training(point, ref)


@pytest.mark.slurm
@pytest.mark.skipif(PROBLEM is not None, reason=f"no SLURM cluster: {PROBLEM}")
@pytest.mark.timeout(300)
def test_two_task_job_shares_one_fsdp_mesh(tmp_path):
    """Two srun tasks, one CPU device each, one (1, 2, 1) mesh across them: every parameter
    and moment sharded over the two processes (FSDP), each loading half of every batch;
    = the same point on one device without a mesh (train.mesh is not part of its id)."""
    from scaling.executors.sweep import run_sweep

    spec = write_spec(tmp_path / "fsdp.toml", "fsdp", steps=20, log_every=1, eval_every=10,
                      cpus=2, train="mesh = { data = 1, fsdp = 2, model = 1 }",
                      slurm='time_min = 10\nextra = { "ntasks-per-node" = 2 }')
    summary = sweep(spec, tmp_path / "sweeps")
    point = next((Path(summary["sweep_dir"]) / "points").iterdir())
    assert summary["counts"] == {"done": 1}, (summary, _logs(point))
    result = read_result(point)
    assert result["process_count"] == 2 and result["device_count"] == 2
    assert result["parallel"] == "mesh"
    local = run_sweep(spec, ["train.mesh={}"], out=tmp_path / "local", executor="local",
                      progress=False)
    ref = next((Path(local["sweep_dir"]) / "points").iterdir())
    assert ref.name == point.name and read_result(ref)["parallel"] == "none"

    _same_training(point, ref)


def _same_training(point: Path, ref: Path, steps: int = 20) -> None:
    """`point` trained as `ref`: same batches, same updates; only the order of float
    reductions differs (rtol 1e-4), and it learned."""
    import numpy as np

    def losses(d):
        return [r["loss"] for r in read_metrics(d) if "loss" in r]

    assert len(losses(point)) == steps
    np.testing.assert_allclose(losses(point), losses(ref), rtol=1e-4)
    np.testing.assert_allclose(read_result(point)["final_eval_loss"],
                               read_result(ref)["final_eval_loss"], rtol=1e-4)
    assert losses(point)[-1] < losses(point)[0] - 0.5


def _logs(point: Path) -> str:
    rec = read_record(point) or {}
    return "\n".join(f"--- {rec.get(k)}\n{Path(rec[k]).read_text()[-3000:]}"
                     for k in ("stdout", "stderr") if rec.get(k) and Path(rec[k]).exists())
