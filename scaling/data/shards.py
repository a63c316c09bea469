"""Pre-tokenized token shards: the llm.c / nanoGPT `.bin` format, read as a corpus.

`data.corpus = "tokens:PATH"`, where PATH is one `.bin` file, a folder (every `*.bin`
in it, sorted by name) or a glob. Each shard is (llm.c `dev/data/data_common.py`,
`write_datafile`):

    header   256 little-endian int32: [0] magic, [1] version, [2] token count, rest 0
    tokens   `count` little-endian tokens right after the 1,024 header bytes

with (magic, version) = (20240520, 1) for uint16 tokens (GPT-2 shards) or
(20240801, 7) for uint32 tokens (Llama-3 shards). The file must hold exactly the
header plus `count` tokens. The vocabulary is stated in the config
(`data.tokens_vocab_size`); a token >= it is an error before training.

Documents. llm.c writes the document delimiter (`<|endoftext|>`, `data.tokens_eot_id`)
*before* each document, so a document is a delimiter and the tokens up to the next one;
tokens before a shard's first delimiter (a document cut at a shard boundary) are a
document of their own. Documents are named `<shard file>#<k>`.

Split, order and cache follow the rules for every corpus (`scaling.data.heldout`,
`scaling.data.order`, `scaling.data.cache`). The group (the unit of the validation
split) is the shard file, so whole shards are held out by the hash of their name, with
the same fallback (at least one shard held out, at least one trained on); a corpus of
one shard has one group per document instead (as a .jsonl file's rows). Within each
split documents are ordered by the hash of their name, and the two streams (train, then
validation) are written to the token cache, keyed by the shards' names, sizes and
modification times, the vocabulary, the delimiter and `val_fraction`, and checked by the
sha256 fingerprint of the tokens. Shards are taken as prepared: there is no
near-duplicate pass (it works on text). `max_corpus_bytes` does not apply (it caps
text); `max_unique_tokens` does, as for every corpus.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from scaling.data.cache import FORMAT_VERSION, load_token_file, resolve_cache_dir, write_token_file
from scaling.data.corpora import DataError
from scaling.data.heldout import split_documents
from scaling.data.order import ORDER_SALT, name_hash
from scaling.runs.runfiles import atomic_write_text

if TYPE_CHECKING:
    from scaling.config import DataConfig

PREFIX = "tokens:"
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
# (magic, version) -> token dtype, as llm.c's dev/data/data_common.py writes them
FORMATS: dict[tuple[int, int], np.dtype] = {
    (20240520, 1): np.dtype("<u2"),  # GPT-2 tokenizer shards
    (20240801, 7): np.dtype("<u4"),  # Llama-3 tokenizer shards
}
SHARDS_FORMAT = 1  # bump when the reading rules change (invalidates the cache)
_CHECK_CHUNK = 1 << 24  # tokens checked against the vocabulary per pass


class ShardTokenizer:
    """The stated vocabulary of a token-shard corpus. It has no text: `encode` reads
    whitespace-separated ids and `decode` writes them, so sampling still works."""

    def __init__(self, vocab_size: int, eot_id: int):
        self.vocab_size, self.eot_id = int(vocab_size), int(eot_id)
        self.name = f"tokens{self.vocab_size}-eot{self.eot_id}"

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.array([int(t) for t in text.split()], dtype=np.int32)
        except ValueError:
            raise ValueError("a token-shard corpus has no text tokenizer: give token ids "
                             "separated by spaces") from None

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return " ".join(str(i) for i in np.asarray(ids).reshape(-1).tolist())

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}


@dataclass(frozen=True)
class Shard:
    path: Path
    dtype: np.dtype
    count: int

    def tokens(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=HEADER_BYTES,
                         shape=(self.count,))


def shard_paths(spec: str) -> list[Path]:
    """The .bin files of `data.corpus = "tokens:PATH"`: a file, a folder's *.bin, a glob."""
    raw = spec[len(PREFIX):]
    path = Path(raw).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix == ".bin" and p.is_file())
    elif path.is_file():
        found = [path]
    else:
        found = sorted(Path(p) for p in globlib.glob(str(path)) if Path(p).is_file())
    if not found:
        raise DataError(f"data.corpus = {spec!r}: no token shards found; allowed: 'tokens:' "
                     "followed by a .bin file, a folder of .bin files or a glob")
    return found


def read_header(path: Path, spec: str) -> Shard:
    """The shard's layout from its header; a clear error for anything malformed."""
    where = f"data.corpus = {spec!r}: {path}"
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"{where}: {size} bytes, shorter than the {HEADER_BYTES}-byte header "
                     "of a llm.c token shard")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    magic, version, count = (int(x) for x in header[:3])
    dtype = FORMATS.get((magic, version))
    if dtype is None:
        allowed = ", ".join(f"(magic {m}, version {v}: {d.name})" for (m, v), d in FORMATS.items())
        raise DataError(f"{where}: header magic {magic}, version {version} is not a llm.c token "
                     f"shard; allowed: {allowed}")
    if count < 0 or size != HEADER_BYTES + count * dtype.itemsize:
        raise DataError(f"{where}: the header says {count} {dtype.name} tokens "
                     f"({HEADER_BYTES + max(count, 0) * dtype.itemsize} bytes with the header) "
                     f"but the file has {size} bytes")
    return Shard(path, dtype, count)


def check_vocabulary(shard: Shard, vocab_size: int, spec: str) -> None:
    """Every token of the shard is below `data.tokens_vocab_size`."""
    tokens = shard.tokens()
    for start in range(0, shard.count, _CHECK_CHUNK):
        chunk = tokens[start:start + _CHECK_CHUNK]
        top = int(chunk.max())
        if top >= vocab_size:
            at = start + int(np.argmax(chunk >= vocab_size))
            raise DataError(f"data.corpus = {spec!r}: {shard.path} holds token {top} (first bad "
                         f"token at position {at}), not below data.tokens_vocab_size = "
                         f"{vocab_size}")


def document_bounds(tokens: np.ndarray, eot_id: int) -> np.ndarray:
    """Start offsets of the documents of a shard, plus its length at the end: a document
    starts at every delimiter, and at 0 when the shard does not begin with one."""
    starts = np.flatnonzero(tokens == eot_id)
    if len(tokens) and (not len(starts) or starts[0] != 0):
        starts = np.concatenate([[0], starts])
    return np.concatenate([starts, [len(tokens)]]).astype(np.int64)


def eot_id(data_cfg: "DataConfig") -> int:
    return data_cfg.tokens_eot_id if data_cfg.tokens_eot_id >= 0 else data_cfg.tokens_vocab_size - 1


@dataclass
class _Doc:
    shard: int
    start: int
    stop: int
    name: str
    group: str


def _documents(shards: list[Shard], eot: int) -> list[_Doc]:
    docs: list[_Doc] = []
    for i, sh in enumerate(shards):
        bounds = document_bounds(sh.tokens(), eot)
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            name = f"{sh.path.name}#{k}"
            docs.append(_Doc(i, int(a), int(b), name, sh.path.name if len(shards) > 1 else name))
    return docs


def _cache_key(shards: list[Shard], vocab: int, eot: int, val_fraction: float) -> str:
    ident = json.dumps({
        "format": SHARDS_FORMAT, "vocab": vocab, "eot": eot,
        "val_fraction": repr(float(val_fraction)),
        "shards": [(str(s.path.resolve()), s.path.stat().st_size, s.path.stat().st_mtime_ns)
                   for s in shards],
    }, sort_keys=True)
    return "tokens-" + hashlib.sha256(ident.encode()).hexdigest()[:32]


def load_token_shards(data_cfg: "DataConfig", *, verify: bool = True
                      ) -> tuple[ShardTokenizer, np.ndarray, dict]:
    """(tokenizer, tokens, meta) of a `tokens:` corpus, split, ordered and cached as the
    module says: what `scaling.data.dataset.load_corpus` makes its TokenData of."""
    spec, vocab, eot = data_cfg.corpus, data_cfg.tokens_vocab_size, eot_id(data_cfg)
    if len({s.name for s in shard_paths(spec)}) != len(shard_paths(spec)):
        raise DataError(f"data.corpus = {spec!r}: shard file names are not unique")
    shards = [read_header(p, spec) for p in shard_paths(spec)]
    dtype = np.dtype("<u2") if vocab <= 1 << 16 else np.dtype("<u4")
    key = _cache_key(shards, vocab, eot, data_cfg.val_fraction)
    bin_path = resolve_cache_dir(data_cfg) / "tokens" / f"{key}.bin"
    meta_path = bin_path.with_suffix(".json")
    loaded = load_token_file(bin_path, meta_path, verify)
    if loaded is None:
        for sh in shards:
            check_vocabulary(sh, vocab, spec)
        _build(shards, spec, vocab, eot, data_cfg.val_fraction, dtype, bin_path, meta_path,
               key, FORMAT_VERSION)
        loaded = load_token_file(bin_path, meta_path, verify=False)
        if loaded is None:
            raise DataError(f"could not build the token cache {bin_path}")
    mm, meta = loaded
    meta = dict(meta, cache_file=str(bin_path))
    return ShardTokenizer(vocab, eot), mm, meta


def _build(shards: list[Shard], spec: str, vocab: int, eot: int, val_fraction: float,
           dtype: np.dtype, bin_path: Path, meta_path: Path, key: str, fmt: int) -> None:
    t0 = time.perf_counter()
    docs = _documents(shards, eot)
    if not docs:
        raise DataError(f"data.corpus = {spec!r}: the shards hold no tokens")
    is_val = split_documents([d.group for d in docs], val_fraction)
    if not is_val.any():
        raise DataError(f"data.corpus = {spec!r} has {len(docs)} document(s) in one group: too "
                     "few to hold one out for validation; use more shards or documents")
    arrays = [sh.tokens() for sh in shards]
    counts: dict[str, dict[str, int]] = {}
    val_doc_tokens: list[int] = []

    def fill(f) -> int:
        nonlocal val_doc_tokens
        for split, val in (("train", False), ("val", True)):
            chosen = sorted((d for d, v in zip(docs, is_val) if bool(v) == val),
                            key=lambda d: name_hash(ORDER_SALT, d.name))
            lengths = _write_docs(f, chosen, arrays, dtype)
            counts[split] = {"tokens": int(sum(lengths)), "documents": len(chosen)}
            if val:
                val_doc_tokens = lengths
        return counts["train"]["tokens"]

    fingerprint = write_token_file(bin_path, dtype, fill)
    groups = {d.group for d in docs}
    val_groups = {d.group for d, v in zip(docs, is_val) if v}
    meta = {
        "format": fmt, "key": key, "corpus": spec, "corpus_sha256": None,
        "corpus_bytes": None, "corpus_truncated": False,
        "shards": [{"file": str(s.path), "tokens": s.count, "dtype": s.dtype.name} for s in shards],
        "n_documents": len(docs), "n_documents_kept": len(docs), "skipped_files": [],
        "tokenizer": ShardTokenizer(vocab, eot).name, "vocab_size": vocab, "eot_id": eot,
        "dtype": dtype.str,
        "n_train_tokens": counts["train"]["tokens"], "n_val_tokens": counts["val"]["tokens"],
        "n_train_documents": counts["train"]["documents"],
        "n_val_documents": counts["val"]["documents"],
        "train_bytes": None, "val_bytes": None,
        "n_val_groups": len(val_groups), "n_train_groups": len(groups - val_groups),
        "near_duplicate_pairs": 0, "dropped_train_documents": 0, "dropped_val_documents": 0,
        "val_doc_tokens": val_doc_tokens, "fingerprint": fingerprint,
        "build_seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))


def _write_docs(f, docs: Iterable[_Doc], arrays: list[np.ndarray], dtype: np.dtype) -> list[int]:
    """Write the documents' tokens in order (in chunks of about 4M tokens); their lengths."""
    lengths, parts, pending = [], [], 0
    for d in docs:
        parts.append(arrays[d.shard][d.start:d.stop])
        lengths.append(d.stop - d.start)
        pending += d.stop - d.start
        if pending >= 1 << 22:
            f.write(np.concatenate(parts).astype(dtype, copy=False).tobytes())
            parts, pending = [], 0
    if parts:
        f.write(np.concatenate(parts).astype(dtype, copy=False).tobytes())
    return lengths
