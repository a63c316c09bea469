"""The token cache: tokenized streams stored once per corpus and tokenizer, as a memmap.

The token streams (train then validation, uint16 when the vocabulary fits, else
uint32) live in `<cache>/tokens/<key>.bin` with `<key>.json` beside it, where the key
hashes the corpus content (sha256 over document names and bytes), the tokenizer's
exact identity, `val_fraction`, the dropped near-duplicates and the format version
(`corpus_cache_key`; `scaling.data.shards` keys its own). Both files are written to a
temp file and renamed, the .bin first (`write_token_file`). A cached pair is trusted
only when the .json parses, the .bin's size matches it and (by default) the sha256
fingerprint of the tokens matches (`load_token_file`); otherwise it is rebuilt
(`build_token_cache`). The .json also lists the token count of every validation
document (`val_doc_tokens`), from which eval windows get their documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

import numpy as np

from scaling.data.corpora import Corpus, document_chunks
from scaling.data.tokenizer import Tokenizer
from scaling.runs.runfiles import atomic_write_text
from scaling.runtime import cache_dir

if TYPE_CHECKING:
    from scaling.config import DataConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: group split, near-duplicate removal, hashed read order, val_doc_tokens
_ENCODE_CHUNK_BYTES = 4 << 20  # text tokenized and written per chunk
_HASH_CHUNK = 1 << 22  # tokens hashed per update


def resolve_cache_dir(data_cfg: "DataConfig") -> Path:
    """`data.cache_dir`, else $SCALINGLAB_CACHE, else ~/.cache/scalinglab (created)."""
    return cache_dir(data_cfg.cache_dir)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when the vocabulary fits, else uint32 (little-endian)."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def stream_fingerprint(train: np.ndarray, val: np.ndarray) -> str:
    """sha256 (hex) of the train and validation token streams, with their lengths."""
    dtype = np.dtype(train.dtype).newbyteorder("<")
    h = hashlib.sha256(f"scalinglab-tokens-v1|{dtype.str}|{len(train)}|{len(val)}|".encode())
    for arr in (train, val):
        for i in range(0, len(arr), _HASH_CHUNK):
            h.update(np.ascontiguousarray(arr[i:i + _HASH_CHUNK], dtype=dtype))
    return h.hexdigest()


def corpus_cache_key(corpus: Corpus, tokenizer: Tokenizer, val_fraction: float) -> str:
    """The cache key of a text corpus's token streams (module docstring)."""
    # the dropped documents are part of the streams' identity (a new near-duplicate rule
    # drops others from the same corpus)
    dropped = hashlib.sha256("\n".join(sorted(
        d.name for d, x in zip(corpus.documents, corpus.dropped) if x)).encode()).hexdigest()
    ident = json.dumps({"format": FORMAT_VERSION, "corpus": corpus.sha256,
                        "tokenizer": tokenizer.name, "val_fraction": repr(float(val_fraction)),
                        "dropped": dropped}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def load_token_file(bin_path: Path, meta_path: Path, verify: bool) -> tuple[np.memmap, dict] | None:
    """(tokens, meta) of a cached pair, or None when absent or not trusted (module docstring);
    `verify`: recompute the fingerprint."""
    if not (bin_path.exists() and meta_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        n = int(meta["n_train_tokens"]) + int(meta["n_val_tokens"])
        if meta.get("format") != FORMAT_VERSION or bin_path.stat().st_size != n * dtype.itemsize:
            raise ValueError("size or format mismatch")
        mm = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,))
        if verify:
            n_train = int(meta["n_train_tokens"])
            if stream_fingerprint(mm[:n_train], mm[n_train:]) != meta["fingerprint"]:
                raise ValueError("fingerprint mismatch")
        return mm, meta
    except Exception as e:  # anything odd: do not trust it, rebuild
        log.warning("token cache %s not trusted (%s); rebuilding", bin_path, e)
        return None


def write_token_file(bin_path: Path, dtype: np.dtype, fill: Callable[[BinaryIO], int]) -> str:
    """The token cache file, written safely: `fill(f)` writes the training then the
    validation tokens into an open temporary file beside `bin_path` and returns how many
    training tokens it wrote; the file is synced, fingerprinted (`stream_fingerprint`) and
    renamed over `bin_path`, or removed if anything fails. Returns the fingerprint."""
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=bin_path.parent, prefix=f".{bin_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            n_train = fill(f)
            f.flush()
            os.fsync(f.fileno())
        n = os.path.getsize(tmp) // np.dtype(dtype).itemsize
        mm = np.memmap(tmp, dtype=dtype, mode="r", shape=(n,))
        fingerprint = stream_fingerprint(mm[:n_train], mm[n_train:])
        del mm
        os.replace(tmp, bin_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return fingerprint


def build_token_cache(corpus: Corpus, tokenizer: Tokenizer, bin_path: Path, meta_path: Path,
                 key: str) -> None:
    """Tokenize the kept documents of `corpus` (train, then validation, in stream order)
    into `bin_path` and write its `meta_path`."""
    dtype = token_dtype(tokenizer.vocab_size)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    counts: dict[str, dict[str, int]] = {}
    doc_tokens: list[int] = []
    t0 = time.perf_counter()

    def fill(f) -> int:
        nonlocal doc_tokens
        for split, val in (("train", False), ("val", True)):
            docs = corpus.ordered(val)
            n_tok = n_bytes = 0
            lengths: list[int] = []
            for chunk in document_chunks(docs, _ENCODE_CHUNK_BYTES):
                texts = [d.text for d in chunk]
                n_bytes += sum(len(t.encode("utf-8")) for t in texts)
                parts = []
                for ids in tokenizer.encode_batch(texts):
                    parts += [ids.astype(dtype, copy=False), eot]
                    lengths.append(len(ids) + 1)
                arr = np.concatenate(parts)
                f.write(arr.tobytes())
                n_tok += len(arr)
            counts[split] = {"tokens": n_tok, "documents": len(docs), "bytes": n_bytes}
            if val:
                doc_tokens = lengths
        return counts["train"]["tokens"]

    fingerprint = write_token_file(bin_path, dtype, fill)
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "corpus": corpus.spec,
        "corpus_sha256": corpus.sha256,
        "corpus_bytes": corpus.n_bytes,
        "corpus_truncated": corpus.truncated,
        "n_documents": len(corpus.documents),
        "n_documents_kept": int((~corpus.dropped).sum()),
        "skipped_files": corpus.skipped,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.str,
        "n_train_tokens": counts["train"]["tokens"],
        "n_val_tokens": counts["val"]["tokens"],
        "n_train_documents": counts["train"]["documents"],
        "n_val_documents": counts["val"]["documents"],
        "train_bytes": counts["train"]["bytes"],
        "val_bytes": counts["val"]["bytes"],
        **corpus.split_summary(),
        "val_doc_tokens": doc_tokens,
        "fingerprint": fingerprint,
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
