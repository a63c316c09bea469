"""The run folder's lock: one process trains in a run folder at a time.

`run_lock(run_dir)` holds an flock on `<run_dir>/.lock`, which also records the holder's
pid and host (for the message, and for filesystems where flock does not reach across
hosts); re-entrant within a process; a dead holder's record is taken over (its pid dead
on this host, or another host's heartbeat LOCK_STALE_S old). `RunFolderBusy` when
another process holds it; `lock_owner` probes without taking it.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from scaling.config import ConfigError
from scaling.runs.runfiles import LOCK_FILE, clean_stale_temps, hostname, pid_alive


class RunFolderBusy(ConfigError):
    """Another process trains in (or holds) the run folder."""

    def __init__(self, run_dir: str | Path, owner: dict | None):
        self.run_dir, self.owner = Path(run_dir), owner or {}
        if owner and owner.get("pid") is not None:
            who = f"pid {owner['pid']} on host {owner.get('host', '?')}"
        else:
            who = "another process (its pid is not recorded)"
        super().__init__(f"run folder {run_dir} is in use by {who}")


# The holder touches its lock file this often; a record of another host not touched for
# LOCK_STALE_S is a crashed holder's (its pid cannot be checked from here).
LOCK_HEARTBEAT_S = 30.0
LOCK_STALE_S = 180.0
# A status probe holds the lock for microseconds: an acquirer retries this long first.
LOCK_RETRY_S = 0.5
_FLOCK_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class _Held:
    def __init__(self, path: Path, fd: int, flocked: bool):
        self.path, self.fd, self.flocked, self.count = path, fd, flocked, 1


_HELD: dict[str, _Held] = {}  # realpath of the lock file -> this process's hold on it
_GUARD = threading.RLock()
_heartbeat: threading.Thread | None = None


def _forget_after_fork() -> None:  # a forked child does not hold its parent's locks
    global _heartbeat
    _HELD.clear()
    _heartbeat = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _me() -> dict:
    return {"pid": os.getpid(), "host": hostname()}


def _read_owner(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and "pid" in owner else None


def _write_owner(fd: int) -> None:
    data = json.dumps({**_me(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _owner_gone(owner: dict, lock_path: Path, flocked: bool) -> bool:
    """Whether a recorded holder no longer holds the lock.

    Same host: gone if we got the flock (flock is reliable on one host) or its pid is
    dead. Another host: flock may not reach across hosts (a shared filesystem mounted
    with host-local locks), so its record counts until its heartbeat is LOCK_STALE_S old.
    """
    if owner.get("host") == hostname():
        try:
            pid = int(owner.get("pid"))
        except (TypeError, ValueError):
            return True
        return flocked or not pid_alive(pid)
    try:
        age = time.time() - lock_path.stat().st_mtime
    except OSError:
        return True
    return age > LOCK_STALE_S


def _try_flock(fd: int, kind: int) -> bool | None:
    """True: locked; None: held elsewhere; False: this filesystem has no flock."""
    import fcntl

    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno in _FLOCK_UNSUPPORTED:
            return False
        raise


def _start_heartbeat() -> None:
    global _heartbeat
    if _heartbeat is not None and _heartbeat.is_alive():
        return

    def beat():
        while True:
            time.sleep(LOCK_HEARTBEAT_S)
            with _GUARD:
                paths = [h.path for h in _HELD.values()]
            for p in paths:
                try:
                    os.utime(p)
                except OSError:
                    pass

    _heartbeat = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
    _heartbeat.start()


def acquire_run_lock(run_dir: str | Path) -> str:
    """Take the run folder's lock (re-entrant in one process); RunFolderBusy if held.

    Returns a key for `release_run_lock`. Prefer the context manager `run_lock`.
    """
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    key = os.path.realpath(path)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.count += 1
            return key
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + LOCK_RETRY_S
            while (flocked := _try_flock(fd, fcntl.LOCK_EX)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if flocked is None:
                raise RunFolderBusy(run_dir, _read_owner(fd))
            owner = _read_owner(fd)
            if owner and not _owner_gone(owner, path, bool(flocked)):
                raise RunFolderBusy(run_dir, owner)
            _write_owner(fd)
            if not flocked:  # records only: last writer wins; check that it is us
                time.sleep(0.05)
                now = _read_owner(fd) or {}
                if (now.get("pid"), now.get("host")) != (os.getpid(), hostname()):
                    raise RunFolderBusy(run_dir, _read_owner(fd))
        except BaseException:
            os.close(fd)  # also drops the flock, if taken
            raise
        _HELD[key] = _Held(path, fd, bool(flocked))
        _start_heartbeat()
    clean_stale_temps(run_dir)
    return key


def release_run_lock(key: str) -> None:
    import fcntl

    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[key]
        try:
            owner = _read_owner(held.fd)
            if owner is None or (owner.get("pid"), owner.get("host")) == (os.getpid(), hostname()):
                os.ftruncate(held.fd, 0)
            if held.flocked:
                fcntl.flock(held.fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(held.fd)


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the run folder's lock while the block runs; RunFolderBusy if another holds it.

    The lock is an flock on `<run_dir>/.lock`, which also records the holder's pid and
    host (for the message, and for filesystems where flock does not reach across
    hosts). It is re-entrant within a process: the sweep executor holds a point's lock
    and calls `loop.train`, which takes it again. A holder that dies loses it: its flock
    goes with the process; a record left behind is taken over once its pid is dead (on
    this host) or, for another host's, once its heartbeat is LOCK_STALE_S old.
    """
    key = acquire_run_lock(run_dir)
    try:
        yield Path(run_dir)
    finally:
        release_run_lock(key)


def lock_owner(run_dir: str | Path) -> dict | None:
    """{"pid", "host"} of the process holding the run folder's lock ({} if it is held
    but records no holder), or None if it is free. Takes nothing (a shared flock probe)."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return None
    with _GUARD:
        if os.path.realpath(path) in _HELD:
            return _me()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        flocked = _try_flock(fd, fcntl.LOCK_SH)
        if flocked is None:
            return _read_owner(fd) or {}
        owner = _read_owner(fd)
        if flocked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if owner and not _owner_gone(owner, path, bool(flocked)):
            return owner
        return None
    finally:
        os.close(fd)
