"""The entry the training loop uses: `load_corpus(data_cfg, seq_len) -> TokenData`, and batches.

The flow: read the corpus into documents (`scaling.data.corpora`), hold out groups of
documents for validation (`scaling.data.heldout`), drop near-duplicates across the split
(`scaling.data.dedup`; `read_corpus` does these three), tokenize the two streams once
into the token cache (`scaling.data.cache`), or read a pre-tokenized corpus
(`scaling.data.shards`), and cut batches and the eval set from them (`TokenData`).

Batches. The training tokens used (the whole train stream, or its first
`max_unique_tokens + 1` tokens) are cut into windows of seq_len + 1 tokens with stride
seq_len (neighbours share one token), so every next-token target appears in exactly
one window: n_windows = (n_used - 1) // seq_len and the unique tokens D = n_windows *
seq_len (`max_unique_tokens` rounded down to a multiple of seq_len). Global sequence
p = step * batch_size + row lies in epoch p // n_windows and reads window
perm(seed, epoch)[p % n_windows]; perm is an argsort of a splitmix64 hash
(`scaling.data.order.window_permutation`), so it is independent of the numpy version.
Each epoch visits every window once; tokens seen = steps * batch_size * seq_len exactly.
Evaluation uses `TokenData.eval_set(n, eval_seed)`: fixed validation windows, a uniform
sample of all of them (so the eval loss estimates the per-token held-out loss), with a
cluster-robust standard error (`scaling.data.evalset`).

Tasks. With `data.tasks` (e.g. { addition = 0.1 }), some rows of each batch are sequences
of synthetic task instances (`scaling.data.tasks.TaskMix`: task t has exactly floor(S B f_t)
of the first S steps' rows, at hashed positions); the corpus stream fills the other rows
in its own order (task rows consume no corpus window, so an epoch still visits every
window once). Without `data.tasks` batches are exactly as above.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from scaling.data.cache import (build_token_cache, corpus_cache_key, load_token_file,
                                resolve_cache_dir)
from scaling.data.corpora import Corpus, DataError, read_documents
from scaling.data.dedup import remove_near_duplicates
from scaling.data.evalset import EvalSet, build_eval_set
from scaling.data.order import window_permutation
from scaling.data.shards import load_token_shards
from scaling.data.tasks import TaskMix, eval_width
from scaling.data.tokenizer import Tokenizer, load_or_train_bpe, make_tokenizer

if TYPE_CHECKING:
    from scaling.config import DataConfig

log = logging.getLogger(__name__)


def read_corpus(data_cfg: "DataConfig") -> Corpus:
    """Read, split and de-duplicate the corpus `data_cfg.corpus` (`scaling.data.corpora`,
    `scaling.data.heldout`, `scaling.data.dedup`)."""
    corpus = read_documents(data_cfg)
    remove_near_duplicates(corpus, data_cfg)
    return corpus


def corpus_tokenizer(data_cfg: "DataConfig", corpus: Corpus | None = None) -> Tokenizer:
    """The tokenizer `data_cfg` asks for; a BPE is trained on (or loaded for) the training
    documents of `corpus` (read here when not given), cached under the cache folder."""
    if data_cfg.tokenizer != "bpe":
        return make_tokenizer(data_cfg)
    if corpus is None:
        corpus = read_corpus(data_cfg)
    return load_or_train_bpe(corpus.train_texts(), corpus.train_sha256,
                             data_cfg.bpe_vocab_size, resolve_cache_dir(data_cfg))


def load_corpus(data_cfg: "DataConfig", seq_len: int, *, verify: bool = True) -> "TokenData":
    """Tokenize `data_cfg.corpus` once into the cache and return it ready for batches.

    `verify`: recompute the token fingerprint of a cached file before trusting it."""
    if seq_len < 1:
        raise DataError(f"model.seq_len = {seq_len}: must be > 0")
    if data_cfg.is_token_shards:  # already tokens: split, ordered and cached by scaling.data.shards
        tokenizer, tokens, meta = load_token_shards(data_cfg, verify=verify)
        return TokenData(tokenizer, tokens, meta, seq_len, data_cfg.max_unique_tokens)
    corpus = read_corpus(data_cfg)
    cache = resolve_cache_dir(data_cfg)
    tokenizer = corpus_tokenizer(data_cfg, corpus)
    key = corpus_cache_key(corpus, tokenizer, data_cfg.val_fraction)
    bin_path = cache / "tokens" / f"{key}.bin"
    meta_path = bin_path.with_suffix(".json")
    loaded = load_token_file(bin_path, meta_path, verify)
    if loaded is None:
        log.info("tokenizing %s with %s into %s", data_cfg.corpus, tokenizer.name, bin_path)
        build_token_cache(corpus, tokenizer, bin_path, meta_path, key)
        loaded = load_token_file(bin_path, meta_path, verify=False)
        if loaded is None:
            raise DataError(f"could not build the token cache {bin_path}")
    del corpus
    mm, meta = loaded
    meta = dict(meta, cache_file=str(bin_path))
    data = TokenData(tokenizer, mm, meta, seq_len, data_cfg.max_unique_tokens)
    if data_cfg.tasks:
        data.tasks = make_task_mix(data_cfg.tasks, tokenizer, seq_len)
    return data


def make_task_mix(tasks: dict[str, float], tokenizer: Tokenizer, seq_len: int) -> TaskMix:
    """The TaskMix of `data.tasks`; DataError if their evaluation does not fit model.seq_len."""
    need = eval_width(tokenizer, list(tasks))
    if need - 1 > seq_len:
        raise DataError(f"data.tasks = {tasks}: evaluation instances take up to {need - 1} "
                        f"input tokens with {tokenizer.name}; model.seq_len = {seq_len} "
                        f"must be >= {need - 1}")
    return TaskMix(tasks, tokenizer, seq_len)


class TokenData:
    """Tokenized train/validation streams and the batches cut from them."""

    def __init__(self, tokenizer: Tokenizer, tokens: np.ndarray, meta: dict, seq_len: int,
                 max_unique_tokens: int = 0):
        self.tokenizer = tokenizer
        self.meta = meta
        self.seq_len = int(seq_len)
        self.max_unique_tokens = int(max_unique_tokens)
        n_train = int(meta["n_train_tokens"])
        self.train = tokens[:n_train]
        self.val = tokens[n_train:]
        self.fingerprint: str = meta["fingerprint"]
        T = self.seq_len
        corpus = meta.get("corpus", "?")
        if self.max_unique_tokens:
            if self.max_unique_tokens + 1 > n_train:
                raise DataError(
                    f"data.max_unique_tokens = {self.max_unique_tokens} needs "
                    f"{self.max_unique_tokens + 1} training tokens but data.corpus = "
                    f"{corpus!r} has {n_train}; lower it or use a larger corpus"
                )
            self._used = self.train[:self.max_unique_tokens + 1]
        else:
            self._used = self.train
        self.n_windows = max(0, (len(self._used) - 1) // T)
        if self.n_windows < 1:
            raise DataError(
                f"data.corpus = {corpus!r} gives {len(self._used)} training tokens"
                + (f" (data.max_unique_tokens = {self.max_unique_tokens})"
                   if self.max_unique_tokens else "")
                + f", too few for one sequence of model.seq_len = {T} (+1); use a larger "
                "corpus, a larger data.max_unique_tokens or a smaller model.seq_len"
            )
        self.n_val_windows = max(0, (len(self.val) - 1) // T)
        if self.n_val_windows < 1:
            raise DataError(
                f"data.corpus = {corpus!r} gives {len(self.val)} validation tokens, too few "
                f"for one sequence of model.seq_len = {T} (+1); raise data.val_fraction, "
                "use a larger corpus or a smaller model.seq_len"
            )
        doc_tokens = meta.get("val_doc_tokens")
        # a hand-built TokenData without document lengths: the stream is one document
        self.val_doc_tokens = np.asarray(doc_tokens if doc_tokens is not None
                                         else [len(self.val)], dtype=np.int64)
        if int(self.val_doc_tokens.sum()) != len(self.val):
            raise DataError(f"token cache of {corpus!r}: val_doc_tokens sum to "
                            f"{int(self.val_doc_tokens.sum())}, the stream has {len(self.val)}")
        self._eval_sets: dict[tuple[int, int], EvalSet] = {}
        self._offsets = np.arange(T + 1, dtype=np.int64)
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # batches may be prefetched from another thread
        self.tasks: TaskMix | None = None  # data.tasks rows mixed into batches (load_corpus)

    # ---- sizes ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def n_train_tokens(self) -> int:
        return len(self.train)

    @property
    def n_val_tokens(self) -> int:
        return len(self.val)

    @property
    def unique_tokens(self) -> int:
        """D: distinct next-token targets one epoch trains on (n_windows * seq_len)."""
        return self.n_windows * self.seq_len

    # ---- batches ----------------------------------------------------------------------

    def _perm(self, seed: int, epoch: int) -> np.ndarray:
        key = (int(seed), int(epoch))
        with self._lock:
            perm = self._perms.get(key)
            if perm is None:
                perm = window_permutation(self.n_windows, seed, epoch)
                self._perms[key] = perm
                while len(self._perms) > 4:
                    self._perms.popitem(last=False)
            else:
                self._perms.move_to_end(key)
            return perm

    def train_batch(self, step: int, batch_size: int, seed: int,
                    shard: tuple[int, int] = (0, 1)) -> np.ndarray:
        """int32 [batch_size // count, seq_len + 1]: rows index*B/count ... of batch `step`.

        inputs = batch[:, :-1], targets = batch[:, 1:]. A pure function of the arguments
        (and the corpus); shards of one step concatenate to the unsharded batch."""
        index, count = (int(shard[0]), int(shard[1]))
        if step < 0 or batch_size < 1:
            raise ValueError(f"step = {step}, batch_size = {batch_size}: need step >= 0, "
                             "batch_size >= 1")
        if count < 1 or not 0 <= index < count or batch_size % count:
            raise ValueError(f"shard = {shard}: need 0 <= index < count and count dividing "
                             f"batch_size = {batch_size}")
        rows = batch_size // count
        if self.tasks is not None:
            return self._mixed_batch(int(step), batch_size, seed, index, rows)
        p = int(step) * batch_size + index * rows + np.arange(rows, dtype=np.int64)
        return self._corpus_rows(p, seed)

    def _corpus_rows(self, p: np.ndarray, seed: int) -> np.ndarray:
        """int32 [len(p), seq_len + 1]: the windows of global corpus sequences p."""
        rows = len(p)
        epochs, w = np.divmod(p, self.n_windows)
        windows = np.empty(rows, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            windows[sel] = self._perm(seed, int(e))[w[sel]]
        idx = windows[:, None] * self.seq_len + self._offsets
        return np.asarray(self._used[idx], dtype=np.int32)

    def _mixed_batch(self, step: int, batch_size: int, seed: int, index: int,
                     rows: int) -> np.ndarray:
        """A batch with `data.tasks` rows in it (`scaling.data.tasks.TaskMix`): task rows at
        hashed positions, the corpus stream (not consumed by them) in the rest."""
        which, seq = self.tasks.layout(step, batch_size, seed)
        which, seq = which[index * rows:(index + 1) * rows], seq[index * rows:(index + 1) * rows]
        out = np.empty((rows, self.seq_len + 1), np.int32)
        corpus = which < 0
        if corpus.any():
            out[corpus] = self._corpus_rows(seq[corpus], seed)
        for r in np.flatnonzero(~corpus):
            out[r] = self.tasks.row(int(which[r]), int(seq[r]), seed)
        return out

    def eval_set(self, n_windows: int, eval_seed: int = 0) -> EvalSet:
        """The first `n_windows` evaluation windows in the hashed order of `eval_seed`
        (`data.eval_seed`): a uniform sample of the validation windows, estimating the
        per-token held-out loss (`scaling.data.evalset`); capped at `n_val_windows` (then every
        validation target is scored once). Cached per (n, seed); independent of batch size."""
        if int(n_windows) < 1:
            raise ValueError(f"eval_set({n_windows}): need n_windows >= 1")
        n = min(int(n_windows), self.n_val_windows)
        key = (n, int(eval_seed))
        with self._lock:
            es = self._eval_sets.get(key)
            if es is None:
                es = build_eval_set(self.val, self.val_doc_tokens, self.seq_len, n, int(eval_seed),
                                    ident={"fingerprint": self.fingerprint,
                                           "tokenizer": self.tokenizer.name})
                self._eval_sets[key] = es
            return es

    @property
    def n_val_documents(self) -> int:
        return int(self.val_doc_tokens.size)

    def position(self, step: int, batch_size: int) -> dict[str, Any]:
        """Where `step` steps of `batch_size` sequences leave the data order."""
        seqs = int(step) * int(batch_size)
        corpus = seqs if self.tasks is None else self.tasks.corpus_before(int(step), int(batch_size))
        return {
            "step": int(step),
            "sequences_seen": seqs,
            "tokens_seen": seqs * self.seq_len,
            "epoch": corpus // self.n_windows,
            "epochs": corpus / self.n_windows,
            "unique_tokens": min(corpus, self.n_windows) * self.seq_len,
            "n_windows": self.n_windows,
            **({} if self.tasks is None else {"task_sequences_seen": seqs - corpus}),
        }

    # ---- reporting --------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        m = self.meta
        return {
            "corpus": m.get("corpus"),
            "corpus_sha256": m.get("corpus_sha256"),
            "corpus_bytes": m.get("corpus_bytes"),
            "corpus_truncated": m.get("corpus_truncated"),
            "n_documents": m.get("n_documents"),
            "n_train_documents": m.get("n_train_documents"),
            "n_val_documents": m.get("n_val_documents"),
            "n_val_groups": m.get("n_val_groups"),
            "near_duplicate_pairs": m.get("near_duplicate_pairs"),
            "dropped_train_documents": m.get("dropped_train_documents"),
            "dropped_train_by_containment": m.get("dropped_train_by_containment"),
            "dropped_val_documents": m.get("dropped_val_documents"),
            "n_skipped_files": len(m.get("skipped_files", [])),
            "tokenizer": self.tokenizer.name,
            "tokenizer_file": str(getattr(self.tokenizer, "path", None) or "") or None,
            "vocab_size": self.vocab_size,
            "fingerprint": self.fingerprint,
            "n_train_tokens": self.n_train_tokens,
            "n_val_tokens": self.n_val_tokens,
            "bytes_per_token": (m["train_bytes"] / self.n_train_tokens  # None: token shards
                                if self.n_train_tokens and m.get("train_bytes") else None),
            "seq_len": self.seq_len,
            "max_unique_tokens": self.max_unique_tokens,
            "unique_tokens": self.unique_tokens,
            "n_windows": self.n_windows,
            "n_val_windows": self.n_val_windows,
            "cache_file": m.get("cache_file"),
        }

    def __repr__(self) -> str:
        return (f"TokenData({self.meta.get('corpus')!r}, {self.tokenizer.name}, "
                f"train={self.n_train_tokens}, val={self.n_val_tokens}, "
                f"seq_len={self.seq_len}, fingerprint={self.fingerprint[:12]})")
