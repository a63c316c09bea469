"""The evaluation set: fixed windows spread over every validation document.

Windows. The validation stream (held-out documents, each followed by the end-of-text
id, in a hashed order of their names) is cut exactly like the training stream: window
w holds tokens [w*T, w*T + T] (T = seq_len), inputs the first T, targets the last T,
so every target token is in at most one window and a window may run across a document
boundary (the model sees that in training too; the end-of-text id is a target like any
other). A window belongs to the document that holds its first target token.

Order. Each document's windows are put in a fixed pseudo-random order (a splitmix64 hash
of the window index), then the set is dealt round-robin: the first window of every
document (documents in stream order, itself a hash of their names), then the second of
every document that has two, and so on. `eval_set(n)` is the first n windows of that
order, so any prefix is spread over as many documents as it can be (n >= number of
documents covers them all) and the set depends on nothing but the corpus, the tokenizer
and seq_len: not on batch size, model, seed or device count. n is capped at the number
of validation windows (all of them: then every validation target is scored once).

Loss and noise. Every window has T targets, so the token-weighted mean loss is the mean
of the per-window mean losses: L = (1/n) sum_w L_w. Windows of one document are
correlated (same style, same identifiers), so the standard error is the cluster-robust
(CR1, clusters = documents) standard error of that mean:

    SE^2 = G / (G - 1) * sum_g (sum_{w in g} (L_w - L))^2 / n^2

with G the number of documents among the n windows. With one window per document it is
the ordinary standard error of the mean; with m equal windows per document it is
sd(document means) / sqrt(G), whatever m is: more windows from the same documents do
not buy precision that more documents would. With G < 2 it is undefined (NaN).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def window_documents(doc_tokens: np.ndarray, n_windows: int, seq_len: int) -> np.ndarray:
    """Document index of each stream window: the document holding its first target."""
    ends = np.cumsum(np.asarray(doc_tokens, dtype=np.int64))
    first_target = np.arange(n_windows, dtype=np.int64) * seq_len + 1
    return np.searchsorted(ends, first_target, side="right").astype(np.int64)


def round_robin_order(docs: np.ndarray) -> np.ndarray:
    """Window indices in eval order: round r takes the r-th window of every document.

    Within a document the windows are ranked by a hash of their index; documents are
    visited in index order (the stream order, a hash of their names)."""
    n = len(docs)
    with np.errstate(over="ignore"):
        keys = _mix64(np.arange(n, dtype=np.uint64) * _GOLDEN + np.uint64(0x5CA1AB1E))
    by_doc = np.lexsort((keys, docs))  # grouped by document, hashed order inside
    sorted_docs = docs[by_doc]
    starts = np.searchsorted(sorted_docs, sorted_docs, side="left")
    rank = np.empty(n, dtype=np.int64)
    rank[by_doc] = np.arange(n, dtype=np.int64) - starts
    return np.lexsort((docs, rank)).astype(np.int64)


def cluster_robust_stderr(losses: np.ndarray, clusters: np.ndarray,
                          weights: np.ndarray | None = None) -> float:
    """CR1 standard error of the mean of `losses`, clustered by `clusters` (module doc).

    With `weights` (w_i, e.g. tokens scored per window), of the weighted mean
    L = sum w_i L_i / W: SE^2 = G/(G-1) sum_g (sum_{i in g} w_i (L_i - L))^2 / W^2, which
    is the unweighted formula when all weights are equal."""
    losses = np.asarray(losses, dtype=np.float64)
    clusters = np.asarray(clusters)
    w = np.ones_like(losses) if weights is None else np.asarray(weights, dtype=np.float64)
    n = losses.size
    _, inverse = np.unique(clusters, return_inverse=True)
    g = int(inverse.max()) + 1 if n else 0
    if g < 2:
        return float("nan")
    mean = losses.mean() if weights is None else np.sum(w * losses) / np.sum(w)
    resid_sums = np.bincount(inverse, weights=w * (losses - mean), minlength=g)
    return float(np.sqrt(g / (g - 1) * np.sum(resid_sums ** 2)) / np.sum(w))


class EvalSet:
    """A fixed list of validation windows (see the module docstring)."""

    def __init__(self, val_tokens: np.ndarray, starts: np.ndarray, documents: np.ndarray,
                 seq_len: int):
        self._val = val_tokens
        self.starts = np.asarray(starts, dtype=np.int64)  # token offset of each window
        self.documents = np.asarray(documents, dtype=np.int64)  # document index per window
        self.seq_len = int(seq_len)
        self._offsets = np.arange(self.seq_len + 1, dtype=np.int64)

    @property
    def n_windows(self) -> int:
        return int(self.starts.size)

    @property
    def tokens(self) -> int:
        """Target tokens scored: n_windows * seq_len."""
        return self.n_windows * self.seq_len

    @property
    def n_documents(self) -> int:
        return int(np.unique(self.documents).size)

    def n_batches(self, batch_size: int) -> int:
        _check_batch_size(batch_size)
        return -(-self.n_windows // int(batch_size))

    def batch(self, i: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(int32 [batch_size, seq_len + 1] windows i*B ..., float32 [batch_size] weights).

        The last batch is padded with rows of zeros whose weight is 0; every other row
        has weight 1. inputs = batch[:, :-1], targets = batch[:, 1:]."""
        _check_batch_size(batch_size)
        if not 0 <= i < self.n_batches(batch_size):
            raise ValueError(f"eval batch {i}: the set has {self.n_batches(batch_size)} "
                             f"batches of {batch_size}")
        rows = self.starts[i * batch_size:(i + 1) * batch_size]
        out = np.zeros((batch_size, self.seq_len + 1), dtype=np.int32)
        out[:len(rows)] = self._val[rows[:, None] + self._offsets]
        weights = np.zeros(batch_size, dtype=np.float32)
        weights[:len(rows)] = 1.0
        return out, weights

    def prefix(self, k: int) -> "EvalSet":
        """The first k windows (spread over min(k, n_documents) documents or more)."""
        if not 1 <= k <= self.n_windows:
            raise ValueError(f"prefix({k}): need 1 <= k <= n_windows = {self.n_windows}")
        return EvalSet(self._val, self.starts[:k], self.documents[:k], self.seq_len)

    def summarize(self, window_losses: np.ndarray,
                  weights: np.ndarray | None = None) -> dict[str, float | int]:
        """Mean loss (token-weighted = window mean), its cluster-robust stderr, sizes.

        `weights`: tokens scored per window when windows score different numbers of
        tokens (the masked-LM eval, scaling.masking); the mean is then weighted by them."""
        losses = np.asarray(window_losses, dtype=np.float64).reshape(-1)
        if losses.size != self.n_windows:
            raise ValueError(f"summarize: got {losses.size} window losses for "
                             f"{self.n_windows} windows")
        w = np.ones_like(losses) if weights is None else np.asarray(weights, np.float64)
        return {
            "eval_loss": float(losses.mean() if weights is None
                               else np.sum(w * losses) / np.sum(w)),
            "eval_loss_stderr": cluster_robust_stderr(losses, self.documents, w),
            "eval_tokens": self.tokens,
            "eval_documents": self.n_documents,
            "eval_windows": self.n_windows,
        }

    def summarize_positions(self, losses_WxT: np.ndarray) -> dict[str, list[float]]:
        """The mean loss at each position t = 0..T-1 of the window over the set's windows,
        and its cluster-robust stderr (by document, as the mean's)."""
        L = np.asarray(losses_WxT, dtype=np.float64)
        if L.shape != (self.n_windows, self.seq_len):
            raise ValueError(f"summarize_positions: got losses of shape {L.shape} for "
                             f"{self.n_windows} windows of {self.seq_len}")
        return {"eval_loss_by_position": [float(v) for v in L.mean(axis=0)],
                "eval_loss_by_position_stderr": [cluster_robust_stderr(L[:, t], self.documents)
                                                 for t in range(self.seq_len)]}

    def __repr__(self) -> str:
        return (f"EvalSet(windows={self.n_windows}, documents={self.n_documents}, "
                f"tokens={self.tokens})")


def _check_batch_size(batch_size: int) -> None:
    if int(batch_size) < 1:
        raise ValueError(f"batch_size = {batch_size}: must be >= 1")


def build_eval_set(val_tokens: np.ndarray, doc_tokens: np.ndarray, seq_len: int,
                   n_windows: int) -> EvalSet:
    """The first `n_windows` windows (capped at all of them) in round-robin order."""
    total = max(0, (len(val_tokens) - 1) // seq_len)
    docs = window_documents(doc_tokens, total, seq_len)
    order = round_robin_order(docs)[:min(int(n_windows), total)]
    return EvalSet(val_tokens, order * seq_len, docs[order], seq_len)
