"""BERT's masked-LM corruption of token windows, as a pure function of its keys.

Masking (Devlin et al. 2019, as in BERT's create_pretraining_data.py): in each window of
T tokens, exactly k = max(1, round(0.15 T)) positions are selected uniformly without
replacement; each selected position independently becomes the [MASK] id with
probability 0.8, a uniformly random token of the vocabulary with probability 0.1 (which
may be the original token, as in BERT), and stays unchanged with probability 0.1. The
loss is the cross-entropy of the original token at the k selected positions only.

A masked batch is int32 [B, 2, T]: [:, 0] the corrupted inputs, [:, 1] the labels (the
original token at selected positions, -1 elsewhere). It is made on the host, so a
window's corruption depends on nothing but its key:
  - training: (data seed, step, row of the global batch) -- like the batches themselves
    (TokenData.train_batch), so a resumed run masks exactly as an uninterrupted one and
    a data-parallel shard masks its rows as the unsharded batch would;
  - evaluation: the window's token offset in the validation stream, under a fixed key, so
    every run of a corpus (any seed, batch size, device count, eval-set prefix) is scored
    on the same corrupted windows.
The random numbers are a splitmix64 hash of (key, position, stream), so they need no
generator state. A window is the first T = seq_len tokens of the loader's windows of
seq_len + 1 tokens (the extra next-token target is unused).

`MaskedTokenData` wraps a TokenData (scaling.data.dataset) to hand the training loop masked
batches and a `MaskedEvalSet`, whose summary weights each window by its number of
scored tokens (k each: equal weights, so the eval loss is the mean over every scored token
and the standard error is the evalset's cluster-robust one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.data.evalset import EvalSet
from scaling.data.order import mix64

MASK_RATE = 0.15
MASK_PROB, RANDOM_PROB = 0.8, 0.1  # of the selected positions; the rest stay unchanged
IGNORE = -1  # label of positions the loss does not read

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TRAIN_DOMAIN = np.uint64(0x6D4C4D5452414E31)  # "mLMTRAN1"
_EVAL_DOMAIN = np.uint64(0x6D4C4D4556414C31)   # "mLMEVAL1": one fixed eval masking
_STREAMS = {"select": np.uint64(1), "action": np.uint64(2), "token": np.uint64(3)}


def n_selected(seq_len: int, rate: float = MASK_RATE) -> int:
    """Positions scored per window: max(1, round(rate * T))."""
    return max(1, int(round(rate * seq_len)))


def _u64(x) -> np.ndarray:
    return np.asarray(np.asarray(x, dtype=np.int64).astype(np.uint64))


def train_keys(seed: int, step: int, rows: np.ndarray) -> np.ndarray:
    """uint64 key of each row of the global batch of `step` under data seed `seed`."""
    with np.errstate(over="ignore"):
        k = mix64(_TRAIN_DOMAIN ^ (_u64(seed & (2**63 - 1)) * _GOLDEN))
        k = mix64(k + _u64(step) * _GOLDEN)
        return mix64(k + _u64(rows) * _GOLDEN)


def eval_keys(starts: np.ndarray) -> np.ndarray:
    """uint64 key of each validation window, from its token offset in the stream."""
    with np.errstate(over="ignore"):
        return mix64(mix64(_EVAL_DOMAIN) + _u64(starts) * _GOLDEN)


def _bits(keys_B: np.ndarray, T: int, stream: str) -> np.ndarray:
    """uint64 [B, T]: a hash of (row key, position, stream)."""
    with np.errstate(over="ignore"):
        pos = np.arange(T, dtype=np.uint64)
        k = mix64(keys_B[:, None] ^ (_STREAMS[stream] * np.uint64(0xD1B54A32D192ED03)))
        return mix64(k + pos[None, :] * _GOLDEN)


def _uniform(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_windows(tokens_BxT: np.ndarray, keys_B: np.ndarray, vocab_size: int,
                 mask_id: int, rate: float = MASK_RATE) -> np.ndarray:
    """int32 [B, 2, T]: (corrupted inputs, labels) of each window under its key."""
    tokens_BxT = np.asarray(tokens_BxT, dtype=np.int32)
    B, T = tokens_BxT.shape
    keys_B = np.asarray(keys_B, dtype=np.uint64).reshape(B)
    k = n_selected(T, rate)
    # k positions per row without replacement: the k smallest hashes (ties: lower position)
    order = np.argsort(_bits(keys_B, T, "select"), axis=1, kind="stable")[:, :k]
    selected = np.zeros((B, T), dtype=bool)
    np.put_along_axis(selected, order, True, axis=1)
    u = _uniform(_bits(keys_B, T, "action"))
    random_tok = (_bits(keys_B, T, "token") % np.uint64(vocab_size)).astype(np.int32)
    inputs = tokens_BxT.copy()
    to_mask = selected & (u < MASK_PROB)
    to_random = selected & (u >= MASK_PROB) & (u < MASK_PROB + RANDOM_PROB)
    inputs[to_mask] = mask_id
    inputs[to_random] = random_tok[to_random]
    labels = np.where(selected, tokens_BxT, IGNORE).astype(np.int32)
    return np.stack([inputs, labels], axis=1)


class MaskedEvalSet:
    """An EvalSet whose windows come masked with the fixed eval masking (module doc)."""

    def __init__(self, base: EvalSet, vocab_size: int, mask_id: int):
        self.base, self.vocab_size, self.mask_id = base, int(vocab_size), int(mask_id)

    def __getattr__(self, name: str) -> Any:  # n_windows, n_documents, starts, documents...
        return getattr(self.base, name)

    @property
    def tokens(self) -> int:
        """Tokens scored: k selected positions per window."""
        return self.base.n_windows * n_selected(self.base.seq_len)

    def batch(self, i: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(int32 [batch_size, 2, seq_len] masked windows, float32 [batch_size] weights);
        padding rows (weight 0) are all zeros with labels -1."""
        windows, weights = self.base.batch(i, batch_size)
        T = self.base.seq_len
        starts = np.zeros(batch_size, dtype=np.int64)
        rows = self.base.starts[i * batch_size:(i + 1) * batch_size]
        starts[:len(rows)] = rows
        out = mask_windows(windows[:, :T], eval_keys(starts), self.vocab_size, self.mask_id)
        out[weights == 0, 1] = IGNORE
        return out, weights

    def prefix(self, k: int) -> "MaskedEvalSet":
        return MaskedEvalSet(self.base.prefix(k), self.vocab_size, self.mask_id)

    def summarize(self, window_losses: np.ndarray, by_document: bool = False) -> dict:
        """Mean masked-LM loss over scored tokens (windows weighted by their k scored
        tokens), cluster-robust stderr, sizes (eval_tokens: tokens scored)."""
        k = n_selected(self.base.seq_len)
        losses = np.asarray(window_losses, dtype=np.float64).reshape(-1)
        out = self.base.summarize(losses, weights=np.full(losses.shape, float(k)),
                                  by_document=by_document)
        out["eval_tokens"] = self.tokens
        return out

    def __repr__(self) -> str:
        return f"Masked{self.base!r}"


class MaskedTokenData:
    """A TokenData whose training batches and eval set are masked for the masked-LM
    objective (everything else is the wrapped loader's: fingerprint, position, ...)."""

    def __init__(self, data: Any, mask_id: int):
        self.data, self.mask_id = data, int(mask_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def train_batch(self, step: int, batch_size: int, seed: int,
                    shard: tuple[int, int] = (0, 1)) -> np.ndarray:
        """int32 [batch_size // count, 2, seq_len]: rows index*B/count ... of the masked
        batch `step` (module doc); shards of one step concatenate to the unsharded batch."""
        windows = self.data.train_batch(step, batch_size, seed, shard)
        index, count = int(shard[0]), int(shard[1])
        rows = batch_size // count
        global_rows = index * rows + np.arange(rows, dtype=np.int64)
        T = windows.shape[1] - 1
        return mask_windows(windows[:, :T], train_keys(seed, step, global_rows),
                            self.data.vocab_size, self.mask_id)

    def eval_set(self, n_windows: int, eval_seed: int = 0) -> MaskedEvalSet:
        return MaskedEvalSet(self.data.eval_set(n_windows, eval_seed), self.data.vocab_size,
                             self.mask_id)
