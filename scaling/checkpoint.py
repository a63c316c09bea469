"""Checkpoints with orbax's CheckpointManager: train state + metadata.

A checkpoint holds two items:
    state   the TrainState as host numpy arrays (driver- and device-count-agnostic)
    meta    JSON: step, data position (tokens seen, epoch), the run's config, wall time
Saves are atomic (orbax writes into a temporary folder and renames it), so a kill
during a save leaves the previous checkpoints intact. Restoring walks from the newest
step down and skips, with a warning, any checkpoint that fails to load.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=False,  # host arrays; a save is a plain write
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def save(self, step: int, host_state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(host state, meta) of the newest loadable checkpoint, or None."""
        target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_state)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            meta=ocp.args.JsonRestore()),
                )
                state = jax.tree.map(np.asarray, restored["state"])
                _check_like(state, target)
                return state, dict(restored["meta"])
            except Exception as e:  # corrupt or partial: fall back to an older one
                warnings.warn(f"checkpoint at step {step} in {self.directory} cannot be "
                              f"restored ({type(e).__name__}: {e}); trying an older one")
        return None

    def close(self) -> None:
        self.manager.close()


def _check_like(state: Any, target: Any) -> None:
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
        if got.shape != want.shape:
            raise ValueError(f"shape {got.shape} where {want.shape} was expected")
