"""Corpora -> held-out split -> token memmap cache -> batches, a pure function of (seed, step).

Corpora (`DataConfig.corpus`); a *document* is followed by the tokenizer's end-of-text id
in the token stream, and belongs to a *group*, the unit of the validation split:

- "stdlib": the `.py` files under the running Python's standard-library folder
  (`sysconfig.get_paths()["stdlib"]`), test suites included (they are ordinary Python
  and more than half the text), `site-packages`/`dist-packages` and `__pycache__`
  excluded. One document per file. Group: the top-level package (`encodings/...`,
  `idlelib/...` are one group each), a top-level module alone; inside `test/` (one
  folder holding half the text, each file testing a different module) the second path
  part (`test/test_email/...` one group, `test/test_os.py` alone). Its identity depends
  on the Python build; the corpus hash and token fingerprint record that.
- a folder: every file below it, recursively, whose extension is text-like
  (`TEXT_EXTENSIONS`, or none), hidden files and folders skipped. One document per file;
  group: the file's folder (a file at the top level alone). `.jsonl` files in it are read
  as rows, one document and one group per row.
- a `.jsonl` file: one document (and group) per line, the string in `data.text_field`.
- any other file: UTF-8 text, cut at line ends into documents of about
  `TEXT_FILE_BLOCK_BYTES` bytes (named `<file>#<k>`), one group each.
- "tokens:<path>": pre-tokenized llm.c/nanoGPT `.bin` shards (`scaling.data.shards`): documents
  start at the delimiter id, group = shard file, then the split, order and cache below.
- "hf:<name>[:<config>]": a Hugging Face dataset through the optional `datasets`
  package, split `data.hf_split`, field `data.text_field`, one document (and group) per
  row. For the packaged builders (`json`, `csv`, `text`, `parquet`, `arrow`) the second
  part is a local data file or glob instead of a config: "hf:json:/data/corpus.jsonl".

Binary files (a NUL byte) and files that are not valid UTF-8 are skipped in folders
(listed in `describe()`), an error for a single file. Empty documents are dropped.

Split. A group is held out for validation when the first 8 bytes of
sha256("scalinglab-val:" + group name) fall below `val_fraction` * 2**64: membership
depends on nothing but the group's name, and near copies inside one package (the 120
`encodings/cp*.py` codec tables) are held out or trained on together. If that selects no
group of the corpus, the group with the smallest hash is held out (and if it selected
all, the one with the largest hash trains). Then near-duplicates across the split are
removed (`scaling.data.neardup`, on the sets of 8-byte whitespace-normalized shingles): every
training document whose exact Jaccard similarity with a held-out document is >= 0.8, or
which contains >= 80 % of a held-out document's shingles or has >= 80 % of its own inside
one (containment; the smaller of the two must have >= 256 shingles), is dropped; a
held-out document at Jaccard >= 0.8 with one kept before it in stream order is dropped
too (so the eval set does not weigh one template many times). Dropped documents are in
neither stream. Hence no validation document has a >= 0.8-similar document in training,
nor one that contains it. The decision (which documents are dropped, and the pairs
found, with both measures) is cached in `<cache>/splits/<key>.json`, keyed by the corpus
content, `val_fraction`, the rule and the format version, and its counts are in the token
cache's .json and in `describe()` (result.json's `data`): `dropped_train_documents`, of
them `dropped_train_by_containment`, `dropped_val_documents`. The pass costs ~3 s on the
full standard library (one core, unloaded).

Reading order and `max_corpus_bytes`. Folders and the standard library read every
held-out file in full (so the validation set is the same whatever the cap), then the
training files in a hashed order of their names (sha256 "scalinglab-read:"), so that a
capped corpus is a uniform sample of the training files, not the alphabetically first
modules. Streams (a .jsonl or text file, a Hugging Face dataset) are read in their own
order, each row or block held out by its hash as it comes. `max_corpus_bytes` > 0 caps
the *training* text read (UTF-8 bytes; the last training document is cut at a character
boundary); held-out documents never count against it and are never cut, and reading
stops at the cap. A capped corpus therefore never trains on a document the full corpus
holds out (membership is by group name); for folders and the standard library it
also holds out exactly the same documents and drops every training document the full
corpus drops (both depend only on the held-out set and the document itself). A capped
*stream* holds out the rows met before the cap, and may train on a row that the full
stream drops as a near-copy of a held-out row beyond the cap: that row is not near any
held-out row of the capped corpus, whose evaluation stays clean.

Order. Within each split documents are ordered by a second name hash, so any prefix of
the training stream (`max_unique_tokens`) is a random sample of documents, and the
validation stream's documents come in a hashed order (see `scaling.data.evalset`).

Cache. The token streams (train then validation, uint16 when the vocabulary fits, else
uint32) live in `<cache>/tokens/<key>.bin` with `<key>.json` beside it, where the key
hashes the corpus content (sha256 over document names and bytes), the tokenizer's
exact identity, `val_fraction` and the format version. Both files are written to a temp
file and renamed, the .bin first. A cached pair is trusted only when the .json parses,
the .bin's size matches it and (by default) the sha256 fingerprint of the tokens
matches; otherwise it is rebuilt. The .json also lists the token count of every
validation document (`val_doc_tokens`), from which eval windows get their documents.

Batches. The training tokens used (the whole train stream, or its first
`max_unique_tokens + 1` tokens) are cut into windows of seq_len + 1 tokens with stride
seq_len (neighbours share one token), so every next-token target appears in exactly
one window: n_windows = (n_used - 1) // seq_len and the unique tokens D = n_windows *
seq_len (`max_unique_tokens` rounded down to a multiple of seq_len). Global sequence
p = step * batch_size + row lies in epoch p // n_windows and reads window
perm(seed, epoch)[p % n_windows]; perm is an argsort of a splitmix64 hash, so it is
independent of the numpy version. Each epoch visits every window once; tokens seen =
steps * batch_size * seq_len exactly. Evaluation uses `TokenData.eval_set(n, eval_seed)`:
fixed validation windows, a uniform sample of all of them (so the eval loss estimates the
per-token held-out loss), with a cluster-robust standard error (`scaling.data.evalset`).

Tasks. With `data.tasks` (e.g. { addition = 0.1 }), some rows of each batch are sequences
of synthetic task instances (`scaling.data.tasks.TaskMix`: task t has exactly floor(S B f_t)
of the first S steps' rows, at hashed positions); the corpus stream fills the other rows
in its own order (task rows consume no corpus window, so an epoch still visits every
window once). Without `data.tasks` batches are exactly as above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sysconfig
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Sequence

import numpy as np

from scaling.data import neardup
from scaling.config import ConfigError
from scaling.data.evalset import EvalSet, build_eval_set
from scaling.runs.runfiles import atomic_write_text
from scaling.runtime import cache_dir
from scaling.data.tasks import TaskMix, eval_width
from scaling.data.tokenizer import Tokenizer, load_or_train_bpe, make_tokenizer

if TYPE_CHECKING:
    from scaling.config import DataConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: group split, near-duplicate removal, hashed read order, val_doc_tokens
TEXT_FILE_BLOCK_BYTES = 8192
TEXT_EXTENSIONS = frozenset(
    ".txt .text .md .markdown .rst .tex .py .pyi .c .h .cc .cpp .hpp .java .js .ts .go "
    ".rs .rb .sh .html .htm .xml .css .json .jsonl .yaml .yml .toml .ini .cfg .csv .tsv"
    .split()
) | {""}
HF_FILE_BUILDERS = ("json", "csv", "text", "parquet", "arrow")
_ENCODE_CHUNK_BYTES = 4 << 20  # text tokenized and written per chunk
_HASH_CHUNK = 1 << 22  # tokens hashed per update
_NEAR_DUP_CHUNK_BYTES = 64 << 20  # text shingled at once by the near-duplicate pass
_VAL_SALT = b"scalinglab-val:"
_READ_SALT = b"scalinglab-read:"
_ORDER_SALT = b"scalinglab-order:"


class DataError(ConfigError):
    """The corpus cannot be read, or is too small for what the config asks."""


# --------------------------------------------------------------------------------------
# Reading corpora
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    group: str = ""  # the unit of the validation split (the readers set it)


@dataclass
class Corpus:
    """Documents of a corpus, in read order, with their train/validation split."""

    spec: str
    documents: list[Document]
    is_val: np.ndarray  # bool per document
    sha256: str  # content identity: names and UTF-8 bytes of all documents, in order
    n_bytes: int  # all text read (training and held-out)
    skipped: list[str] = field(default_factory=list)
    truncated: bool = False
    dropped: np.ndarray | None = None  # bool per document: in neither stream
    near_duplicates: list[tuple[str, str, float, float]] = field(default_factory=list)
    _train_sha256: str | None = None

    def __post_init__(self):
        if self.dropped is None:
            self.dropped = np.zeros(len(self.documents), dtype=bool)

    def ordered(self, val: bool) -> list[Document]:
        """The kept documents of one split, in stream order (a hash of their names)."""
        docs = [d for d, v, x in zip(self.documents, self.is_val, self.dropped)
                if bool(v) == val and not x]
        return sorted(docs, key=lambda d: _name_hash(_ORDER_SALT, d.name))

    def train_texts(self) -> list[str]:
        return [d.text for d in self.ordered(False)]

    @property
    def train_sha256(self) -> str:
        """Identity of the training text (what a BPE is trained on)."""
        if self._train_sha256 is None:
            self._train_sha256 = _docs_sha256(self.ordered(False))
        return self._train_sha256

    def split_summary(self) -> dict[str, Any]:
        """Counts of the split: groups, documents kept and dropped, near-duplicate pairs."""
        val = self.is_val & ~self.dropped
        return {
            "n_val_groups": len({d.group for d, v in zip(self.documents, val) if v}),
            "n_train_groups": len({d.group for d, v, x in
                                   zip(self.documents, self.is_val, self.dropped)
                                   if not v and not x}),
            "near_duplicate_pairs": len(self.near_duplicates),
            "dropped_train_documents": int((self.dropped & ~self.is_val).sum()),
            # of them dropped by containment alone (Jaccard < 0.8 with every held-out one)
            "dropped_train_by_containment": len(
                {b for _, b, jac, _ in self.near_duplicates if jac < neardup.NEAR_DUP_THRESHOLD}
                - {b for _, b, jac, _ in self.near_duplicates
                   if jac >= neardup.NEAR_DUP_THRESHOLD}),
            "dropped_val_documents": int((self.dropped & self.is_val).sum()),
        }


def read_corpus(data_cfg: "DataConfig") -> Corpus:
    """Read, split and de-duplicate the corpus `data_cfg.corpus` (see the module doc)."""
    spec = data_cfg.corpus
    collector = _Collector(data_cfg.max_corpus_bytes, data_cfg.val_fraction)
    if spec == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        _read_files(collector, root, _stdlib_files(root), data_cfg, stdlib_group,
                    skip_bad=True)
    elif spec.startswith("hf:"):
        _read_hf(collector, spec, data_cfg)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(
                f"data.corpus = {spec!r}: no such file or folder; allowed: 'stdlib', a text "
                "file, a folder of text files, a .jsonl file or 'hf:<dataset>[:<config>]'"
            )
        if path.is_dir():
            _read_files(collector, path, _folder_files(path), data_cfg, folder_group,
                        skip_bad=True)
        elif path.suffix.lower() == ".jsonl":
            _read_jsonl(collector, path, path.name, data_cfg.text_field)
        else:
            _read_text_blocks(collector, path)
    docs = collector.docs
    if not docs:
        raise DataError(f"data.corpus = {spec!r}: no documents with text were found"
                        + (f" (skipped: {collector.skipped[:5]})" if collector.skipped else ""))
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        raise DataError(f"data.corpus = {spec!r}: document names are not unique")
    is_val = _with_fallback([d.group for d in docs], np.array(collector.val, dtype=bool))
    if not is_val.any():
        raise DataError(
            f"data.corpus = {spec!r} has {len(docs)} document(s) in one group: too few to "
            f"hold one out for validation (data.val_fraction = {data_cfg.val_fraction}); "
            "use a larger corpus or one with more documents"
        )
    corpus = Corpus(spec=spec, documents=docs, is_val=is_val, sha256=_docs_sha256(docs),
                    n_bytes=collector.n_bytes, skipped=collector.skipped,
                    truncated=collector.full)
    _remove_near_duplicates(corpus, data_cfg)
    return corpus


def stdlib_group(relpath: str) -> str:
    """The split group of a standard-library file (module docstring)."""
    parts = relpath.split("/")
    if len(parts) == 1:
        return relpath
    if parts[0] == "test":
        return "test/" + parts[1]
    return parts[0]


def folder_group(relpath: str) -> str:
    """The split group of a file in a folder corpus: its folder, or itself at the top."""
    head, sep, _ = relpath.rpartition("/")
    return head + "/" if sep else relpath


def held_out(group: str, val_fraction: float) -> bool:
    """Whether `group` is held out: a pure function of its name (module docstring)."""
    return _name_hash(_VAL_SALT, group) < int(val_fraction * 2.0**64)


def split_groups(groups: Sequence[str], val_fraction: float) -> set[str]:
    """The held-out groups among `groups`, with the fallback of the module docstring."""
    groups = sorted(set(groups))
    val = {g for g in groups if held_out(g, val_fraction)}
    if len(groups) >= 2:
        if not val:
            val = {min(groups, key=lambda g: _name_hash(_VAL_SALT, g))}
        elif len(val) == len(groups):
            val.discard(max(groups, key=lambda g: _name_hash(_VAL_SALT, g)))
    return val


def split_documents(groups: Sequence[str], val_fraction: float) -> np.ndarray:
    """Bool mask of held-out documents given each document's group (module docstring)."""
    val = split_groups(groups, val_fraction)
    return np.array([g in val for g in groups], dtype=bool)


def _with_fallback(groups: list[str], is_val: np.ndarray) -> np.ndarray:
    """`is_val` as read, with the no-group/all-groups fallback applied to what was read."""
    if is_val.any() and not is_val.all():
        return is_val
    val = split_groups(groups, 1.0 if is_val.all() else 0.0)
    return np.array([g in val for g in groups], dtype=bool)


class _Collector:
    """Gathers documents until `cap` bytes of *training* text (0: no cap).

    Held-out documents (by their group's hash, or `val=True` from the caller) never count
    against the cap and are never cut."""

    def __init__(self, cap: int, val_fraction: float):
        self.cap = cap
        self.val_fraction = val_fraction
        self.docs: list[Document] = []
        self.val: list[bool] = []
        self.skipped: list[str] = []
        self.n_bytes = 0
        self.train_bytes = 0
        self.full = False

    def add(self, name: str, raw: bytes, text: str | None = None, group: str | None = None,
            val: bool | None = None) -> None:
        group = name if group is None else group
        if val is None:
            val = held_out(group, self.val_fraction)
        if self.full or not raw:
            return
        if not val and self.cap and self.train_bytes + len(raw) >= self.cap:
            self.full = True
            room = self.cap - self.train_bytes
            if room < len(raw):
                while room > 0 and (raw[room] & 0xC0) == 0x80:  # a continuation byte
                    room -= 1
                raw, text = raw[:room], None
            if not raw:
                return
        if text is None:
            text = raw.decode("utf-8")
        self.docs.append(Document(name, text, group))
        self.val.append(bool(val))
        self.n_bytes += len(raw)
        if not val:
            self.train_bytes += len(raw)


def _stdlib_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts and rel.parts[0] in ("site-packages", "dist-packages"):
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames
                       if d not in ("__pycache__", "site-packages", "dist-packages")]
        out += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(out)


def _folder_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        rel = Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames
                if not f.startswith(".") and Path(f).suffix.lower() in TEXT_EXTENSIONS]
    return sorted(out)


def _read_files(collector: _Collector, root: Path, relpaths: list[str], data_cfg,
                group_of: Callable[[str], str], skip_bad: bool) -> None:
    """Held-out files in full (sorted), then training files in hashed order to the cap."""
    files = [r for r in relpaths if not r.endswith(".jsonl")]
    val_groups = split_groups([group_of(r) for r in files], data_cfg.val_fraction)
    val_files = [r for r in files if group_of(r) in val_groups]
    rest = sorted((r for r in relpaths if r.endswith(".jsonl") or group_of(r) not in val_groups),
                  key=lambda r: (_name_hash(_READ_SALT, r), r))
    for rel in val_files + rest:
        if collector.full:
            return
        if rel.endswith(".jsonl"):
            _read_jsonl(collector, root / rel, rel, data_cfg.text_field)
            continue
        text = _read_text_file(collector, root / rel, rel, skip_bad)
        if text is not None:
            collector.add(rel, text.encode("utf-8"), text, group_of(rel),
                          val=group_of(rel) in val_groups)


def _read_text_file(collector: _Collector, path: Path, rel: str, skip_bad: bool) -> str | None:
    """The file's text, or None (recorded as skipped) when it is binary or not UTF-8."""
    raw = path.read_bytes()
    problem = None
    if b"\x00" in raw:
        problem = "binary (contains NUL bytes)"
    else:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 ({e.reason} at byte {e.start})"
    if not skip_bad:
        raise DataError(f"data.corpus = {str(path)!r}: {problem}")
    collector.skipped.append(rel)
    return None


def _read_text_blocks(collector: _Collector, path: Path) -> None:
    text = _read_text_file(collector, path, path.name, skip_bad=False)
    assert text is not None
    for k, block in enumerate(_line_blocks(text.encode("utf-8"), TEXT_FILE_BLOCK_BYTES)):
        if collector.full:
            return
        collector.add(f"{path.name}#{k}", block)


def _line_blocks(raw: bytes, size: int) -> Iterator[bytes]:
    """`raw` cut after the first newline at or past every `size` bytes."""
    start = 0
    while start < len(raw):
        cut = raw.find(b"\n", start + size - 1)
        end = len(raw) if cut < 0 else cut + 1
        yield raw[start:end]
        start = end


def _read_jsonl(collector: _Collector, path: Path, rel: str, text_field: str) -> None:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if collector.full:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"data.corpus: {path}:{lineno}: not JSON ({e.msg})") from None
            text = _row_text(row, text_field, f"{path}:{lineno}")
            if text:
                collector.add(f"{rel}:{lineno}", text.encode("utf-8"), text)


def _row_text(row: Any, text_field: str, where: str) -> str | None:
    if not isinstance(row, dict) or text_field not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"data.text_field = {text_field!r}: missing in {where}; "
                        f"the row has {keys}")
    text = row[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(f"data.text_field = {text_field!r}: {where} holds a "
                        f"{type(text).__name__}, not a string")
    return text


def _read_hf(collector: _Collector, spec: str, data_cfg) -> None:
    parts = spec.split(":", 2)
    name = parts[1] if len(parts) > 1 else ""
    extra = parts[2] if len(parts) > 2 else None
    if not name:
        raise DataError(f"data.corpus = {spec!r}: write 'hf:<dataset>[:<config>]'")
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.corpus = {spec!r} needs the optional `datasets` package: "
            "pip install 'scalinglab[hf]' (or pip install datasets)"
        ) from None
    hf_cache = str(resolve_cache_dir(data_cfg) / "hf")
    kwargs: dict[str, Any] = {"split": data_cfg.hf_split, "cache_dir": hf_cache}
    if name in HF_FILE_BUILDERS:
        if not extra:
            raise DataError(f"data.corpus = {spec!r}: the {name!r} builder needs a file: "
                            f"'hf:{name}:<path or glob>'")
        kwargs["data_files"] = str(Path(extra).expanduser())
        extra = None
    if data_cfg.max_corpus_bytes:
        kwargs["streaming"] = True  # read only what the cap allows
    try:
        ds = datasets.load_dataset(name, extra, **kwargs)
    except Exception as e:
        raise DataError(f"data.corpus = {spec!r}: datasets.load_dataset failed: "
                        f"{type(e).__name__}: {e}") from e
    for i, row in enumerate(ds):
        if collector.full:
            return
        text = _row_text(row, data_cfg.text_field, f"{spec} row {i}")
        if text:
            collector.add(f"{data_cfg.hf_split}:{i}", text.encode("utf-8"), text)


def _name_hash(salt: bytes, name: str) -> int:
    return int.from_bytes(hashlib.sha256(salt + name.encode("utf-8")).digest()[:8], "big")


def _docs_sha256(docs: list[Document]) -> str:
    h = hashlib.sha256(b"scalinglab-corpus-v1")
    for d in docs:
        name, text = d.name.encode("utf-8"), d.text.encode("utf-8")
        h.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", len(text)))
        h.update(text)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Near-duplicates across the split
# --------------------------------------------------------------------------------------


def find_near_duplicates(corpus: Corpus
                         ) -> tuple[np.ndarray, list[tuple[str, str, float, float]]]:
    """(dropped mask, pairs): the near-duplicate rule of the module docstring.

    Pairs are (held-out name, other name, Jaccard, containment) for every held-out document
    and every training document near it by either measure (`neardup.overlap_pairs`), and
    every other held-out document at Jaccard >= neardup.NEAR_DUP_THRESHOLD."""
    docs = corpus.documents
    val_idx = np.flatnonzero(corpus.is_val)
    val_sets = [neardup.shingles(docs[i].text) for i in val_idx]
    found = []
    start = 0
    for chunk in _chunks(docs, _NEAR_DUP_CHUNK_BYTES):  # bounded memory on large corpora
        sets = [neardup.shingles(d.text) for d in chunk]
        found += [(q, start + j, jac, cont)
                  for q, j, jac, cont in neardup.overlap_pairs(val_sets, sets)]
        start += len(chunk)
    dropped = np.zeros(len(docs), dtype=bool)
    partners: dict[int, list[int]] = {}
    pairs = []
    for q, j, jac, cont in found:
        i = int(val_idx[q])
        if i == j:
            continue
        if corpus.is_val[j] and (j < i or jac < neardup.NEAR_DUP_THRESHOLD):
            continue  # a held-out pair is listed once, and held out together by Jaccard only
        pairs.append((docs[i].name, docs[j].name, round(jac, 4), round(cont, 4)))
        if corpus.is_val[j]:
            partners.setdefault(i, []).append(j)
            partners.setdefault(j, []).append(i)
        else:
            dropped[j] = True
    kept: set[int] = set()
    for i in sorted((int(i) for i in val_idx), key=lambda i: _name_hash(_ORDER_SALT, docs[i].name)):
        if any(j in kept for j in partners.get(i, ())):
            dropped[i] = True
        else:
            kept.add(i)
    return dropped, pairs


def _remove_near_duplicates(corpus: Corpus, data_cfg: "DataConfig") -> None:
    """Set corpus.dropped and corpus.near_duplicates, from the split cache if present."""
    ident = json.dumps({"format": FORMAT_VERSION, "corpus": corpus.sha256,
                        "val_fraction": repr(float(data_cfg.val_fraction)),
                        "threshold": neardup.NEAR_DUP_THRESHOLD,
                        "shingle": neardup.SHINGLE_BYTES, "rule": "jaccard|containment",
                        "min_contained": neardup.MIN_CONTAINED_SHINGLES}, sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:32]
    path = resolve_cache_dir(data_cfg) / "splits" / f"{key}.json"
    index = {d.name: i for i, d in enumerate(corpus.documents)}
    seconds = None  # set when computed here, not read from the cache
    try:
        cached = json.loads(path.read_text())
        dropped = np.zeros(len(corpus.documents), dtype=bool)
        dropped[[index[n] for n in cached["dropped"]]] = True
        pairs = [(a, b, float(x), float(y)) for a, b, x, y in cached["pairs"]]
    except FileNotFoundError:
        dropped = None
    except Exception as e:  # anything odd: recompute
        log.warning("split cache %s not trusted (%s); recomputing", path, e)
        dropped = None
    if dropped is None:
        t0 = time.perf_counter()
        dropped, pairs = find_near_duplicates(corpus)
        seconds = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({
            "key": key, "corpus": corpus.spec, "corpus_sha256": corpus.sha256,
            "dropped": [d.name for d, x in zip(corpus.documents, dropped) if x],
            "pairs": pairs, "seconds": round(seconds, 3)}, indent=0))
    corpus.dropped = dropped
    corpus.near_duplicates = pairs
    if seconds is not None:
        log.info("near-duplicates of %s: %s (%.1f s)", corpus.spec, corpus.split_summary(), seconds)


# --------------------------------------------------------------------------------------
# Token cache
# --------------------------------------------------------------------------------------


def resolve_cache_dir(data_cfg: "DataConfig") -> Path:
    """`data.cache_dir`, else $SCALINGLAB_CACHE, else ~/.cache/scalinglab (created)."""
    return cache_dir(data_cfg.cache_dir)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def stream_fingerprint(train: np.ndarray, val: np.ndarray) -> str:
    """sha256 (hex) of the train and validation token streams, with their lengths."""
    dtype = np.dtype(train.dtype).newbyteorder("<")
    h = hashlib.sha256(f"scalinglab-tokens-v1|{dtype.str}|{len(train)}|{len(val)}|".encode())
    for arr in (train, val):
        for i in range(0, len(arr), _HASH_CHUNK):
            h.update(np.ascontiguousarray(arr[i:i + _HASH_CHUNK], dtype=dtype))
    return h.hexdigest()


def _cache_key(corpus: Corpus, tokenizer: Tokenizer, val_fraction: float) -> str:
    # the dropped documents are part of the streams' identity (a new near-duplicate rule
    # drops others from the same corpus)
    dropped = hashlib.sha256("\n".join(sorted(
        d.name for d, x in zip(corpus.documents, corpus.dropped) if x)).encode()).hexdigest()
    ident = json.dumps({"format": FORMAT_VERSION, "corpus": corpus.sha256,
                        "tokenizer": tokenizer.name, "val_fraction": repr(float(val_fraction)),
                        "dropped": dropped}, sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _load_cached(bin_path: Path, meta_path: Path, verify: bool) -> tuple[np.memmap, dict] | None:
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


def _build_cache(corpus: Corpus, tokenizer: Tokenizer, bin_path: Path, meta_path: Path,
                 key: str) -> None:
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
            for chunk in _chunks(docs, _ENCODE_CHUNK_BYTES):
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


def _chunks(docs: list[Document], max_bytes: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for d in docs:
        chunk.append(d)
        size += len(d.text)
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


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
        from scaling.data.shards import load_token_shards
        return load_token_shards(data_cfg, seq_len, verify=verify)
    corpus = read_corpus(data_cfg)
    cache = resolve_cache_dir(data_cfg)
    tokenizer = corpus_tokenizer(data_cfg, corpus)
    key = _cache_key(corpus, tokenizer, data_cfg.val_fraction)
    bin_path = cache / "tokens" / f"{key}.bin"
    meta_path = bin_path.with_suffix(".json")
    loaded = _load_cached(bin_path, meta_path, verify)
    if loaded is None:
        log.info("tokenizing %s with %s into %s", data_cfg.corpus, tokenizer.name, bin_path)
        _build_cache(corpus, tokenizer, bin_path, meta_path, key)
        loaded = _load_cached(bin_path, meta_path, verify=False)
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


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64_int(z: int) -> int:
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def window_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n), a fixed function of (seed, epoch) (splitmix64 keys)."""
    base = _mix64_int(_mix64_int(seed) ^ ((epoch * _GOLDEN) & _M64))
    with np.errstate(over="ignore"):
        keys = _mix64(np.uint64(base) + np.arange(n, dtype=np.uint64) * np.uint64(_GOLDEN))
    return np.argsort(keys, kind="stable").astype(np.int64)


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
