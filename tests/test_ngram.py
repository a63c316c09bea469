"""The n-gram baseline: a proper distribution, a hand-computed case, scored like the runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling.data.dataset import TokenData
from scaling.evaluation.ngram import KneserNey, modified_kn_discounts, run_ngram
from scaling.data.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parent.parent

# a b a b a c b c
HAND = np.array([0, 1, 0, 1, 0, 2, 1, 2])


def test_discounts_from_counts_of_counts():
    # n1 = 3, n2 = 2, n3 = 1, n4 = 1: Y = 3/7; D1 = 1 - 2Y n2/n1 = 3/7,
    # D2 = 2 - 3Y n3/n2 = 19/14, D3+ = 3 - 4Y n4/n3 = 9/7
    d = modified_kn_discounts(np.array([1, 1, 1, 2, 2, 3, 4]))
    assert d == pytest.approx([3 / 7, 19 / 14, 9 / 7], rel=1e-12)
    # no counts of 3: D2's estimate is missing, it is 2/2; each D_k stays in [0.01, k]
    d = modified_kn_discounts(np.array([1, 1, 2, 2, 2, 2, 2, 2]))
    assert d[2] == pytest.approx(1.5) and 0.01 <= d[1] <= 2.0


def test_hand_computed_bigram():
    """Corpus "a b a b a c b c", order 2, discounts (D1, D2, D3+) = (0.3, 0.6, 0.9).

    Continuation counts of the unigrams (distinct left neighbours): a {b} = 1, b {a, c} = 2,
    c {a, b} = 2, total 5; discounted mass 0.3 * 1 + 0.6 * 2 = 1.5:
        p1(a) = 0.7/5 + 1.5/5 * 1/3 = 0.24, p1(b) = p1(c) = 1.4/5 + 0.1 = 0.38.
    Bigrams after a: ab = 2, ac = 1 (total 3), mass 0.6 + 0.3 = 0.9, gamma = 0.3:
        p(b|a) = 1.4/3 + 0.3 * 0.38, p(c|a) = 0.7/3 + 0.3 * 0.38, p(a|a) = 0.3 * 0.24.
    A window's first target has no context: raw unigram counts a 3, b 3, c 2 (total 8),
    mass 0.9 + 0.9 + 0.6 = 2.4: p(a) = 2.1/8 + 2.4/8/3 = 0.3625."""
    kn = KneserNey(HAND, 2, 3, discounts=(0.3, 0.6, 0.9))
    assert kn.N_by_order == [3, 5]  # a b c; ab ba ac cb bc
    p = kn.distribution([0])
    assert p == pytest.approx([0.3 * 0.24, 1.4 / 3 + 0.3 * 0.38, 0.7 / 3 + 0.3 * 0.38], rel=1e-12)
    assert kn.distribution([]) == pytest.approx([0.3625, 2.1 / 8 + 0.1, 1.4 / 8 + 0.1], rel=1e-12)
    # scoring a window: column j from the window's tokens before it
    lp = kn.log_probs(np.array([[0, 1, 0]]))
    # p(a|b): after b come a (ba = 2) and c (bc = 1): (2 - 0.6)/3 + 0.3 * 0.24
    assert np.exp(lp[0]) == pytest.approx([0.3625, 1.4 / 3 + 0.3 * 0.38, 1.4 / 3 + 0.3 * 0.24],
                                          rel=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_probabilities_sum_to_one_for_random_contexts(order):
    rng = np.random.default_rng(order)
    V = 11  # tokens 9 and 10 never occur in training
    # a Markov-ish stream: repeats make high-order counts, so every branch is exercised
    base = rng.integers(0, 9, size=40)
    tokens = np.concatenate([base, base[::-1], rng.integers(0, 9, size=400), base])
    kn = KneserNey(tokens, order, V)
    for _ in range(25):
        length = int(rng.integers(0, order + 2))
        if rng.random() < 0.5 and length:  # a context seen in training
            start = int(rng.integers(0, len(tokens) - length))
            ctx = tokens[start:start + length]
        else:
            ctx = rng.integers(0, V, size=length)  # may hold never-seen tokens
        p = kn.distribution(ctx)
        assert np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_the_model_learns_the_structure():
    # a deterministic cycle: the trigram model is nearly certain, the unigram is not
    tokens = np.tile(np.arange(5), 200)
    hi, lo = KneserNey(tokens, 3, 5), KneserNey(tokens, 1, 5)
    assert hi.distribution([1, 2])[3] > 0.95
    assert lo.distribution([1, 2])[3] == pytest.approx(0.2, abs=0.01)


def _token_data(seq_len=8):
    rng = np.random.default_rng(0)
    tokens = np.tile(rng.integers(97, 110, size=37), 60).astype(np.uint32)
    n_train, n_val = 1500, len(tokens) - 1500
    meta = {"n_train_tokens": n_train, "n_val_tokens": n_val, "fingerprint": "x" * 64,
            "corpus": "synthetic", "train_bytes": n_train,
            "val_doc_tokens": [n_val // 3, n_val // 3, n_val - 2 * (n_val // 3)]}
    return TokenData(ByteTokenizer(), tokens, meta, seq_len)


def test_eval_loss_is_the_mean_of_minus_log_p_over_the_eval_targets(monkeypatch, tmp_path):
    data = _token_data()
    monkeypatch.setattr("scaling.data.dataset.load_corpus", lambda data_cfg, seq_len: data)
    from scaling.config import load_config

    cfg = load_config(None, ["model.seq_len=8", "train.eval_tokens=400"])
    res = run_ngram(cfg, 3, tmp_path / "ng")
    es = data.eval_set(400 // 8)
    kn = KneserNey(data.train[:data.unique_tokens + 1], 3, data.vocab_size)
    nll = []
    for i in range(es.n_windows):  # one window, one target at a time, by the definition
        w = data.val[es.starts[i]:es.starts[i] + 9].astype(np.int64)
        for t in range(8):
            ctx = w[max(0, t + 1 - 2):t + 1]
            nll.append(-np.log(kn.distribution(ctx)[w[t + 1]]))
    assert res["eval_loss"] == pytest.approx(float(np.mean(nll)), rel=1e-12)
    assert res["eval_tokens"] == es.n_windows * 8 == len(nll)
    assert res["eval_documents"] == 3 and res["eval_loss_stderr"] > 0
    assert len(res["eval_loss_by_position"]) == 8
    assert np.mean(res["eval_loss_by_position"]) == pytest.approx(res["eval_loss"], rel=1e-12)
    # the first target of a window has no context: worse than the later ones
    assert res["eval_loss_by_position"][0] > res["eval_loss_by_position"][-1]
    saved = json.loads((tmp_path / "ng" / "result.json").read_text())
    assert saved["arch"] == "ngram" and saved["order"] == 3 and saved["D"] == data.unique_tokens
    assert saved["N"] == sum(saved["N_by_order"]) == kn.n_grams and saved["C"] is None


@pytest.mark.slow
def test_cli_writes_a_result_folder(tmp_path):
    out = tmp_path / "ng"
    cmd = [sys.executable, str(ROOT / "run_sweep.py"), "ngram", str(ROOT / "experiments/tiny.toml"),
           "--order", "3", "--run-dir", str(out), "data.max_corpus_bytes=300000",
           f"data.cache_dir={tmp_path / 'cache'}", "train.eval_tokens=8192"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["arch"] == "ngram" and res["eval_tokens"] == 8192
    assert 0.5 < res["eval_loss"] < np.log(256)  # far better than uniform over bytes
    bad = subprocess.run(cmd[:5] + ["--order", "0", "--run-dir", str(tmp_path / "bad")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--order" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_sweep_spec_gives_one_data_setup_and_a_folder_inside_the_sweep(tmp_path):
    from scaling.config import ConfigError
    from scaling.evaluation.ngram import base_config, default_run_dir
    from scaling.sweep import load_spec

    spec = load_spec(ROOT / "experiments/architectures.toml")
    assert default_run_dir(spec, 5) == Path("sweeps/architectures/ngram/order5")
    assert base_config(spec).data.max_unique_tokens == 2_097_152
    tiny = load_spec(ROOT / "experiments/tiny.toml")
    assert default_run_dir(tiny, 3) == Path("runs/tiny-ngram3")
    two = tmp_path / "two.toml"  # points on two corpora: no single n-gram baseline
    two.write_text(f'base = "{ROOT / "experiments/tiny.toml"}"\n[sweep.axes]\n'
                   '"data.val_fraction" = [0.2, 0.3]\n')
    with pytest.raises(ConfigError, match="differ in \\[data\\]"):
        base_config(load_spec(two))
