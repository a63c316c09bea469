"""The results store: point folders of a sweep -> one results table + learning curves.

    sweeps/<name>/
      spec.toml                  the spec as last run (earlier versions under specs/)
      points/<point id>/         one run folder each (scaling.train.loop), plus
          point.json             what the planner said of the point (N, D, C, group, ...)
          failed.json            traceback of the last failure, if it failed
          slurm.json             job id and state, under the SLURM executor
      results.csv / .parquet     one row per point (all states); runs with data.tasks add
                                 a column per task/<sub-task>/<metric> of result.json
      curves.parquet             learning curves of all points, long format

A point's state comes from its folder alone: `done` or `diverged` (result.json),
`corrupt` (a result.json that cannot be read: the next run sets it aside and rebuilds
the result from the final checkpoint, or retrains), `running` (its lock is held, see
scaling.runs.lock.run_lock), `queued` (a SLURM job waits for it), `failed` (failed.json),
`blocked` (a cooldown branch whose trunk point failed, diverged or is corrupt: it is not
run until a rerun of the sweep finishes the trunk), else `pending`. The tables are
rebuilt from the folders, written atomically, whenever a point ends; deleting them
loses nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from scaling.config import ConfigError
from scaling.runs.lock import RunFolderBusy, acquire_run_lock, lock_owner, release_run_lock
from scaling.runs.runfiles import (LOCK_FILE, METRICS_FILE, RESULT_FILE, CorruptRunFile,
                                   atomic_write, clean_stale_temps, read_metrics,
                                   read_metrics_checked, read_result)

log = logging.getLogger(__name__)

POINT_FILE = "point.json"
FAILED_FILE = "failed.json"
SLURM_FILE = "slurm.json"

RESULT_COLUMNS = [
    "sweep", "point_id", "label", "status", "group", "compute_budget",
    "N", "N_total", "D", "D_planned", "accounting", "C", "C_6ND", "C_xla", "C_exact",
    "tokens_per_param",
    "final_train_loss", "final_eval_loss", "eval_loss_stderr", "best_eval_loss",
    "eval_tokens", "eval_documents", "eval_estimand", "eval_set_id", "eval_loss_stderr_windows",
    # (eval_by_document, lists per document, stays in result.json)
    "arch", "objective", "steps", "batch_size", "seq_len", "n_layer", "d_model", "n_head",
    "optimizer", "parametrization", "lr", "schedule", "warmup_steps", "weight_decay", "seed",
    "wall_time_s", "compile_time_s", "tokens_per_s", "mfu",
    "device_kind", "device_count", "jax_version", "corpus_fingerprint", "git_commit",
    "resumed_from_step", "cpu_threads", "branch_origin", "divergence_reason", "role", "trunk",
    "branched_at_step", "error",
]
# columns only where some point measured them (train.noise_scale; scaling/train/noise_scale.py)
NOISE_SCALE_COLUMNS = ("noise_scale_b_simple", "noise_scale_grad_sq", "noise_scale_trace_sigma",
                       "noise_scale_steps_averaged")
CURVE_COLUMNS = ["point_id", "step", "tokens", "flops", "train_loss", "eval_loss",
                 "eval_loss_stderr", "lr"]


def points_dir(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / "points"


@contextmanager
def point_lock(point_dir: Path) -> Iterator[bool]:
    """Hold the point's lock (True) or learn that another process holds it (False).

    The point's lock is its run folder's lock (scaling.runs.lock.run_lock), so the
    training inside takes the same lock again (re-entrant) and nothing else can train
    the folder meanwhile. flock locks vanish with their process, so a killed worker
    never leaves a point marked as running.
    """
    try:
        key = acquire_run_lock(point_dir)
    except RunFolderBusy:
        yield False
        return
    try:
        yield True
    finally:
        release_run_lock(key)


def is_locked(point_dir: Path) -> bool:
    return lock_owner(point_dir) is not None


def read_result_checked(point_dir: Path) -> tuple[dict | None, CorruptRunFile | None]:
    """(result or None, None), or (None, the error) for a corrupt result.json."""
    try:
        return read_result(point_dir), None
    except CorruptRunFile as e:
        return None, e


ENDED = ("done", "diverged", "failed", "corrupt", "blocked")  # nothing more happens unless rerun


def point_state(point_dir: str | Path) -> str:
    point_dir = Path(point_dir)
    result, corrupt = read_result_checked(point_dir)
    if result is not None:
        return "corrupt" if unreadable_files(point_dir) else result["status"]
    if is_locked(point_dir):
        return "running"
    if corrupt is not None or unreadable_files(point_dir):
        return "corrupt"
    slurm = _read_json(point_dir / SLURM_FILE)
    if slurm and slurm.get("state") in ("PENDING", "RUNNING", "REQUEUED", "SUBMITTED"):
        return "queued" if slurm["state"] != "RUNNING" else "running"
    if (point_dir / FAILED_FILE).exists():
        return "failed"
    if blocked_by(point_dir) is not None:
        return "blocked"
    return "pending"


def trunk_of(point_dir: str | Path) -> str | None:
    """The trunk point id of a cooldown branch (point.json "trunk"), else None."""
    meta = _read_json(Path(point_dir) / POINT_FILE) or {}
    trunk = meta.get("trunk")
    return trunk if isinstance(trunk, str) and trunk else None


def blocked_by(point_dir: str | Path) -> str | None:
    """Why a branch cannot run ("trunk <id> failed: ..."), or None if it is not blocked.

    A branch starts from its trunk's checkpoint, so a trunk that failed, diverged, has a
    corrupt result or is itself blocked blocks it. A trunk that is pending, queued or
    running does not: the branch waits for it.
    """
    trunk = trunk_of(point_dir)
    tdir = Path(point_dir).parent / (trunk or "")
    if trunk is None or trunk == Path(point_dir).name or not tdir.is_dir():
        return None  # not a branch, or the trunk's folder is not written yet: wait
    state = point_state(tdir)
    if state == "failed":
        err = (_read_json(tdir / FAILED_FILE) or {}).get("error", "")
        return f"trunk {trunk} failed" + (f": {err}" if err else "")
    if state == "diverged":
        why = (_read_json(tdir / RESULT_FILE) or {}).get("divergence_reason")
        return f"trunk {trunk} diverged" + (f" ({why})" if why else "")
    if state == "corrupt":
        return f"trunk {trunk} has a corrupt file (result.json, config.json or point.json)"
    if state == "blocked":
        return f"trunk {trunk} is blocked ({blocked_by(tdir)})"
    return None


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`; None if it is missing or is not one (not UTF-8, not
    JSON, not an object): one bad file never stops a table or a status."""
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # ValueError: UnicodeDecodeError, JSONDecodeError
        return None
    return obj if isinstance(obj, dict) else None


CONFIG_FILE = "config.json"


def unreadable_files(point_dir: str | Path) -> list[str]:
    """'<path>: why' for each of the point's point.json and config.json that exists but
    cannot be read as what it must be (UTF-8 JSON holding a config)."""
    bad = []
    for name in (POINT_FILE, CONFIG_FILE):
        path = Path(point_dir) / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            bad.append(f"{path}: unreadable ({e.strerror})")
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(f"{path}: not UTF-8 text")
            continue
        except json.JSONDecodeError as e:
            bad.append(f"{path}: not JSON ({e.msg} at line {e.lineno})")
            continue
        if name == POINT_FILE:  # a JSON object; its config, if it has one, a config
            if not isinstance(obj, dict):
                bad.append(f"{path}: not a point record (not a JSON object)")
                continue
            if "config" not in obj:
                continue
            obj = obj["config"]
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), dict)
                                                for k in ("model", "train")):
            bad.append(f"{path}: not a config (no [model] and [train] tables)")
    return bad


def _table(d: dict, key: str) -> dict:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def point_row(sweep: str, point_dir: Path) -> dict:
    """One row of the results table, whatever the point's state.

    "C" is the compute under the point's accounting, as its point.json says (a run
    folder without one: its result's C); the other columns come from result.json.
    """
    meta = _read_json(point_dir / POINT_FILE) or {}
    result, corrupt = read_result_checked(point_dir)
    result = result or {}
    bad_files = unreadable_files(point_dir)
    config = _read_json(point_dir / CONFIG_FILE) or _table(meta, "config")
    if not isinstance(config.get("model"), dict):
        config = _table(meta, "config")
    row = {c: math.nan for c in RESULT_COLUMNS}
    row.update({
        "sweep": sweep, "point_id": point_dir.name, "label": meta.get("label", ""),
        "group": meta.get("group", ""), "compute_budget": meta.get("compute_budget") or math.nan,
        "N": meta.get("N"), "N_total": meta.get("N_total"), "D": meta.get("D"),
        "D_planned": meta.get("D"),  # a diverged run's D is what it trained before it stopped
        "accounting": meta.get("accounting"), "C": meta.get("C"), "C_6ND": meta.get("C_6ND"),
        "tokens_per_param": meta.get("tokens_per_param"),
        "role": meta.get("role"), "trunk": meta.get("trunk"),
        "branched_at_step": meta.get("branched_at_step"),
    })
    if config:
        m, o, t = _table(config, "model"), _table(config, "optim"), _table(config, "train")
        row.update({
            "steps": t.get("steps"), "batch_size": t.get("batch_size"), "seq_len": m.get("seq_len"),
            "arch": m.get("arch", "transformer"),
            "objective": _table(config, "data").get("objective", "next_token"),
            "n_layer": m.get("n_layer"), "d_model": m.get("d_model"),
            "n_head": m.get("n_head") if m.get("arch") != "lstm" else None,
            "optimizer": o.get("name"), "parametrization": m.get("parametrization", "sp"),
            "lr": o.get("lr"), "schedule": o.get("schedule"),
            "warmup_steps": o.get("warmup_steps"), "weight_decay": o.get("weight_decay"),
            "seed": t.get("seed"),
        })
    from_meta = {k for k in ("C", "role", "trunk", "branched_at_step") if meta.get(k) is not None}
    row.update({k: v for k, v in result.items() if k in RESULT_COLUMNS and k not in from_meta})
    row.update({k: v for k, v in result.items() if k.startswith("task/")})  # data.tasks evals
    # train.noise_scale: B_simple (tokens) and its parts over the run's last half
    row.update({k: v for k, v in result.items() if k in NOISE_SCALE_COLUMNS})
    row["status"] = point_state(point_dir)
    if row["status"] == "failed":
        failed = _read_json(point_dir / FAILED_FILE) or {}
        row["error"] = failed.get("error", "")
    elif row["status"] == "corrupt":
        row["error"] = "; ".join(([str(corrupt)] if corrupt is not None else []) + bad_files)
    elif row["status"] == "blocked":
        row["error"] = blocked_by(point_dir) or ""
    return row


def point_curve(point_dir: Path) -> pd.DataFrame:
    rows, bad, cut = read_metrics_checked(point_dir)
    if cut and is_locked(point_dir):
        bad = bad[:-1]  # the line a running point is writing now
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        log.warning("%s: %d unreadable line(s) skipped (line %s); the point's learning "
                    "curve lacks them", point_dir / METRICS_FILE, len(bad), shown)
    rows = [r for r in rows if "step" in r]
    train = {r["step"]: r for r in rows if "loss" in r}
    evals = {r["step"]: r for r in rows if "eval_loss" in r}
    steps = sorted(set(train) | set(evals))
    out = []
    for s in steps:
        tr, ev = train.get(s, {}), evals.get(s, {})
        ref = tr or ev
        out.append({"point_id": point_dir.name, "step": s, "tokens": ref.get("tokens", math.nan),
                    "flops": ref.get("flops", math.nan), "train_loss": tr.get("loss", math.nan),
                    "eval_loss": ev.get("eval_loss", math.nan),
                    "eval_loss_stderr": ev.get("eval_loss_stderr", math.nan),
                    "lr": tr.get("lr", math.nan)})
    return pd.DataFrame(out, columns=CURVE_COLUMNS)


def collect(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, curves) of every point folder in the sweep."""
    sweep_dir = Path(sweep_dir)
    dirs = sorted(p for p in points_dir(sweep_dir).glob("*") if p.is_dir())
    rows = [point_row(sweep_dir.name, d) for d in dirs]
    task_cols = sorted({k for r in rows for k in r if k.startswith("task/")})
    noise_cols = [c for c in NOISE_SCALE_COLUMNS if any(c in r for r in rows)]
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS + noise_cols + task_cols)
    curves = [point_curve(d) for d in dirs if (d / METRICS_FILE).exists()]
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return results, curves_df


def write_tables(sweep_dir: str | Path) -> pd.DataFrame:
    """Rebuild results.csv, results.parquet and curves.parquet atomically."""
    sweep_dir = Path(sweep_dir)
    clean_stale_temps(sweep_dir)  # a writer killed mid-write left its temporary file
    results, curves = collect(sweep_dir)
    atomic_write(sweep_dir / "results.csv", lambda p: results.to_csv(p, index=False))
    atomic_write(sweep_dir / "results.parquet", lambda p: results.to_parquet(p, index=False))
    atomic_write(sweep_dir / "curves.parquet", lambda p: curves.to_parquet(p, index=False))
    return results


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    return collect(sweep_dir)[0]


def load_curves(sweep_dir: str | Path) -> pd.DataFrame:
    return collect(sweep_dir)[1]


def check_sweep_dir(sweep_dir: str | Path) -> Path:
    """`sweep_dir` as a Path; ConfigError if it does not exist or is not a sweep folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir}: no such sweep folder")
    if not points_dir(sweep_dir).is_dir():
        raise ConfigError(f"{sweep_dir} is not a sweep folder (it has no points/ folder)")
    return sweep_dir


def format_status(sweep_dir: str | Path) -> str:
    """The status table of a sweep folder; ConfigError if it is not one."""
    sweep_dir = check_sweep_dir(sweep_dir)
    results, _ = collect(sweep_dir)
    lines = [f"sweep {sweep_dir.name}: {len(results)} points"]
    counts = results["status"].value_counts().to_dict()
    lines.append("  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    header = f"{'point':12s} {'label':34s} {'status':9s} {'N':>9s} {'D':>10s} {'C':>9s} " \
             f"{'steps':>6s} {'eval loss':>9s} {'wall s':>7s}  slurm"
    lines += ["", header, "-" * len(header)]
    order = results.sort_values(["group", "N", "label"], na_position="first", kind="stable")
    for _, r in order.iterrows():
        d = points_dir(sweep_dir) / r["point_id"]
        slurm = _read_json(d / SLURM_FILE) or {}
        job = f"{slurm.get('job_id', '')} {slurm.get('state', '')}".strip()
        done_steps = _done_steps(d)
        steps = done_steps if r["status"] != "done" else f"{int(r['steps'])}"
        lines.append(
            f"{r['point_id']:12s} {str(r['label'])[:34]:34s} {r['status']:9s} {_fmt(r['N']):>9s} "
            f"{_fmt(r['D']):>10s} {_fmt(r['C']):>9s} {steps:>6s} "
            f"{_fmt(r['final_eval_loss'], '.4f'):>9s} {_fmt(r['wall_time_s'], '.0f'):>7s}  {job}"
        )
    blocked = results[results["status"] == "blocked"]
    if len(blocked):
        lines += ["", f"{len(blocked)} blocked branch(es), not run until their trunk is done "
                      "(running the sweep again retries a failed trunk):"]
        lines += [f"  {pid}: {why}" for pid, why in zip(blocked["point_id"], blocked["error"])]
    corrupt = results[results["status"] == "corrupt"]
    if len(corrupt):
        lines += ["", f"{len(corrupt)} point(s) with a corrupt file; running the sweep again "
                      "sets each aside and rebuilds a result from the final checkpoint (or "
                      "retrains); a corrupt config.json is set aside and written anew:"]
        lines += [f"  {e}" for e in corrupt["error"]]
    return "\n".join(lines)


ACTIVE = ("running", "queued", "pending")  # states that `status --watch` waits on


def running_progress(point_dir: Path) -> tuple[int | None, float | None]:
    """(last logged step, last train loss) from the point's metrics.jsonl, or Nones."""
    step, loss = None, None
    for row in read_metrics(point_dir):
        if "step" in row:
            step = row["step"]
        if "loss" in row:
            loss = row["loss"]
    return step, loss


def watch_summary(sweep_dir: str | Path) -> tuple[str, bool]:
    """(the text `status --watch` shows, whether any point is still running, queued or
    pending). The text: counts per state, then one row per running point with its step
    out of its steps and its latest train loss (from metrics.jsonl)."""
    sweep_dir = check_sweep_dir(sweep_dir)
    dirs = sorted(p for p in points_dir(sweep_dir).glob("*") if p.is_dir())
    states = {d: point_state(d) for d in dirs}
    counts = {k: 0 for k in ("done", "running", "queued", "failed", "corrupt", "blocked",
                             "diverged", "pending")}
    for st in states.values():
        counts[st] = counts.get(st, 0) + 1
    always = ("done", "running", "failed", "corrupt", "pending")
    shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in always)
    lines = [f"sweep {sweep_dir.name}: {len(dirs)} points at {time.strftime('%H:%M:%S')}",
             f"  {shown}"]
    running = [d for d, st in states.items() if st == "running"]
    if running:
        header = f"{'point':12s} {'label':34s} {'step':>13s} {'loss':>8s}"
        lines += ["", header, "-" * len(header)]
    for d in running:
        meta = _read_json(d / POINT_FILE) or {}
        total = _table(_table(meta, "config"), "train").get("steps")
        step, loss = running_progress(d)
        at = "compiling" if step is None else f"{step}/{total}" if total else str(step)
        lines.append(f"{d.name:12s} {str(meta.get('label', ''))[:34]:34s} {at:>13s} "
                     f"{_fmt(loss, '.4f'):>8s}")
    return "\n".join(lines), any(st in ACTIVE for st in states.values())


def _done_steps(point_dir: Path) -> str:
    rows = [r for r in read_metrics(point_dir) if "step" in r]
    return str(rows[-1]["step"]) if rows else "0"


def _fmt(v, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


__all__ = ["collect", "write_tables", "load_results", "load_curves", "format_status",
           "point_state", "point_lock", "is_locked", "RESULT_FILE", "LOCK_FILE"]
