"""A run's compile phase: the step and eval programs, one per shape and process.

`compile_steps` compiles the driver's training step and evaluation step for a run's state
and batch (timed apart from training), and counts the step's FLOPs with XLA
(scaling.accounting.xla_count). Runs of the same shape in one process (a sweep) reuse
the compiled executables: the peak lr and the schedule are values in the train state,
not constants of the program (scaling.train.step.compile_key).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import jax

from scaling.accounting import xla_count
from scaling.train.prepare import Setup
from scaling.train.step import compile_key

# Compiled executables reused across runs of the same shape in one process (sweeps), with
# XLA's count of the step's FLOPs, every loop trip counted (scaling.accounting.xla_count: flops, or
# None and why not).
_COMPILED: dict[str, tuple[Any, Any, tuple[float | None, str | None]]] = {}


def _one_device_step(s: Setup, state, batch) -> tuple:
    """(step, state, batch) of the step as one device runs it, with one device's shapes
    and no collectives: what XLA's count of a pmap / shard_map step is (times the devices,
    `devices_flops_factor`), countable without the map's axis (scaling.accounting.xla_count)."""
    pmap, n = s.driver.kind == "pmap", s.driver.data_shards if s.driver.kind != "mesh" else 1
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:] if pmap else x.shape, x.dtype),
                       state)
    rows = batch.shape[1:] if pmap else (batch.shape[0] // n, *batch.shape[1:])
    return (jax.jit(partial(s.trainer.train_step_body, axis_name=None)), one,
            jax.ShapeDtypeStruct(rows, batch.dtype))


def compile_steps(s: Setup, state, first_batch) -> tuple[Any, Any, float, tuple]:
    """(step_fn, eval_fn, compile seconds, XLA's count of the step: (flops or None, why not))."""
    per_position = s.cfg.train.eval_per_position
    key = repr((compile_key(s.cfg), per_position, s.driver.key))
    t0 = time.perf_counter()
    if key not in _COMPILED:
        step_fn = s.driver.compile(s.trainer.train_step_body, state, first_batch, donate=True)
        eval_fn = s.driver.compile(partial(s.trainer.eval_step_body, per_position=per_position),
                                   state.params, first_batch, donate=False)
        compile_time = time.perf_counter() - t0  # the count below is not part of it
        count = xla_count.step_flops(*_one_device_step(s, state, first_batch))
        _COMPILED[key] = (step_fn, eval_fn, count)
        return step_fn, eval_fn, compile_time, count
    step_fn, eval_fn, count = _COMPILED[key]
    return step_fn, eval_fn, time.perf_counter() - t0, count
