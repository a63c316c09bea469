"""Process-wide set-up: cache folders, JAX's persistent compilation cache, the CPU's
compiler options, logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def cache_dir(configured: str = "") -> Path:
    """Where tokenized corpora, tokenizers and compiled programs are cached."""
    path = Path(configured or os.environ.get("SCALINGLAB_CACHE", "~/.cache/scalinglab"))
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache (under the cache folder).

    A sweep of many small models otherwise pays several seconds of XLA compilation per
    point and per process; with the cache, a shape compiled once loads in milliseconds.
    Set SCALINGLAB_NO_COMPILE_CACHE=1 to turn it off, SCALINGLAB_COMPILE_CACHE=DIR to
    keep it elsewhere (benchmarks/sweep_speed.py starts each timing from an empty one).
    """
    if os.environ.get("SCALINGLAB_NO_COMPILE_CACHE"):
        return None
    import jax

    configured = os.environ.get("SCALINGLAB_COMPILE_CACHE")
    path = Path(configured).expanduser() if configured else cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# XLA options for the programs a run compiles, on the CPU. A small sweep spends a third
# of its core-seconds compiling (six shapes, ~7 s each on one core), so compile time
# counts as much as speed there. Measured on one core (benchmarks/README.md, "Compile
# time"), from d16 L1 to L4 d256 T256:
#   - the train and eval steps at LLVM -O1: compile 10-25 % faster, steps as fast or
#     1-3 % faster (their dots are library calls, unaffected);
#   - the state initializer, which runs once per point, unoptimized: compile ~2x faster;
#     the same random bits, their float transforms rounded differently: ~4 % of a normal
#     matrix's values differ from an -O3 build's, by at most 3 ulp (tests/test_train.py).
# Elsewhere than on the CPU the backend's defaults stand.
CPU_COMPILER_OPTIONS = {
    "step": {"xla_backend_optimization_level": 1},
    "init": {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True},
}


def compiler_options(program: str) -> dict | None:
    """XLA compiler options for `program` ("step": the train and eval steps; "init": the
    state initializer) on the default backend; None (the defaults) off the CPU."""
    import jax

    if program not in CPU_COMPILER_OPTIONS:
        raise ValueError(f"program = {program!r}: allowed: {', '.join(CPU_COMPILER_OPTIONS)}")
    return dict(CPU_COMPILER_OPTIONS[program]) if jax.default_backend() == "cpu" else None


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_tuned = False


def tune_host_runtime() -> bool:
    """Keep glibc from returning XLA's large per-step buffers to the kernel (CPU speed-up).

    XLA's CPU runtime allocates one temp buffer per executable run (hundreds of MB for
    a training step) with malloc and frees it after the run. glibc serves blocks that
    large with a fresh mmap from the worker thread's arena and unmaps them on free, so
    every step page-faults its whole working set in again (measured: 250k faults and
    ~0.5 s of kernel time per step for the L4 d256 T256 B16 shape). Forcing one arena,
    no mmap for large blocks and no trimming lets the freed block be reused, at the
    price of the process keeping its peak heap. Call before JAX's first computation
    (its worker threads pick their arena on their first allocation); later calls and
    non-glibc systems are a no-op. Set SCALINGLAB_NO_MALLOC_TUNE=1 to skip.
    Returns whether the settings were applied.
    """
    global _tuned
    if _tuned or os.environ.get("SCALINGLAB_NO_MALLOC_TUNE"):
        return _tuned
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only  # noqa: B018
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    ok = (libc.mallopt(M_ARENA_MAX, 1) == 1 and libc.mallopt(M_MMAP_MAX, 0) == 1
          and libc.mallopt(M_TRIM_THRESHOLD, 0x7FFFFFFF) == 1)
    _tuned = ok
    return ok
