"""A run's train state on disk: restored, initialised or branched from a trunk; saved.

`restore_or_init` resumes from the run's newest readable checkpoint, else starts a cooldown
branch from its trunk's checkpoint at `train.init_step` (`branch_from_trunk`), else
initialises a fresh state. `save_checkpoint` writes one checkpoint (state + data position
+ corpus fingerprint + config); `keep_checkpoint` one at `train.save_steps` into KEEP_DIR,
never rotated away (cooldown branches start there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scaling.config import ConfigError
from scaling.runs.runfiles import DiskFull, disk_full_in, read_metrics, read_result
from scaling.train.checkpoint import Checkpointer
from scaling.train.prepare import Setup, TrunkNotReady, trunk_config
from scaling.train.record import separate_run_rows

log = logging.getLogger(__name__)

KEEP_DIR = "keep"  # checkpoints at train.save_steps, kept for good (cooldown branches start there)


def check_corpus(s: Setup, meta: dict, where: Path) -> None:
    """ConfigError if the checkpoints in `where` were trained on another corpus."""
    saved = meta.get("corpus_fingerprint")
    if saved is not None and saved != s.data.fingerprint:
        raise ConfigError(
            f"{where}: its checkpoints were trained on a different corpus (token "
            f"fingerprint {saved[:12]}, this machine's {s.cfg.data.corpus!r} gives "
            f"{s.data.fingerprint[:12]}; the stdlib corpus depends on the Python build). "
            "Resuming would mix two corpora: resume where it started, or use a new run folder."
        )


def restore_or_init(s: Setup, ckpt: Checkpointer) -> tuple[Any, int, float, dict | None]:
    """(device state, start step, wall seconds already spent, branch record or None)."""
    restored = ckpt.restore_latest(s.trainer.abstract_checkpoint())
    if restored is not None:
        host_state, meta = restored
        check_corpus(s, meta, s.run_dir)
        start = int(meta["step"])
        log.info("resuming %s from step %d", s.run_dir, start)
        return (_place(s, host_state), start, float(meta.get("wall_time_s", 0.0)),
                meta.get("branch"))
    if s.cfg.train.init_from:
        branched = branch_from_trunk(s)
        if branched is not None:
            host_state, branch = branched
            return _place(s, host_state), branch["branched_at_step"], 0.0, branch
    return s.driver.fresh_state(s.trainer), 0, 0.0, None


def _place(s: Setup, checkpointed_state):
    """A state read from a checkpoint (trees, host arrays), packed and on the devices."""
    return s.driver.place_state(s.trainer.from_checkpoint(checkpointed_state))


def branch_from_trunk(s: Setup) -> tuple[Any, dict] | None:
    """The host state of a cooldown branch at `train.init_step`, taken from its trunk.

    The trunk must be the same run up to that step: same model, data, optimizer, batch and
    seeds, and the same learning rate at every step before it (checked numerically). Then
    the branch continues exactly as a separate run of its own config would. A trunk that
    has finished without that checkpoint (a branch added to the spec later): the branch
    trains from step 0, with a warning. A trunk still short of it: TrunkNotReady."""
    t = s.cfg.train
    tdir, _ = trunk_config(s.cfg, s.run_dir)
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
    check_corpus(s, meta, tdir)
    _, missing = separate_run_rows(s, read_metrics(tdir), t.init_step)
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


def save_checkpoint(ckpt: Checkpointer, s: Setup, state, step: int, wall: float,
                    branch: dict | None = None) -> None:
    """Checkpoint `state` at `step` (nothing new when that step is saved and readable)."""
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


def keep_checkpoint(s: Setup, state, step: int, wall: float) -> None:
    """A checkpoint at one of train.save_steps, in keep/, never rotated away."""
    keeper = Checkpointer(s.run_dir / KEEP_DIR, keep=None)
    try:
        save_checkpoint(keeper, s, state, step, wall)
    finally:
        keeper.close()
