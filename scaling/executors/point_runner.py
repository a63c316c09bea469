"""One point of a sweep, run in its folder: what every executor calls.

    run_point(sweep_dir, point_id)   train or resume the point; record a failure

The local executor (scaling.executors.local) and the SLURM jobs (scaling.executors.slurm) both call
`run_point`; it lives here, apart from both, so that neither executor module imports
the other.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

from scaling.config import from_dict
from scaling.runs.results import (CONFIG_FILE, FAILED_FILE, POINT_FILE, point_lock, points_dir,
                             read_result_checked, unreadable_files)
from scaling.runs.runfiles import CorruptRunFile, DiskFull, read_json, set_aside, write_json_atomic

log = logging.getLogger(__name__)

FINISHED = ("done", "diverged")


def point_config(point_dir: Path):
    """The point's config, from its point.json (CorruptRunFile if that is unreadable)."""
    meta = read_json(point_dir / POINT_FILE)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CorruptRunFile(point_dir / POINT_FILE, "missing, or no 'config' in it")
    return from_dict(meta["config"])


def run_point(sweep_dir: str | Path, point_id: str, *, progress_position: int = 1,
              progress: bool = True, lock: bool = True) -> dict | None:
    """Train or resume one point; None if another process holds it.

    Any exception is recorded in failed.json (with its traceback) and returned as a
    `failed` status; the point is retried the next time the sweep runs. A corrupt
    result.json is set aside (renamed `result.json.corrupt-<time>`, with a warning
    naming it) and the point trained again: `loop.train` rebuilds the result from the
    final checkpoint when there is one, else resumes or retrains.
    `lock=False`: do not take the point's lock (the other tasks of a multi-task SLURM
    job, whose task 0 holds it); such a task never sets a file aside.
    """
    from scaling.train.loop import train

    point_dir = points_dir(sweep_dir) / point_id
    done, _ = read_result_checked(point_dir)
    if done is not None and not unreadable_files(point_dir):
        return done
    with (point_lock(point_dir) if lock else nullcontext(True)) as mine:
        if not mine:
            return None
        config_file = point_dir / CONFIG_FILE
        if lock and any(bad.startswith(f"{config_file}:") for bad in unreadable_files(point_dir)):
            # the point's config is its point.json's: config.json is written anew from it
            aside = set_aside(config_file)
            log.warning("point %s: %s is unreadable; set aside as %s (written anew from "
                        "point.json when the point trains)", point_id, config_file, aside.name)
        done, corrupt = read_result_checked(point_dir)  # finished while we waited?
        if done is not None:
            return done
        if corrupt is not None and lock:
            aside = set_aside(corrupt.path)
            log.warning("point %s: %s; set aside as %s, rebuilding the result from the final "
                        "checkpoint (or training again)", point_id, corrupt, aside.name)
        try:
            cfg = point_config(point_dir)
            if not progress:
                cfg = cfg.replace({"train.progress": False})
            result = train(cfg, point_dir, progress_position=progress_position)
        except (KeyboardInterrupt, DiskFull):  # the sweep stops: not this point's failure
            raise
        except Exception as e:
            tb = traceback.format_exc()
            log.error("point %s failed: %s", point_id, e)
            write_json_atomic(point_dir / FAILED_FILE, {
                "point_id": point_id, "error": f"{type(e).__name__}: {e}", "traceback": tb,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"), "host": os.uname().nodename,
            })
            return {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": tb}
        (point_dir / FAILED_FILE).unlink(missing_ok=True)
        return result
