"""Token shards (data.corpus = "tokens:PATH"): the llm.c .bin layout, split, order, errors."""

from pathlib import Path

import numpy as np
import pytest

from scaling.config import ConfigError, DataConfig, load_config
from scaling.data.dataset import TokenData, load_corpus
from scaling.data.heldout import split_groups
from scaling.data.order import ORDER_SALT, name_hash
from scaling.train.loop import train
from scaling.runs.runfiles import read_metrics
from scaling.data.shards import ShardTokenizer

VOCAB, EOT = 300, 299
SEQ = 16


def write_shard(path: Path, tokens, magic=20240520, version=1, dtype="<u2", count=None):
    """A shard as llm.c's write_datafile lays it out: 256 int32 header, then the tokens."""
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=dtype).tobytes())


def make_docs(seed=0, n_shards=6, docs_per_shard=8):
    """{shard name: [document token arrays]}; every document ends up after an EOT."""
    rng = np.random.default_rng(seed)
    return {f"shard_{i:03d}.bin": [rng.integers(0, EOT, size=rng.integers(20, 90))
                                   for _ in range(docs_per_shard)]
            for i in range(n_shards)}


def write_corpus(folder: Path, shards: dict, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in shards.items():
        write_shard(folder / name, np.concatenate([np.r_[EOT, d] for d in docs]), **kw)
    return folder


def expected_streams(shards: dict, val_fraction: float):
    """The train and validation streams and the validation document lengths, built from
    the documents directly by the documented rules: group = shard file, documents
    (EOT + tokens, named <shard>#<k>) in the order of the hash of their names."""
    val_groups = split_groups(list(shards), val_fraction)
    docs = [(f"{name}#{k}", name in val_groups, np.r_[EOT, d])
            for name, ds in shards.items() for k, d in enumerate(ds)]
    docs.sort(key=lambda x: name_hash(ORDER_SALT, x[0]))
    train = np.concatenate([t for _, v, t in docs if not v])
    val = [t for _, v, t in docs if v]
    return train, np.concatenate(val), [len(t) for t in val]


def tokens_cfg(path, tmp_path, **kw):
    return DataConfig(corpus=f"tokens:{path}", tokens_vocab_size=VOCAB,
                      cache_dir=str(tmp_path / "cache"), val_fraction=0.3, **kw)


def test_shards_give_the_documented_streams_and_the_same_batches(tmp_path):
    shards = make_docs()
    folder = write_corpus(tmp_path / "shards", shards)
    data = load_corpus(tokens_cfg(folder, tmp_path), SEQ)
    train_ref, val_ref, val_lengths = expected_streams(shards, 0.3)
    assert np.array_equal(data.train, train_ref) and np.array_equal(data.val, val_ref)
    assert data.val_doc_tokens.tolist() == val_lengths
    assert data.vocab_size == VOCAB and data.tokenizer.eot_id == EOT
    # the same token stream held in memory gives the same batches and eval windows
    ref = TokenData(ShardTokenizer(VOCAB, EOT), np.concatenate([train_ref, val_ref]),
                    {"n_train_tokens": len(train_ref), "fingerprint": "ref",
                     "val_doc_tokens": val_lengths}, SEQ)
    for step in range(10):
        assert np.array_equal(data.train_batch(step, 4, seed=3), ref.train_batch(step, 4, seed=3))
    assert np.array_equal(data.eval_set(12).batch(0, 12)[0], ref.eval_set(12).batch(0, 12)[0])
    # whole shards are held out, and at least one of each side exists
    d = data.describe()
    assert d["n_val_groups"] >= 1 and data.meta["n_train_groups"] >= 1
    assert d["n_val_documents"] == len(val_lengths) and d["bytes_per_token"] is None


def test_uint32_shards_and_a_glob_read_the_same_tokens(tmp_path):
    shards = make_docs(seed=1)
    a = load_corpus(tokens_cfg(write_corpus(tmp_path / "u16", shards), tmp_path), SEQ)
    write_corpus(tmp_path / "u32", shards, magic=20240801, version=7, dtype="<u4")
    b = load_corpus(tokens_cfg(str(tmp_path / "u32" / "shard_*.bin"), tmp_path), SEQ)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.train, b.train)


def test_one_shard_splits_by_document_and_a_leading_fragment_is_a_document(tmp_path):
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, EOT, size=40) for _ in range(30)]
    fragment = rng.integers(0, EOT, size=7)  # a document cut at the previous shard's end
    write_shard(tmp_path / "one.bin", np.concatenate([fragment] + [np.r_[EOT, d] for d in docs]))
    data = load_corpus(tokens_cfg(tmp_path / "one.bin", tmp_path), SEQ)
    assert data.n_train_tokens + data.n_val_tokens == 7 + 30 * 41
    assert 1 <= data.n_val_documents < 31
    assert data.meta["n_train_documents"] + data.meta["n_val_documents"] == 31
    assert set(data.val_doc_tokens.tolist()) <= {7, 41}  # whole documents, fragment alone


def test_training_10_steps_on_shards(tmp_path):
    folder = write_corpus(tmp_path / "shards", make_docs(n_shards=8, docs_per_shard=20))
    cfg = load_config(None, [
        f"data.corpus=tokens:{folder}", f"data.tokens_vocab_size={VOCAB}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.3",
        "model.vocab_size=300", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
        f"model.seq_len={SEQ}", "train.batch_size=4", "train.steps=10", "train.log_every=1",
        "train.eval_every=0", f"train.eval_tokens={8 * SEQ}", "train.curve_eval_tokens=0",
        "train.progress=false",
    ])
    r = train(cfg, tmp_path / "run")
    assert r["status"] == "done" and r["steps"] == 10 and r["D"] == 10 * 4 * SEQ
    assert r["data"]["tokenizer"] == f"tokens{VOCAB}-eot{EOT}"
    losses = [row["loss"] for row in read_metrics(tmp_path / "run") if "loss" in row]
    assert len(losses) == 10 and abs(losses[0] - np.log(VOCAB)) < 0.5
    assert np.isfinite(r["final_eval_loss"]) and r["eval_tokens"] == 8 * SEQ


@pytest.mark.parametrize("kw, needle", [
    ({"magic": 20240521}, "header magic 20240521, version 1 is not a llm.c token shard"),
    ({"version": 2}, "header magic 20240520, version 2"),
    ({"count": 5}, "the header says 5 uint16 tokens"),
    ({"magic": 20240801, "version": 7}, "uint32 tokens"),  # uint16 data under a uint32 header
])
def test_malformed_headers_are_rejected_naming_the_key(tmp_path, kw, needle):
    write_shard(tmp_path / "bad.bin", np.r_[EOT, np.arange(50)], **kw)
    with pytest.raises(ConfigError, match="data.corpus") as e:
        load_corpus(tokens_cfg(tmp_path / "bad.bin", tmp_path), SEQ)
    assert needle in str(e.value)


def test_short_file_token_beyond_vocabulary_and_missing_vocab_are_errors(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ConfigError, match="shorter than the 1024-byte header"):
        load_corpus(tokens_cfg(tmp_path / "short.bin", tmp_path), SEQ)
    write_shard(tmp_path / "big.bin", np.r_[EOT, np.arange(40), 300, 1])
    with pytest.raises(ConfigError, match=r"holds token 300 .*position 41.*data.tokens_vocab_size = 300"):
        load_corpus(tokens_cfg(tmp_path / "big.bin", tmp_path), SEQ)
    with pytest.raises(ConfigError, match="data.tokens_vocab_size = 0"):
        load_config(None, [f"data.corpus=tokens:{tmp_path / 'big.bin'}"])
    with pytest.raises(ConfigError, match="model.vocab_size = 256 is smaller than data.tokens_vocab_size"):
        load_config(None, [f"data.corpus=tokens:{tmp_path / 'big.bin'}", "data.tokens_vocab_size=300"])
    with pytest.raises(ConfigError, match="no token shards found"):
        load_corpus(tokens_cfg(tmp_path / "nothing" / "*.bin", tmp_path), SEQ)


def test_a_bad_shard_stops_training_before_anything_is_written(tmp_path):
    write_shard(tmp_path / "bad.bin", np.arange(60), magic=1)
    cfg = load_config(None, [f"data.corpus=tokens:{tmp_path / 'bad.bin'}",
                             f"data.tokens_vocab_size={VOCAB}", "model.vocab_size=300",
                             f"data.cache_dir={tmp_path / 'cache'}", "train.progress=false"])
    with pytest.raises(ConfigError, match="data.corpus"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
