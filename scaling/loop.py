"""The training loop: one run in one folder, resumable at any moment.

    run_dir/
      config.json       the resolved config (a rerun with a different config is refused)
      metrics.jsonl     one JSON line per logged step and per evaluation
      checkpoints/      orbax checkpoints (state + data position + config)
      result.json       written last and atomically: the run's done marker and summary

`train(config, run_dir)` starts the run, resumes it from its newest checkpoint, or,
if result.json exists, returns that result without training. Batches are a pure
function of (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would have seen, and on the CPU produces exactly the same losses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from scaling import accounting
from scaling.checkpoint import Checkpointer
from scaling.config import Config, ConfigError, from_dict
from scaling.data import load_corpus
from scaling.parallel import Driver, check_batch, initialize_distributed, make_driver
from scaling.runfiles import (CONFIG_FILE, METRICS_FILE, RESULT_FILE, atomic_write_text,
                              json_default, read_metrics, read_result, write_json_atomic)
from scaling.train import Trainer

log = logging.getLogger(__name__)

# Compiled executables reused across runs of the same shape in one process (sweeps).
_COMPILED: dict[str, tuple[Any, Any]] = {}

# While a run trains, a function that checkpoints it at its current step (for a
# preemption or time-limit signal handler, e.g. the SLURM executor's); else None.
_SAVE_NOW: Callable[[], int | None] | None = None


def save_now() -> int | None:
    """Checkpoint the run training in this process now; returns the step saved, if any.

    Safe to call from a signal handler: if the state is mid-update (its buffers donated
    to the step running), nothing is saved and the newest periodic checkpoint stands.
    """
    return _SAVE_NOW() if _SAVE_NOW is not None else None


class Diverged(Exception):
    pass


@lru_cache(maxsize=1)
def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _compile_key(cfg: Config, driver: Driver) -> str:
    parts = {
        "model": cfg.model, "optim": dataclasses.replace(cfg.optim, lr=1.0),  # lr: in the state
        "steps": cfg.train.steps,
        "batch": cfg.train.batch_size, "micro": cfg.train.micro_batches,
        "driver": driver.kind, "devices": [str(d) for d in driver.devices],
    }
    return repr(parts)


def load_config_file(run_dir: str | Path) -> Config:
    return from_dict(json.loads((Path(run_dir) / CONFIG_FILE).read_text()))


class _MetricsLog:
    """metrics.jsonl, truncated to the resumed step so the curve has no duplicates."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            self.f = None
            return
        kept = [r for r in read_metrics(path.parent) if r.get("step", 0) <= resume_step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.f = open(path, "a", buffering=1)

    def write(self, row: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row, default=json_default) + "\n")

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def train(cfg: Config, run_dir: str | Path, *, progress_position: int = 0,
          stop_after_steps: int | None = None) -> dict:
    """Train (or resume, or just return) the run of `cfg` in `run_dir`.

    `stop_after_steps` ends the process's work after that many steps of this call,
    leaving a checkpoint and no result (for tests of resumption).
    """
    run_dir = Path(run_dir)
    done = read_result(run_dir)
    if done is not None:
        return done
    initialize_distributed()
    primary = jax.process_index() == 0
    config_path = run_dir / CONFIG_FILE
    if config_path.exists():
        if from_dict(json.loads(config_path.read_text())).semantic_dict() != cfg.semantic_dict():
            raise ConfigError(
                f"{run_dir} holds a run of a different config; nothing is overwritten. "
                "Use another run folder."
            )

    # ---- everything that can fail on bad input, before anything is written or compiled --
    t, m = cfg.train, cfg.model
    driver = make_driver(t.parallel)
    check_batch(t.batch_size, t.micro_batches, driver.n_devices)
    data = load_corpus(cfg.data, m.seq_len)
    if data.vocab_size > m.vocab_size:
        raise ConfigError(
            f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({data.vocab_size}); set model.vocab_size >= {data.vocab_size}"
        )
    counts = accounting.param_counts(m)
    flops = accounting.flops_per_token(m)
    tokens_per_step = t.batch_size * m.seq_len
    trainer = Trainer(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if primary and not config_path.exists():
        config_path.write_text(cfg.to_json())

    # ---- state: fresh or restored ------------------------------------------------------
    ckpt = Checkpointer(run_dir / "checkpoints", keep=t.keep_checkpoints)
    restored = ckpt.restore_latest(trainer.abstract_state())
    if restored is not None:
        host_state, meta = restored
        start_step = int(meta["step"])
        prior_wall = float(meta.get("wall_time_s", 0.0))
        log.info("resuming %s from step %d", run_dir, start_step)
    else:
        host_state = jax.device_get(trainer.init_state())
        start_step, prior_wall = 0, 0.0
    state = driver.place_state(host_state)
    del host_state

    # ---- compile (timed apart from training) -------------------------------------------
    shard = driver.batch_shard
    first_batch = driver.place_batch(data.train_batch(start_step, t.batch_size, t.batch_seed, shard))
    key = _compile_key(cfg, driver)
    t0 = time.perf_counter()
    if key in _COMPILED:
        step_fn, eval_fn = _COMPILED[key]
    else:
        step_fn = driver.compile(trainer.train_step_body, state, first_batch, donate=True)
        eval_fn = driver.compile(lambda p, b, axis_name: trainer.eval_step_body(p, b, axis_name),
                                 state.params, first_batch, donate=False)
        _COMPILED[key] = (step_fn, eval_fn)
    compile_time = time.perf_counter() - t0
    xla_step_flops = accounting.xla_flops(step_fn)
    if xla_step_flops is not None:
        xla_step_flops *= driver.devices_flops_factor()
    device = driver.devices[0]
    peak = accounting.peak_flops(device, m.compute_dtype) * driver.n_devices

    def evaluate(params) -> float:
        losses = []
        for i in range(t.eval_batches):
            batch = data.val_batch(i, t.batch_size)
            index, count = shard
            rows = batch.shape[0] // count
            local = batch[index * rows:(index + 1) * rows]
            losses.append(driver.fetch_metrics(eval_fn(params, driver.place_batch(local)))["eval_loss"])
        return float(np.mean(losses))

    # ---- the loop ---------------------------------------------------------------------
    metrics_log = _MetricsLog(run_dir / METRICS_FILE, start_step, enabled=primary)
    bar = None
    if t.progress and primary:
        from tqdm.auto import tqdm
        bar = tqdm(total=t.steps, initial=start_step, desc=cfg.name, position=progress_position,
                   leave=progress_position == 0, dynamic_ncols=True, file=sys.stderr)

    history = read_metrics(run_dir)
    evals = [r for r in history if "eval_loss" in r]
    logged = [r for r in history if "loss" in r]
    initial_loss = logged[0]["loss"] if logged else None
    status = "done"
    excluded = 0.0  # seconds spent in evaluation and checkpointing, kept out of tokens/s
    loop_start = time.perf_counter()
    window = [loop_start, start_step]  # progress-bar throughput window: (time, step)
    pending = None  # (step, metrics) of the newest step, read after the next is dispatched
    batch = first_batch

    def read_pending() -> None:
        nonlocal pending, initial_loss, status
        if pending is None:
            return
        done_step, fut = pending
        pending = None
        mt = driver.fetch_metrics(fut)
        if initial_loss is None:
            initial_loss = mt["loss"]
        if done_step % t.log_every == 0 or done_step in (1, t.steps):
            tokens = done_step * tokens_per_step
            row = {"step": done_step, "tokens": tokens,
                   "flops": 6.0 * counts.non_embedding * tokens, **mt}
            elapsed = time.perf_counter() - loop_start - excluded
            if done_step > start_step and elapsed > 0:
                row["tokens_per_s"] = (done_step - start_step) * tokens_per_step / elapsed
                row["mfu"] = accounting.mfu(row["tokens_per_s"], flops.exact, peak)
            logged.append(row)
            metrics_log.write(row)
            if bar is not None:
                now = time.perf_counter()
                post = {"loss": f"{mt['loss']:.3f}",
                        "tok/s": f"{(done_step - window[1]) * tokens_per_step / (now - window[0]):.0f}"}
                if evals:
                    post["eval"] = f"{evals[-1]['eval_loss']:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(done_step - window[1])
                window[:] = [now, done_step]
        if not math.isfinite(mt["loss"]) or mt["loss"] > t.divergence_factor * initial_loss:
            status = "diverged"
            raise Diverged(f"loss {mt['loss']} at step {done_step} (initial {initial_loss})")

    step = start_step

    def checkpoint_current() -> int | None:
        try:
            jax.block_until_ready(state)
            _save(ckpt, driver, state, step, data, cfg, prior_wall + time.perf_counter() - loop_start)
            return step
        except Exception as e:  # donated buffers mid-step, or a save already running
            log.warning("could not checkpoint on request at step %d: %s", step, e)
            return None

    global _SAVE_NOW
    _SAVE_NOW = checkpoint_current
    try:
        while step < t.steps:
            state, fut = step_fn(state, batch)
            step += 1
            read_pending()  # the previous step's metrics, read while this step runs
            pending = (step, fut)
            is_last = step == t.steps
            stop_now = stop_after_steps is not None and step - start_step >= stop_after_steps
            if not is_last:
                batch = driver.place_batch(data.train_batch(step, t.batch_size, t.batch_seed, shard))
            if (t.eval_every and step % t.eval_every == 0) or is_last:
                t0 = time.perf_counter()
                read_pending()
                row = {"step": step, "tokens": step * tokens_per_step,
                       "flops": 6.0 * counts.non_embedding * step * tokens_per_step,
                       "eval_loss": evaluate(state.params)}
                evals.append(row)
                metrics_log.write(row)
                excluded += time.perf_counter() - t0
            if (t.checkpoint_every and step % t.checkpoint_every == 0 and not is_last) or (
                    stop_now and not is_last):
                t0 = time.perf_counter()
                read_pending()
                _save(ckpt, driver, state, step, data, cfg,
                      prior_wall + time.perf_counter() - loop_start)
                excluded += time.perf_counter() - t0
            if stop_now and not is_last:
                ckpt.close()
                return {"status": "stopped", "step": step}
        read_pending()
        jax.block_until_ready(state)
    except Diverged as e:
        log.warning("%s diverged: %s", cfg.name, e)
    finally:
        _SAVE_NOW = None
        if bar is not None:
            bar.close()
        metrics_log.close()
    train_time = time.perf_counter() - loop_start - excluded
    wall = prior_wall + time.perf_counter() - loop_start
    if status == "done":
        _save(ckpt, driver, state, step, data, cfg, wall)
    ckpt.close()

    tokens = step * tokens_per_step
    tps = (step - start_step) * tokens_per_step / train_time if step > start_step else float("nan")
    # Train loss averaged over the logged steps of the last 5 % of training.
    tail = [r["loss"] for r in logged if r["step"] > 0.95 * step] or [logged[-1]["loss"]]
    result = {
        "status": status,
        "name": cfg.name,
        "N": counts.non_embedding,
        "N_total": counts.total,
        "D": tokens,
        "C": 6.0 * counts.non_embedding * tokens,
        "C_exact": flops.exact * tokens,
        "C_kaplan": flops.kaplan * tokens,
        "C_xla": (xla_step_flops * step) if xla_step_flops is not None else float("nan"),
        "final_train_loss": float(np.mean(tail)),
        "final_eval_loss": evals[-1]["eval_loss"] if evals and status == "done" else float("nan"),
        "best_eval_loss": min((e["eval_loss"] for e in evals), default=float("nan")),
        "steps": step,
        "steps_planned": t.steps,
        "batch_size": t.batch_size,
        "seq_len": m.seq_len,
        "n_layer": m.n_layer,
        "d_model": m.d_model,
        "n_head": m.n_head,
        "d_ff": m.ff,
        "vocab_size": m.vocab_size,
        "pos_encoding": m.pos_encoding,
        "compute_dtype": m.compute_dtype,
        "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr,
        "schedule": cfg.optim.schedule,
        "warmup_steps": cfg.optim.warmup_steps,
        "weight_decay": cfg.optim.weight_decay,
        "seed": t.seed,
        "tokens_per_param": tokens / counts.non_embedding,
        "resumed_from_step": start_step,
        "wall_time_s": wall,
        "compile_time_s": compile_time,
        "tokens_per_s": tps,
        "mfu": accounting.mfu(tps, flops.exact, peak),
        "parallel": driver.kind,
        "device_kind": device.device_kind,
        "device_platform": device.platform,
        "device_count": driver.n_devices,
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
        "python_version": platform.python_version(),
        "corpus_fingerprint": data.fingerprint,
        "data": data.describe(),
        "git_commit": git_commit(),
    }
    if primary:
        write_json_atomic(run_dir / RESULT_FILE, result)
    return result


def _save(ckpt: Checkpointer, driver: Driver, state, step: int, data, cfg: Config,
          wall: float) -> None:
    if step in ckpt.steps():  # resumed from the final checkpoint: nothing new to save
        return
    host_state = driver.fetch_state(state)
    meta = {"step": step, "wall_time_s": wall, "config": cfg.to_dict(),
            "data_position": data.position(step, cfg.train.batch_size)}
    ckpt.save(step, host_state, meta)
