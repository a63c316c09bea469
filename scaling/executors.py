"""Executors: run the points of a sweep, each exactly once, surviving any crash.

    run_sweep(spec)      plan -> sweep folder -> pre-flight checks -> executor -> tables

The `local` executor runs points one after another in this process (reusing the
compiled step across points of the same shape), or, with `workers > 1` (default: one
per local GPU), in worker processes that each claim points through the points' file
locks. The `slurm` executor (scaling.slurm) submits points as SLURM jobs. Whatever
runs a point calls `scaling.points.run_point`, which trains or resumes it in its
folder and records a failure, with its traceback, instead of stopping the sweep.
Temporary files that killed writers left in the sweep folder are removed when the
sweep is prepared again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from scaling.config import ConfigError
from scaling.points import FINISHED, run_point
from scaling.results import POINT_FILE, point_state, points_dir, write_tables
from scaling.runfiles import (CorruptRunFile, atomic_write_text, clean_stale_temps, read_json,
                              write_json_atomic)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# The sweep folder
# --------------------------------------------------------------------------------------


def prepare_sweep(spec, out: str | Path) -> Path:
    """Create or extend the sweep folder; write each point's point.json. Trains nothing."""
    sweep_dir = Path(out) / spec.name
    pdir = points_dir(sweep_dir)
    pdir.mkdir(parents=True, exist_ok=True)
    for folder in (sweep_dir, *(d for d in pdir.iterdir() if d.is_dir())):
        clean_stale_temps(folder)
    spec_copy = sweep_dir / "spec.toml"
    text = Path(spec.path).read_text()
    if spec_copy.exists() and spec_copy.read_text(errors="replace") != text:
        archive = sweep_dir / "specs"
        archive.mkdir(exist_ok=True)
        shutil.copy2(spec_copy, archive / f"spec.{time.strftime('%Y%m%d-%H%M%S')}.toml")
    atomic_write_text(spec_copy, text)
    add_points(sweep_dir, spec.name, spec.points)
    return sweep_dir


def add_points(sweep_dir: Path, sweep: str, points) -> None:
    """Write each point's folder and point.json (rewritten only if it changed)."""
    pdir = points_dir(sweep_dir)
    for p in points:
        d = pdir / p.point_id
        d.mkdir(exist_ok=True)
        meta = point_meta(sweep, p)
        path = d / POINT_FILE
        try:
            old = read_json(path)
        except CorruptRunFile as e:  # rewritten below from the plan
            log.warning("%s; rewriting it from the plan", e)
            old = None
        if old != json.loads(json.dumps(meta)):
            write_json_atomic(path, meta)


def point_meta(sweep: str, p) -> dict:
    return {
        "sweep": sweep, "point_id": p.point_id, "label": p.config.name, "group": p.group,
        "compute_budget": p.compute_budget, "N": p.n_params, "N_total": p.n_params_total,
        "D": p.tokens, "C": p.flops, "tokens_per_param": p.tokens_per_param,
        "requested": p.requested, "config": p.config.to_dict(),
    }


def preflight(spec) -> None:
    """Checks that need the corpus or the devices, for every point, before any training."""
    import jax

    from scaling.data import load_corpus
    from scaling.parallel import check_batch, resolve_driver

    seen = set()
    for p in spec.points:
        cfg = p.config
        key = (repr(cfg.data), cfg.model.seq_len)
        if key not in seen:
            seen.add(key)
            data = load_corpus(cfg.data, cfg.model.seq_len)
            vocab = data.vocab_size
        if vocab > cfg.model.vocab_size:
            raise ConfigError(f"point {p.config.name}: model.vocab_size = {cfg.model.vocab_size} "
                              f"is smaller than the tokenizer's vocabulary ({vocab})")
        kind = resolve_driver(cfg.train.parallel)
        n = 1 if kind == "none" else (jax.local_device_count() * jax.process_count())
        check_batch(cfg.train.batch_size, cfg.train.micro_batches, n)


# --------------------------------------------------------------------------------------
# Local executor
# --------------------------------------------------------------------------------------


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return len([line for line in out.stdout.splitlines() if line.startswith("GPU")])
    except (OSError, subprocess.SubprocessError):
        return 0


def run_local(sweep_dir: Path, point_ids: list[str], *, progress: bool = True,
              workers: int | None = None, estimates: dict[str, float] | None = None) -> None:
    workers = workers if workers is not None else max(1, _gpu_count())
    if workers > 1:
        _run_workers(sweep_dir, point_ids, workers)
        return
    estimates = estimates or {}
    todo = [pid for pid in point_ids if point_state(points_dir(sweep_dir) / pid) not in FINISHED]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(point_ids), initial=len(point_ids) - len(todo), position=0,
                   desc=f"sweep {sweep_dir.name}", unit="pt", dynamic_ncols=True, file=sys.stderr)
    spent, estimated_done = 0.0, 0.0
    try:
        for i, pid in enumerate(todo):
            if bar is not None:
                remaining = sum(estimates.get(q, 0.0) for q in todo[i:])
                ratio = spent / estimated_done if estimated_done else 1.0
                bar.set_postfix_str(f"{point_label(sweep_dir, pid)}  eta {_hms(remaining * ratio)}")
            t0 = time.perf_counter()
            run_point(sweep_dir, pid, progress_position=1, progress=progress)
            spent += time.perf_counter() - t0
            estimated_done += estimates.get(pid, 0.0)
            write_tables(sweep_dir)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _run_workers(sweep_dir: Path, point_ids: list[str], workers: int) -> None:
    """One worker process per device; each claims points through their locks."""
    ids_file = sweep_dir / ".worker_points.json"
    write_json_atomic(ids_file, point_ids)
    procs = []
    for w in range(workers):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(w))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "scaling.executors", "worker", str(sweep_dir), str(ids_file)],
            env=env))
    codes = [p.wait() for p in procs]
    write_tables(sweep_dir)
    if any(codes):
        log.warning("worker exit codes: %s", codes)


def _worker_main(sweep_dir: str, ids_file: str) -> None:
    from scaling.runtime import enable_compilation_cache, setup_logging

    setup_logging()
    enable_compilation_cache()
    for pid in json.loads(Path(ids_file).read_text()):
        if point_state(points_dir(sweep_dir) / pid) in FINISHED:
            continue
        if run_point(sweep_dir, pid, progress=False) is not None:
            write_tables(sweep_dir)


def _estimate(point) -> float:
    from scaling.sweep import estimate_seconds

    try:
        return estimate_seconds(point)
    except Exception:  # an estimate is a nicety, never a reason to stop
        return 0.0


def point_label(sweep_dir: Path, pid: str) -> str:
    try:
        return json.loads((points_dir(sweep_dir) / pid / POINT_FILE).read_text())["label"]
    except (OSError, KeyError, json.JSONDecodeError):
        return pid


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------------------
# The whole sweep
# --------------------------------------------------------------------------------------


def run_sweep(spec_path: str | Path, overrides: list[str] | None = None, *, out: str | Path = "sweeps",
              executor: str | None = None, variant: str | None = None,
              progress: bool = True, workers: int | None = None,
              wait: bool | None = None) -> dict:
    """Plan, check, run (or resume) and tabulate a sweep. Returns counts per state."""
    from scaling.runtime import enable_compilation_cache
    from scaling.sweep import load_spec

    spec = load_spec(spec_path, overrides, variant=variant)
    kind = executor or spec.executor
    if kind not in ("local", "slurm"):
        raise ConfigError(f"executor = {kind!r}: allowed: 'local', 'slurm'")
    if kind == "local":
        preflight(spec)
    sweep_dir = prepare_sweep(spec, out)
    enable_compilation_cache()
    ran: list[str] = []

    def execute(points):  # -> the results table after running `points`
        if points:
            add_points(sweep_dir, spec.name, points)
        ids = [p.point_id for p in points]
        ran.extend(ids)
        if kind == "local" and ids:
            estimates = {p.point_id: _estimate(p) for p in points}
            run_local(sweep_dir, ids, progress=progress, workers=workers, estimates=estimates)
        elif ids:
            from scaling.slurm import run_slurm

            run_slurm(spec, sweep_dir, ids, wait=wait, progress=progress)  # wait=False: submit only
        return write_tables(sweep_dir)

    execute(list(spec.points))
    waiting = kind == "local" or (wait is not False and not os.environ.get("SCALINGLAB_SLURM_NO_WAIT"))
    if (spec.followup.get("seeds") or spec.followup.get("widen")) and not waiting:
        log.warning("the [followup] stage needs the first stage's results: run the sweep "
                    "again once its jobs have finished")
    elif spec.followup.get("seeds") or spec.followup.get("widen"):
        from scaling.stages import run_followup

        run_followup(spec, sweep_dir, execute)
    results = write_tables(sweep_dir)
    mine = results[results["point_id"].isin(ran)]
    return {"sweep_dir": sweep_dir, "counts": mine["status"].value_counts().to_dict()}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m scaling.executors worker SWEEP_DIR IDS_FILE")
