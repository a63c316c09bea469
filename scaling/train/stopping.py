"""Stopping cleanly on SIGTERM / SIGINT (Ctrl-C): the request, and what reports it.

    claim_early()           from a program's first line: hold SIGTERM and SIGINT until
                            stop_requests() takes them over, or release_early() gives
                            them back (commands that do not stop cleanly)
    with stop_requests():   claim SIGTERM and SIGINT for a block (where nobody else has)
    requested()             the signal received, or None
    check(...)              raise `Interrupted` if a stop was requested
    Interrupted             a KeyboardInterrupt: the command line prints one line and
                            exits 128 + signal (143 for SIGTERM, 130 for Ctrl-C)

A signal only sets the request; nothing is interrupted mid-write. Training checks it
after every step (then checkpoints) and between its phases before the loop (set-up,
restore, compile); a sweep checks it between points and forwards it to its worker
processes, waits for each to checkpoint, and reports once. Interactively a second
signal exits at once, without a checkpoint. Worker processes (`quiet()`) print nothing
and treat a repeated signal as the same request: a signal to the process group (the
terminal's Ctrl-C, `timeout`, SLURM) reaches them twice, directly and forwarded.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_state: dict = {"requested": None, "depth": 0, "quiet": False, "previous": {}, "early": {}}


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped the command cleanly; rerun the same command to resume.

    A KeyboardInterrupt, so that code which records ordinary exceptions as failures (the
    sweep executors) lets it through. `step` None: stopped before training started."""

    def __init__(self, signum: int, step: int | None = None, run_dir: Path | None = None,
                 message: str | None = None):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        if message is None:
            if step is None:
                message = ("stopped before training started (nothing was trained by this "
                           "call); run the same command again to start or resume")
            else:
                message = (f"stopped at step {step} with a checkpoint in {run_dir}; run the "
                           "same command again to resume")
        super().__init__(f"{signal.Signals(signum).name}: {message}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def quiet() -> None:
    """This process is a sweep's worker: no messages, a repeated signal is no emergency."""
    _state["quiet"] = True


def requested() -> int | None:
    return _state["requested"]


def check(step: int | None = None, run_dir: Path | None = None,
          message: str | None = None) -> None:
    if _state["requested"] is not None:
        raise Interrupted(_state["requested"], step, run_dir, message)


def _handle(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _state["requested"] is not None:
        if _state["quiet"]:
            return
        print(f"\n{name} again: exiting now, without a checkpoint", file=sys.stderr, flush=True)
        os._exit(128 + signum)
    _state["requested"] = signum
    if not _state["quiet"] and sys.stderr.isatty():  # logs get the one final line only
        print(f"\n{name}: finishing this step and saving a checkpoint (again to exit at once)",
              file=sys.stderr, flush=True)


_handle.stopping = True  # type: ignore[attr-defined]


@contextmanager
def stop_requests() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT set the request instead of killing or raising.

    Claimed only in the main thread, and only where the signal has its default handler
    (nobody else, e.g. submitit under SLURM, has claimed it). Nested blocks share the
    outermost one's claim; the outermost restores the handlers and forgets the request.
    """
    outer = _state["depth"] == 0
    if outer and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if sig in _state["early"] and current is _handle:  # held since the first line
                _state["previous"][sig] = _state["early"].pop(sig)
            elif current in (signal.SIG_DFL, signal.default_int_handler):
                _state["previous"][sig] = current
                signal.signal(sig, _handle)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            for sig, handler in _state["previous"].items():
                signal.signal(sig, handler)
            _state["previous"] = {}
            _state["requested"] = None


def claim_early() -> None:
    """Hold SIGTERM and SIGINT from the program's first line (run_sweep.py), so that a
    signal during imports and argument parsing is a stop request like any other: the
    command's first check reports it (one line, 128 + signal) instead of the interpreter
    dying of it (exit -15) or printing a traceback. Only signals nobody else holds."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            _state["early"][sig] = current
            signal.signal(sig, _handle)


def release_early() -> None:
    """Give back what claim_early() holds (a command without clean stops: status, plan,
    analyze, ...); a signal that came meanwhile is delivered again, as it would have been."""
    for sig, handler in _state["early"].items():
        signal.signal(sig, handler)
    _state["early"] = {}
    if _state["depth"] == 0 and (sig := _state["requested"]) is not None:
        _state["requested"] = None
        signal.raise_signal(sig)


def claim(sig: int) -> None:
    """Take `sig` for stop requests even though another handler holds it (a SLURM job
    claims SIGTERM from submitit, which ignores it, so that a preempted job checkpoints)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(sig, _handle)
