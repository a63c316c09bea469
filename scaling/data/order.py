"""The hashes behind every data order: splitmix64, the salted name hash, window permutations.

Shared by the data modules so that each order is written once:

- `mix64` / `mix64_int`: the splitmix64 finalizer on uint64 arrays (callers wrap it in
  `np.errstate(over="ignore")`) and on Python ints; independent of the numpy version.
- `name_hash(salt, name)`: the first 8 bytes of sha256(salt + name), big-endian. With
  `VAL_SALT` it decides which document groups are held out (`scaling.data.heldout`), with
  `READ_SALT` the order in which a capped corpus reads its training files
  (`scaling.data.corpora`), with `ORDER_SALT` the order of the documents in each token
  stream (`scaling.data.corpora.Corpus.ordered`, `scaling.data.shards`).
- `window_permutation(n, seed, epoch)`: the order of the training windows in an epoch
  (`scaling.data.dataset.TokenData`) and of a batch's rows (`scaling.data.tasks.TaskMix`).
"""

from __future__ import annotations

import hashlib

import numpy as np

M64 = (1 << 64) - 1  # mask of a 64-bit integer
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment: 2**64 / golden ratio, odd
VAL_SALT = b"scalinglab-val:"  # which groups are held out
READ_SALT = b"scalinglab-read:"  # the order training files are read in (to the cap)
ORDER_SALT = b"scalinglab-order:"  # the order of documents in each token stream


def mix64_int(z: int) -> int:
    """The splitmix64 finalizer of a Python int (taken modulo 2**64)."""
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer of uint64 values (wraps: call under errstate(over="ignore"))."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def name_hash(salt: bytes, name: str) -> int:
    """The first 8 bytes of sha256(salt + UTF-8 name), as a big-endian integer."""
    return int.from_bytes(hashlib.sha256(salt + name.encode("utf-8")).digest()[:8], "big")


def window_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n), a fixed function of (seed, epoch) (splitmix64 keys)."""
    base = mix64_int(mix64_int(seed) ^ ((epoch * GOLDEN) & M64))
    with np.errstate(over="ignore"):
        keys = mix64(np.uint64(base) + np.arange(n, dtype=np.uint64) * np.uint64(GOLDEN))
    return np.argsort(keys, kind="stable").astype(np.int64)
