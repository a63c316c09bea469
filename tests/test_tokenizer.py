"""Tokenizers: byte round trips, BPE training, determinism and the on-disk cache."""

from pathlib import Path

import numpy as np
import pytest

from scaling.config import DataConfig
from scaling.data.dataset import corpus_tokenizer
from scaling.data.tokenizer import (EOT_TEXT, BPETokenizer, ByteTokenizer, Tokenizer,
                               bpe_cache_path, make_tokenizer)

DATA = Path(__file__).resolve().parent / "data"
SAMPLES = [
    "",
    "hello world",
    "def f(x):\n    return x ** 2\n\n\n",
    "naïve café — Ελληνικά, 日本語, emoji 🚀🧪, tab\tand\r\nCRLF",
    "   leading and trailing spaces   ",
    f"a literal {EOT_TEXT} inside text",
]


@pytest.fixture(scope="module")
def stdlib_texts():
    from scaling.data.dataset import read_corpus

    corpus = read_corpus(DataConfig(max_corpus_bytes=400_000))
    return corpus.train_texts()


def test_byte_round_trip():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 256 and tok.eot_id == 0
    for s in SAMPLES:
        ids = tok.encode(s)
        assert ids.dtype == np.int32
        assert len(ids) == len(s.encode("utf-8"))
        assert tok.decode(ids) == s
        assert tok.decode(ids.tolist()) == s
    assert list(tok.encode("é")) == [0xC3, 0xA9]
    assert [a.tolist() for a in tok.encode_batch(["ab", "c"])] == [[97, 98], [99]]


def test_byte_decode_replaces_invalid_utf8():
    tok = ByteTokenizer()
    assert tok.decode([0xC3]) == "\ufffd"  # half a character
    assert tok.decode([104, 0xFF, 105]) == "h\ufffdi"
    with pytest.raises(ValueError):
        tok.decode([256])


def test_bpe_trains_and_round_trips(stdlib_texts):
    tok = BPETokenizer.train(stdlib_texts, 400)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 400
    assert tok.eot_id == 0 and tok.decode([0]) == EOT_TEXT
    for s in SAMPLES + stdlib_texts[:5]:
        ids = tok.encode(s)
        assert ids.dtype == np.int32
        assert tok.decode(ids) == s
        assert ids.size == 0 or (ids.min() >= 0 and ids.max() < tok.vocab_size)
    # corpus text spelling the separator never becomes the separator id
    assert 0 not in tok.encode(f"x {EOT_TEXT} y").tolist()
    # BPE compresses source code well below one token per byte
    text = stdlib_texts[0]
    assert len(tok.encode(text)) < 0.7 * len(text.encode())
    batch = tok.encode_batch(SAMPLES)
    assert all(np.array_equal(a, tok.encode(s)) for a, s in zip(batch, SAMPLES))


def test_bpe_training_is_deterministic(stdlib_texts):
    a = BPETokenizer.train(stdlib_texts, 320)
    b = BPETokenizer.train(stdlib_texts, 320)
    assert a.name == b.name
    assert a.hf_tokenizer.to_str() == b.hf_tokenizer.to_str()


def test_bpe_is_cached_and_not_retrained(tmp_path, monkeypatch):
    cfg = DataConfig(corpus=str(DATA / "text_corpus"), tokenizer="bpe", bpe_vocab_size=300,
                     cache_dir=str(tmp_path), val_fraction=0.2)
    with pytest.raises(ValueError, match="corpus_tokenizer"):
        make_tokenizer(cfg)  # the tokenizer module does not read corpora
    first = corpus_tokenizer(cfg)
    assert first.path is not None and first.path.exists()
    assert first.path.parent == tmp_path / "tokenizers"
    mtime = first.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a cached tokenizer exists")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    second = corpus_tokenizer(cfg)
    assert second.name == first.name
    assert second.path == first.path and first.path.stat().st_mtime_ns == mtime
    assert second.encode("hello wörld").tolist() == first.encode("hello wörld").tolist()
    # a different vocabulary size is a different cache entry
    other = bpe_cache_path(tmp_path, "0" * 64, 301)
    assert other != first.path


def test_make_tokenizer_byte():
    assert isinstance(make_tokenizer(DataConfig()), ByteTokenizer)


def test_tokenizer_does_not_import_data():
    """The dependency goes one way: scaling.data.dataset imports scaling.data.tokenizer, never back."""
    import ast

    import scaling.data.tokenizer as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "scaling.data.dataset" not in imported and "scaling" not in imported
