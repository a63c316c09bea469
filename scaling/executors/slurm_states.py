"""Asking SLURM: the states of jobs (`squeue` for jobs the controller holds, `sacct` for
the others), and the names of the active states that scaling.runs.results understands."""

from __future__ import annotations

import getpass
import logging
import re
import shutil
import subprocess
from typing import Iterable

log = logging.getLogger(__name__)

# SLURM states -> the names scaling.runs.results.point_state knows as queued/running
SLURM_STATES = {
    "PENDING": "PENDING", "SUSPENDED": "PENDING", "RESV_DEL_HOLD": "PENDING",
    "REQUEUED": "REQUEUED", "REQUEUE_HOLD": "REQUEUED", "REQUEUE_FED": "REQUEUED",
    "RUNNING": "RUNNING", "CONFIGURING": "RUNNING", "COMPLETING": "RUNNING",
    "RESIZING": "RUNNING", "SIGNALING": "RUNNING", "STAGE_OUT": "RUNNING", "STOPPED": "RUNNING",
    "SUBMITTED": "SUBMITTED",
}
ACTIVE_STATES = frozenset(SLURM_STATES.values())


def _run(cmd: list[str], timeout: float = 60) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("%s: %s", cmd[0], e)
        return None
    if out.returncode != 0:
        log.debug("%s exited %d: %s", " ".join(cmd), out.returncode, out.stderr.strip()[:300])
        return None
    return out.stdout


def _expand(job_id: str) -> list[str]:
    """'12', '12_3', '12_[0-2,5%2]' -> ['12'], ['12_3'], ['12_0', '12_1', '12_2', '12_5']."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _parse(text: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        job, state = line.split("|", 1)
        job = job.strip()
        if not job or "." in job:  # job steps (123.batch, 123.0)
            continue
        state = state.strip().split(" ")[0]  # "CANCELLED by 0" -> "CANCELLED"
        for j in _expand(job):
            states[j] = state
    return states


def query_states(job_ids: Iterable[str]) -> dict[str, str]:
    """SLURM's state of each job id ('123' or '123_4'); ids SLURM does not know are left out.

    squeue (the controller's view) wins over sacct (accounting, also for ended jobs).
    """
    ids = {str(j) for j in job_ids}
    if not ids:
        return {}
    bases = sorted({j.split("_")[0] for j in ids})
    states: dict[str, str] = {}
    for i in range(0, len(bases), 200):
        chunk = ",".join(bases[i:i + 200])
        out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", chunk])
        if out:
            states.update(_parse(out))
    # squeue -j fails as a whole when one id is no longer known: list the user's jobs instead
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    if out:
        base_set = set(bases)
        states.update({j: s for j, s in _parse(out).items() if j.split("_")[0] in base_set})
    return {j: s for j, s in states.items() if j in ids}


def slurm_available() -> bool:
    return all(shutil.which(c) for c in ("sbatch", "srun", "squeue", "sacct"))
