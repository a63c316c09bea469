"""The training loop: one run in one folder, resumable at any moment.

    run_dir/
      config.json       the resolved config (a rerun with a different config is refused)
      metrics.jsonl     one JSON line per logged step and per evaluation
      checkpoints/      orbax checkpoints (state + data position + corpus fingerprint + config)
      result.json       written last and atomically: the run's done marker and summary
      .lock             held while a process trains here (scaling.runs.runfiles.run_lock)

`train(config, run_dir)` starts the run, resumes it from its newest checkpoint, or,
if result.json exists, returns that result without training. Batches are a pure
function of (seed, step), so a resumed run sees exactly the batches an uninterrupted
run would have seen, and on the CPU produces exactly the same losses.

A run goes through named phases: `_prepare` (every check that bad input can fail, before
anything is written), `_restore_or_init`, `_compile`, the step loop (`_Run.loop`, with
`_Evaluator` and `_DivergenceMonitor`), and `_Run.result`. SIGTERM and SIGINT (Ctrl-C)
end a run cleanly: the current step finishes, a checkpoint is saved, `Interrupted` is
raised (the CLI prints one line and exits 143 / 130); a second Ctrl-C exits at once. A
signal during set-up or compile stops before the loop (scaling.train.stopping).

Evaluation uses the corpus's fixed eval set (`TokenData.eval_set`): a uniform sample of
the validation windows (drawn by `data.eval_seed`), the same for every run of a corpus, so
the loss estimates the per-token held-out loss. The final evaluation uses
`train.eval_tokens` of it; the evaluations along the learning curve use its first
`train.curve_eval_tokens` (a prefix, again a uniform sample: the same estimand). Each
records the loss, its standard error (cluster-robust over documents), how many tokens and
documents it covered, the estimand and the set's id; the final one also its loss sum and
tokens per document (`eval_by_document`) and its loss on the curve windows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from scaling.accounting import counts as accounting

from scaling.train import tracking

from scaling.accounting import xla_count
from scaling.train.checkpoint import Checkpointer
from scaling.config import Config, ConfigError, from_dict
from scaling.data.dataset import TokenData, load_corpus
from scaling.data.masking import MaskedTokenData
from scaling.models import encoder
from scaling.train.parallel import Driver, check_batch, initialize_distributed, make_driver
from scaling.runs.lock import run_lock
from scaling.runs.runfiles import (CONFIG_FILE, METRICS_FILE, RESULT_FILE, DiskFull,
                              atomic_write_text, disk_full_in, json_default, read_json,
                              read_metrics, read_result, write_json_atomic)
from scaling.train.schedules import schedule_multiplier
from scaling.train.stopping import Interrupted, check as _check_stop, requested as _stop_requested, stop_requests
from scaling.evaluation.taskeval import TaskEvaluator
from scaling.train.step import Trainer, compile_key, runtime_values

log = logging.getLogger(__name__)

# Compiled executables reused across runs of the same shape in one process (sweeps), with
# XLA's count of the step's FLOPs, every loop trip counted (scaling.accounting.xla_count: flops, or
# None and why not).
_COMPILED: dict[str, tuple[Any, Any, tuple[float | None, str | None]]] = {}

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


def load_config_file(run_dir: str | Path) -> Config:
    """The config.json of a run folder; ConfigError (naming the file) if it is unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    raw = read_json(path)  # CorruptRunFile (a ConfigError naming the file) if garbled
    if raw is None:
        raise ConfigError(f"{path} does not exist")
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------
# Phase 1: everything that bad input can fail, before anything is written or compiled
# --------------------------------------------------------------------------------------


@dataclass
class _Setup:
    cfg: Config
    run_dir: Path
    driver: Driver
    data: TokenData
    trainer: Trainer
    counts: accounting.ParamCounts
    flops: accounting.FlopCounts
    primary: bool

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.model.seq_len


def _check_same_config(cfg: Config, run_dir: Path) -> None:
    """ConfigError if the folder holds a run (finished or not) of a different config."""
    if (run_dir / CONFIG_FILE).exists():
        if load_config_file(run_dir).semantic_dict() != cfg.semantic_dict():
            raise ConfigError(
                f"{run_dir} holds a run of a different config; nothing is overwritten. "
                "Use another run folder."
            )


def _prepare(cfg: Config, run_dir: Path) -> _Setup:
    """Check the config against the run folder, the devices and the corpus; write nothing."""
    _check_same_config(cfg, run_dir)
    t, m = cfg.train, cfg.model
    driver = make_driver(t.parallel)
    check_batch(t.batch_size, t.micro_batches, driver.n_devices)
    data = load_corpus(cfg.data, m.seq_len)
    if data.vocab_size > m.vocab_size:
        raise ConfigError(
            f"model.vocab_size = {m.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({data.vocab_size}); set model.vocab_size >= {data.vocab_size}"
        )
    if cfg.data.objective == "mlm":  # masked batches and eval set
        data = MaskedTokenData(data, mask_id=encoder.mask_id(m))
    if t.init_from:
        _trunk_config(cfg, run_dir)
    tracking.check_available(cfg)
    return _Setup(cfg, run_dir, driver, data, Trainer(cfg), accounting.param_counts(m),
                  accounting.flops_per_token(m), primary=jax.process_index() == 0)


# --------------------------------------------------------------------------------------
# Phase 2: state, fresh or restored
# --------------------------------------------------------------------------------------


class TrunkNotReady(RuntimeError):
    """A cooldown branch's trunk has not yet saved the checkpoint the branch starts from."""


def _check_corpus(s: _Setup, meta: dict, where: Path) -> None:
    saved = meta.get("corpus_fingerprint")
    if saved is not None and saved != s.data.fingerprint:
        raise ConfigError(
            f"{where}: its checkpoints were trained on a different corpus (token "
            f"fingerprint {saved[:12]}, this machine's {s.cfg.data.corpus!r} gives "
            f"{s.data.fingerprint[:12]}; the stdlib corpus depends on the Python build). "
            "Resuming would mix two corpora: resume where it started, or use a new run folder."
        )


def _restore_or_init(s: _Setup, ckpt: Checkpointer) -> tuple[Any, int, float, dict | None]:
    """(device state, start step, wall seconds already spent, branch record or None)."""
    restored = ckpt.restore_latest(s.trainer.abstract_checkpoint())
    if restored is not None:
        host_state, meta = restored
        _check_corpus(s, meta, s.run_dir)
        start = int(meta["step"])
        log.info("resuming %s from step %d", s.run_dir, start)
        return (_place(s, host_state), start, float(meta.get("wall_time_s", 0.0)),
                meta.get("branch"))
    if s.cfg.train.init_from:
        branched = _branch_from_trunk(s)
        if branched is not None:
            host_state, branch = branched
            return _place(s, host_state), branch["branched_at_step"], 0.0, branch
    return s.driver.place_state(jax.device_get(s.trainer.init_state())), 0, 0.0, None


def _place(s: _Setup, checkpointed_state):
    """A state read from a checkpoint (trees, host arrays), packed and on the devices."""
    return s.driver.place_state(s.trainer.from_checkpoint(checkpointed_state))


def trunk_dir(cfg: Config, run_dir: Path) -> Path:
    """The folder of `train.init_from` (relative paths are relative to the run's folder)."""
    p = Path(cfg.train.init_from).expanduser()
    return p if p.is_absolute() else (run_dir / p).resolve()


def _branch_from_trunk(s: _Setup) -> tuple[Any, dict] | None:
    """The host state of a cooldown branch at `train.init_step`, taken from its trunk.

    The trunk must be the same run up to that step: same model, data, optimizer, batch and
    seeds, and the same learning rate at every step before it (checked numerically). Then
    the branch continues exactly as a separate run of its own config would. A trunk that
    has finished without that checkpoint (a branch added to the spec later): the branch
    trains from step 0, with a warning. A trunk still short of it: TrunkNotReady."""
    t = s.cfg.train
    tdir, _ = _trunk_config(s.cfg, s.run_dir)
    restored = None
    for sub in (KEEP_DIR, "checkpoints"):
        if (tdir / sub).exists():
            trunk_ckpt = Checkpointer(tdir / sub, keep=None, create=False)  # a reader only
            try:
                restored = trunk_ckpt.restore_step(t.init_step, s.trainer.abstract_checkpoint())
            finally:
                trunk_ckpt.close()
        if restored is not None:
            break
    if restored is None:
        if read_result(tdir) is None:
            raise TrunkNotReady(f"the trunk {tdir} has no checkpoint at step {t.init_step} yet; "
                                "the branch starts once the trunk has saved it")
        log.warning("trunk %s finished without a checkpoint at step %d: %s trains from step 0",
                    tdir, t.init_step, s.run_dir)
        return None
    trunk_state, meta = restored
    _check_corpus(s, meta, tdir)
    _, missing = _separate_run_rows(s, read_metrics(tdir), t.init_step)
    if missing:  # its curve would not be the separate run's: train as that run instead
        log.warning("trunk %s lacks %s%s (train.log_every / eval_every / eval_steps): %s trains "
                    "from step 0", tdir, missing[0], f" and {len(missing) - 1} more" * (len(missing) > 1),
                    s.run_dir)
        return None
    # The trunk's weights, moments and step count under the branch's own peak lr and schedule.
    host_state = s.trainer.reschedule(trunk_state)
    log.info("branching %s from %s at step %d", s.run_dir, tdir, t.init_step)
    return host_state, {"trunk": tdir.name, "trunk_dir": str(tdir),
                        "branched_at_step": t.init_step}


def _trunk_config(cfg: Config, run_dir: Path) -> tuple[Path, Config]:
    """The trunk's folder and config, checked to be this branch's run up to init_step."""
    tdir = trunk_dir(cfg, run_dir)
    if not (tdir / CONFIG_FILE).exists():
        raise TrunkNotReady(f"train.init_from = {cfg.train.init_from!r}: {tdir} holds no run "
                            "yet; run the trunk first")
    trunk_cfg = load_config_file(tdir)
    _check_branchable(cfg, trunk_cfg, tdir)
    return tdir, trunk_cfg


def _check_branchable(cfg: Config, trunk: Config, tdir: Path) -> None:
    """Refuse a trunk that is not the same run as this branch up to init_step."""
    mine, theirs = cfg.semantic_dict(), trunk.semantic_dict()
    schedule_keys = {"schedule", "decay_fraction", "decay_shape", "final_lr_ratio"}
    # Length and when and how much to evaluate do not change the trained weights.
    free_train_keys = {"steps", "eval_every", "eval_tokens", "curve_eval_tokens"}
    for d in (mine, theirs):
        for k in free_train_keys:
            d["train"].pop(k, None)
        for k in schedule_keys:
            d["optim"].pop(k, None)
    if mine != theirs:
        diff = sorted(f"{sec}.{k}" for sec in mine for k in set(mine[sec]) | set(theirs.get(sec, {}))
                      if isinstance(mine[sec], dict) and mine[sec].get(k) != theirs.get(sec, {}).get(k))
        raise ConfigError(f"train.init_from = {cfg.train.init_from!r}: the trunk {tdir} differs "
                          f"from this run in {', '.join(diff) or 'its config'}; a branch must "
                          "differ only in its schedule and length")
    k = cfg.train.init_step
    ours, trunks = _learning_rates(cfg, k), _learning_rates(trunk, k)
    if not np.array_equal(ours, trunks):
        first = int(np.argmax(ours != trunks))
        raise ConfigError(
            f"train.init_from = {cfg.train.init_from!r}: the trunk's learning rate differs from "
            f"this run's at step {first} ({trunks[first]:.6g} vs {ours[first]:.6g}), before "
            f"train.init_step = {k}; the branch's decay must start at or after init_step"
        )


def _learning_rates(cfg: Config, n: int) -> np.ndarray:
    """The learning rate of each of the first n steps of a run of `cfg`, as the step
    computes it (peak lr x schedule_multiplier, float32)."""
    lr, sched = runtime_values(cfg)
    # one compiled program per power-of-two length: op-by-op dispatch would compile every
    # operation anew for each new n (~1 s per branch, twice)
    padded = 1 << max(int(n) - 1, 1).bit_length()
    return np.asarray(_schedule_values(jnp.arange(padded), sched))[:n] * lr


_schedule_values = jax.jit(jax.vmap(schedule_multiplier, in_axes=(0, None)))


KEEP_DIR = "keep"  # checkpoints at train.save_steps, kept for good (cooldown branches start there)


def _save(ckpt: Checkpointer, s: _Setup, state, step: int, wall: float,
          branch: dict | None = None) -> None:
    if step in ckpt.steps():
        if step not in ckpt.unreadable:  # resumed from the final checkpoint: nothing new
            return
        ckpt.delete(step)  # the corrupt one that the restore fell back from: replaced
    host_state = s.trainer.to_checkpoint(s.driver.fetch_state(state))
    meta = {"step": step, "wall_time_s": wall, "config": s.cfg.to_dict(),
            "corpus_fingerprint": s.data.fingerprint, "branch": branch,
            "data_position": s.data.position(step, s.cfg.train.batch_size)}
    try:
        ckpt.save(step, host_state, meta)
    except Exception as e:  # a full disk: one line naming the folder and the size
        if not disk_full_in(e):
            raise
        need = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(host_state))
        raise DiskFull(ckpt.directory / str(step), need) from None


def _keep(s: _Setup, state, step: int, wall: float) -> None:
    """A checkpoint at one of train.save_steps, in keep/, never rotated away."""
    keeper = Checkpointer(s.run_dir / KEEP_DIR, keep=None)
    try:
        _save(keeper, s, state, step, wall)
    finally:
        keeper.close()


# --------------------------------------------------------------------------------------
# Phase 3: compile (timed apart from training); one program per shape and process
# --------------------------------------------------------------------------------------


def _one_device_step(s: _Setup, state, batch) -> tuple:
    """(step, state, batch) of the step as one device runs it, with one device's shapes
    and no collectives: what XLA's count of a pmap / shard_map step is (times the devices,
    `devices_flops_factor`), countable without the map's axis (scaling.accounting.xla_count)."""
    pmap, n = s.driver.kind == "pmap", s.driver.n_devices
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:] if pmap else x.shape, x.dtype),
                       state)
    rows = batch.shape[1:] if pmap else (batch.shape[0] // n, *batch.shape[1:])
    return (jax.jit(partial(s.trainer.train_step_body, axis_name=None)), one,
            jax.ShapeDtypeStruct(rows, batch.dtype))


def _compile(s: _Setup, state, first_batch) -> tuple[Any, Any, float, tuple]:
    per_position = s.cfg.train.eval_per_position
    key = repr((compile_key(s.cfg), per_position, s.driver.kind, [str(d) for d in s.driver.devices]))
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


# --------------------------------------------------------------------------------------
# Evaluation and divergence
# --------------------------------------------------------------------------------------


class _Evaluator:
    """Loss on the corpus's fixed eval set (`data.eval_seed`'s draw): the whole
    `eval_tokens` sample at the end of a run, its first `curve_eval_tokens` along the
    learning curve. Both are uniform samples of the validation windows, so both estimate
    the per-token held-out loss; the final eval also records its per-document sums
    (`eval_by_document`) and its loss on the curve set's windows (`eval_loss_on_curve_set`,
    what the curve evals are compared with)."""

    def __init__(self, s: _Setup, eval_fn):
        t, T = s.cfg.train, s.cfg.model.seq_len
        self.s, self.eval_fn = s, eval_fn
        self.final_set = s.data.eval_set(max(1, t.eval_tokens // T), s.cfg.data.eval_seed)
        curve = t.curve_eval_tokens or t.eval_tokens
        curve_windows = max(1, min(curve, t.eval_tokens) // T)
        self.curve_set = self.final_set.prefix(min(curve_windows, self.final_set.n_windows))
        self.tasks = (TaskEvaluator(list(s.cfg.data.tasks), s.data.tokenizer,
                                    s.trainer.model_config) if s.cfg.data.tasks else None)

    def __call__(self, params, final: bool) -> dict[str, float]:
        es = self.final_set if final else self.curve_set
        d, B = self.s.driver, self.s.cfg.train.batch_size
        index, count = d.batch_shard
        rows = B // count
        per_position = self.s.cfg.train.eval_per_position  # eval_fn returns (losses, [B, T])
        losses, positions = [], []
        for i in range(es.n_batches(B)):
            batch, weights = es.batch(i, B)
            out = self.eval_fn(params, d.place_batch(batch[index * rows:(index + 1) * rows]))
            losses.append(d.fetch_array(out[0] if per_position else out)[weights > 0])
            if per_position and final:
                positions.append(d.fetch_array(out[1])[weights > 0])
        window_losses = np.concatenate(losses)
        summary = es.summarize(window_losses, by_document=final)
        if final:  # the curve set is the final set's prefix: its loss at the end, like for like
            k = self.curve_set.n_windows
            summary["eval_loss_on_curve_set"] = self.curve_set.summarize(window_losses[:k])["eval_loss"]
        if positions:
            summary.update(es.summarize_positions(np.concatenate(positions)))
        if self.tasks is not None:  # data.tasks: task/<sub-task>/<metric> (scaling.evaluation.taskeval)
            tree = self.s.trainer.params_tree(params if d.kind == "none" else d.fetch_state(params))
            summary.update(self.tasks(tree))
        return summary


class _DivergenceMonitor:
    """Decides when a run has diverged, and says why.

    Three rules, each recorded as `divergence_reason`:
      - the training loss is NaN or infinite;
      - the training loss exceeds `train.divergence_factor` x the first step's loss;
      - a sustained rise: the smoothed training loss (an exponential moving average over the
        logged steps, weight 0.2 on the newest) stays more than `train.divergence_rise` (a
        fraction) above its running minimum for `patience` consecutive logged steps, where
        patience = max(5, 10 % of the run's logged steps). This catches a run that blows up
        to a plateau, which the first two rules miss. It is evaluated on logged steps only,
        so a resumed run, which rebuilds it from metrics.jsonl, decides exactly as an
        uninterrupted one.
    At the end of a run, an eval loss more than `divergence_rise` above the best eval loss of
    the run (on the same eval set) marks it diverged too.
    """

    ALPHA = 0.2

    def __init__(self, cfg: Config):
        t = cfg.train
        self.factor, self.rise = t.divergence_factor, t.divergence_rise
        n_logged = t.steps // t.log_every + 1
        self.patience = max(5, n_logged // 10)
        self.initial: float | None = None
        self.ema: float | None = None
        self.low = math.inf
        self.above = 0
        self.reason: str | None = None

    def observe(self, step: int, loss: float, logged: bool) -> str | None:
        """Feed one step's training loss; returns (and keeps) a reason once diverged."""
        if self.initial is None:
            self.initial = loss
        if not math.isfinite(loss):
            self.reason = f"training loss {loss} at step {step}"
        elif loss > self.factor * self.initial:
            self.reason = (f"training loss {loss:.4g} at step {step} exceeds "
                           f"{self.factor:g} x the first step's {self.initial:.4g}")
        elif logged:
            self._smooth(step, loss)
        return self.reason

    def _smooth(self, step: int, loss: float) -> None:
        self.ema = loss if self.ema is None else self.ALPHA * loss + (1 - self.ALPHA) * self.ema
        self.low = min(self.low, self.ema)
        if self.ema > (1 + self.rise) * self.low:
            self.above += 1
            if self.above >= self.patience:
                self.reason = (f"smoothed training loss {self.ema:.4g} at step {step} has stayed "
                               f"more than {self.rise:.0%} above its running minimum "
                               f"{self.low:.4g} for {self.above} logged steps")
        else:
            self.above = 0

    def check_final_eval(self, final: float | None, best_curve: float | None) -> str | None:
        """`final`: the final eval's loss on the curve evals' windows (the same windows as
        `best_curve`, the best curve eval), None when it is not known."""
        if (self.reason is None and best_curve is not None and final is not None
                and final > (1 + self.rise) * best_curve):
            self.reason = (f"final eval loss {final:.4g} on the curve-eval windows is more "
                           f"than {self.rise:.0%} above the run's best {best_curve:.4g} on them")
        return self.reason


# --------------------------------------------------------------------------------------
# Phase 4: the step loop; phase 5: the result
# --------------------------------------------------------------------------------------


class _MetricsLog:
    """metrics.jsonl, rewritten to the rows of the curve so far (`kept`: the run's own rows
    up to the resumed step, or a fresh branch's trunk rows), so the curve has no duplicates."""

    def __init__(self, path: Path, kept: list[dict], enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            self.f = None
            return
        atomic_write_text(path, "".join(json.dumps(r, default=json_default) + "\n" for r in kept))
        self.f = open(path, "a", buffering=1)

    def write(self, row: dict) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row, default=json_default) + "\n")

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _curve_so_far(s: _Setup, start_step: int, branch: dict | None) -> list[dict]:
    """The metrics rows a run starts from: its own up to the resumed step, or, for a branch
    starting at its branch step, the rows a separate run of its config would have written
    up to there, taken from its trunk (marked "trunk": true), so its learning curve, best
    eval loss and divergence monitor are the separate run's."""
    if branch is not None and start_step == branch["branched_at_step"]:
        rows, _ = _separate_run_rows(s, read_metrics(Path(branch["trunk_dir"])), start_step)
        return [dict(r, trunk=True) for r in rows]
    return [r for r in read_metrics(s.run_dir) if r.get("step", 0) <= start_step]


def _forward_tokens(ev: dict, seq_len: int) -> int:
    """Tokens one evaluation ran through the model (its windows x seq_len; 0 for none)."""
    return int(ev.get("eval_windows") or 0) * seq_len


def _logged_step(t, step: int) -> bool:
    """Whether a run of train config `t` writes its training loss at `step`."""
    return step % t.log_every == 0 or step in (1, t.steps)


def _curve_eval_step(t, step: int) -> bool:
    """Whether a run of train config `t` evaluates the curve set after `step` (not the last)."""
    return (bool(t.eval_every) and step % t.eval_every == 0 or step in t.extra_eval_steps) \
        and step < t.steps


def _curve_set_id(s: _Setup) -> str:
    """The id of the windows this run's curve evals score (as `_Evaluator` picks them)."""
    t, T = s.cfg.train, s.cfg.model.seq_len
    windows = max(1, min(t.curve_eval_tokens or t.eval_tokens, t.eval_tokens) // T)
    return s.data.eval_set(min(windows, max(1, t.eval_tokens // T)), s.cfg.data.eval_seed).set_id


def _separate_run_rows(s: _Setup, trunk_rows: list[dict], k: int) -> tuple[list[dict], list[str]]:
    """From a trunk's metrics, the rows a separate run of this (branch) config writes up to
    step k: training-loss rows at its own logged steps, curve evals at its own eval steps
    before k on its own curve set (the one at k, if any, the branch computes itself). Also
    what the trunk lacks of them ([] when none)."""
    t, curve_id = s.cfg.train, _curve_set_id(s)
    losses = {r["step"]: r for r in trunk_rows if "loss" in r and r["step"] <= k}
    evals = {r["step"]: r for r in trunk_rows if "eval_loss" in r and not r.get("eval_final")
             and r.get("eval_set_id") == curve_id and r["step"] < k}
    want_loss = [j for j in range(1, k + 1) if _logged_step(t, j)]
    want_eval = [j for j in range(1, k) if _curve_eval_step(t, j)]
    rows = sorted([losses[j] for j in want_loss if j in losses]
                  + [evals[j] for j in want_eval if j in evals],
                  key=lambda r: (r["step"], "eval_loss" in r))
    missing = ([f"the training loss at step {j}" for j in want_loss if j not in losses]
               + [f"a curve eval at step {j}" for j in want_eval if j not in evals])
    return rows, missing


class _Run:
    """The mutable state of one call of `train`: loop, evaluation, checkpoints, result."""

    def __init__(self, s: _Setup, ckpt: Checkpointer, state, start_step: int, prior_wall: float,
                 branch: dict | None, step_fn, eval_fn, compile_time: float,
                 progress_position: int, xla_count: tuple = (None, "not counted")):
        self.s, self.ckpt, self.state, self.branch = s, ckpt, state, branch
        self.start_step, self.step, self.prior_wall = start_step, start_step, prior_wall
        self.step_fn, self.compile_time = step_fn, compile_time
        self.evaluate = _Evaluator(s, eval_fn)
        cfg, t = s.cfg, s.cfg.train
        self.peak = accounting.peak_flops(s.driver.devices[0], cfg.model.compute_dtype) * s.driver.n_devices
        self.peak_precision = accounting.peak_precision(s.driver.devices[0], cfg.model.compute_dtype)
        xla, self.xla_note = xla_count  # every loop trip counted, or None and why not
        self.xla_step_flops = None if xla is None else xla * s.driver.devices_flops_factor()
        history = _curve_so_far(s, start_step, branch)
        self.evals = [r for r in history if "eval_loss" in r
                      and not r.get("eval_final")]  # curve evals (a trunk's final one is not)
        self.logged = [r for r in history if "loss" in r]
        self.monitor = _DivergenceMonitor(cfg)
        for r in self.logged:  # rebuild the monitor's state exactly as it was
            self.monitor.observe(r["step"], r["loss"], logged=True)
        self.status = "done"
        # A run resumed from its final checkpoint (its result.json lost) keeps its final eval.
        final = [r for r in history if r.get("eval_final") and r["step"] == t.steps == start_step]
        self.final_eval: dict[str, float] | None = (
            {k: final[-1][k] for k in final[-1] if k.startswith(("eval_", "task/"))}
            if final else None)
        self.excluded = 0.0  # seconds in evaluation and checkpointing, kept out of tokens/s
        self.pending = None  # (step, metrics) of the newest step, read after the next is dispatched
        self.metrics_log = _MetricsLog(s.run_dir / METRICS_FILE, history, enabled=s.primary)
        self.trackers = tracking.Trackers(cfg, s.run_dir, start_step, s.primary)
        self.profiler = tracking.Profiler(cfg, s.run_dir)
        self.bar = None
        if t.progress and s.primary:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=t.steps, initial=start_step, desc=cfg.name,
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

    def _row(self, step: int) -> dict:
        tokens = step * self.s.tokens_per_step
        return {"step": step, "tokens": tokens, "flops": 6.0 * self.s.counts.non_embedding * tokens,
                "flops_exact": self.s.flops.exact * tokens}

    def read_pending(self) -> None:
        """Read the newest dispatched step's metrics; log them; check divergence."""
        if self.pending is None:
            return
        done_step, fut = self.pending
        self.pending = None
        t = self.s.cfg.train
        logged = _logged_step(t, done_step)
        # between logged steps only the loss is read (the divergence monitor's input)
        mt = self.s.driver.fetch_metrics(fut, None if logged else ("loss",))
        if logged:
            row = {**self._row(done_step), **mt}
            elapsed = time.perf_counter() - self.loop_start - self.excluded
            if done_step > self.start_step and elapsed > 0:
                row["tokens_per_s"] = (done_step - self.start_step) * self.s.tokens_per_step / elapsed
                row["mfu"] = accounting.mfu(row["tokens_per_s"], self.s.flops.exact, self.peak)
            self.logged.append(row)
            self._write(row)
            self._progress(done_step, mt["loss"])
        reason = self.monitor.observe(done_step, mt["loss"], logged)
        if reason is not None:
            self.status = "diverged"
            raise Diverged(reason)

    def _write(self, row: dict) -> None:
        self.metrics_log.write(row)
        self.trackers.log(row)

    def _progress(self, done_step: int, loss: float) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        tps = (done_step - self.window[1]) * self.s.tokens_per_step / max(now - self.window[0], 1e-9)
        post = {"loss": f"{loss:.3f}", "tok/s": f"{tps:.0f}"}
        if self.evals:
            post["eval"] = f"{self.evals[-1]['eval_loss']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(done_step - self.window[1])
        self.window[:] = [now, done_step]

    def checkpoint(self) -> None:
        self._counted(lambda: _save(self.ckpt, self.s, self.state, self.step, self.wall(),
                                    self.branch))

    def checkpoint_on_request(self) -> int | None:
        """For `save_now` (a signal handler): checkpoint now if the state is readable."""
        try:
            jax.block_until_ready(self.state)
            _save(self.ckpt, self.s, self.state, self.step, self.wall(), self.branch)
            return self.step
        except Exception as e:  # donated buffers mid-step, or a save already running
            log.warning("could not checkpoint on request at step %d: %s", self.step, e)
            return None

    def eval_now(self, final: bool) -> None:
        def run():
            self.read_pending()
            ev = self.evaluate(self.state.params, final=final)
            row = {**self._row(self.step), **ev, "eval_final": final}
            if final:
                self.final_eval = ev
            else:
                self.evals.append(row)
            self._write(row)
        self._counted(run)

    # ---- the loop --------------------------------------------------------------------
    def loop(self, stop_after_steps: int | None) -> dict | None:
        """Train to train.steps; returns a `stopped` record if told to stop early."""
        s, t = self.s, self.s.cfg.train
        shard = s.driver.batch_shard
        kept = set(t.kept_steps)  # parsed once, not on every step
        batch = s.driver.place_batch(s.data.train_batch(self.step, t.batch_size, t.batch_seed, shard))
        if self.step > 0 and _curve_eval_step(t, self.step) and \
                not any(e["step"] == self.step for e in self.evals):
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
                    self._counted(lambda: _keep(s, self.state, self.step, self.wall()))
                if _curve_eval_step(t, self.step):
                    self.eval_now(final=False)
                if is_last:
                    self.read_pending()
                    self.eval_now(final=True)
                elif _stop_requested() is not None:  # SIGTERM / Ctrl-C (scaling.train.stopping)
                    self.read_pending()
                    self.checkpoint()
                    raise Interrupted(_stop_requested(), self.step, s.run_dir)
                elif (t.checkpoint_every and self.step % t.checkpoint_every == 0) or stop_now:
                    self.read_pending()
                    self.checkpoint()
                if stop_now and not is_last:
                    return {"status": "stopped", "step": self.step}
            self.read_pending()
            if self.final_eval is None and self.step == t.steps:  # resumed at the end
                self.eval_now(final=True)
            jax.block_until_ready(self.state)
        except Diverged as e:
            log.warning("%s diverged: %s", s.cfg.name, e)
        return None

    def close(self) -> None:
        self.profiler.stop()
        if self.bar is not None:
            self.bar.close()
        self.metrics_log.close()

    def _final_on_curve_set(self) -> float | None:
        """The final eval's loss on the curve evals' windows (a final eval recorded before
        that field existed: its own loss when the two sets are one, else None)."""
        ev = self.final_eval or {}
        if "eval_loss_on_curve_set" in ev:
            return ev["eval_loss_on_curve_set"]
        same = self.evaluate.curve_set.n_windows == self.evaluate.final_set.n_windows
        return ev.get("eval_loss") if same else None

    def result(self) -> dict:
        s, cfg, t, m = self.s, self.s.cfg, self.s.cfg.train, self.s.cfg.model
        if self.status == "done":
            best_curve = min((e["eval_loss"] for e in self.evals), default=None)
            if self.monitor.check_final_eval(self._final_on_curve_set(), best_curve):
                self.status = "diverged"
        train_time = time.perf_counter() - self.loop_start - self.excluded
        if self.final_eval is not None:  # reached train.steps: keep the final state
            _save(self.ckpt, s, self.state, self.step, self.wall(), self.branch)
        step, N = self.step, s.counts.non_embedding
        tokens = step * s.tokens_per_step
        tps = (step - self.start_step) * s.tokens_per_step / train_time if step > self.start_step else float("nan")
        # Train loss averaged over the logged steps of the last 5 % of training.
        tail = [r["loss"] for r in self.logged if r["step"] > 0.95 * step] or \
            [r["loss"] for r in self.logged[-1:]]
        if not tail:  # metrics.jsonl emptied or lost, the final checkpoint kept
            log.warning("%s has no train-loss rows: final_train_loss is NaN (the evaluations "
                        "are recomputed from the final checkpoint)", s.run_dir / METRICS_FILE)
        ev = self.final_eval or {}
        curve_losses = [e["eval_loss"] for e in self.evals]
        final_on_curve = self._final_on_curve_set()
        return {
            "status": self.status,
            "divergence_reason": self.monitor.reason,
            "name": cfg.name,
            "N": N,
            "N_total": s.counts.total,
            "D": tokens,
            "C": 6.0 * N * tokens,
            "C_6ND": 6.0 * N * tokens,
            "C_exact": s.flops.exact * tokens,
            "C_kaplan": s.flops.kaplan * tokens,
            "C_xla": (self.xla_step_flops * step) if self.xla_step_flops is not None else float("nan"),
            **({"C_xla_note": self.xla_note} if self.xla_step_flops is None else {}),
            "final_train_loss": float(np.mean(tail)) if tail else float("nan"),
            "final_eval_loss": ev.get("eval_loss", float("nan")),
            "eval_loss_stderr": ev.get("eval_loss_stderr", float("nan")),
            "eval_tokens": ev.get("eval_tokens"),
            "eval_documents": ev.get("eval_documents"),
            "eval_windows": ev.get("eval_windows"),
            "curve_eval_tokens": self.evaluate.curve_set.tokens,
            # tokens through the model's forward pass in evaluation: every eval of the curve
            # and the final one; those of a branch's curve done by its trunk, apart
            # (analysis.branches counts eval compute from them)
            "eval_forward_tokens": sum(_forward_tokens(e, m.seq_len) for e in self.evals)
            + _forward_tokens(ev, m.seq_len),
            "eval_forward_tokens_from_trunk": sum(_forward_tokens(e, m.seq_len)
                                                  for e in self.evals if e.get("trunk")),
            **{k: ev[k] for k in ("eval_loss_by_position", "eval_loss_by_position_stderr") if k in ev},
            # the estimand (scaling.data.evalset), which windows (same id: same windows), the
            # draw, and per validation document the tokens scored and their loss sum
            **{k: ev[k] for k in ("eval_estimand", "eval_set_id", "eval_loss_stderr_windows",
                                  "eval_loss_on_curve_set", "eval_by_document") if k in ev},
            "eval_seed": cfg.data.eval_seed,
            # best over the evals on the curve set's windows (the final eval's prefix)
            "best_eval_loss": min(curve_losses + ([final_on_curve] if final_on_curve is not None
                                                  else []),
                                  default=ev.get("eval_loss", float("nan"))),
            "steps": step,
            "steps_planned": t.steps,
            "batch_size": t.batch_size,
            "seq_len": m.seq_len,
            "arch": m.arch,
            "objective": cfg.data.objective,
            "n_layer": m.n_layer,
            "d_model": m.d_model,
            "n_head": m.n_head if m.arch != "lstm" else None,  # (no attention, no MLP)
            "d_ff": m.ff if m.arch != "lstm" else None,
            "vocab_size": m.vocab_size,
            "pos_encoding": m.pos_encoding if m.arch != "lstm" else None,
            "compute_dtype": m.compute_dtype,
            "optimizer": cfg.optim.name,
            "lr": cfg.optim.lr,
            "schedule": cfg.optim.schedule,
            "warmup_steps": cfg.optim.warmup_steps,
            "weight_decay": cfg.optim.weight_decay,
            "seed": t.seed,
            "tokens_per_param": tokens / N,
            "resumed_from_step": self.start_step,
            # what the numbers depend on beyond the config (README: reproducibility)
            "cpu_threads": _cpu_threads(),
            "branch_origin": _branch_origin(cfg, self.branch),
            "trunk": self.branch["trunk"] if self.branch else None,
            "branched_at_step": self.branch["branched_at_step"] if self.branch else None,
            "wall_time_s": self.wall(),
            "compile_time_s": self.compile_time,
            "tokens_per_s": tps,
            "mfu": accounting.mfu(tps, s.flops.exact, self.peak),
            "mfu_peak_precision": self.peak_precision,
            "parallel": s.driver.kind,
            "device_kind": s.driver.devices[0].device_kind,
            "device_platform": s.driver.devices[0].platform,
            "device_count": s.driver.n_devices,
            "process_count": jax.process_count(),
            "jax_version": jax.__version__,
            "python_version": platform.python_version(),
            "corpus_fingerprint": s.data.fingerprint,
            "data": s.data.describe(),
            "git_commit": git_commit(),
            **{k: v for k, v in ev.items() if k.startswith("task/")},
        }


def _cpu_threads() -> int:
    """The cores this process may use: XLA's CPU client sizes its thread pool from them,
    and its reductions' summation order (so the last bits of a loss) follow the pool."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _branch_origin(cfg: Config, branch: dict | None) -> str | None:
    """Where a branch (train.init_from) started: its trunk's checkpoint, or step 0 when
    the trunk finished without one at train.init_step. None for a plain run."""
    if not cfg.train.init_from:
        return None
    if branch is not None:
        return f"trunk {branch['trunk']} checkpoint at step {branch['branched_at_step']}"
    return (f"step 0: the trunk had no checkpoint at train.init_step = "
            f"{cfg.train.init_step}, so this branch trained from scratch")


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
        _check_stop()
        _check_same_config(cfg, run_dir)  # a finished run of another config is no answer
        done = read_result(run_dir)
        if done is not None:
            return done
        initialize_distributed()
        s = _prepare(cfg, run_dir)
        _check_stop()
        run_dir.mkdir(parents=True, exist_ok=True)
        # Process 0 holds the folder's lock; the other processes of a multi-process run share it.
        with run_lock(run_dir) if s.primary else contextlib.nullcontext():
            done = read_result(run_dir)  # finished by another process while we prepared
            if done is not None:
                return done
            if s.primary and not (run_dir / CONFIG_FILE).exists():
                atomic_write_text(run_dir / CONFIG_FILE, cfg.to_json())
            return _train_locked(s, progress_position, stop_after_steps)


def _train_locked(s: _Setup, progress_position: int, stop_after_steps: int | None) -> dict:
    global _SAVE_NOW
    t = s.cfg.train
    ckpt = Checkpointer(s.run_dir / "checkpoints", keep=t.keep_checkpoints)
    run = result = None
    try:
        state, start_step, prior_wall, branch = _restore_or_init(s, ckpt)
        first = s.driver.place_batch(s.data.train_batch(start_step, t.batch_size, t.batch_seed,
                                                        s.driver.batch_shard))
        step_fn, eval_fn, compile_time, xla = _compile(s, state, first)
        _check_stop()  # signalled during restore or compile: nothing trained, nothing to save
        run = _Run(s, ckpt, state, start_step, prior_wall, branch, step_fn, eval_fn,
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
            run.trackers.close(result)
    if s.primary:
        write_json_atomic(s.run_dir / RESULT_FILE, result)
    return result
