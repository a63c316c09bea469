"""The whole sweep: plan -> sweep folder -> pre-flight checks -> executor -> stages -> tables.

    run_sweep(spec_path)      what `python run_sweep.py sweep` runs

The `local` executor (scaling.executors.local) runs points on this machine; the `slurm`
executor (scaling.executors.slurm) submits them as SLURM jobs. Whatever runs a point calls
`scaling.executors.point_runner.run_point`, which trains or resumes it in its folder and
records a failure, with its traceback, instead of stopping the sweep. Before anything is
written, every point is checked against the device memory (`--device` / `--device-memory`,
else the local accelerator's allocator limit; scaling.sweep.fit): a point that cannot fit
stops the sweep with its smallest fix, as the other pre-flight errors do. Temporary files
that killed writers left in the sweep folder are removed when the sweep is prepared again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from scaling.config import ConfigError
from scaling.executors.local import run_local
from scaling.runs.results import POINT_FILE, points_dir, write_tables
from scaling.runs.runfiles import (CorruptRunFile, atomic_write_text, clean_stale_temps, read_json,
                                   write_json_atomic)

log = logging.getLogger(__name__)




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
    """point.json: what the planner said of the point.

    "C" is the compute under the point's accounting; "C_6ND" and "C_exact" are both
    conventions. "role" ("run" | "trunk" | "branch"), "trunk" (a branch's trunk point id)
    and "branched_at_step" come from the plan's `requested` record where it has them
    (cooldown branches); a plain point is a "run" without a trunk.
    """
    req = p.requested or {}
    role = req.get("role", "run")
    branch = role == "branch"
    return {
        "sweep": sweep, "point_id": p.point_id, "label": p.config.name, "group": p.group,
        "compute_budget": p.compute_budget, "N": p.n_params, "N_total": p.n_params_total,
        "D": p.tokens, "accounting": p.accounting, "C": p.flops,
        "C_6ND": p.flops_6nd, "C_exact": p.flops_exact, "tokens_per_param": p.tokens_per_param,
        "role": role, "trunk": req.get("trunk") if branch else None,
        "branched_at_step": req.get("branched_at_step") if branch else None,
        "requested": p.requested, "config": p.config.to_dict(),
    }


def preflight(spec) -> None:
    """Checks that need the corpus or the devices, for every point, before any training
    (the device memory: `memory_check`, right after)."""
    import jax

    from scaling.data.dataset import load_corpus
    from scaling.train.mesh import resolve_mesh
    from scaling.train.parallel import check_batch, resolve_driver

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
        devices = jax.local_device_count() * jax.process_count()
        axes = cfg.train.mesh_axes
        try:
            if axes is not None:  # a mesh: its sizes against the devices, the batch over data x fsdp
                shape = resolve_mesh(axes, devices)
                check_batch(cfg.train.batch_size, cfg.train.micro_batches,
                            shape["data"] * shape["fsdp"], what="batch shards (train.mesh data x fsdp)")
            else:
                n = 1 if resolve_driver(cfg.train.parallel) == "none" else devices
                check_batch(cfg.train.batch_size, cfg.train.micro_batches, n)
        except ConfigError as e:
            raise ConfigError(f"point {cfg.name}: {e}") from None


def memory_check(spec, memory: dict | None, devices: int):
    """The last pre-flight check: ConfigError (exit 2, nothing written) if a point cannot
    fit the device memory on `devices` devices:
    `memory` = {"device": name, "device_memory": size} from the command line, or, when
    neither is given, the local accelerator's allocator limit (a CPU: no check; not at all
    with memory["local"] = False, for executors whose devices are elsewhere). Returns (target, the options that name it) for the later
    stages' points, or None."""
    from scaling.sweep.fit import local_target, memory_target, refuse_unfit

    memory = memory or {}
    target = memory_target(memory.get("device"), memory.get("device_memory"), devices)
    how = (f" --device {memory['device']}" if memory.get("device") else
           f" --device-memory {memory['device_memory']}" if memory.get("device_memory") else "")
    if target is None and memory.get("local", True):
        target = local_target()
        how = f" --device-memory {target.capacity.usable}" if target else ""
    if target is None:
        return None
    how += f" --devices {target.devices}" if target.devices > 1 else ""
    refuse_unfit(spec.points, target, how)
    return target, how


def _estimate(point) -> float:
    from scaling.sweep import estimate_seconds

    try:
        return estimate_seconds(point)
    except Exception:  # an estimate is a nicety, never a reason to stop
        return 0.0




def run_sweep(spec_path: str | Path, overrides: list[str] | None = None, *, out: str | Path = "sweeps",
              executor: str | None = None, variant: str | None = None,
              progress: bool = True, workers: int | None = None,
              wait: bool | None = None, memory: dict | None = None) -> dict:
    """Plan, check, run (or resume) and tabulate a sweep. Returns counts per state.

    `memory`: {"device": name} or {"device_memory": size} (the command line's --device /
    --device-memory), the memory every point must fit per device; without it, the local
    executor checks against the local accelerator's limit (none on a CPU), the SLURM
    executor not at all. A SLURM job's devices: slurm.gpus_per_job x slurm.nodes."""
    from scaling.runtime import enable_compilation_cache
    from scaling.sweep import load_spec
    from scaling.sweep.fit import refuse_unfit

    spec = load_spec(spec_path, overrides, variant=variant)
    kind = executor or spec.executor
    if kind not in ("local", "slurm"):
        raise ConfigError(f"executor = {kind!r}: allowed: 'local', 'slurm'")
    if kind == "local":
        import jax

        preflight(spec)
        checked = memory_check(spec, memory, jax.local_device_count() * jax.process_count())
    else:
        devices = max(1, spec.slurm.get("gpus_per_job", 1)) * spec.slurm.get("nodes", 1)
        checked = memory_check(spec, {**(memory or {}), "local": False}, devices)
    sweep_dir = prepare_sweep(spec, out)
    enable_compilation_cache()
    ran: list[str] = []

    def execute(points):  # -> the results table after running `points`
        if points and checked:  # a later stage's points, before they are written
            refuse_unfit(points, *checked)
        if points:
            add_points(sweep_dir, spec.name, points)
        ids = [p.point_id for p in points]
        ran.extend(ids)
        if kind == "local" and ids:
            estimates = {p.point_id: _estimate(p) for p in points}
            run_local(sweep_dir, ids, progress=progress, workers=workers, estimates=estimates)
        elif ids:
            from scaling.executors.slurm import run_slurm

            run_slurm(spec, sweep_dir, ids, wait=wait, progress=progress)  # wait=False: submit only
        return write_tables(sweep_dir)

    execute(list(spec.points))
    waiting = kind == "local" or (wait is not False and not os.environ.get("SCALINGLAB_SLURM_NO_WAIT"))
    from scaling.sweep.stages import run_followup, wanted

    if wanted(spec) and not waiting:
        log.warning("the [followup] stage needs the first stage's results: run the sweep "
                    "again once its jobs have finished")
    elif wanted(spec):
        run_followup(spec, sweep_dir, execute)
    results = write_tables(sweep_dir)
    mine = results[results["point_id"].isin(ran)]
    return {"sweep_dir": sweep_dir, "counts": mine["status"].value_counts().to_dict()}
