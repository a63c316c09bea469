"""The files of a run folder and how to read and write them safely (no jax, no pandas).

    config.json     the resolved config
    metrics.jsonl   one JSON line per logged step and per evaluation
    result.json     the done marker, written last and atomically
    .lock           who trains in the folder now (pid and host): scaling.runs.lock

Writes: every whole-file write goes through `atomic_write` (a temporary file beside the
target, synced, then renamed over it), so a reader or a crash sees the old file or the
new one, never half of one. A writer killed between the two leaves its temporary file
`.<name>.<host>.<pid>.<random>.tmp`; `clean_stale_temps` removes those of dead writers.

Reads: `read_result` and `read_json` return None for a missing file and raise
`CorruptRunFile` (a ConfigError: one clear line at the command line) naming the file
for one that exists but cannot be used; callers decide what a corrupt file means.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scaling.config import ConfigError

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


class CorruptRunFile(ConfigError):
    """A run-folder file exists but cannot be read as what it should be."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is corrupt ({reason})")


# --------------------------------------------------------------------------------------
# Atomic writes and their leftovers
# --------------------------------------------------------------------------------------


def hostname() -> str:
    """This machine's name, as temporary files and lock records say it."""
    return socket.gethostname()


def _umask() -> int:
    """The process umask (read by setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFull(OSError):
    """No space left writing `path`: one line naming it and the space it needs."""

    def __init__(self, path: str | Path, needed: int | None = None, message: str | None = None):
        self.path = Path(path)
        if message is not None:  # as another process said it
            super().__init__(errno.ENOSPC, message)
            return
        try:
            free = os.statvfs(self.path.parent if not self.path.is_dir() else self.path)
            free_b = free.f_bavail * free.f_frsize
        except OSError:
            free_b = None
        need = f"needs about {_mb(needed)}" if needed else "needs more space"
        have = f", {_mb(free_b)} free" if free_b is not None else ""
        super().__init__(errno.ENOSPC, f"no space left on the device writing {self.path} "
                                       f"({need}{have}); free some space and run the same "
                                       "command again")

    def __str__(self) -> str:
        return self.strerror


def _mb(n: int | None) -> str:
    return f"{n / 2**20:.1f} MiB" if n is not None else "?"


def disk_full_in(e: BaseException) -> bool:
    """Whether `e`, or an exception it was raised from, is ENOSPC (orbax wraps it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which is then synced and renamed
    over `path`: a reader, or a crash, sees the old file or the new one, never half of one.

    The file gets the mode a plain `open(path, "w")` would give it (0666 less the umask),
    not mkstemp's private 0600, so collaborators on a shared filesystem can read results.
    The temporary file's name carries this host and pid, so that a later run can tell a
    dead writer's leftover from a live writer's file (`clean_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{hostname()}.{os.getpid()}."
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if disk_full_in(e) and not isinstance(e, DiskFull):
            old = path.stat().st_size if path.exists() else 0
            raise DiskFull(path, max(written, old) or None) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default))


def json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


# .<target>.<host>.<pid>.<mkstemp random>.tmp  (hosts may contain dots: match greedily)
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<host>[^/]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp$")
# Temporary files of the older writer (.<target>.<random>.tmp) say nobody's pid: they are
# removed once this old, far longer than any write of a table or a JSON file takes.
LEGACY_TEMP_AGE_S = 3600.0


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files that dead writers left in `folder`; returns them.

    A file of this host whose pid is not running is stale; one of another host is left
    alone (its writer cannot be checked from here) unless older than a day; one of the
    older naming, without a pid, once older than LEGACY_TEMP_AGE_S.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    host, now = hostname(), time.time()
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")) or not entry.is_file():
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        m = _TEMP_RE.match(name)
        if m and m["host"] == host:
            stale = not pid_alive(int(m["pid"]))
        elif m:
            stale = age > 86400.0
        else:
            stale = age > LEGACY_TEMP_AGE_S
        if stale:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


# --------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------


def read_json(path: str | Path) -> Any | None:
    """The JSON in `path`; None if there is no such file; CorruptRunFile if it is not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CorruptRunFile(path, f"unreadable: {type(e).__name__}: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not JSON: {e}"
        raise CorruptRunFile(path, what) from None


def read_result(run_dir: str | Path) -> dict | None:
    """The run's result.json: None while the run has none (not finished); CorruptRunFile
    if the file exists but is not a result (not JSON, not an object, no status)."""
    path = Path(run_dir) / RESULT_FILE
    result = read_json(path)
    if result is None:
        return None
    if not isinstance(result, dict) or not isinstance(result.get("status"), str):
        raise CorruptRunFile(path, "not a result: no 'status'")
    return result


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of metrics.jsonl; unreadable lines (one cut by a kill) are skipped."""
    return read_metrics_checked(run_dir)[0]


def read_metrics_checked(run_dir: str | Path) -> tuple[list[dict], list[int], bool]:
    """(rows, numbers of the lines skipped as unreadable, whether the last of those is
    the file's last line, cut without its newline, as a write in progress leaves it)."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = path.read_bytes()
    except OSError:
        return [], [], False
    rows, bad = [], []
    lines = data.decode("utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and "\ufffd" not in line:
            rows.append(row)
        else:
            bad.append(number)
    cut = bool(bad) and bad[-1] == len(lines) and not data.endswith(b"\n")
    return rows, bad, cut


def set_aside(path: str | Path) -> Path:
    """Rename a corrupt file to `<name>.corrupt-<time>` (kept for inspection); returns it."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target
