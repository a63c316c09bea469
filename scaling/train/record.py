"""What a run writes: its metrics rows, its learning curve so far, and result.json's fields.

    metrics.jsonl     one JSON line per logged step (`logged_step`) and per evaluation,
                      rewritten on a resume to the rows up to the resumed step (`MetricsLog`)
    result.json       `Record.result`: the run's summary, with what the numbers depend on
                      beyond the config (`git_commit`, `cpu_threads`, the branch's origin)

A cooldown branch starting at its branch step starts from the rows a separate run of its
config would have written up to there, taken from its trunk (`separate_run_rows`), so its
curve, best eval loss and divergence monitor are the separate run's.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np

from scaling.accounting import peaks
from scaling.config import Config
from scaling.runs.runfiles import METRICS_FILE, atomic_write_text, json_default, read_metrics
from scaling.train import noise_scale, tracking
from scaling.train.evaluate import Evaluator, curve_eval_step, curve_set_id
from scaling.train.monitor import DivergenceMonitor
from scaling.train.prepare import Setup

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code that ran ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_threads() -> int:
    """The cores this process may use: XLA's CPU client sizes its thread pool from them,
    and its reductions' summation order (so the last bits of a loss) follow the pool."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def branch_origin(cfg: Config, branch: dict | None) -> str | None:
    """Where a branch (train.init_from) started: its trunk's checkpoint, or step 0 when
    the trunk finished without one at train.init_step. None for a plain run."""
    if not cfg.train.init_from:
        return None
    if branch is not None:
        return f"trunk {branch['trunk']} checkpoint at step {branch['branched_at_step']}"
    return (f"step 0: the trunk had no checkpoint at train.init_step = "
            f"{cfg.train.init_step}, so this branch trained from scratch")


def logged_step(t, step: int) -> bool:
    """Whether a run of train config `t` writes its training loss at `step`."""
    return step % t.log_every == 0 or step in (1, t.steps)


def forward_tokens(ev: dict, seq_len: int) -> int:
    """Tokens one evaluation ran through the model (its windows x seq_len; 0 for none)."""
    return int(ev.get("eval_windows") or 0) * seq_len


def separate_run_rows(s: Setup, trunk_rows: list[dict], k: int) -> tuple[list[dict], list[str]]:
    """From a trunk's metrics, the rows a separate run of this (branch) config writes up to
    step k: training-loss rows at its own logged steps, curve evals at its own eval steps
    before k on its own curve set (the one at k, if any, the branch computes itself). Also
    what the trunk lacks of them ([] when none)."""
    t, curve_id = s.cfg.train, curve_set_id(s)
    losses = {r["step"]: r for r in trunk_rows if "loss" in r and r["step"] <= k}
    evals = {r["step"]: r for r in trunk_rows if "eval_loss" in r and not r.get("eval_final")
             and r.get("eval_set_id") == curve_id and r["step"] < k}
    want_loss = [j for j in range(1, k + 1) if logged_step(t, j)]
    want_eval = [j for j in range(1, k) if curve_eval_step(t, j)]
    rows = sorted([losses[j] for j in want_loss if j in losses]
                  + [evals[j] for j in want_eval if j in evals],
                  key=lambda r: (r["step"], "eval_loss" in r))
    missing = ([f"the training loss at step {j}" for j in want_loss if j not in losses]
               + [f"a curve eval at step {j}" for j in want_eval if j not in evals])
    return rows, missing


def curve_so_far(s: Setup, start_step: int, branch: dict | None) -> list[dict]:
    """The metrics rows a run starts from: its own up to the resumed step, or, for a branch
    starting at its branch step, the rows a separate run of its config would have written
    up to there, taken from its trunk (marked "trunk": true), so its learning curve, best
    eval loss and divergence monitor are the separate run's."""
    if branch is not None and start_step == branch["branched_at_step"]:
        rows, _ = separate_run_rows(s, read_metrics(Path(branch["trunk_dir"])), start_step)
        return [dict(r, trunk=True) for r in rows]
    return [r for r in read_metrics(s.run_dir) if r.get("step", 0) <= start_step]


class MetricsLog:
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


class Record:
    """The record of one call of `train`: the curve so far (logged rows, curve evals, the
    final eval), the divergence monitor rebuilt from it, metrics.jsonl and the trackers it
    is written to, the run's status, and the fields of result.json."""

    def __init__(self, s: Setup, evaluate: Evaluator, start_step: int, branch: dict | None,
                 xla_count: tuple = (None, "not counted")):
        self.s, self.evaluate, self.start_step, self.branch = s, evaluate, start_step, branch
        cfg, t = s.cfg, s.cfg.train
        self.peak = peaks.peak_flops(s.driver.devices[0], cfg.model.compute_dtype) * s.driver.n_devices
        self.peak_precision = peaks.peak_precision(s.driver.devices[0], cfg.model.compute_dtype)
        xla, self.xla_note = xla_count  # every loop trip counted, or None and why not
        self.xla_step_flops = None if xla is None else xla * s.driver.devices_flops_factor()
        history = curve_so_far(s, start_step, branch)
        self.evals = [r for r in history if "eval_loss" in r
                      and not r.get("eval_final")]  # curve evals (a trunk's final one is not)
        self.logged = [r for r in history if "loss" in r]
        self.monitor = DivergenceMonitor(cfg)
        for r in self.logged:  # rebuild the monitor's state exactly as it was
            self.monitor.observe(r["step"], r["loss"], logged=True)
        self.status = "done"
        # A run resumed from its final checkpoint (its result.json lost) keeps its final eval.
        final = [r for r in history if r.get("eval_final") and r["step"] == t.steps == start_step]
        self.final_eval: dict[str, float] | None = (
            {k: final[-1][k] for k in final[-1] if k.startswith(("eval_", "task/"))}
            if final else None)
        self.metrics_log = MetricsLog(s.run_dir / METRICS_FILE, history, enabled=s.primary)
        self.trackers = tracking.Trackers(cfg, s.run_dir, start_step, s.primary)

    def row(self, step: int) -> dict:
        """The fields every metrics row of `step` starts with (tokens and FLOPs so far)."""
        tokens = step * self.s.tokens_per_step
        return {"step": step, "tokens": tokens, "flops": 6.0 * self.s.counts.non_embedding * tokens,
                "flops_exact": self.s.flops.exact * tokens}

    def write(self, row: dict) -> None:
        """One row to metrics.jsonl and the trackers."""
        self.metrics_log.write(row)
        self.trackers.log(row)

    def log_train(self, step: int, metrics: dict, elapsed: float) -> None:
        """A logged step's row, with throughput over the `elapsed` training seconds."""
        row = {**self.row(step), **metrics}
        noise_scale.log_row(row, self.logged)
        if step > self.start_step and elapsed > 0:
            row["tokens_per_s"] = (step - self.start_step) * self.s.tokens_per_step / elapsed
            row["mfu"] = peaks.mfu(row["tokens_per_s"], self.s.flops.exact, self.peak)
        self.logged.append(row)
        self.write(row)

    def log_eval(self, step: int, ev: dict, final: bool) -> None:
        """An evaluation's row; the final one is kept for the result."""
        row = {**self.row(step), **ev, "eval_final": final}
        if final:
            self.final_eval = ev
        else:
            self.evals.append(row)
        self.write(row)

    def final_on_curve_set(self) -> float | None:
        """The final eval's loss on the curve evals' windows (a final eval recorded before
        that field existed: its own loss when the two sets are one, else None)."""
        ev = self.final_eval or {}
        if "eval_loss_on_curve_set" in ev:
            return ev["eval_loss_on_curve_set"]
        same = self.evaluate.curve_set.n_windows == self.evaluate.final_set.n_windows
        return ev.get("eval_loss") if same else None

    def check_final_eval(self) -> None:
        """A finished run whose final eval is far above its best curve eval: diverged."""
        if self.status == "done":
            best_curve = min((e["eval_loss"] for e in self.evals), default=None)
            if self.monitor.check_final_eval(self.final_on_curve_set(), best_curve):
                self.status = "diverged"

    def result(self, step: int, train_time: float, wall: float, compile_time: float) -> dict:
        """result.json's fields for a run ending at `step`."""
        s, cfg, t, m = self.s, self.s.cfg, self.s.cfg.train, self.s.cfg.model
        N = s.counts.non_embedding
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
        final_on_curve = self.final_on_curve_set()
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
            "eval_forward_tokens": sum(forward_tokens(e, m.seq_len) for e in self.evals)
            + forward_tokens(ev, m.seq_len),
            "eval_forward_tokens_from_trunk": sum(forward_tokens(e, m.seq_len)
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
            "cpu_threads": cpu_threads(),
            "branch_origin": branch_origin(cfg, self.branch),
            "trunk": self.branch["trunk"] if self.branch else None,
            "branched_at_step": self.branch["branched_at_step"] if self.branch else None,
            "wall_time_s": wall,
            "compile_time_s": compile_time,
            "tokens_per_s": tps,
            "mfu": peaks.mfu(tps, s.flops.exact, self.peak),
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
            **noise_scale.result_fields(self.logged, step),
        }
