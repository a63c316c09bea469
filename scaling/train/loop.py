"""The training loop: one run in one folder, resumable at any moment.

    run_dir/
      config.json       the resolved config (a rerun with a different config is refused)
      metrics.jsonl     one JSON line per logged step and per evaluation
      checkpoints/      orbax checkpoints (state + data position + corpus fingerprint + config)
      result.json       written last and atomically: the run's done marker and summary
      .lock             held while a process trains here (scaling.runs.lock.run_lock)

`train(config, run_dir)` starts the run, resumes it from its newest checkpoint, or,
if result.json exists, returns that result without training. Batches are a pure
function of (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would have seen, and on the CPU produces exactly the same losses.

A run goes through named phases, each a module of its own, and this one iterates what
they hand it:

    prepare    every check that bad input can fail, before anything is written
               (scaling.train.prepare: `prepare(cfg, run_dir) -> Setup`)
    restore    the state: resumed, branched from a trunk, or fresh (scaling.train.restore)
    compile    the step and eval programs, one per shape and process (scaling.train.compiled)
    loop       the steps (`Run.loop`), with evaluations (scaling.train.evaluate), the
               divergence monitor (scaling.train.monitor) and checkpoints
    record     metrics rows as they come, result.json at the end (scaling.train.record)

SIGTERM and SIGINT (Ctrl-C) end a run cleanly: the current step finishes, a checkpoint is
saved, `Interrupted` is raised (the CLI prints one line and exits 143 / 130); a second
Ctrl-C exits at once. A signal during set-up or compile stops before the loop
(scaling.train.stopping).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax

from scaling.config import Config
from scaling.runs.lock import run_lock
from scaling.runs.runfiles import (CONFIG_FILE, RESULT_FILE, atomic_write_text, read_result,
                                   write_json_atomic)
from scaling.train import tracking
from scaling.train.checkpoint import Checkpointer
from scaling.train.compiled import compile_steps
from scaling.train.evaluate import Evaluator, curve_eval_step
from scaling.train.monitor import Diverged
from scaling.train.parallel import initialize_distributed
from scaling.train.prepare import Setup, check_same_config, prepare
from scaling.train.record import Record, logged_step
from scaling.train.restore import keep_checkpoint, restore_or_init, save_checkpoint
from scaling.train.stopping import Interrupted, stop_requests
from scaling.train.stopping import check as check_stop, requested as stop_requested

log = logging.getLogger(__name__)

# While a run trains, a function that checkpoints it at its current step (for a
# preemption or time-limit signal handler, e.g. the SLURM executor's); else None.
_SAVE_NOW: Callable[[], int | None] | None = None


def save_now() -> int | None:
    """Checkpoint the run training in this process now; returns the step saved, if any.

    Safe to call from a signal handler: if the state is mid-update (its buffers donated
    to the step running), nothing is saved and the newest periodic checkpoint stands.
    """
    return _SAVE_NOW() if _SAVE_NOW is not None else None


def train(cfg: Config, run_dir: str | Path, *, progress_position: int = 0,
          stop_after_steps: int | None = None) -> dict:
    """Train (or resume, or just return) the run of `cfg` in `run_dir`.

    `stop_after_steps` ends the process's work after that many steps of this call,
    leaving a checkpoint and no result (for tests of resumption). Raises `Interrupted`
    after a checkpoint when SIGTERM or SIGINT arrives, `RunFolderBusy` when another
    process trains in the folder, ConfigError for bad input (nothing written then).
    """
    run_dir = Path(run_dir)
    # SIGTERM / Ctrl-C at any phase: set-up and compile stop before the loop, the loop
    # after its step and a checkpoint (scaling.train.stopping)
    with stop_requests():
        check_stop()
        check_same_config(cfg, run_dir)  # a finished run of another config is no answer
        done = read_result(run_dir)
        if done is not None:
            return done
        initialize_distributed()
        s = prepare(cfg, run_dir)
        check_stop()
        run_dir.mkdir(parents=True, exist_ok=True)
        # Process 0 holds the folder's lock; the other processes of a multi-process run share it.
        with run_lock(run_dir) if s.primary else contextlib.nullcontext():
            done = read_result(run_dir)  # finished by another process while we prepared
            if done is not None:
                return done
            if s.primary and not (run_dir / CONFIG_FILE).exists():
                atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())
            return _train_locked(s, progress_position, stop_after_steps)


def _train_locked(s: Setup, progress_position: int, stop_after_steps: int | None) -> dict:
    global _SAVE_NOW
    t = s.cfg.train
    ckpt = Checkpointer(s.run_dir / "checkpoints", keep=t.keep_checkpoints)
    run = result = None
    try:
        state, start_step, prior_wall, branch = restore_or_init(s, ckpt)
        first = s.driver.place_batch(s.data.train_batch(start_step, t.batch_size, t.batch_seed,
                                                        s.driver.batch_shard))
        step_fn, eval_fn, compile_time, xla = compile_steps(s, state, first)
        check_stop()  # signalled during restore or compile: nothing trained, nothing to save
        run = Run(s, ckpt, state, start_step, prior_wall, branch, step_fn, eval_fn,
                  compile_time, progress_position, xla)
        _SAVE_NOW = run.checkpoint_on_request
        try:
            stopped = run.loop(stop_after_steps)
        finally:
            _SAVE_NOW = None
            run.close()
        if stopped is not None:
            return stopped
        result = run.result()
    finally:
        ckpt.close()
        if run is not None:  # W&B's summary is the result (None: the run did not finish)
            run.record.trackers.close(result)
    if s.primary:
        write_json_atomic(s.run_dir / RESULT_FILE, result)
    return result


class Run:
    """The mutable state of one call of `train`: the state and its step, the clock, the
    pending step's metrics, checkpoints, and the `Record` the loop writes to."""

    def __init__(self, s: Setup, ckpt: Checkpointer, state, start_step: int, prior_wall: float,
                 branch: dict | None, step_fn, eval_fn, compile_time: float,
                 progress_position: int, xla_count: tuple = (None, "not counted")):
        self.s, self.ckpt, self.state, self.branch = s, ckpt, state, branch
        self.start_step, self.step, self.prior_wall = start_step, start_step, prior_wall
        self.step_fn, self.compile_time = step_fn, compile_time
        self.evaluate = Evaluator(s, eval_fn)
        self.record = Record(s, self.evaluate, start_step, branch, xla_count)
        self.excluded = 0.0  # seconds in evaluation and checkpointing, kept out of tokens/s
        self.pending = None  # (step, metrics) of the newest step, read after the next is dispatched
        self.profiler = tracking.Profiler(s.cfg, s.run_dir)
        self.bar = None
        if s.cfg.train.progress and s.primary:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=s.cfg.train.steps, initial=start_step, desc=s.cfg.name,
                            position=progress_position, leave=progress_position == 0,
                            dynamic_ncols=True, file=sys.stderr)
        self.loop_start = time.perf_counter()
        self.window = [self.loop_start, start_step]  # progress-bar throughput window

    # ---- bookkeeping -----------------------------------------------------------------
    def wall(self) -> float:
        return self.prior_wall + time.perf_counter() - self.loop_start

    def _counted(self, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.excluded += time.perf_counter() - t0

    def read_pending(self) -> None:
        """Read the newest dispatched step's metrics; log them; check divergence."""
        if self.pending is None:
            return
        done_step, fut = self.pending
        self.pending = None
        logged = logged_step(self.s.cfg.train, done_step)
        # between logged steps only the loss is read (the divergence monitor's input)
        mt = self.s.driver.fetch_metrics(fut, None if logged else ("loss",))
        if logged:
            elapsed = time.perf_counter() - self.loop_start - self.excluded
            self.record.log_train(done_step, mt, elapsed)
            self._progress(done_step, mt["loss"])
        reason = self.record.monitor.observe(done_step, mt["loss"], logged)
        if reason is not None:
            self.record.status = "diverged"
            raise Diverged(reason)

    def _progress(self, done_step: int, loss: float) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        tps = (done_step - self.window[1]) * self.s.tokens_per_step / max(now - self.window[0], 1e-9)
        post = {"loss": f"{loss:.3f}", "tok/s": f"{tps:.0f}"}
        if self.record.evals:
            post["eval"] = f"{self.record.evals[-1]['eval_loss']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(done_step - self.window[1])
        self.window[:] = [now, done_step]

    def checkpoint(self) -> None:
        self._counted(lambda: save_checkpoint(self.ckpt, self.s, self.state, self.step,
                                              self.wall(), self.branch))

    def checkpoint_on_request(self) -> int | None:
        """For `save_now` (a signal handler): checkpoint now if the state is readable."""
        try:
            jax.block_until_ready(self.state)
            save_checkpoint(self.ckpt, self.s, self.state, self.step, self.wall(), self.branch)
            return self.step
        except Exception as e:  # donated buffers mid-step, or a save already running
            log.warning("could not checkpoint on request at step %d: %s", self.step, e)
            return None

    def eval_now(self, final: bool) -> None:
        def run():
            self.read_pending()
            self.record.log_eval(self.step, self.evaluate(self.state.params, final=final), final)
        self._counted(run)

    # ---- the loop --------------------------------------------------------------------
    def loop(self, stop_after_steps: int | None) -> dict | None:
        """Train to train.steps; returns a `stopped` record if told to stop early."""
        s, t = self.s, self.s.cfg.train
        shard = s.driver.batch_shard
        kept = set(t.kept_steps)  # parsed once, not on every step
        batch = s.driver.place_batch(s.data.train_batch(self.step, t.batch_size, t.batch_seed, shard))
        if self.step > 0 and curve_eval_step(t, self.step) and \
                not any(e["step"] == self.step for e in self.record.evals):
            self.eval_now(final=False)  # a branch at an eval step: the trunk's state there
        try:
            while self.step < t.steps:
                self.profiler.before_step(self.step + 1)
                self.state, fut = self.step_fn(self.state, batch)
                self.step += 1
                self.profiler.after_step(self.step, self.state)
                self.read_pending()  # the previous step's metrics, read while this one runs
                self.pending = (self.step, fut)
                is_last = self.step == t.steps
                stop_now = stop_after_steps is not None and self.step - self.start_step >= stop_after_steps
                if not is_last:
                    batch = s.driver.place_batch(s.data.train_batch(self.step, t.batch_size,
                                                                    t.batch_seed, shard))
                if self.step in kept:
                    self.read_pending()
                    self._counted(lambda: keep_checkpoint(s, self.state, self.step, self.wall()))
                if curve_eval_step(t, self.step):
                    self.eval_now(final=False)
                if is_last:
                    self.read_pending()
                    self.eval_now(final=True)
                elif stop_requested() is not None:  # SIGTERM / Ctrl-C (scaling.train.stopping)
                    self.read_pending()
                    self.checkpoint()
                    raise Interrupted(stop_requested(), self.step, s.run_dir)
                elif (t.checkpoint_every and self.step % t.checkpoint_every == 0) or stop_now:
                    self.read_pending()
                    self.checkpoint()
                if stop_now and not is_last:
                    return {"status": "stopped", "step": self.step}
            self.read_pending()
            if self.record.final_eval is None and self.step == t.steps:  # resumed at the end
                self.eval_now(final=True)
            jax.block_until_ready(self.state)
        except Diverged as e:
            log.warning("%s diverged: %s", s.cfg.name, e)
        return None

    def close(self) -> None:
        self.profiler.stop()
        if self.bar is not None:
            self.bar.close()
        self.record.metrics_log.close()

    def result(self) -> dict:
        """result.json's fields; a run that reached train.steps keeps its final state."""
        self.record.check_final_eval()
        train_time = time.perf_counter() - self.loop_start - self.excluded
        if self.record.final_eval is not None:  # reached train.steps: keep the final state
            save_checkpoint(self.ckpt, self.s, self.state, self.step, self.wall(), self.branch)
        return self.record.result(self.step, train_time, self.wall(), self.compile_time)
