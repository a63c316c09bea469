"""n-gram baseline: interpolated modified Kneser-Ney, scored on the runs' own eval windows.

What data alone gives: an order-K model counted on the same training tokens as a config's
runs (the tokens its windows are cut from: `TokenData.train[:unique_tokens + 1]`), scored
on exactly the fixed eval windows of `TokenData.eval_set` that the runs' final eval uses,
over the same next-token targets, in nats per token, with the same cluster-robust stderr
(`EvalSet.summarize`). `python run_sweep.py ngram CONFIG --order K` writes a run-like
folder (`result.json` with arch "ngram") that the analysis draws as a reference line.

Model (Chen & Goodman 1998, "modified" KN with three discounts per order). For a context
h of n-1 tokens, h' = h without its first token, and counts c (see below):

    p_n(w | h) = max(c(hw) - D(c(hw)), 0) / c(h.)  +  gamma(h) p_{n-1}(w | h')
    gamma(h)   = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / c(h.)

with c(h.) = sum_w c(hw), Nk(h.) the number of w with c(hw) = k (N3+: >= 3), and
p_n(w | h) = p_{n-1}(w | h') when c(h.) = 0 (context never seen). The recursion ends in
the uniform distribution over the vocabulary (p_0 = 1/V), so a token never seen in
training keeps a nonzero probability. At the highest order c is the raw count; below it,
the continuation count N1+(. hw) = the number of distinct tokens seen before hw. The
discounts of each order and count kind come from its counts of counts n_k:
Y = n1/(n1 + 2 n2), D_k = k - (k+1) Y n_{k+1}/n_k (k = 1, 2, 3), each clipped to
[0.01, k] (a count of counts that is zero, possible on a tiny corpus only, gives k/2).
Every p_n(. | h) sums to 1 over the vocabulary (tests/test_ngram.py).

Context. A target at position t of a window (0-based, t = 0..T-1) is predicted from the
window's own tokens before it, as the transformer sees them: min(t + 1, K - 1) tokens.
A context shorter than K - 1 (the first tokens of a window) cannot be extended to the
left, so it is scored by the order-(t + 2) model with raw counts at its top, as an
n-gram model treats a context that starts at a sentence start. The per-position loss
therefore shows the same early-token handicap as the networks' (Kaplan et al. 2020,
Fig. 7 right).

Counting. n-grams get exact integer ids order by order, with no hashing and so no
collisions: the id of an n-gram is the rank of (id of its first n-1 tokens) * V + last
token among the distinct such keys (np.unique over the whole token array), so any order
and any vocabulary fit in int64. Eval n-grams are looked up by binary search.

N. An n-gram model's "size" is the number of distinct n-grams it stores, orders 1..K
(result.json: "N", with "N_by_order"); it is no parameter count comparable with a
network's, and the figures draw the n-gram as a horizontal line, not a point on L(N).
D is the number of training targets counted (unique_tokens); C is None (no training
FLOPs).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import ConfigError

MIN_DISCOUNT = 0.01
NGRAM_SUBDIR = "ngram"  # a sweep's n-gram results: <sweep>/ngram/order<K>/result.json


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query in the sorted `keys`, -1 where absent (negative queries too)."""
    idx = np.searchsorted(keys, query)
    idx_c = np.minimum(idx, max(len(keys) - 1, 0))
    found = (query >= 0) & (idx < len(keys))
    if len(keys):
        found &= keys[idx_c] == query
    return np.where(found, idx_c, -1)


def modified_kn_discounts(counts: np.ndarray) -> np.ndarray:
    """(D1, D2, D3+) from the counts of counts n1..n4 of `counts` (module docstring)."""
    c = np.asarray(counts)
    n = [int(np.sum(c == k)) for k in (1, 2, 3, 4)]
    y = n[0] / (n[0] + 2 * n[1]) if n[0] + 2 * n[1] > 0 else 0.5
    out = []
    for k in (1, 2, 3):
        d = k - (k + 1) * y * n[k] / n[k - 1] if n[k - 1] > 0 else k / 2
        out.append(min(max(d, MIN_DISCOUNT), float(k)))
    return np.array(out, dtype=np.float64)


@dataclass
class _Table:
    """One count kind (raw or continuation) of one order: per type and per context."""

    counts: np.ndarray  # float64 [types]
    discounts: np.ndarray  # (D1, D2, D3+)
    ctx_total: np.ndarray  # float64 [contexts]: c(h.)
    ctx_gamma: np.ndarray  # float64 [contexts]: D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)

    @classmethod
    def build(cls, counts: np.ndarray, prefix: np.ndarray, n_ctx: int,
              discounts: np.ndarray | None) -> "_Table":
        counts = np.asarray(counts, dtype=np.float64)
        d = modified_kn_discounts(counts) if discounts is None else np.asarray(discounts, float)
        total = np.bincount(prefix, weights=counts, minlength=n_ctx)
        mass = np.select([counts == 1, counts == 2, counts >= 3], d, 0.0)
        return cls(counts, d, total, np.bincount(prefix, weights=mass, minlength=n_ctx))

    def prob(self, ctx: np.ndarray, gram: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p(w | h) for contexts `ctx` and n-grams `gram` (ids, -1 = unseen), given the
        lower-order probabilities `lower`."""
        seen = ctx >= 0
        total = np.where(seen, self.ctx_total[np.maximum(ctx, 0)], 0.0)
        gamma = np.where(seen, self.ctx_gamma[np.maximum(ctx, 0)], 0.0)
        c = np.where(gram >= 0, self.counts[np.maximum(gram, 0)], 0.0)
        disc = np.select([c == 1, c == 2, c >= 3], self.discounts, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (np.maximum(c - disc, 0.0) + gamma * lower) / total
        return np.where(total > 0, p, lower)


class KneserNey:
    """Interpolated modified Kneser-Ney of order `order` counted on `tokens`.

    `discounts`: None (estimated per order and kind, module docstring) or fixed (D1, D2,
    D3+) for every order and kind (for hand-checked tests)."""

    def __init__(self, tokens: np.ndarray, order: int, vocab_size: int,
                 discounts=None):
        if int(order) < 1:
            raise ValueError(f"order = {order}: need >= 1")
        tok = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tok.size < order:
            raise ValueError(f"{tok.size} training tokens: fewer than the order {order}")
        if tok.min() < 0 or tok.max() >= vocab_size:
            raise ValueError(f"tokens outside [0, vocab_size = {vocab_size})")
        self.order, self.V = int(order), int(vocab_size)
        self.n_tokens = int(tok.size)
        K, V, M = self.order, self.V, tok.size
        self.keys: list[np.ndarray] = []  # per order n (index n-1): sorted keys of its types
        prefix: list[np.ndarray] = []
        suffix: list[np.ndarray] = []
        raw: list[np.ndarray] = []
        ids = None  # ids of the (n-1)-grams ending at each position (aligned to tokens)
        for n in range(1, K + 1):
            if n == 1:
                key = tok
            else:  # n-grams end at positions n-1 .. M-1; prefix = (n-1)-gram ending one before
                key = ids[n - 2:M - 1] * V + tok[n - 1:]
            keys, first, inv, cnt = np.unique(key, return_index=True, return_inverse=True,
                                              return_counts=True)
            self.keys.append(keys)
            raw.append(cnt)
            if n == 1:
                prefix.append(np.zeros(len(keys), np.int64))
                suffix.append(np.zeros(len(keys), np.int64))
            else:
                prefix.append(keys // V)
                suffix.append(ids[first + n - 1])  # the (n-1)-gram of its last n-1 tokens
            new_ids = np.full(M, -1, np.int64)
            new_ids[n - 1:] = inv.reshape(-1)
            ids = new_ids
        self.N_by_order = [int(len(k)) for k in self.keys]
        n_ctx = [1] + self.N_by_order[:-1]
        # continuation counts of order n: distinct left extensions, from order n+1's suffixes
        cont = [np.bincount(suffix[n], minlength=self.N_by_order[n - 1]) for n in range(1, K)]
        self.raw_tables = [_Table.build(raw[n], prefix[n], n_ctx[n], discounts)
                           for n in range(K)]
        self.cont_tables = [_Table.build(cont[n], prefix[n], n_ctx[n], discounts)
                            for n in range(K - 1)]

    @property
    def n_grams(self) -> int:
        """Distinct n-grams stored, orders 1..K (this model's N)."""
        return int(sum(self.N_by_order))

    def _ids(self, W: np.ndarray) -> list[np.ndarray]:
        """ids[n-1][q, j]: id of the n-gram of W ending at column j (-1: unseen or j < n-1)."""
        out = []
        prev = None
        for n in range(1, self.order + 1):
            cur = np.full(W.shape, -1, np.int64)
            if n == 1:
                cur[:] = _lookup(self.keys[0], W)
            elif W.shape[1] >= n:
                p = prev[:, :-1][:, n - 2:]  # (n-1)-grams ending at columns n-2 .. L-2
                q = np.where(p >= 0, p * self.V + W[:, n - 1:], -1)
                cur[:, n - 1:] = _lookup(self.keys[n - 1], q)
            out.append(cur)
            prev = cur
        return out

    def log_probs(self, W: np.ndarray) -> np.ndarray:
        """float64 [Q, L]: log p(W[:, j] | W[:, max(0, j-K+1):j]) for every column j; column
        j uses the order-min(j+1, K) model (raw counts at its top, continuation below)."""
        W = np.asarray(W, dtype=np.int64)
        if W.ndim != 2 or W.size == 0:
            raise ValueError(f"log_probs: need a non-empty [Q, L] token array, got {W.shape}")
        if W.min() < 0 or W.max() >= self.V:
            raise ValueError(f"log_probs: tokens outside [0, {self.V})")
        ids = self._ids(W)
        Q, L = W.shape
        top = np.minimum(np.arange(L) + 1, self.order)  # per column
        out = np.empty((Q, L), np.float64)
        lower = np.full((Q, L), 1.0 / self.V)  # continuation distribution of the order below
        for n in range(1, self.order + 1):
            ctx = np.zeros((Q, L), np.int64) if n == 1 else np.full((Q, L), -1, np.int64)
            if n > 1:
                ctx[:, 1:] = ids[n - 2][:, :-1]
            gram = ids[n - 1]
            cols = top == n
            if cols.any():
                out[:, cols] = self.raw_tables[n - 1].prob(ctx[:, cols], gram[:, cols],
                                                           lower[:, cols])
            if n < self.order:
                lower = self.cont_tables[n - 1].prob(ctx, gram, lower)
        return np.log(out)

    def distribution(self, context) -> np.ndarray:
        """p(. | context) over the vocabulary, from its last min(len, K-1) tokens."""
        ctx = np.asarray(context, dtype=np.int64).reshape(-1)[-(self.order - 1):] \
            if self.order > 1 else np.zeros(0, np.int64)
        W = np.concatenate([np.tile(ctx, (self.V, 1)), np.arange(self.V)[:, None]], axis=1)
        return np.exp(self.log_probs(W)[:, -1])

    def window_losses(self, windows_WxT1: np.ndarray) -> np.ndarray:
        """float64 [W, T]: -log p of targets windows[:, 1:], each from its window's tokens
        before it (columns 0..t), as the networks are scored."""
        return -self.log_probs(windows_WxT1)[:, 1:]


def eval_windows(eval_set, chunk: int = 2048):
    """The eval set's windows in order, as int arrays of at most `chunk` rows."""
    for i in range(eval_set.n_batches(chunk)):
        batch, weights = eval_set.batch(i, chunk)
        yield batch[weights > 0]


def default_run_dir(spec, order: int) -> Path:
    """<sweeps>/<name>/ngram/order<K> for a sweep spec, runs/<name>-ngram<K> for a config."""
    if "sweep" in spec.raw:
        return Path("sweeps") / spec.name / NGRAM_SUBDIR / f"order{order}"
    return Path("runs") / f"{spec.name}-ngram{order}"


def base_config(spec):
    """The one data setup of a spec's points (corpus, tokenizer, seq_len, eval tokens).

    A sweep whose points differ in any of these has no single n-gram baseline: refused."""
    cfgs = [p.config for p in spec.points]
    if not cfgs:
        raise ConfigError(f"{spec.path}: no points")
    key = lambda c: (c.data, c.model.seq_len, c.model.vocab_size, c.train.eval_tokens)  # noqa: E731
    if len({repr(key(c)) for c in cfgs}) > 1:
        raise ConfigError(f"{spec.path}: the points differ in [data], model.seq_len, "
                          "model.vocab_size or train.eval_tokens; an n-gram baseline needs one "
                          "corpus and eval set (give a run config instead)")
    return cfgs[0]


def run_ngram(cfg, order: int, run_dir: str | Path) -> dict:
    """Count, score the final eval set, write `run_dir/result.json`; return the result."""
    from scaling.data.dataset import load_corpus
    from scaling.train.record import git_commit
    from scaling.runs.runfiles import atomic_write_text

    if int(order) < 1:
        raise ConfigError(f"--order = {order}: expected an integer >= 1")
    if cfg.data.objective != "next_token":
        raise ConfigError(f"data.objective = {cfg.data.objective!r}: the n-gram baseline scores "
                          "next-token prediction only")
    t0 = time.perf_counter()
    T = cfg.model.seq_len
    data = load_corpus(cfg.data, T)
    if data.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size = {cfg.model.vocab_size} is smaller than the "
                          f"tokenizer's {data.vocab_size}")
    train = np.asarray(data.train[:data.unique_tokens + 1])
    model = KneserNey(train, order, data.vocab_size)
    t_count = time.perf_counter() - t0
    es = data.eval_set(max(1, cfg.train.eval_tokens // T), cfg.data.eval_seed)
    losses = np.concatenate([model.window_losses(w) for w in eval_windows(es)])
    summary = es.summarize(losses.mean(axis=1), by_document=True)  # + eval_by_document
    result = {
        "status": "done", "arch": "ngram", "name": f"{cfg.name}-ngram{order}",
        "order": int(order), "smoothing": "interpolated modified Kneser-Ney",
        "N": model.n_grams, "N_by_order": model.N_by_order,
        "N_meaning": "distinct n-grams stored, orders 1..K (not a parameter count)",
        "D": int(data.unique_tokens), "C": None,
        "final_eval_loss": summary["eval_loss"], **summary,
        **es.summarize_positions(losses),
        "discounts_raw": [t.discounts.tolist() for t in model.raw_tables],
        "discounts_continuation": [t.discounts.tolist() for t in model.cont_tables],
        "seq_len": T, "vocab_size": data.vocab_size, "eval_seed": cfg.data.eval_seed,
        "corpus_fingerprint": data.fingerprint, "data": data.describe(),
        "count_time_s": t_count, "wall_time_s": time.perf_counter() - t0,
        "python_version": platform.python_version(), "git_commit": git_commit(),
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(
        {**cfg.to_dict(), "ngram": {"order": int(order)}}, indent=1))
    atomic_write_text(run_dir / "result.json", json.dumps(
        result, indent=1, default=lambda o: None if isinstance(o, float) and not math.isfinite(o) else o))
    return result
