"""The local executor: the points of a sweep on this machine, each exactly once.

    run_local(sweep_dir, point_ids, progress=True, workers=None)

Points run one after another in this process (reusing the compiled step across points of
the same shape), or, with `workers > 1` (default: one per local GPU; on CPUs the
side-by-side rule, `side_by_side_plan`), in long-lived worker processes
(`python -m scaling.executors.local worker SWEEP_DIR`, fed point ids on stdin), each
claiming its point through the point's file lock. Trunks run before their branches
(`scaling.executors.order`). Every point runs through
`scaling.executors.point_runner.run_point`. The whole sweep (plan, folder, pre-flight,
stages) is `scaling.executors.sweep.run_sweep`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from scaling.config import ConfigError
from scaling.executors.order import Queue, order_points, step_flops
from scaling.executors.point_runner import FINISHED, run_point
from scaling.runs.results import POINT_FILE, point_state, points_dir, running_progress, write_tables
from scaling.runs.runfiles import DiskFull
from scaling.train.stopping import Interrupted, check as check_stop, quiet, requested, stop_requests

log = logging.getLogger(__name__)



# Side by side (issue 15 §2). A point whose training step costs at most this many FLOPs
# (exact training FLOPs per token x batch x seq_len) runs in a worker process pinned to one
# core, as many at once as there are cores; larger points run one at a time with every
# core. Measured on a 2-core machine shared with other work (benchmarks/sweep_speed.py
# --steps: aggregate step rate of one pinned process per core over one process alone,
# median [range] of 3-4 rounds): 2.19 [2.07, 2.43] at 5.7e7 FLOPs/step, 2.19 [1.45, 2.86]
# at 4.9e8, 1.45-1.66 at 1.2e9, 1.22 [1.20, 1.36] at 2.8e9, 1.16 [1.06, 1.39] at 5.4e9,
# 0.85 [0.53, 2.08] and 1.08 [0.90, 1.68] (two runs) at 1.2e10, 1.01 [0.83, 1.18] at
# 9.2e10: small steps leave a core idle, large ones use both. End to end (the demo's first two budgets, 9 points, empty
# compile cache): new/old wall time 0.86 median, [0.77, 1.18] over 6 repeats; the whole
# demo (14 points, one repeat, load ~8 from other users): 338 s old, 252 s new (0.75).
SIDE_BY_SIDE_MAX_STEP_FLOPS = 6e9
WORKER_MEMORY_BYTES = 1.5 * 2**30  # a CPU worker's resident peak on the demo's sizes, rounded up


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return len([line for line in out.stdout.splitlines() if line.startswith("GPU")])
    except (OSError, subprocess.SubprocessError):
        return 0


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))


def _available_memory() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.inf



def side_by_side_plan(sweep_dir: Path, point_ids: list[str], workers: int | None) -> dict:
    """How to run the points: {"big": ids one at a time in-process, "small": ids side by
    side, "workers": k, "cores_each": c} (see SIDE_BY_SIDE_MAX_STEP_FLOPS).

    `workers`: None = the rule; 1 = everything one at a time (the old rule); k > 1 = k
    side-by-side workers for every point. A side-by-side point always gets the same
    share of the cores (cores // k, k from the sweep's side-by-side points, done or not),
    even when it is the last one left. $SCALINGLAB_SIDE_BY_SIDE=0 turns the rule off,
    =k forces k workers. Never more workers than cores, nor than memory allows.
    """
    env = os.environ.get("SCALINGLAB_SIDE_BY_SIDE")
    if workers is None and env is not None:
        try:
            workers = max(1, int(env))
        except ValueError:
            raise ConfigError(f"SCALINGLAB_SIDE_BY_SIDE = {env!r}: expected an integer >= 0")
    cores = _cores()
    by_memory = max(1, int(_available_memory() // WORKER_MEMORY_BYTES))
    pdir = points_dir(sweep_dir)
    if workers is None:
        small = [pid for pid in point_ids
                 if step_flops(pdir / pid) <= SIDE_BY_SIDE_MAX_STEP_FLOPS]
    else:
        small = list(point_ids) if workers > 1 else []
    k = min(workers or len(cores), len(cores), by_memory, len(small))
    if k < 2:
        return {"big": list(point_ids), "small": [], "workers": 1, "cores_each": len(cores)}
    # The share of cores depends on the sweep, not on how many points are left, so that
    # a point computes with the same thread count whether or not it was resumed.
    left = sum(point_state(pdir / pid) not in FINISHED for pid in small)
    big = [pid for pid in point_ids if pid not in set(small)]
    return {"big": big, "small": small, "workers": max(1, min(k, left)),
            "cores_each": len(cores) // k}


def run_local(sweep_dir: Path, point_ids: list[str], *, progress: bool = True,
              workers: int | None = None, estimates: dict[str, float] | None = None) -> None:
    """Run the points here, each exactly once, trunks before their branches.

    With several GPUs (or `workers` > 1 with GPUs), one worker process per GPU. On CPUs,
    `side_by_side_plan` decides: points too large to gain from it run one after another
    in this process (reusing the compiled step across points of one shape), first; then
    the small ones side by side in worker processes pinned to their share of the cores.
    """
    sweep_dir = Path(sweep_dir)
    with stop_requests():  # SIGTERM / Ctrl-C: running points checkpoint, then one line
        check_stop(message="stopped before any point started; run the same command again")
        _run_local(sweep_dir, point_ids, progress=progress, workers=workers, estimates=estimates)


def _run_local(sweep_dir: Path, point_ids: list[str], *, progress: bool,
               workers: int | None, estimates: dict[str, float] | None) -> None:
    gpus = _gpu_count()
    if gpus:  # one process per GPU; never CPU side-by-side next to a GPU
        k = min(workers or gpus, gpus)
        if k < 2:
            _run_in_process(sweep_dir, point_ids, progress=progress, estimates=estimates or {})
            return
        slots = [{"env": {"CUDA_VISIBLE_DEVICES": str(w)}, "cores": None} for w in range(k)]
        _run_pool(sweep_dir, point_ids, slots, progress=progress, seconds=estimates)
        return
    plan = side_by_side_plan(sweep_dir, point_ids, workers)
    if plan["big"]:
        _run_in_process(sweep_dir, plan["big"], progress=progress, estimates=estimates or {})
    if plan["small"]:
        cores, c = _cores(), plan["cores_each"]  # k workers x c cores <= the cores we have
        slots = [{"env": _thread_env(c), "cores": cores[w * c:(w + 1) * c]}
                 for w in range(plan["workers"])]
        log.info("running %d small point(s) side by side: %d workers, %d core(s) each",
                 len(plan["small"]), len(slots), c)
        _run_pool(sweep_dir, plan["small"], slots, progress=progress, seconds=estimates)


def _thread_env(cores: int) -> dict[str, str]:
    """Thread counts of a worker given `cores` cores, for the libraries that read them.

    XLA's CPU client sizes its thread pool from the process's CPU affinity, which the
    worker sets before importing jax (measured: 15 threads instead of 21, at most one
    core busy, when pinned to one core); these variables bound OpenMP/BLAS pools.
    """
    n = str(cores)
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _run_in_process(sweep_dir: Path, point_ids: list[str], *, progress: bool,
                    estimates: dict[str, float]) -> None:
    """One point after another in this process (the compiled step is reused per shape)."""
    queue = Queue(sweep_dir, order_points(sweep_dir, point_ids, largest_first=False))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(point_ids), initial=len(point_ids) - len(queue), position=0,
                   desc=f"sweep {sweep_dir.name}", unit="pt", dynamic_ncols=True, file=sys.stderr)
    spent, estimated_done = 0.0, 0.0
    try:
        while (pid := queue.take()) is not None:
            check_stop(message=f"stopped between points; {len(queue) + 1} point(s) left; "
                               "run the same command again")
            if bar is not None:
                remaining = sum(estimates.get(q, 0.0) for q in [pid, *queue.todo])
                ratio = spent / estimated_done if estimated_done else 1.0
                bar.set_postfix_str(f"{point_label(sweep_dir, pid)}  eta {_hms(remaining * ratio)}")
            t0 = time.perf_counter()
            run_point(sweep_dir, pid, progress_position=1, progress=progress)
            queue.finished(pid)
            spent += time.perf_counter() - t0
            estimated_done += estimates.get(pid, 0.0)
            write_tables(sweep_dir)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _run_pool(sweep_dir: Path, point_ids: list[str], slots: list[dict], *,
              progress: bool = True, poll_s: float = 0.5,
              seconds: dict[str, float] | None = None) -> None:
    """Run the points in one long-lived worker process per slot, largest first.

    This process hands each idle worker the next runnable point (`Queue`) over its stdin
    and reads "<status> <point id>" back when the point ends; the workers keep their
    compiled steps between points. A worker dies with this process (PR_SET_PDEATHSIG),
    so after a kill -9 no orphan trains on, and the point locks (run_point) guarantee
    that a point is trained by one process at a time, whoever runs the sweep again.
    """
    queue = Queue(sweep_dir, order_points(sweep_dir, point_ids, largest_first=True,
                                          seconds=seconds))
    workers = [_Worker(sweep_dir, slot, i) for i, slot in enumerate(slots[:max(1, len(queue))])]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(point_ids), initial=len(point_ids) - len(queue), position=0,
                   desc=f"sweep {sweep_dir.name} x{len(workers)}", unit="pt",
                   dynamic_ncols=True, file=sys.stderr)
    stop, stopped, full = None, [], None
    try:
        while True:
            if full is not None and stop is None:
                stop = signal.SIGTERM  # the disk is full: the others checkpoint and stop
            if stop is None and (stop := requested()) is not None:
                _pass_on(workers, stop)
            for w in workers:
                if stop is None and w.point is None and w.alive():
                    pid = queue.take()
                    if pid is not None and not w.start(pid):
                        queue.finished(pid)  # left pending for the next run
                    elif pid is None and not len(queue):
                        w.let_go()  # nothing left to hand out: it exits while others finish
            busy = [w for w in workers if w.point is not None]
            if not busy:
                if not len(queue) or stop is not None:
                    break
                if not queue.waits_elsewhere():
                    queue.give_up()
                    break
                time.sleep(poll_s)  # a trunk runs in another process: wait for it
            # one wait on every busy worker's pipe: a point that ends is seen at once,
            # whichever worker ran it
            _wait_any(busy, poll_s)
            if stop is None and (stop := requested()) is not None:
                _pass_on(workers, stop)  # it came while waiting: seen before the replies
            for w in busy:
                full = _reply(w, queue, stop, stopped, full, bar, sweep_dir)
            if not any(w.alive() for w in workers):  # died, or let go with nothing left
                for w in workers:  # what they said before exiting, after this pass's look
                    if w.point is not None:
                        full = _reply(w, queue, stop, stopped, full, bar, sweep_dir)
                if len(queue) and stop is None:
                    log.error("every worker process died; %d point(s) left for the next run",
                              len(queue))
                break
            if bar is not None:
                bar.set_postfix_str(" | ".join(w.describe() for w in workers), refresh=True)
    finally:
        for w in workers:
            w.let_go()
        for w in workers:
            w.close()
        if bar is not None:
            bar.close()
    write_tables(sweep_dir)
    if full is not None:
        raise full
    if stop is None:  # a signal during the last replies, after the loop's last look
        stop = requested()
    if stop is not None:
        raise Interrupted(stop, message=(
            f"stopped {len(stopped)} running point(s) after their checkpoints"
            + (f" ({', '.join(stopped)})" if stopped else "")
            + f"; {len(queue)} not started; run the same command again to resume"))


def _reply(w: "_Worker", queue: Queue, stop, stopped: list, full, bar, sweep_dir: Path):
    """Take the worker's reply if its point has ended (a point run, stopped, or a full
    disk: returned as the DiskFull to raise, else `full` unchanged)."""
    ended = w.poll(0.0)
    if ended is None:
        return full
    pid, status = ended
    queue.finished(pid)  # "busy": another process holds it and runs it
    if status == "nospace":
        return full or DiskFull(sweep_dir, message=w.said or "no space left")
    if status in ("interrupted", "died") and stop is not None:
        stopped.append(pid)
        return full
    if status != "busy":
        write_tables(sweep_dir)
        if bar is not None:
            bar.update(1)
    return full


def _pass_on(workers: list["_Worker"], stop: int) -> None:
    """A stop request to every worker: each checkpoints its point, reports it and exits (a
    signal to the process group reaches them twice: harmless)."""
    for w in workers:
        w.signal(stop)
        w.let_go()


def _wait_any(workers: list["_Worker"], timeout: float) -> None:
    """Block until one of the workers writes a line (or `timeout` passes)."""
    import select

    if any(w.has_reply for w in workers):
        return
    select.select([w.proc.stdout.fileno() for w in workers], [], [], timeout)


class _Worker:
    """A worker process on one slot (a set of cores, or one GPU), fed point ids one by one."""

    def __init__(self, sweep_dir: Path, slot: dict, index: int):
        self.index, self.point, self.label = index, None, ""
        self.sweep_dir = sweep_dir
        env = dict(os.environ, **slot["env"])
        if slot.get("cores"):
            env["SCALINGLAB_WORKER_CORES"] = ",".join(map(str, slot["cores"]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scaling.executors.local", "worker", str(sweep_dir)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._buffer = ""
        self.said = ""  # the message of a "nospace" reply

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def has_reply(self) -> bool:
        """A whole reply line is read and waiting in the buffer."""
        return "\n" in self._buffer

    def signal(self, signum: int) -> None:
        """Pass a stop request on: the worker checkpoints its point and reports it."""
        if self.alive():
            try:
                os.kill(self.proc.pid, signum)
            except OSError:
                pass

    def start(self, pid: str) -> bool:
        """Hand the worker a point; False if it has died (the point stays pending)."""
        try:
            self.proc.stdin.write(pid + "\n")
            self.proc.stdin.flush()
        except OSError:
            return False
        self.point, self.label = pid, point_label(self.sweep_dir, pid)
        return True

    def poll(self, timeout: float) -> tuple[str, str] | None:
        """(point id, status) once the current point ended, else None after `timeout`."""
        import select

        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            try:
                self._buffer += os.read(fd, 1 << 16).decode(errors="replace")
            except BlockingIOError:
                pass
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            status, _, pid = line.strip().partition(" ")
            pid, _, self.said = pid.partition("\t")
            if pid == self.point:
                self.point = None
                return pid, status
        if self.point is not None and not self.alive():  # died mid-point (killed, OOM)
            pid, self.point = self.point, None
            if requested() is not None:  # signalled before it could claim the signal
                return pid, "died"
            log.error("worker %d died (exit %s) while running point %s", self.index,
                      self.proc.returncode, pid)
            return pid, "died"
        return None

    def describe(self) -> str:
        if self.point is None:
            return f"w{self.index} idle"
        step, loss = running_progress(points_dir(self.sweep_dir) / self.point)
        shown = f" step {step}" if step is not None else " starting"
        shown += f" loss {loss:.3f}" if loss is not None else ""
        return f"w{self.index} {self.label[:24]}{shown}"

    def let_go(self) -> None:
        """End its input: the worker exits once its current point (if any) has ended."""
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        self.let_go()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies, so that a kill -9
    of the sweep takes its workers with it, as it takes a point run in-process."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


def _worker_main(sweep_dir: str) -> None:
    """Read point ids from stdin, run each, write "<status> <id>" to the original stdout.

    Pins itself to $SCALINGLAB_WORKER_CORES before jax starts, so that XLA's thread
    pool is sized to those cores. Everything else the run prints goes to stderr.
    """
    _die_with_parent()
    quiet()  # the sweep reports a stop, once
    with stop_requests():
        _worker_loop(sweep_dir)


def _worker_loop(sweep_dir: str) -> None:
    cores = os.environ.get("SCALINGLAB_WORKER_CORES")
    if cores:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints must not corrupt the replies
    from scaling.runtime import enable_compilation_cache, setup_logging, tune_host_runtime

    tune_host_runtime()
    setup_logging()
    enable_compilation_cache()
    for line in sys.stdin:
        pid = line.strip()
        if not pid:
            continue
        try:  # a stop request: checkpointed (or not started), reported, no traceback
            result = run_point(sweep_dir, pid, progress=False)
        except KeyboardInterrupt:
            reply.write(f"interrupted {pid}\n")
            break
        except DiskFull as e:  # the sweep stops; the parent says it, once
            reply.write(f"nospace {pid}\t{e}\n")
            break
        status = "busy" if result is None else str(result.get("status", "done"))
        reply.write(f"{status} {pid}\n")
    # End of input: every point handed to this worker has ended and its files are
    # written (atomically, checkpoints closed). Skip the interpreter's teardown of jax,
    # which the sweep would otherwise wait for (about a second).
    reply.close()
    sys.stdout.flush()  # fd 1 is stderr's copy here: stray prints go there
    sys.stderr.flush()
    os._exit(0)


def point_label(sweep_dir: Path, pid: str) -> str:
    try:
        return json.loads((points_dir(sweep_dir) / pid / POINT_FILE).read_text())["label"]
    except (OSError, KeyError, TypeError, ValueError):  # not UTF-8, not JSON, not a record
        return pid


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2])
    else:
        sys.exit("usage: python -m scaling.executors.local worker SWEEP_DIR  (point ids on stdin)")
