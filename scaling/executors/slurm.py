"""The SLURM executor: the unfinished points of a sweep as one SLURM job array (submitit).

    run_slurm(spec, sweep_dir, point_ids, wait=True, progress=True)

Each call
  1. refreshes the state of every point's last job (`squeue` for jobs the controller
     holds, `sacct` for the others) into points/<id>/slurm.json, and collects jobs that
     ended: a job that raised leaves failed.json with the remote traceback (run_point
     writes it for errors in training; here for any other error), a job that died
     without a result (time limit without requeue, out of memory, node failure) leaves
     failed.json naming its state and the tail of its log; a cancelled job leaves its
     point pending;
  2. submits every point that is neither done nor queued/running as one task of a new
     job array, with the resources of the spec's [slurm] table; a cooldown branch goes
     in an array that depends on its trunk's job (afterok, `submit_with_trunks`);
  3. unless `wait=False`, waits for all of the sweep's jobs with a progress bar,
     rebuilding the tables as points end. Ctrl-C stops waiting, never the jobs: run
     the sweep again to pick them up.

Inside a job, `PointJob` (scaling.executors.slurm_job) calls
`scaling.executors.point_runner.run_point`. It is a submitit
Checkpointable: on the time-limit or preemption signal (USR2, sbatch `--signal`),
it checkpoints the run at its current step (`scaling.train.loop.save_now`) and submitit
requeues the job, which resumes from that checkpoint. On SIGTERM (preemption, `scancel`)
a one-task job finishes its step, checkpoints and ends with an "interrupted" value: the
point stays pending and a requeued or resubmitted job resumes there. A job with several tasks
(`nodes` > 1, or `extra."ntasks-per-node"` > 1) runs one process per task under
`srun`; they join through `jax.distributed` (`scaling.train.parallel.initialize_distributed`)
and train data-parallel over all devices; task 0 holds the point's lock.

[slurm] keys (scaling.sweep.SLURM_KEYS) -> sbatch flags:
    partition, account, qos -> --partition, --account, --qos
    time_min                -> --time (default 240); the USR2 warning comes 90 s before
                               the limit (less for limits under 9 minutes)
    mem_gb                  -> --mem (per node)
    nodes                   -> --nodes; one process per node unless extra."ntasks-per-node"
    gpus_per_job            -> --gpus-per-node = gpus_per_job / nodes
    cpus_per_job            -> --cpus-per-task = cpus_per_job / tasks
    array_parallelism       -> --array=0-(n-1)%k (jobs running at once)
    setup                   -> shell lines run before srun (module load, venv, ...)
    extra                   -> any sbatch flag: {constraint = "h100", exclusive = true};
                               wins over the flags above (e.g. signal = "USR2@300")

points/<id>/slurm.json: job_id ("123_4" in an array), array_job_id, array_task_id,
state (the SLURM state; active ones named PENDING / RUNNING / REQUEUED / SUBMITTED as
scaling.runs.results expects), slurm_state (as SLURM spells it), submitted, stdout, stderr,
tasks, attempt (submissions of this point so far) and history (earlier jobs). submitit's
files (batch scripts, pickles, logs <job id>_<task>_log.out/.err) are in <sweep>/slurm/.

Nothing here imports jax except inside a job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from scaling.config import ConfigError
from scaling.runs.results import (FAILED_FILE, SLURM_FILE, blocked_by, point_state, points_dir,
                             read_result_checked, trunk_of, write_tables)
from scaling.executors.slurm_job import PointJob
from scaling.executors.slurm_states import (ACTIVE_STATES, SLURM_STATES, query_states,
                                             slurm_available)
from scaling.runs.runfiles import write_json_atomic

log = logging.getLogger(__name__)

SLURM_DIR = "slurm"
DEFAULT_TIME_MIN = 240
DEFAULT_SIGNAL_DELAY_S = 90
MAX_REQUEUES = 30  # time-limit requeues per job (submitit's max_num_timeout)
MAX_ARRAY = 1000  # points per job array
SUBMIT_GRACE_S = 120  # a job this young that neither squeue nor sacct knows is still submitting
DONE_GRACE_S = 60  # a point with a result whose job still shows as running: stop waiting after this


# --------------------------------------------------------------------------------------
# Job records (points/<id>/slurm.json)
# --------------------------------------------------------------------------------------


def read_record(point_dir: Path) -> dict | None:
    try:
        return json.loads((point_dir / SLURM_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_record(point_dir: Path, record: dict) -> None:
    write_json_atomic(point_dir / SLURM_FILE, record)


def is_active(record: dict | None) -> bool:
    return bool(record) and record.get("state") in ACTIVE_STATES


# --------------------------------------------------------------------------------------
# Refresh and collect
# --------------------------------------------------------------------------------------


def _job_paths(sweep_dir: Path, record: dict):
    from submitit.core.utils import JobPaths

    return JobPaths(sweep_dir / SLURM_DIR, job_id=record["job_id"], task_id=0)


def _job_outcome(sweep_dir: Path, record: dict) -> tuple[str, object] | None:
    """('success', value) or ('error', traceback text) from submitit's result file, or None."""
    try:
        from submitit.core.utils import pickle_load

        path = _job_paths(sweep_dir, record).result_pickle
        return pickle_load(path) if path.exists() else None
    except Exception as e:  # unreadable result: treated as no result
        log.debug("result of job %s unreadable: %s", record.get("job_id"), e)
        return None


def _tail(path: str | None, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except (OSError, TypeError):
        return ""


def _collect(sweep_dir: Path, point_dir: Path, record: dict) -> None:
    """A job ended: make sure its point tells why, if it has no result."""
    if read_result_checked(point_dir)[0] is not None:
        return
    state = record.get("slurm_state", record.get("state"))
    outcome = _job_outcome(sweep_dir, record)
    failed = point_dir / FAILED_FILE
    fresh = failed.exists() and failed.stat().st_mtime >= record.get("submitted_ts", 0) - 1
    if outcome is not None and outcome[0] == "error":
        if fresh:  # run_point wrote it in the job, with the training traceback
            return
        tb = str(outcome[1])
        last = next((ln for ln in reversed(tb.strip().splitlines()) if ln.strip()), tb)
        error = last.strip()
    elif outcome is not None:
        return  # success without a result: another process ran the point (busy)
    elif state == "CANCELLED":
        log.info("point %s: job %s was cancelled; the point stays pending", point_dir.name,
                 record["job_id"])
        return
    else:
        error = f"SLURM job {record['job_id']} ended {state} without a result"
        tb = f"{error}\n--- tail of {record.get('stderr')} ---\n{_tail(record.get('stderr'))}"
    write_json_atomic(failed, {
        "point_id": point_dir.name, "error": error, "traceback": tb, "job_id": record["job_id"],
        "slurm_state": state, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stderr": record.get("stderr"),
    })
    log.error("point %s: job %s %s: %s", point_dir.name, record["job_id"], state, error)


def refresh(sweep_dir: str | Path, point_ids: Iterable[str] | None = None) -> dict[str, dict]:
    """Update the slurm.json of the given points (default: all) from SLURM; collect ended jobs.

    Returns {point id: record} for the points that have a record.
    """
    sweep_dir = Path(sweep_dir)
    pdir = points_dir(sweep_dir)
    if point_ids is None:
        point_ids = sorted(p.name for p in pdir.glob("*") if (p / SLURM_FILE).exists())
    records = {pid: r for pid in point_ids if (r := read_record(pdir / pid)) is not None}
    open_ = {pid: r for pid, r in records.items() if not r.get("collected")}
    if not open_:
        return records
    states = query_states(r["job_id"] for r in open_.values())
    now = time.time()
    for pid, r in open_.items():
        raw = states.get(r["job_id"])
        if raw is None:
            young = now - r.get("submitted_ts", 0) < SUBMIT_GRACE_S
            raw = "SUBMITTED" if young else "UNKNOWN"  # UNKNOWN: gone from squeue, no sacct
        state = SLURM_STATES.get(raw, raw)
        changed = (raw, state) != (r.get("slurm_state"), r.get("state"))
        r.update(slurm_state=raw, state=state)
        if state not in ACTIVE_STATES:
            r["ended"] = time.strftime("%Y-%m-%d %H:%M:%S")
            _collect(sweep_dir, pdir / pid, r)
            r["collected"] = True
            changed = True
        if changed:
            r["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
            _write_record(pdir / pid, r)
    return records


# --------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------


def _signal_delay_s(time_min: int) -> int:
    """submitit's 90 s warning, shortened for short limits: SLURM may signal up to ~60 s early."""
    return max(5, min(DEFAULT_SIGNAL_DELAY_S, time_min * 60 // 6))


def _per_part(slurm: dict, key: str, parts: int, over: str) -> int:
    """slurm[key] split evenly over `parts` (ConfigError naming the key where it does not)."""
    total = int(slurm[key])
    if total % parts:
        raise ConfigError(f"slurm.{key} = {total} does not split evenly over {over}")
    return total // parts


def sbatch_parameters(slurm: dict, job_name: str) -> dict:
    """submitit SlurmExecutor parameters from a spec's [slurm] table (see the module doc)."""
    extra = {k.replace("_", "-"): v for k, v in dict(slurm.get("extra", {})).items()}
    per_node = extra.pop("ntasks-per-node", 1)
    if not isinstance(per_node, int) or isinstance(per_node, bool) or per_node < 1:
        raise ConfigError(f"slurm.extra.ntasks-per-node = {per_node!r}: expected an integer >= 1")
    nodes = int(slurm.get("nodes", 1))
    tasks = nodes * per_node
    time_min = int(slurm.get("time_min", DEFAULT_TIME_MIN))
    params: dict = {
        "job_name": job_name, "nodes": nodes, "ntasks_per_node": per_node, "time": time_min,
        "signal_delay_s": _signal_delay_s(time_min),
    }
    for key in ("partition", "account", "qos"):
        if slurm.get(key):
            params[key] = slurm[key]
    if "mem_gb" in slurm:
        params["mem"] = f"{max(1, round(float(slurm['mem_gb']) * 1024))}M"
    if slurm.get("cpus_per_job"):
        params["cpus_per_task"] = _per_part(slurm, "cpus_per_job", tasks,
                                            f"the job's {tasks} tasks (nodes x ntasks-per-node)")
    if slurm.get("gpus_per_job"):
        params["gpus_per_node"] = _per_part(slurm, "gpus_per_job", nodes,
                                            f"slurm.nodes = {nodes}")
    if "array_parallelism" in slurm:
        params["array_parallelism"] = int(slurm["array_parallelism"])
    if slurm.get("setup"):
        params["setup"] = list(slurm["setup"])
    extra = {k: v for k, v in extra.items() if v is not False}
    if extra:
        params["additional_parameters"] = extra
    return params


def _executor(sweep_dir: Path, spec):
    try:
        import submitit
    except ImportError as e:
        raise ConfigError("executor = 'slurm' needs submitit: pip install 'scalinglab[slurm]'") from e
    if not slurm_available():
        raise ConfigError("executor = 'slurm', but sbatch/srun/squeue/sacct are not on PATH: "
                          "run on a SLURM login node, or use executor = 'local'")
    folder = sweep_dir / SLURM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
    ex.update_parameters(**sbatch_parameters(spec.slurm, f"{spec.name}"))
    return ex


def submit_with_trunks(spec, sweep_dir: Path, point_ids: list[str]) -> dict[str, dict]:
    """Submit the points; a cooldown branch's job waits for its trunk's job.

    Points without a trunk, and branches whose trunk is done, go in one job array.
    The other branches go in one array per trunk job, submitted with
    `--dependency=afterok:<trunk job>` (so a branch never starts before its trunk has
    finished and saved its checkpoints) and `--kill-on-invalid-dep=yes` (a trunk that
    fails gets its branches cancelled by SLURM; they are then blocked, as `status`
    shows, and submitted again with the trunk on the next run). A branch whose trunk is
    neither done, nor submitted here, nor queued or running already is not submitted.
    Returns {point id: record} of what was submitted.
    """
    pdir = points_dir(sweep_dir)
    free, waiting = [], {}
    for pid in point_ids:
        trunk = trunk_of(pdir / pid)
        if trunk is None or point_state(pdir / trunk) == "done":
            free.append(pid)
        else:
            waiting.setdefault(trunk, []).append(pid)
    records = submit(spec, sweep_dir, free)
    for trunk, branches in waiting.items():
        rec = records.get(trunk) or read_record(pdir / trunk)
        if trunk not in records and not (is_active(rec) and point_state(pdir / trunk) in
                                         ("queued", "running")):
            log.warning("point(s) %s not submitted: %s", ", ".join(branches),
                        blocked_by(pdir / branches[0]) or f"trunk {trunk} is not done, "
                        "queued or running (run the sweep with the trunk's point)")
            continue
        records.update(submit(spec, sweep_dir, branches, after=rec["job_id"]))
    return records


def submit(spec, sweep_dir: Path, point_ids: list[str], *, after: str | None = None
           ) -> dict[str, dict]:
    """Submit the points as one job array (a plain job for one point); write their records.

    `after`: a job id ("123" or "123_4") the jobs wait for (afterok), see
    `submit_with_trunks`.
    """
    if not point_ids:
        return {}
    ex = _executor(sweep_dir, spec)
    if after is not None:
        extra = dict(ex.parameters.get("additional_parameters") or {})
        extra["kill-on-invalid-dep"] = "yes"
        ex.update_parameters(dependency=f"afterok:{after}", additional_parameters=extra)
    fn = PointJob(str(sweep_dir.resolve()))
    jobs = []
    for i in range(0, len(point_ids), MAX_ARRAY):  # SLURM's MaxArraySize is 1001 by default
        try:
            jobs += ex.map_array(fn, list(point_ids[i:i + MAX_ARRAY]))
        except Exception as e:  # sbatch refused it: bad partition, account, time, ...
            if not jobs:
                msg = " ".join(str(e).split())
                raise ConfigError(f"sbatch refused the job array of sweep {spec.name!r}: "
                                  f"{msg[-500:]}; check the spec's [slurm] table") from e
            log.error("sbatch refused points %d..: %s; the others were submitted", i, e)
            point_ids = point_ids[:i]
            break
    now = time.time()
    records = {}
    for pid, job in zip(point_ids, jobs):
        pdir = points_dir(sweep_dir) / pid
        old = read_record(pdir) or {}
        history = list(old.get("history", []))
        if old.get("job_id"):
            history.append({k: old.get(k) for k in ("job_id", "slurm_state", "submitted", "ended")})
        base, _, task = job.job_id.partition("_")
        rec = {
            "job_id": job.job_id, "array_job_id": base, "array_task_id": int(task) if task else None,
            "state": "SUBMITTED", "slurm_state": "SUBMITTED",
            "submitted": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
            "submitted_ts": now, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            "folder": str(sweep_dir / SLURM_DIR), "tasks": job.num_tasks,
            "attempt": int(old.get("attempt", 0)) + 1, "history": history,
            "after": after,
        }
        _write_record(pdir, rec)
        records[pid] = rec
    log.info("submitted %d point(s) of %s as SLURM job(s) %s", len(point_ids), spec.name,
             ", ".join(sorted({j.job_id.split("_")[0] for j in jobs})))
    return records


@contextmanager
def _launcher_lock(sweep_dir: Path) -> Iterator[None]:
    """One launcher at a time refreshes and submits (never two jobs for one point)."""
    import fcntl

    folder = sweep_dir / SLURM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".launcher.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------
# The executor
# --------------------------------------------------------------------------------------


def run_slurm(spec, sweep_dir: str | Path, point_ids: list[str], *, wait: bool | None = None,
              progress: bool = True, poll_s: float | None = None) -> dict:
    """Collect, (re)submit and (unless wait=False) wait for the points of a sweep on SLURM.

    Returns {"submitted": [ids], "left_running": [ids], "done": [ids]} for this call.
    `wait=None`: wait unless $SCALINGLAB_SLURM_NO_WAIT is set.
    """
    sweep_dir = Path(sweep_dir)
    if wait is None:
        wait = not os.environ.get("SCALINGLAB_SLURM_NO_WAIT")
    pdir = points_dir(sweep_dir)
    with _launcher_lock(sweep_dir):
        refresh(sweep_dir, point_ids)
        states = {pid: point_state(pdir / pid) for pid in point_ids}
        todo = [pid for pid in point_ids
                if states[pid] in ("pending", "failed", "corrupt", "blocked")]
        left = [pid for pid in point_ids if states[pid] in ("queued", "running")]
        done = [pid for pid in point_ids if states[pid] in ("done", "diverged")]
        if left:
            log.info("%d point(s) already queued or running on SLURM: left alone", len(left))
        submitted = submit_with_trunks(spec, sweep_dir, todo)
    todo = [pid for pid in todo if pid in submitted]
    write_tables(sweep_dir)
    summary = {"submitted": todo, "left_running": left, "done": done}
    if wait:
        wait_for(sweep_dir, point_ids, progress=progress, poll_s=poll_s)
    else:
        log.info("not waiting: `run_sweep.py status %s` shows the jobs; running the sweep "
                 "again collects them", sweep_dir)
    return summary


def wait_for(sweep_dir: str | Path, point_ids: list[str], *, progress: bool = True,
             poll_s: float | None = None, timeout_s: float | None = None) -> bool:
    """Poll the points' jobs until none is queued or running; True if all ended in time."""
    sweep_dir = Path(sweep_dir)
    pdir = points_dir(sweep_dir)
    fixed = poll_s if poll_s is not None else float(os.environ.get("SCALINGLAB_SLURM_POLL_S", 0))
    interval = fixed or 1.0
    start = time.time()
    seen_result: dict[str, float] = {}

    def waiting() -> list[str]:
        out = []
        for pid in point_ids:
            rec = read_record(pdir / pid)
            if not is_active(rec):
                continue
            if read_result_checked(pdir / pid)[0] is not None:
                first = seen_result.setdefault(pid, time.time())
                if time.time() - first > DONE_GRACE_S:
                    continue
            out.append(pid)
        return out

    todo = waiting()
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(point_ids), initial=len(point_ids) - len(todo), position=0,
                   desc=f"sweep {sweep_dir.name} (slurm)", unit="pt", dynamic_ncols=True,
                   file=sys.stderr)
    try:
        while todo:
            if timeout_s is not None and time.time() - start > timeout_s:
                return False
            time.sleep(interval)
            records = refresh(sweep_dir, todo)
            now_waiting = waiting()
            ended = len(todo) - len(now_waiting)
            if ended:
                write_tables(sweep_dir)
                interval = fixed or 1.0
            elif not fixed:
                interval = min(30.0, interval * 1.3)  # back off: be gentle with slurmctld
            todo = now_waiting
            if bar is not None:
                bar.update(ended)
                running = sum(1 for p in todo if records.get(p, {}).get("state") == "RUNNING")
                bar.set_postfix_str(f"running {running}, queued {len(todo) - running}")
    except KeyboardInterrupt:
        log.warning("stopped waiting; the jobs keep running. Run the sweep again (or "
                    "`run_sweep.py status %s`) to collect them", sweep_dir)
        return False
    finally:
        if bar is not None:
            bar.close()
    write_tables(sweep_dir)
    return True


__all__ = ["run_slurm", "refresh", "wait_for", "submit", "submit_with_trunks", "query_states",
           "sbatch_parameters", "slurm_available", "SLURM_DIR"]
