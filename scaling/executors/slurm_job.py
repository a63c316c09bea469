"""Inside a SLURM job: `PointJob` trains or resumes one point, and the job's signal handling.

Each task of a job array submitted by scaling.executors.slurm runs `PointJob(sweep_dir)(point_id)`,
which calls `scaling.executors.point_runner.run_point`. It is a submitit Checkpointable: on
the time-limit or preemption signal (USR2, sbatch `--signal`) it checkpoints the run at its
current step (`scaling.train.loop.save_now`, retried for SAVE_RETRY_S) and submitit
requeues the job, which resumes from that checkpoint. On SIGTERM (preemption, `scancel`)
a one-task job finishes its step, checkpoints and returns an "interrupted" value. A job
with several tasks joins through `jax.distributed`; task 0 holds the point's lock.

Nothing here imports jax at module level.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import time

try:  # submitit is an optional dependency (extras "slurm" and "dev")
    from submitit.helpers import Checkpointable as _JobBase
except ImportError:  # pragma: no cover - then nothing can be submitted anyway
    _JobBase = object

log = logging.getLogger(__name__)



class PointFailed(RuntimeError):
    """Raised inside a job when its point failed, so that SLURM and submitit see a failure."""




class PointJob(_JobBase):
    """The callable each array task runs: train or resume one point of a sweep."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = str(sweep_dir)

    def __call__(self, point_id: str) -> dict:
        from scaling.executors.point_runner import run_point
        from scaling.runtime import enable_compilation_cache, setup_logging

        setup_logging()
        enable_compilation_cache()
        ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        log.info("point %s: SLURM job %s, task %d of %d on %s (restart %s)", point_id,
                 os.environ.get("SLURM_JOB_ID", "?"), rank, ntasks, socket.gethostname(),
                 os.environ.get("SLURM_RESTART_COUNT", "0"))
        # JAX_COORDINATOR_* inherited from the submitting shell (sbatch exports its
        # environment) would make a one-task job wait for processes that never come.
        stale = [k for k in _JAX_PROCESS_VARS if os.environ.pop(k, None) is not None]
        if stale:
            log.warning("ignoring %s inherited from the submitting environment", ", ".join(stale))
        if ntasks > 1:
            _coordinator_fallback()
        else:
            _retry_saves_on_signal()
            _stop_on_sigterm()
        # Only one process may hold the point's lock; in a multi-task job that is task 0,
        # the others train alongside it (they never write the point's files).
        from scaling.train.stopping import Interrupted

        try:
            result = run_point(self.sweep_dir, point_id, progress=False, lock=rank == 0)
        except Interrupted as e:  # SIGTERM (preemption, scancel): checkpointed; stays pending
            log.warning("point %s: %s", point_id, e)
            return {"status": "interrupted", "point_id": point_id, "step": e.step}
        for _ in range(10):  # a launcher's lock probe (point_state) holds it for microseconds
            if result is not None:
                break
            time.sleep(1)
            result = run_point(self.sweep_dir, point_id, progress=False)
        if result is None:
            if ntasks > 1:
                raise RuntimeError(f"point {point_id}: another process holds its lock; "
                                   "this job's other tasks cannot proceed without task 0")
            log.warning("point %s is being run by another process; nothing to do", point_id)
            return {"status": "busy", "point_id": point_id}
        if result.get("status") == "failed":
            raise PointFailed(f"point {point_id} failed on {socket.gethostname()}: "
                              f"{result.get('error')}\n\n--- traceback in the job ---\n"
                              f"{result.get('traceback', '')}")
        keep = ("status", "steps", "final_train_loss", "final_eval_loss", "resumed_from_step",
                "wall_time_s")
        return {"point_id": point_id, **{k: result.get(k) for k in keep}}

    def checkpoint(self, point_id: str):
        """Called by submitit on the time-limit / preemption signal, before it requeues."""
        from submitit.helpers import DelayedSubmission

        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            # A save is collective over the processes, and only task 0 gets here: rely on
            # the periodic checkpoints.
            log.warning("point %s: multi-task job signalled; resuming from the newest "
                        "periodic checkpoint", point_id)
        else:
            loop = sys.modules.get("scaling.train.loop")  # not imported yet: nothing to save
            step = loop.save_now() if loop is not None else None
            log.warning("point %s: signalled (time limit or preemption); checkpoint %s", point_id,
                        f"saved at step {step}" if step is not None else "not saved now")
        return DelayedSubmission(self, point_id)


_JAX_PROCESS_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
SAVE_RETRY_S = 3.0  # how long a signalled job keeps trying to checkpoint before requeueing


def _retry_saves_on_signal() -> None:
    """Wrap submitit's USR2 handler: checkpoint first, retrying for a few seconds.

    The handler runs on the main thread between two bytecodes; when that is inside the
    dispatch of a step, the state's buffers are donated and `save_now` saves nothing.
    Retried on SIGALRM ticks, the loop has moved on to a consistent state; then
    submitit's handler runs (its `checkpoint` finds the step saved) and requeues.
    """
    from submitit.core.job_environment import JobEnvironment

    sig = JobEnvironment._usr_sig()
    submitit_handler = signal.getsignal(sig)
    if not callable(submitit_handler):
        return

    def on_signal(signum, frame):
        deadline = time.monotonic() + SAVE_RETRY_S
        loop_log = logging.getLogger("scaling.train.loop")
        level = loop_log.level
        previous_alarm = None

        def attempt(_signum=None, _frame=None):
            loop = sys.modules.get("scaling.train.loop")
            training = loop is not None and getattr(loop, "_SAVE_NOW", None) is not None
            if training and time.monotonic() < deadline:
                loop_log.setLevel(logging.ERROR)  # "could not checkpoint" on every try
                try:
                    saved = loop.save_now()
                finally:
                    loop_log.setLevel(level)
                if saved is None:
                    signal.setitimer(signal.ITIMER_REAL, 0.1)
                    return
            signal.signal(signal.SIGALRM, previous_alarm or signal.SIG_DFL)
            submitit_handler(signum, frame)

        previous_alarm = signal.signal(signal.SIGALRM, attempt)
        attempt()

    signal.signal(sig, on_signal)


def _stop_on_sigterm() -> None:
    """A one-task job takes SIGTERM back from submitit (which ignores it): SLURM sends it
    on preemption and `scancel`, some seconds before SIGKILL. The run finishes its step,
    checkpoints and the job returns an "interrupted" value (the point stays pending), so
    that a requeued or resubmitted job resumes at that step. Multi-task jobs keep
    submitit's handling: a save is collective, and the tasks may see the signal at
    different steps."""
    from scaling.train import stopping

    stopping.quiet()  # SLURM signals every process of the step: a repeat is no emergency
    stopping.claim(signal.SIGTERM)


def _coordinator_fallback() -> None:
    """jax.distributed finds its coordinator at the job's first node *by name*; where that
    name does not resolve (a single machine without DNS) and the job has one node, point
    it at 127.0.0.1 through the explicit variables scaling.train.parallel also reads."""
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    first = re.split(r"[,\[]", nodes, maxsplit=1)[0]
    if not first or int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) != 1:
        return
    try:
        socket.getaddrinfo(first, None)
        return
    except OSError:
        pass
    port = int(os.environ["SLURM_JOB_ID"]) % 4096 + 61440  # as JAX's SLURM cluster picks it
    os.environ.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                      JAX_NUM_PROCESSES=os.environ["SLURM_NTASKS"],
                      JAX_PROCESS_ID=os.environ["SLURM_PROCID"])
    log.info("node name %r does not resolve: coordinator at 127.0.0.1:%d", first, port)
