"""Checkpoints with orbax's CheckpointManager: train state + metadata.

A checkpoint holds two items:
    state   the TrainState as host numpy arrays (driver- and device-count-agnostic)
    meta    JSON: step, data position (tokens seen, epoch), the run's config, wall time
Saves are atomic (orbax writes into a temporary folder and renames it), so a kill
during a save leaves the previous checkpoints intact. Restoring walks from the newest
step down and skips any checkpoint that fails to load, with one warning line saying
which and why (orbax's own error logs about it are folded into that line).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 2, *, create: bool = True):
        """`create=False`: only read; the folder is not created (it must exist), and the
        unfinished saves in it are left alone (they may be another process's, writing now)."""
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=create,
            enable_async_checkpointing=False,  # host arrays; a save is a plain write
            cleanup_tmp_directories=create,
        )
        with _orbax_errors() as said:  # e.g. a garbled _CHECKPOINT_METADATA: reported on restore
            self.manager = ocp.CheckpointManager(self.directory, options=options,
                                                 item_names=("state", "meta"))
        self._held_back = said
        self.unreadable: set[int] = set()  # steps a restore found corrupt (a save replaces them)

    def save(self, step: int, host_state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(host_state),
                                    meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()

    def delete(self, step: int) -> None:
        self.manager.delete(step)
        self.unreadable.discard(step)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """(host state, meta) of the newest loadable checkpoint, or None."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            restored = self._try_restore(step, abstract_state, "trying an older one")
            if restored is not None:
                return restored
        return None

    def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict] | None:
        """(host state, meta) of the checkpoint at `step`, or None if there is no loadable one."""
        if step not in self.manager.all_steps():
            return None
        return self._try_restore(step, abstract_state, "it is skipped")

    def _try_restore(self, step: int, abstract_state: Any, fallback: str) -> tuple[Any, dict] | None:
        target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_state)
        with _orbax_errors() as orbax_said:
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                            meta=ocp.args.JsonRestore()),
                )
                state = jax.tree.map(np.asarray, restored["state"])
                _check_like(state, target)
            except Exception as e:  # corrupt or partial
                self.unreadable.add(step)
                log.warning("checkpoint at step %d in %s cannot be restored (%s); %s",
                            step, self.directory, _one_line(e), fallback)
                self._held_back = []  # that line says what matters
                return None
        said = self._held_back + orbax_said
        self._held_back = []
        if said:
            log.warning("checkpoint at step %d in %s restored, but orbax reported: %s",
                        step, self.directory, _one_line(said[0]))
        return state, dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()


def _check_like(state: Any, target: Any) -> None:
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
        if got.shape != want.shape:
            raise ValueError(f"shape {got.shape} where {want.shape} was expected")


def _one_line(what: Exception | str, limit: int = 300) -> str:
    text = f"{type(what).__name__}: {what}" if isinstance(what, Exception) else str(what)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def _orbax_errors() -> Iterator[list[str]]:
    """Hold back what orbax logs (through absl) while a checkpoint is tried: the caller
    reports the outcome in one line of its own. Yields the messages held back."""
    said: list[str] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            said.append(record.getMessage())
            return False
        return True

    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    for lg in loggers:
        lg.addFilter(hold)
    try:
        yield said
    finally:
        for lg in loggers:
            lg.removeFilter(hold)
