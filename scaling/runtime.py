"""Process-wide set-up: cache folders, JAX's persistent compilation cache, logging."""

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
    Set SCALINGLAB_NO_COMPILE_CACHE=1 to turn it off.
    """
    if os.environ.get("SCALINGLAB_NO_COMPILE_CACHE"):
        return None
    import jax

    path = cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
