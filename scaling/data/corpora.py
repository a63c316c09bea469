"""Reading corpora into documents: `Document`, `Corpus`, and the reader of every corpus kind.

Corpora (`DataConfig.corpus`); a *document* is followed by the tokenizer's end-of-text id
in the token stream, and belongs to a *group*, the unit of the validation split
(`scaling.data.heldout`):

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
- "tokens:<path>": pre-tokenized llm.c/nanoGPT `.bin` shards, read by `scaling.data.shards`
  (not here).
- "hf:<name>[:<config>]": a Hugging Face dataset through the optional `datasets`
  package, split `data.hf_split`, field `data.text_field`, one document (and group) per
  row. For the packaged builders (`json`, `csv`, `text`, `parquet`, `arrow`) the second
  part is a local data file or glob instead of a config: "hf:json:/data/corpus.jsonl".

Binary files (a NUL byte) and files that are not valid UTF-8 are skipped in folders
(listed in `describe()`), an error for a single file. Empty documents are dropped.

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

Order. Within each split documents are ordered by a second name hash
(`Corpus.ordered`), so any prefix of the training stream (`max_unique_tokens`) is a
random sample of documents, and the validation stream's documents come in a hashed
order (see `scaling.data.evalset`).

`read_documents` reads and splits a corpus; `scaling.data.dataset.read_corpus` adds the
near-duplicate pass, which sets `Corpus.dropped` and `Corpus.near_duplicates`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from scaling.config import ConfigError
from scaling.data import neardup
from scaling.data.heldout import held_out, split_groups, with_fallback
from scaling.data.order import ORDER_SALT, READ_SALT, name_hash
from scaling.runtime import cache_dir

if TYPE_CHECKING:
    from scaling.config import DataConfig

TEXT_FILE_BLOCK_BYTES = 8192
TEXT_EXTENSIONS = frozenset(
    ".txt .text .md .markdown .rst .tex .py .pyi .c .h .cc .cpp .hpp .java .js .ts .go "
    ".rs .rb .sh .html .htm .xml .css .json .jsonl .yaml .yml .toml .ini .cfg .csv .tsv"
    .split()
) | {""}
HF_FILE_BUILDERS = ("json", "csv", "text", "parquet", "arrow")


class DataError(ConfigError):
    """The corpus cannot be read, or is too small for what the config asks."""


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
        return sorted(docs, key=lambda d: name_hash(ORDER_SALT, d.name))

    def train_texts(self) -> list[str]:
        return [d.text for d in self.ordered(False)]

    @property
    def train_sha256(self) -> str:
        """Identity of the training text (what a BPE is trained on)."""
        if self._train_sha256 is None:
            self._train_sha256 = docs_sha256(self.ordered(False))
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


def read_documents(data_cfg: "DataConfig") -> Corpus:
    """Read and split the corpus `data_cfg.corpus` (see the module doc); nothing dropped yet
    (the near-duplicate pass: `scaling.data.dedup`; both: `scaling.data.dataset.read_corpus`)."""
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
    is_val = with_fallback([d.group for d in docs], np.array(collector.val, dtype=bool))
    if not is_val.any():
        raise DataError(
            f"data.corpus = {spec!r} has {len(docs)} document(s) in one group: too few to "
            f"hold one out for validation (data.val_fraction = {data_cfg.val_fraction}); "
            "use a larger corpus or one with more documents"
        )
    corpus = Corpus(spec=spec, documents=docs, is_val=is_val, sha256=docs_sha256(docs),
                    n_bytes=collector.n_bytes, skipped=collector.skipped,
                    truncated=collector.full)
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
                  key=lambda r: (name_hash(READ_SALT, r), r))
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
    hf_cache = str(cache_dir(data_cfg.cache_dir) / "hf")  # = cache.resolve_cache_dir(data_cfg)
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


def docs_sha256(docs: list[Document]) -> str:
    """Content identity of documents: sha256 over their names and UTF-8 texts, in order."""
    h = hashlib.sha256(b"scalinglab-corpus-v1")
    for d in docs:
        name, text = d.name.encode("utf-8"), d.text.encode("utf-8")
        h.update(struct.pack("<Q", len(name)) + name + struct.pack("<Q", len(text)))
        h.update(text)
    return h.hexdigest()


def document_chunks(docs: list[Document], max_bytes: int) -> Iterator[list[Document]]:
    """`docs` in consecutive runs of about `max_bytes` characters of text (bounded memory)."""
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
