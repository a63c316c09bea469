"""The eval set: a uniform sample of windows (per-token estimand), fixed, padded batches,
cluster-robust stderr, per-document sums, and the loop's use of it."""

import numpy as np
import pytest

from scaling.data.evalset import (EVAL_ESTIMAND, EvalSet, build_eval_set, cluster_robust_stderr,
                             hashed_order, window_documents)


def test_cluster_robust_stderr_by_hand():
    # three documents: windows (1, 3), (2,), (6, 6, 6); mean = 24 / 6 = 4
    losses = np.array([1.0, 3.0, 2.0, 6.0, 6.0, 6.0])
    docs = np.array([0, 0, 1, 2, 2, 2])
    # residual sums per document: (1-4)+(3-4) = -4, (2-4) = -2, 3 * (6-4) = 6
    # SE^2 = G/(G-1) * sum e_g^2 / n^2 = 3/2 * (16 + 4 + 36) / 36 = 7/3
    assert cluster_robust_stderr(losses, docs) == pytest.approx(np.sqrt(7 / 3), rel=1e-12)
    # treating the six windows as independent would understate it: sd / sqrt(6) = 0.93
    assert losses.std(ddof=1) / np.sqrt(6) < 0.7 * np.sqrt(7 / 3)
    # one window per document: the ordinary standard error of the mean
    x = np.array([1.0, 2.0, 4.0, 7.0])
    assert cluster_robust_stderr(x, np.arange(4)) == pytest.approx(
        x.std(ddof=1) / np.sqrt(4), rel=1e-12)
    # cluster labels are names, not positions
    assert cluster_robust_stderr(losses, docs * 7 + 100) == pytest.approx(np.sqrt(7 / 3))
    assert np.isnan(cluster_robust_stderr(x, np.zeros(4, dtype=int)))


def test_hashed_order_is_a_seeded_permutation():
    order = hashed_order(1000)
    assert sorted(order.tolist()) == list(range(1000))
    assert np.array_equal(order, hashed_order(1000))  # a pure function
    assert not np.array_equal(order[:50], np.sort(order[:50]))
    other = hashed_order(1000, eval_seed=1)
    assert sorted(other.tolist()) == list(range(1000))
    # another seed draws another sample: the first 100 share about 100 * 100/1000 windows
    assert len(set(order[:100]) & set(other[:100])) < 30
    with pytest.raises(ValueError, match="eval_seed"):
        hashed_order(10, -1)


def test_window_documents_use_the_first_target():
    # documents of 10, 3 and 20 tokens; seq_len 4: windows start at 0, 4, 8, ...
    docs = window_documents(np.array([10, 3, 20]), 8, 4)
    # first targets 1, 5, 9 | 13 -> doc 2 (doc 1 holds tokens 10..12) ...
    assert docs.tolist() == [0, 0, 0, 2, 2, 2, 2, 2]


def synthetic_set(n_windows):
    val = np.arange(1000, dtype=np.uint16)
    return build_eval_set(val, np.array([100, 300, 50, 549, 1]), 8, n_windows)


def test_batches_pad_and_do_not_depend_on_batch_size():
    es = synthetic_set(40)
    assert es.n_windows == 40 and es.tokens == 320 and es.n_documents >= 3
    for b in (1, 3, 7, 40, 64):
        rows, weights = zip(*(es.batch(i, b) for i in range(es.n_batches(b))))
        rows, weights = np.concatenate(rows), np.concatenate(weights)
        assert rows.dtype == np.int32 and rows.shape[1] == 9 and weights.dtype == np.float32
        assert weights.sum() == 40 and weights[:40].all() and not weights[40:].any()
        assert np.array_equal(rows[:40, 0], es.starts) and not rows[40:].any()
        assert np.array_equal(rows[:40], es.starts[:, None] + np.arange(9))
    with pytest.raises(ValueError):
        es.batch(es.n_batches(7), 7)
    again = synthetic_set(40)
    assert np.array_equal(again.starts, es.starts)
    # capped at what the stream has: (1000 - 1) // 8 windows
    assert synthetic_set(10**6).n_windows == 124


def test_prefix_and_summary():
    es = synthetic_set(60)
    p = es.prefix(4)
    assert isinstance(p, EvalSet) and p.n_windows == 4
    assert np.array_equal(p.starts, es.starts[:4]) and np.array_equal(synthetic_set(4).starts,
                                                                       p.starts)
    assert p.set_id == synthetic_set(4).set_id != es.set_id
    losses = np.linspace(1.0, 2.0, es.n_windows)
    s = es.summarize(losses)
    assert s["eval_loss"] == pytest.approx(losses.mean())
    assert s["eval_loss_stderr"] == pytest.approx(cluster_robust_stderr(losses, es.documents))
    assert (s["eval_tokens"], s["eval_windows"]) == (480, 60)
    assert s["eval_documents"] == len(set(es.documents.tolist())) == 4
    assert s["eval_estimand"] == EVAL_ESTIMAND == "per_token" and s["eval_set_id"] == es.set_id
    assert "eval_by_document" not in s
    assert s["eval_loss_stderr_windows"] == pytest.approx(
        np.sqrt((1 - 60 / es.population) * losses.var(ddof=1) / 60))
    assert es.population == p.population == 124  # all windows of the stream
    assert build_eval_set(np.arange(1000, dtype=np.uint16), np.array([1000]), 8, 10**6).summarize(
        np.linspace(1, 2, 124))["eval_loss_stderr_windows"] == 0.0  # every window scored
    with pytest.raises(ValueError, match="window losses"):
        es.summarize(losses[:-1])


def skewed_stream(rng, T):
    """A validation stream whose few large documents are easy (low-entropy tokens) and whose
    many small ones are hard: weighting documents equally is far off the per-token loss."""
    docs, lengths = [], []
    for d in range(60):
        big = d % 12 == 0
        n = int(rng.integers(3000, 5000) if big else rng.integers(20, 200))
        vocab = 4 if big else 64  # big documents draw from 4 tokens, small ones from 64
        docs.append(rng.integers(0, vocab, n).astype(np.uint16))
        lengths.append(n)
    return np.concatenate(docs), np.array(lengths)


def unigram_losses(val, es, neg_log_p):
    """Per-window mean loss of a fixed unigram model, from the set's own batches."""
    rows = np.concatenate([es.batch(i, 64)[0][:es.n_windows - 64 * i]
                           for i in range(es.n_batches(64))])
    return neg_log_p[rows[:, 1:]].mean(axis=1)


def test_the_sample_is_unbiased_for_the_per_token_loss():
    """Against an independent computation: a unigram model's loss over every target of the
    stream's windows (no EvalSet involved), vs the sampled set over 40 eval seeds."""
    rng = np.random.default_rng(0)
    T = 16
    val, lengths = skewed_stream(rng, T)
    p = np.bincount(val, minlength=64) + 1.0
    neg_log_p = -np.log(p / p.sum())
    M = (len(val) - 1) // T
    population = neg_log_p[val[1:M * T + 1]].mean()  # every target token once, equally weighted
    # what weighting documents equally measures instead (the old round-robin estimand)
    ends = np.cumsum(lengths)
    first_target = np.arange(M) * T + 1
    doc_of_window = np.searchsorted(ends, first_target, side="right")
    per_window = neg_log_p[val[first_target[:, None] + np.arange(T)]].mean(axis=1)
    doc_means = [per_window[doc_of_window == g].mean() for g in np.unique(doc_of_window)]
    assert np.mean(doc_means) - population > 1.0  # the test can tell the two apart

    for n in (300, 60):  # the final set and a curve-sized prefix
        est, se, se_windows = [], [], []
        for seed in range(40):
            es = build_eval_set(val, lengths, T, 300, eval_seed=seed)
            if n < es.n_windows:
                es = es.prefix(n)
            s = es.summarize(unigram_losses(val, es, neg_log_p))
            est.append(s["eval_loss"])
            se.append(s["eval_loss_stderr"])
            se_windows.append(s["eval_loss_stderr_windows"])
        est = np.array(est)
        # unbiased: the mean over 40 draws is within 4 of its standard errors of the truth
        assert abs(est.mean() - population) < 4 * est.std(ddof=1) / np.sqrt(len(est)), (n, est.mean(), population)
        # the cluster-robust stderr counts the documents as drawn too (next test), so it is
        # at least the spread of redrawing windows from these fixed documents
        assert est.std(ddof=1) < 1.2 * np.median(se), (n, est.std(ddof=1), np.median(se))
        # ... and that spread is what the window-draw stderr says
        ratio = est.std(ddof=1) / np.sqrt(np.mean(np.square(se_windows)))
        assert 0.6 < ratio < 1.6, (n, ratio)
        # draws differ: the seed redraws the windows
        assert np.unique(est).size > 30


def test_the_cluster_robust_stderr_covers_redrawn_documents():
    """The stderr treats documents as drawn from a population (a held-out loss generalises
    to new documents): over 60 independent validation streams, each with its documents'
    own difficulty and heavy-tailed lengths, the estimates spread as the stderr says."""
    T, est, se = 16, [], []
    for seed in range(60):
        rng = np.random.default_rng(100 + seed)
        lengths = np.minimum((rng.pareto(1.5, 150) + 1) * 60, 6000).astype(int)
        vocabs = rng.integers(2, 64, lengths.size)  # a document's difficulty
        val = np.concatenate([rng.integers(0, v, n) for v, n in zip(vocabs, lengths)]).astype(np.uint16)
        neg_log_p = np.log(64.0) - 0.01 * np.arange(64)  # a fixed model
        es = build_eval_set(val, lengths, T, 400, eval_seed=seed)
        s = es.summarize(unigram_losses(val, es, neg_log_p))
        est.append(s["eval_loss"])
        se.append(s["eval_loss_stderr"])
    ratio = np.std(est, ddof=1) / np.sqrt(np.mean(np.square(se)))
    assert 0.6 < ratio < 1.6, ratio


def test_eval_by_document_sums_to_the_eval_loss():
    rng = np.random.default_rng(1)
    val, lengths = skewed_stream(rng, 8)
    es = build_eval_set(val, lengths, 8, 500, eval_seed=3, ident={"fingerprint": "abc"})
    losses = rng.uniform(0.5, 3.0, es.n_windows)
    s = es.summarize(losses, by_document=True)
    bd = s["eval_by_document"]
    assert set(bd) == {"doc", "tokens", "loss_sum"}
    assert bd["doc"] == sorted(set(es.documents.tolist()))  # stream indices, ascending
    assert len(bd["doc"]) == len(bd["tokens"]) == len(bd["loss_sum"]) == s["eval_documents"]
    assert sum(bd["tokens"]) == s["eval_tokens"] == 500 * 8
    assert sum(bd["loss_sum"]) / sum(bd["tokens"]) == pytest.approx(s["eval_loss"], rel=1e-12)
    g = bd["doc"][0]
    assert bd["tokens"][0] == 8 * int((es.documents == g).sum())
    assert bd["loss_sum"][0] == pytest.approx(8 * losses[es.documents == g].sum(), rel=1e-12)
    # the stderr is the CR1 of the per-document sums (what a noise model resamples)
    assert s["eval_loss_stderr"] == pytest.approx(cluster_robust_stderr(losses, es.documents))
    # weighted windows (the masked-LM eval): tokens are the weights
    sw = es.summarize(losses, weights=np.full(es.n_windows, 3.0), by_document=True)
    assert sum(sw["eval_by_document"]["tokens"]) == 3 * es.n_windows
    assert (sum(sw["eval_by_document"]["loss_sum"]) / sum(sw["eval_by_document"]["tokens"])
            == pytest.approx(sw["eval_loss"], rel=1e-12))


def test_the_set_id_names_the_windows():
    rng = np.random.default_rng(2)
    val, lengths = skewed_stream(rng, 8)

    def sid(n=100, seed=0, T=8, fp="abc"):
        return build_eval_set(val, lengths, T, n, eval_seed=seed, ident={"fingerprint": fp}).set_id

    assert len(sid()) == 16 and int(sid(), 16) >= 0
    assert sid() == sid()
    assert len({sid(), sid(n=101), sid(seed=1), sid(T=16), sid(fp="abd")}) == 5


def test_data_eval_seed_is_validated():
    from scaling.config import ConfigError, load_config

    assert load_config(None, []).data.eval_seed == 0
    assert load_config(None, ["data.eval_seed=7"]).data.eval_seed == 7
    for bad in ("-1", "1.5", "true", "'a'"):
        with pytest.raises(ConfigError, match=r"^data\.eval_seed = "):
            load_config(None, [f"data.eval_seed={bad}"])


def test_the_ngram_baseline_records_the_same_contract(monkeypatch, tmp_path):
    from scaling.config import load_config
    from scaling.data.dataset import TokenData
    from scaling.evaluation.ngram import run_ngram
    from scaling.data.tokenizer import ByteTokenizer
    import scaling.train.loop  # noqa: F401  imported before the patch: it keeps the real load_corpus

    rng = np.random.default_rng(0)
    tokens = rng.integers(97, 110, size=2500).astype(np.uint32)
    meta = {"n_train_tokens": 1500, "n_val_tokens": 1000, "fingerprint": "x" * 64,
            "corpus": "synthetic", "train_bytes": 1500, "val_doc_tokens": [100, 600, 50, 250]}
    data = TokenData(ByteTokenizer(), tokens, meta, 8)
    monkeypatch.setattr("scaling.data.dataset.load_corpus", lambda data_cfg, seq_len: data)
    for seed in (0, 1):
        cfg = load_config(None, ["model.seq_len=8", "train.eval_tokens=400",
                                 f"data.eval_seed={seed}"])
        res = run_ngram(cfg, 2, tmp_path / f"ng{seed}")
        bd = res["eval_by_document"]
        assert res["eval_estimand"] == "per_token" and res["eval_seed"] == seed
        assert res["eval_set_id"] == data.eval_set(50, seed).set_id
        assert sum(bd["tokens"]) == res["eval_tokens"] == 400
        assert sum(bd["loss_sum"]) / sum(bd["tokens"]) == pytest.approx(res["eval_loss"], rel=1e-12)
    assert data.eval_set(50, 0).set_id != data.eval_set(50, 1).set_id


EVAL_RUN = [  # the model and batch of tests/test_loop.py's runs: their compiled step and eval
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=300000", "train.batch_size=8", "train.steps=20",
    "train.log_every=5", "train.eval_every=10", "train.eval_tokens=2048",
    "train.curve_eval_tokens=512", "train.checkpoint_every=0", "train.progress=false",
    "optim.warmup_steps=3",
]


def test_the_loop_records_the_contract_and_compares_like_with_like(tmp_path, monkeypatch):
    from scaling.config import load_config
    from scaling.train.loop import train
    from scaling.train.monitor import DivergenceMonitor as _DivergenceMonitor
    from scaling.runs.results import RESULT_COLUMNS
    from scaling.runs.runfiles import read_metrics

    checked = []
    original = _DivergenceMonitor.check_final_eval

    def spy(self, final, best_curve):
        checked.append((final, best_curve))
        return original(self, final, best_curve)

    monkeypatch.setattr(_DivergenceMonitor, "check_final_eval", spy)
    r = train(load_config(None, EVAL_RUN), tmp_path / "run")
    assert r["status"] == "done"
    assert r["eval_estimand"] == "per_token" and r["eval_seed"] == 0 and len(r["eval_set_id"]) == 16
    assert 0 < r["eval_loss_stderr_windows"] < r["eval_loss_stderr"]
    bd = r["eval_by_document"]
    assert sum(bd["tokens"]) == r["eval_tokens"] == 2048 and len(bd["doc"]) == r["eval_documents"]
    assert sum(bd["loss_sum"]) / sum(bd["tokens"]) == pytest.approx(r["final_eval_loss"], rel=1e-9)
    curve = [row for row in read_metrics(tmp_path / "run")
             if "eval_loss" in row and not row["eval_final"]]
    assert [row["eval_tokens"] for row in curve] == [512]
    assert curve[0]["eval_estimand"] == "per_token" and curve[0]["eval_set_id"] != r["eval_set_id"]
    assert "eval_by_document" not in curve[0]
    # the divergence check and best_eval_loss use the final eval on the curve windows
    on_curve = r["eval_loss_on_curve_set"]
    assert on_curve != r["final_eval_loss"]
    assert checked == [(on_curve, curve[0]["eval_loss"])]
    assert r["best_eval_loss"] == min(on_curve, curve[0]["eval_loss"])
    # ... which is the loss a run with the curve set as its final set gets (same weights:
    # the eval size does not change training)
    small = train(load_config(None, EVAL_RUN + ["train.eval_tokens=512"]), tmp_path / "small")
    assert small["final_eval_loss"] == pytest.approx(on_curve, rel=1e-5)
    assert small["eval_set_id"] == curve[0]["eval_set_id"]
    # the table keeps the id and the estimand, not the per-document lists
    assert {"eval_set_id", "eval_estimand"} <= set(RESULT_COLUMNS)
    assert "eval_by_document" not in RESULT_COLUMNS
