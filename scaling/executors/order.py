"""The order to run a sweep's points in, and the queue that hands them out.

`order_points`: trunks before their branches, the longest-running first for side-by-side
workers; `Queue`: the points left, each handed out once its trunk is done, a branch of a
trunk that ended otherwise dropped as blocked. Used by the local executor.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scaling.config import ConfigError
from scaling.executors.point_runner import FINISHED, point_config
from scaling.runs.results import blocked_by, point_state, points_dir, trunk_of
from scaling.runs.runfiles import CorruptRunFile

log = logging.getLogger(__name__)


def step_flops(point_dir: Path) -> float:
    """Exact training FLOPs of one optimizer step of the point (0.0 if unreadable)."""
    from scaling.accounting.counts import flops_per_token

    try:
        cfg = point_config(point_dir)
    except (CorruptRunFile, ConfigError, OSError):
        return 0.0
    return float(flops_per_token(cfg.model).exact) * cfg.train.batch_size * cfg.model.seq_len


def _steps(point_dir: Path) -> int:
    try:
        return point_config(point_dir).train.steps
    except (CorruptRunFile, ConfigError, OSError):
        return 0


def order_points(sweep_dir: Path, point_ids: list[str], *, largest_first: bool,
                 seconds: dict[str, float] | None = None) -> list[str]:
    """The order to run points in: every trunk before its branches.

    `largest_first`: the longest-running first (by `seconds`, the planner's estimates,
    else by training FLOPs: FLOPs per step x steps), so that side-by-side workers finish
    together (longest-processing-time-first scheduling); otherwise the plan's order.
    Either way a branch is moved after its trunk.
    """
    pdir = points_dir(sweep_dir)
    ids = list(point_ids)
    if largest_first:
        seconds = seconds or {}

        def work(pid: str) -> tuple[float, float]:
            return (seconds.get(pid, 0.0), step_flops(pdir / pid) * _steps(pdir / pid))

        cost = {pid: work(pid) for pid in ids}
        ids.sort(key=lambda pid: cost[pid], reverse=True)  # stable: plan order among ties
    placed: list[str] = []
    seen: set[str] = set()

    def place(pid: str, chain: tuple = ()) -> None:
        if pid in seen or pid in chain:
            return
        trunk = trunk_of(pdir / pid)
        if trunk in ids:
            place(trunk, chain + (pid,))
        seen.add(pid)
        placed.append(pid)

    for pid in ids:
        place(pid)
    return placed


class Queue:
    """Points left to run in this call, handed out in order once their trunk is done.

    `take()` returns the next runnable point, or None when none is runnable now. A
    branch is runnable once its trunk's result says done; while the trunk is still to
    run here (queued or being run), the branch is skipped and comes back later. A branch
    whose trunk ended otherwise (failed, diverged, corrupt) or is not this call's and
    not done is dropped as blocked, with the reason logged (status shows it too).
    """

    def __init__(self, sweep_dir: Path, ordered: list[str]):
        self.pdir = points_dir(sweep_dir)
        self.todo = [pid for pid in ordered if point_state(self.pdir / pid) not in FINISHED]
        self.active: set[str] = set()  # handed out, not yet returned by `finished`
        self.blocked: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.todo)

    def _trunk_pending(self, trunk: str) -> bool:
        return trunk in self.todo or trunk in self.active or \
            point_state(self.pdir / trunk) in ("running", "queued")

    def take(self) -> str | None:
        for pid in list(self.todo):
            if point_state(self.pdir / pid) in FINISHED:  # another process finished it
                self.todo.remove(pid)
                continue
            trunk = trunk_of(self.pdir / pid)
            if trunk is None or point_state(self.pdir / trunk) == "done":
                self.todo.remove(pid)
                self.active.add(pid)
                return pid
            if not self._trunk_pending(trunk):
                self._block(pid, blocked_by(self.pdir / pid) or f"trunk {trunk} is not done")
        return None

    def waits_elsewhere(self) -> bool:
        """Whether a point left waits for a trunk that another process is running."""
        return any(point_state(self.pdir / t) in ("running", "queued")
                   for pid in self.todo if (t := trunk_of(self.pdir / pid)) is not None)

    def give_up(self) -> None:
        """Nothing runs and nothing can start: the points left are blocked."""
        for pid in list(self.todo):
            self._block(pid, blocked_by(self.pdir / pid) or "its trunk cannot run first")

    def _block(self, pid: str, why: str) -> None:
        self.todo.remove(pid)
        self.blocked[pid] = why
        log.warning("point %s not run: %s", pid, why)

    def finished(self, pid: str) -> None:
        self.active.discard(pid)
