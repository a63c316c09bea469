"""Tokenizers: raw UTF-8 bytes, or a byte-level BPE trained on the corpus.

Both follow one small protocol (`Tokenizer`): `name` (identifies the tokenizer exactly,
so it can key caches), `vocab_size`, `eot_id` (the end-of-text id that separates
documents in a token stream), `encode(str) -> int32 array`, `encode_batch(list[str])`
and `decode(ids) -> str`.

- `ByteTokenizer`: ids are the UTF-8 bytes of the text, vocabulary 256. The document
  separator is byte 0 (NUL), which text files practically never hold (corpus readers
  skip files that contain it). Decoding replaces invalid UTF-8 with U+FFFD.
- `BPETokenizer`: byte-level BPE (GPT-2 pre-tokenization, no normalization) trained
  with Hugging Face `tokenizers` on the training documents. Id 0 is the special token
  `<|endoftext|>`, ids 1..256 the byte alphabet, the rest merges. Text that happens to
  contain the literal string `<|endoftext|>` is encoded as ordinary text, never as id 0.
  Training is deterministic (same text -> same merges, whatever the thread count); the
  trained tokenizer is saved as JSON under `<cache>/tokenizers/`, keyed by the sha256 of
  the training text and the vocabulary size, so later runs load it instead of training.

`make_tokenizer(data_cfg, texts, text_sha256)` builds the tokenizer a DataConfig asks for
(`scaling.data.dataset.corpus_tokenizer(data_cfg)` supplies a BPE's training texts).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from scaling.runs.runfiles import atomic_write_text
from scaling.runtime import cache_dir

if TYPE_CHECKING:
    from scaling.config import DataConfig

log = logging.getLogger(__name__)

EOT_TEXT = "<|endoftext|>"
BYTE_EOT_ID = 0
# Bump when the BPE recipe changes (pre-tokenizer, special tokens, trainer options):
# cached tokenizers trained by an older recipe are then not reused.
BPE_RECIPE = "bytelevel-gpt2regex-eot0-v1"


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int] | np.ndarray) -> str: ...


def _as_id_list(ids: Iterable[int] | np.ndarray) -> list[int]:
    return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()


class ByteTokenizer:
    """UTF-8 bytes as tokens; vocabulary 256; documents separated by byte 0."""

    name = "byte"
    vocab_size = 256
    eot_id = BYTE_EOT_ID

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        arr = np.asarray(ids).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("byte tokenizer ids must lie in [0, 255]")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """Byte-level BPE backed by a Hugging Face `tokenizers.Tokenizer`."""

    def __init__(self, hf_tokenizer, path: str | Path | None = None):
        self._tok = hf_tokenizer
        # Never turn corpus text that spells "<|endoftext|>" into the separator id.
        self._tok.encode_special_tokens = True
        self.path = Path(path) if path is not None else None
        eot = self._tok.token_to_id(EOT_TEXT)
        if eot is None:
            raise ValueError(f"BPE tokenizer has no {EOT_TEXT} token")
        self.eot_id = int(eot)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        digest = hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()
        self.sha256 = digest
        self.name = f"bpe{self.vocab_size}-{digest[:16]}"

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int,
              length: int | None = None) -> "BPETokenizer":
        """Train on `texts` (each a document). Deterministic for a given text sequence."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"BPE vocab_size = {vocab_size}: must be >= 257 (256 bytes + EOT)")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT],  # first, so it gets id 0
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)), path=path)

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer JSON atomically (temp file + rename)."""
        path = Path(path)
        atomic_write_text(path, self._tok.to_str())
        self.path = path
        return path

    # ---- protocol -------------------------------------------------------------------

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._tok.decode(_as_id_list(ids), skip_special_tokens=False)

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "sha256": self.sha256, "path": str(self.path) if self.path else None}

    @property
    def hf_tokenizer(self):
        return self._tok

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, path={str(self.path)!r})"


# --------------------------------------------------------------------------------------
# Factory and cache
# --------------------------------------------------------------------------------------


def bpe_cache_path(cache_root: str | Path, text_sha256: str, vocab_size: int) -> Path:
    """Where the BPE trained on text with this sha256 and this vocabulary size lives."""
    key = hashlib.sha256(f"{BPE_RECIPE}|{vocab_size}|{text_sha256}".encode()).hexdigest()
    return Path(cache_root) / "tokenizers" / f"bpe{vocab_size}-{key[:24]}.json"


def load_or_train_bpe(texts: Sequence[str], text_sha256: str, vocab_size: int,
                      cache_root: str | Path) -> BPETokenizer:
    """The BPE for this training text from the cache, training and saving it if absent.

    `text_sha256` must identify `texts` (the caller hashes what it passes)."""
    path = bpe_cache_path(cache_root, text_sha256, vocab_size)
    if path.exists():
        try:
            return BPETokenizer.from_file(path)
        except Exception as e:  # a corrupt file: retrain and overwrite
            log.warning("cached tokenizer %s unreadable (%s); retraining", path, e)
    log.info("training BPE (vocab %d) on %d documents", vocab_size, len(texts))
    tok = BPETokenizer.train(texts, vocab_size, length=len(texts))
    tok.save(path)
    return tok


def make_tokenizer(data_cfg: "DataConfig", texts: Sequence[str] | None = None,
                   text_sha256: str | None = None) -> Tokenizer:
    """The tokenizer `data_cfg` asks for.

    For "bpe", `texts` (the training documents) and `text_sha256` (their identity) are
    required: this module knows nothing of corpora (`scaling.data.dataset.corpus_tokenizer`
    reads and splits the corpus and calls `load_or_train_bpe`), so that the import goes
    one way only, data -> tokenizer."""
    if data_cfg.tokenizer == "byte":
        return ByteTokenizer()
    if data_cfg.tokenizer != "bpe":
        raise ValueError(f"data.tokenizer = {data_cfg.tokenizer!r}: allowed 'byte', 'bpe'")
    if texts is None or text_sha256 is None:
        raise ValueError("a BPE tokenizer needs its training texts and their sha256; "
                         "use scaling.data.dataset.corpus_tokenizer(data_cfg) to read them")
    return load_or_train_bpe(texts, text_sha256, data_cfg.bpe_vocab_size,
                             cache_dir(data_cfg.cache_dir))
