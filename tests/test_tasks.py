"""Synthetic tasks (scaling/data/tasks.py), their mixing into batches and their metrics
(scaling/train/taskeval.py): deterministic, disjoint, exact, and absent when not asked for."""

import math
from pathlib import Path

import numpy as np
import pytest

from scaling.config import ConfigError, from_dict, load_config
from scaling.data.corpora import DataError
from scaling.data.dataset import TokenData, make_task_mix
from scaling.data.order import window_permutation
from scaling.data.tasks import TASKS, TaskMix, _Rand, held_out
from scaling.train.taskeval import levenshtein, metrics_of
from scaling.data.tokenizer import ByteTokenizer

EOT = 0


def synthetic(n_tokens=5000, seq_len=32, n_val=100) -> TokenData:
    """TokenData over the stream 0, 1, 2, ... (as tests/test_data.py)."""
    tokens = np.arange(n_tokens + n_val, dtype=np.uint32)
    meta = {"n_train_tokens": n_tokens, "n_val_tokens": n_val, "fingerprint": "x" * 64,
            "corpus": "synthetic", "train_bytes": n_tokens}
    return TokenData(ByteTokenizer(), tokens, meta, seq_len)


def reference_batch(data: TokenData, step: int, B: int, seed: int) -> np.ndarray:
    """The documented batch formula (scaling/data/dataset.py, 'Batches'), written out again."""
    out = []
    for row in range(B):
        p = step * B + row
        epoch, w = divmod(p, data.n_windows)
        start = int(window_permutation(data.n_windows, seed, epoch)[w]) * data.seq_len
        out.append(np.asarray(data._used[start:start + data.seq_len + 1], np.int32))
    return np.stack(out)


def prompts_in(row: np.ndarray) -> list[str]:
    """The complete 'a+b=' / 's>' prompts of a byte-tokenized task row."""
    text = bytes(np.asarray(row, np.uint8)).decode()
    parts = text.split("\0")[1:-1]  # the first is empty, the last may be cut
    return [p[:p.index("=") + 1] if "=" in p else p[:p.index(">") + 1] for p in parts]


# ---- generation: deterministic, disjoint ---------------------------------------------


def test_task_rows_are_deterministic_from_the_seed():
    tok = ByteTokenizer()
    a = TaskMix({"addition": 0.25, "copy": 0.1}, tok, 64)
    b = TaskMix({"copy": 0.1, "addition": 0.25}, tok, 64)
    for t in range(2):
        for j in (0, 7, 123456):
            assert np.array_equal(a.row(t, j, seed=3), b.row(t, j, seed=3))
    assert not np.array_equal(a.row(0, 5, seed=3), a.row(0, 5, seed=4))
    assert not np.array_equal(a.row(0, 5, seed=3), a.row(0, 6, seed=3))
    row = a.row(0, 5, seed=3)
    assert row.shape == (65,) and row.dtype == np.int32 and row[0] == EOT
    text = bytes(row.astype(np.uint8)).decode()
    first = text.split("\0")[1]
    x, rest = first.split("+")
    y, z = rest.split("=")
    assert int(x) + int(y) == int(z)  # a correct instance
    for sub in TASKS["addition"].subtasks + ("copy",):
        task = TASKS["copy" if sub == "copy" else "addition"]
        assert task.eval_problems(sub, 50) == task.eval_problems(sub, 50)


def test_train_and_eval_instances_are_disjoint():
    tok = ByteTokenizer()
    mix = TaskMix({"addition": 0.5, "copy": 0.25}, tok, 128)
    for t, name in enumerate(mix.names):
        task = TASKS[name]
        evals = {p.prompt for sub in task.subtasks for p in task.eval_problems(sub, 200)}
        eval_keys = {p.key for sub in task.subtasks for p in task.eval_problems(sub, 200)}
        assert all(held_out(k) for k in eval_keys)
        trained = {p for j in range(600) for p in prompts_in(mix.row(t, j, seed=0))}
        assert len(trained) > 1000
        assert not trained & evals
        if name == "addition":
            # the split is by unordered pair: b+a is held out with a+b
            swapped = {f"{q[:-1].split('+')[1]}+{q[:-1].split('+')[0]}=" for q in evals}
            assert not trained & swapped
            # one-digit addition: every problem is either trained on or held out
            one = {f"{a}+{b}=" for a in range(10) for b in range(10)}
            held = {q for q in evals if q in one}
            assert 15 <= len(held) <= 40 and one - held <= trained


# ---- mixing ---------------------------------------------------------------------------


@pytest.mark.parametrize("tasks,B", [({"addition": 0.1}, 8), ({"addition": 0.3, "copy": 0.15}, 16),
                                     ({"copy": 0.5}, 3)])
def test_the_mixing_fraction_is_honoured_exactly(tasks, B):
    from fractions import Fraction

    mix = TaskMix(tasks, ByteTokenizer(), 32)
    counts = np.zeros(len(mix.names), int)
    corpus_seen = []
    for step in range(200):
        which, seq = mix.layout(step, B, seed=1)
        for t in range(len(mix.names)):
            rows = which == t
            # task sequence indices continue where the last step left off
            assert sorted(seq[rows]) == list(range(counts[t], counts[t] + rows.sum()))
            counts[t] += rows.sum()
            assert counts[t] == math.floor((step + 1) * B * Fraction(str(tasks[mix.names[t]])))
        corpus_seen += list(seq[which < 0])
    # the corpus stream is read in order, without gaps, by the rows tasks leave
    assert corpus_seen == list(range(len(corpus_seen)))
    assert len(corpus_seen) == 200 * B - counts.sum()
    # over 200 steps the fraction is exact: 200 B f is a whole number here
    for t, name in enumerate(mix.names):
        assert counts[t] == 200 * B * Fraction(str(tasks[name]))


def test_mixed_batches_hold_task_rows_and_the_corpus_in_order():
    data = synthetic(seq_len=32)
    plain = [data.train_batch(s, 8, seed=2) for s in range(6)]
    data.tasks = TaskMix({"addition": 0.25}, ByteTokenizer(), 32)
    corpus_rows = []
    for s in range(6):
        b = data.train_batch(s, 8, seed=2)
        halves = [data.train_batch(s, 8, seed=2, shard=(i, 2)) for i in range(2)]
        assert np.array_equal(np.concatenate(halves), b)  # shards concatenate to the batch
        which, _ = data.tasks.layout(s, 8, seed=2)
        assert (which == 0).sum() == 2
        for r in np.flatnonzero(which == 0):
            assert b[r, 0] == EOT and b"+" in bytes(b[r].astype(np.uint8))
        corpus_rows += list(b[which < 0])
    # the corpus rows are the tasks-free stream's first rows, in order
    assert np.array_equal(np.stack(corpus_rows), np.concatenate(plain)[:len(corpus_rows)])
    again = synthetic(seq_len=32)  # a fresh process resuming at step 4 sees the same batch
    again.tasks = TaskMix({"addition": 0.25}, ByteTokenizer(), 32)
    assert np.array_equal(again.train_batch(4, 8, seed=2), data.train_batch(4, 8, seed=2))
    pos = data.position(6, 8)
    assert pos["task_sequences_seen"] == 12 and pos["sequences_seen"] == 48


def test_batches_without_tasks_are_unchanged():
    data = synthetic(n_tokens=3000, seq_len=16)
    assert data.tasks is None
    for step in (0, 1, 7, 40):  # 40 x 8 rows: past the first epoch (187 windows)
        for B in (1, 8):
            assert np.array_equal(data.train_batch(step, B, seed=5), reference_batch(data, step, B, 5))
    assert "task_sequences_seen" not in data.position(3, 8)
    # the key is left out of point ids at its default: old sweeps keep their folders
    assert "tasks" not in from_dict({}).semantic_dict()["data"]
    from scaling.sweep.points import point_id
    assert point_id(from_dict({})) == point_id(from_dict({"data": {"tasks": {}}}))
    assert point_id(from_dict({})) != point_id(from_dict({"data": {"tasks": {"addition": 0.1}}}))


# ---- metrics on hand-made predictions --------------------------------------------------


def test_levenshtein():
    assert levenshtein([], []) == 0
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0
    assert levenshtein([1, 2, 3], [1, 3]) == 1
    assert levenshtein([1, 2, 3], [3, 2, 1]) == 2
    assert levenshtein([], [4, 5]) == 2
    assert levenshtein([7, 8, 9, 0], [1, 2]) == 4


def test_each_metric_on_hand_made_predictions():
    answers = [[5, 6, EOT], [7, EOT]]  # answers with their closing eot; padded width A = 4
    target = np.array([[5, 6, EOT, 0], [7, EOT, 0, 0]])
    hit = np.array([[True, False, True, True], [True, True, False, False]])
    logp = np.array([[-0.1, -2.0, -0.3, -9.0], [-0.5, -0.25, -9.0, -9.0]])
    # instance 0: greedy says 5 9 eot -> one substitution; instance 1: 7 eot exactly
    greedy = np.array([[5, 9, EOT, 3], [7, EOT, 4, 4]])
    m = metrics_of(answers, logp, hit, greedy, EOT)
    assert m["exact_match"] == 0.5
    assert m["exact_match_stderr"] == pytest.approx(math.sqrt(0.25 / 2))
    assert m["token_accuracy"] == pytest.approx(4 / 5)  # pooled over the 5 answer tokens
    assert m["edit_distance"] == pytest.approx(0.5)
    assert m["edit_distance_stderr"] == pytest.approx(0.5)  # std([1, 0]) / sqrt(2)
    assert m["answer_logprob"] == pytest.approx(((-2.4) + (-0.75)) / 2)
    assert m["answer_tokens"] == 2.5 and m["n"] == 2
    # position-wise independence: each answer length alone; length 3: 1 x 0 x 1, length 2: 1 x 1
    assert m["exact_match_independent"] == pytest.approx((0.0 + 1.0) / 2)
    # a greedy output that stops early, or runs on without eot
    m = metrics_of([[5, 6, EOT]], logp[:1], hit[:1], np.array([[5, EOT, 1, 1]]), EOT)
    assert m["exact_match"] == 0 and m["edit_distance"] == 1
    m = metrics_of([[5, 6, EOT]], logp[:1], hit[:1], np.array([[1, 1, 1, 1]]), EOT)
    assert m["edit_distance"] == 3  # only the first L = 3 tokens count
    m = metrics_of([[5, 6, EOT]] * 3, np.zeros((3, 4)), np.ones((3, 4), bool),
                   np.tile(target[0], (3, 1)), EOT)
    assert m["exact_match"] == 1 and m["token_accuracy"] == 1 and m["edit_distance"] == 0
    assert m["answer_logprob"] == 0 and m["exact_match_stderr"] == 0
    # two answers of length 2: position 0 right in one, position 1 right in the other;
    # pooled p = 1/2 gives p^L = 1/4, positions give 1/2 x 1/2 = 1/4 too; a third answer
    # with both right: positions 2/3 x 2/3 = 4/9, while exact match is 1/3
    hit = np.array([[True, False], [False, True], [True, True]])
    m = metrics_of([[1, EOT]] * 3, np.zeros((3, 2)), hit, np.array([[1, 2], [2, EOT], [1, EOT]]), EOT)
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["exact_match_independent"] == pytest.approx(4 / 9)
    assert 0 < m["exact_match_independent_stderr"] < 0.5


# ---- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("tasks,words", [
    ({"addtion": 0.1}, ["data.tasks", "'addtion'", "allowed", "'addition'", "'copy'"]),
    ({"addition": 0.0}, ["data.tasks.addition", "(0, 1)"]),
    ({"addition": 1.5}, ["data.tasks.addition", "(0, 1)"]),
    ({"addition": 0.6, "copy": 0.4}, ["data.tasks", "sum to 1", "< 1"]),
    ({"addition": "lots"}, ["data.tasks.addition", "number"]),
    ("addition", ["data.tasks", "table"]),
])
def test_bad_tasks_are_refused_naming_the_field(tasks, words):
    with pytest.raises(ConfigError) as e:
        from_dict({"data": {"tasks": tasks}})
    for w in words:
        assert w in str(e.value)


def test_tasks_that_cannot_fit_a_batch_or_a_sequence_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size = 1"):  # 2 rows in one step
        from_dict({"data": {"tasks": {"addition": 0.4, "copy": 0.4}}, "train": {"batch_size": 1}})
    with pytest.raises(ConfigError, match="data.tasks with data.objective = 'mlm'"):
        from_dict({"data": {"tasks": {"addition": 0.1}, "objective": "mlm"},
                   "model": {"arch": "encoder"}})
    with pytest.raises(ConfigError, match="pre-tokenized"):
        from_dict({"data": {"tasks": {"addition": 0.1}, "corpus": "tokens:/x",
                            "tokens_vocab_size": 300}})
    with pytest.raises(DataError, match="model.seq_len = 16 must be >= 19"):
        make_task_mix({"addition": 0.1}, ByteTokenizer(), 16)
    with pytest.raises(ConfigError, match="model.seq_len"):  # before anything is written
        from scaling.train.loop import train
        cfg = load_config(None, ["model.n_layer=1", "model.d_model=32", "model.n_head=2",
                                 "model.seq_len=16", "data.max_corpus_bytes=300000",
                                 f"data.cache_dir={tmp_path / 'cache'}", "train.steps=5",
                                 "optim.warmup_steps=1", "train.eval_tokens=64",
                                 "data.tasks={addition=0.25}"])
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bpe_instances_encode_prompt_and_answer_apart(tmp_path):
    from scaling.data.tokenizer import BPETokenizer
    from scaling.train.taskeval import TaskEvaluator
    from scaling.config import ModelConfig

    texts = [f"{a}+{b}={a + b} abc>abc" for a in range(50) for b in range(50)]
    tok = BPETokenizer.train(texts, 300)
    mix = make_task_mix({"addition": 0.2}, tok, 64)
    row = mix.row(0, 0, seed=0)
    assert row[0] == tok.eot_id and len(row) == 65
    p = TASKS["addition"].eval_problems("addition_2", 1)[0]
    ev = TaskEvaluator(["addition"], tok, ModelConfig(seq_len=64, vocab_size=300))
    i = sum(n for _, n in ev.subtasks[:1])  # the first addition_2 instance
    assert ev.answers[i] == [*tok.encode(p.answer), tok.eot_id]
    assert list(ev.tokens[i, :ev.plen[i]]) == [tok.eot_id, *tok.encode(p.prompt)]


# ---- end to end -------------------------------------------------------------------------


def test_a_run_with_tasks_reports_every_metric(tmp_path):
    from scaling.train.loop import train
    from scaling.runs.runfiles import read_metrics

    # the model and batch of tests/test_loop.py's runs: their compiled step and eval
    cfg = load_config(None, ["model.n_layer=2", "model.d_model=32", "model.n_head=2",
                             "model.seq_len=32", "data.max_corpus_bytes=300000",
                             f"data.cache_dir={tmp_path / 'cache'}", "train.steps=6",
                             "train.batch_size=8", "train.eval_every=3", "train.log_every=1",
                             "optim.warmup_steps=1", "train.eval_tokens=256",
                             "train.progress=false", "data.tasks={addition=0.25,copy=0.125}"])
    r = train(cfg, tmp_path / "run")
    subs = [f"addition_{k}" for k in range(1, 6)] + ["copy"]
    for sub in subs:
        for m in ("exact_match", "token_accuracy", "edit_distance", "answer_logprob"):
            assert math.isfinite(r[f"task/{sub}/{m}"]) and math.isfinite(r[f"task/{sub}/{m}_stderr"])
        assert 0 <= r[f"task/{sub}/token_accuracy"] <= 1 and r[f"task/{sub}/answer_logprob"] < 0
    evals = [row for row in read_metrics(tmp_path / "run") if "eval_loss" in row]
    assert len(evals) == 2 and all("task/copy/exact_match" in row for row in evals)
    from scaling.runs.results import point_row
    row = point_row("s", tmp_path / "run")  # the results table gets one column per key
    assert row["task/addition_3/token_accuracy"] == r["task/addition_3/token_accuracy"]


def test_config_knows_every_task_by_name():
    # the config checks data.tasks against its own list, without importing the tasks
    from scaling.config import TASK_NAMES
    from scaling.data.tasks import TASKS

    assert tuple(TASKS) == TASK_NAMES
