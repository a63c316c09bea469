"""The eval set: round-robin over documents, fixed, padded batches, cluster-robust stderr."""

import numpy as np
import pytest

from scaling.evalset import (EvalSet, build_eval_set, cluster_robust_stderr,
                             round_robin_order, window_documents)


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


def test_round_robin_spreads_every_prefix():
    docs = np.repeat([0, 1, 2, 3], [5, 1, 3, 2])
    order = round_robin_order(docs)
    assert sorted(order.tolist()) == list(range(len(docs)))
    assert docs[order].tolist() == [0, 1, 2, 3, 0, 2, 3, 0, 2, 0, 0]
    assert not np.array_equal(order[docs[order] == 0], np.arange(5))  # hashed inside a doc


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
    assert es.n_windows == 40 and es.tokens == 320 and es.n_documents == 4
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
    assert isinstance(p, EvalSet) and p.n_windows == 4 and p.n_documents == 4
    assert np.array_equal(p.starts, es.starts[:4]) and np.array_equal(synthetic_set(4).starts,
                                                                       p.starts)
    losses = np.linspace(1.0, 2.0, es.n_windows)
    s = es.summarize(losses)
    assert s["eval_loss"] == pytest.approx(losses.mean())
    assert s["eval_loss_stderr"] == pytest.approx(cluster_robust_stderr(losses, es.documents))
    assert (s["eval_tokens"], s["eval_windows"], s["eval_documents"]) == (480, 60, 4)
    with pytest.raises(ValueError, match="window losses"):
        es.summarize(losses[:-1])
