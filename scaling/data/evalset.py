"""The evaluation set: a uniform sample of the validation windows, fixed per corpus.

Estimand. The final eval estimates the held-out *per-token* loss: the mean next-token
loss over every target token of the validation stream's windows, each token weighted
equally (result.json: `eval_estimand = "per_token"`). Large documents therefore weigh
as much as their tokens: documents are not weighted equally.

Windows. The validation stream (held-out documents, each followed by the end-of-text
id, in a hashed order of their names) is cut exactly like the training stream: window
w holds tokens [w*T, w*T + T] (T = seq_len), inputs the first T, targets the last T,
so every target token is in at most one window and a window may run across a document
boundary (the model sees that in training too; the end-of-text id is a target like any
other). A window belongs to the document that holds its first target token.

Order. All validation windows are put in one pseudo-random order: sorted by a splitmix64
hash of (window index, `data.eval_seed`). `eval_set(n)` is the first n windows of that
order, a simple random sample without replacement of n of the M windows, so every
window (and every target token) is in it with probability n/M and the window mean below
is an unbiased estimate of the per-token loss over all M windows; any prefix is again
such a sample, so the learning-curve evals (a prefix) have the same estimand. The set
depends on nothing but the corpus, the tokenizer, seq_len and eval_seed: not on batch
size, model, seed or device count; another eval_seed draws another, independent set. n
is capped at M (then every validation target is scored once). `EvalSet.set_id` names
the set (a hash of the token fingerprint, tokenizer, seq_len, eval_seed and n): runs
with the same id were scored on the same windows.

Loss and noise. Every window has T targets, so the token-weighted mean loss is the mean
of the per-window mean losses: L = (1/n) sum_w L_w. Windows of one document are
correlated (same style, same identifiers), so the standard error is the cluster-robust
(CR1, clusters = documents) standard error of that mean:

    SE^2 = G / (G - 1) * sum_g (sum_{w in g} (L_w - L))^2 / n^2

with G the number of documents among the n windows. With one window per document it is
the ordinary standard error of the mean; with m equal windows per document it is
sd(document means) / sqrt(G), whatever m is: more windows from the same documents do
not buy precision that more documents would. With G < 2 it is undefined (NaN). It counts
the documents as drawn from a population (the held-out loss generalises to new documents
like these), so it does not shrink below the spread of the documents' losses weighted by
their token shares, however many windows are scored. `eval_loss_stderr_windows` is the
smaller part that the window draw alone adds given these validation documents (what
another `eval_seed` changes): exact for a simple random sample of n of M windows,
sqrt((1 - n/M) s^2 / n) with s^2 the variance of the window losses (0 when n = M).
`EvalSet.by_document` gives, per document, the target tokens scored and the sum of their
losses (a window's T targets count for its document, the clustering unit), from which
the noise model resamples documents; sum(loss_sum) / sum(tokens) is the eval loss.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from scaling.data.order import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
EVAL_ESTIMAND = "per_token"  # what eval_loss estimates (module doc)


def window_documents(doc_tokens: np.ndarray, n_windows: int, seq_len: int) -> np.ndarray:
    """Document index of each stream window: the document holding its first target."""
    ends = np.cumsum(np.asarray(doc_tokens, dtype=np.int64))
    first_target = np.arange(n_windows, dtype=np.int64) * seq_len + 1
    return np.searchsorted(ends, first_target, side="right").astype(np.int64)


def hashed_order(n: int, eval_seed: int = 0) -> np.ndarray:
    """The n window indices in eval order: sorted by a splitmix64 hash of (index,
    eval_seed), so any prefix is a uniform random sample of the windows (module doc)."""
    if not 0 <= int(eval_seed) < 2 ** 63:
        raise ValueError(f"eval_seed = {eval_seed}: must be in [0, 2**63)")
    with np.errstate(over="ignore"):
        salt = mix64(np.array([int(eval_seed)], dtype=np.uint64) * _GOLDEN
                     + np.uint64(0x5CA1AB1E))[0]
        keys = mix64(np.arange(n, dtype=np.uint64) * _GOLDEN + salt)
    return np.argsort(keys, kind="stable").astype(np.int64)


def eval_set_id(ident: dict, n_windows: int) -> str:
    """16 hex digits naming an eval set: a hash of `ident` (token fingerprint, tokenizer,
    seq_len, eval_seed) and the number of windows."""
    text = json.dumps({**ident, "n_windows": int(n_windows), "order": "hashed-v1"},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
                 seq_len: int, ident: dict | None = None, population: int | None = None):
        self._val = val_tokens
        # M: the validation windows the set is sampled from (default: the set is all of them)
        self.population = int(len(starts) if population is None else population)
        self.ident = dict(ident or {"seq_len": int(seq_len)})  # what set_id hashes
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
    def set_id(self) -> str:
        """Names this set: the same id means the same windows (module doc)."""
        return eval_set_id(self.ident, self.n_windows)

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
        """The first k windows: the eval set of k windows, again a uniform sample."""
        if not 1 <= k <= self.n_windows:
            raise ValueError(f"prefix({k}): need 1 <= k <= n_windows = {self.n_windows}")
        return EvalSet(self._val, self.starts[:k], self.documents[:k], self.seq_len,
                       self.ident, self.population)

    def summarize(self, window_losses: np.ndarray, weights: np.ndarray | None = None,
                  by_document: bool = False) -> dict:
        """Mean loss (token-weighted = window mean), its cluster-robust stderr, sizes, the
        estimand and the set's id; with `by_document`, also `eval_by_document`.

        `weights`: tokens scored per window when windows score different numbers of
        tokens (the masked-LM eval, scaling.data.masking); the mean is then weighted by them."""
        losses = np.asarray(window_losses, dtype=np.float64).reshape(-1)
        if losses.size != self.n_windows:
            raise ValueError(f"summarize: got {losses.size} window losses for "
                             f"{self.n_windows} windows")
        w = np.ones_like(losses) if weights is None else np.asarray(weights, np.float64)
        out = {
            "eval_loss": float(losses.mean() if weights is None
                               else np.sum(w * losses) / np.sum(w)),
            "eval_loss_stderr": cluster_robust_stderr(losses, self.documents, w),
            "eval_loss_stderr_windows": self.window_draw_stderr(losses),
            "eval_tokens": self.tokens,
            "eval_documents": self.n_documents,
            "eval_windows": self.n_windows,
            "eval_estimand": EVAL_ESTIMAND,
            "eval_set_id": self.set_id,
        }
        if by_document:
            tokens = np.full(losses.shape, float(self.seq_len)) if weights is None else w
            out["eval_by_document"] = self.by_document(losses, tokens)
        return out

    def window_draw_stderr(self, window_losses: np.ndarray) -> float:
        """The standard error from which windows were drawn, the documents given: the
        finite-population SRS formula of the module doc (NaN with fewer than 2 windows)."""
        losses = np.asarray(window_losses, dtype=np.float64).reshape(-1)
        n = losses.size
        if n < 2:
            return float("nan")
        fpc = max(0.0, 1.0 - n / max(self.population, n))
        return float(np.sqrt(fpc * losses.var(ddof=1) / n))

    def by_document(self, window_losses: np.ndarray,
                    tokens: np.ndarray) -> dict[str, list]:
        """{"doc", "tokens", "loss_sum"}: for each document with windows in the set (its
        index in the validation stream, ascending), the target tokens scored in its
        windows and the sum of their losses in nats (`tokens` per window times the
        window's mean loss). sum(loss_sum) / sum(tokens) is the eval loss."""
        losses = np.asarray(window_losses, dtype=np.float64).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.float64).reshape(-1)
        docs, inverse = np.unique(self.documents, return_inverse=True)
        n_tok = np.bincount(inverse, weights=tokens, minlength=docs.size)
        loss_sum = np.bincount(inverse, weights=tokens * losses, minlength=docs.size)
        return {"doc": [int(d) for d in docs], "tokens": [int(round(t)) for t in n_tok],
                "loss_sum": [float(x) for x in loss_sum]}

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
                   n_windows: int, eval_seed: int = 0, ident: dict | None = None) -> EvalSet:
    """The first `n_windows` windows (capped at all of them) in the hashed order of
    `eval_seed`. `ident`: what names the corpus and tokenizer in `set_id` (the token
    fingerprint and the tokenizer's name); seq_len and eval_seed are added to it."""
    total = max(0, (len(val_tokens) - 1) // seq_len)
    docs = window_documents(doc_tokens, total, seq_len)
    order = hashed_order(total, eval_seed)[:min(int(n_windows), total)]
    ident = {**(ident or {}), "seq_len": int(seq_len), "eval_seed": int(eval_seed)}
    return EvalSet(val_tokens, order * seq_len, docs[order], seq_len, ident, total)
