"""Synthetic tasks mixed into training and evaluated per checkpoint (emergence studies).

A task generates *instances*, each a prompt and an answer (text), deterministically from a
seed. Tokens: an instance is `encode(prompt) + encode(answer) + [eot]`; prompt and answer
are encoded apart, so a BPE never merges across the boundary and the answer's tokens are
the same in training and in evaluation (any tokenizer with `encode` and `eot_id` works;
"tokens:" corpora have no text tokenizer and are refused by the config). In training a
task sequence is `[eot]` followed by instances packed end to end, cut at seq_len + 1
tokens; in evaluation the prompt is `[eot] + encode(prompt)` (what every instance of a
training row follows) and the model must produce `encode(answer) + [eot]`.

Registry (`TASKS`; the names `data.tasks` accepts):

- "addition": "a+b=" -> "c", a and b with k digits each (k = 1..5, drawn uniformly per
  instance; k = 1 includes 0, k >= 2 has no leading zero). Evaluated per k as the
  sub-tasks `addition_1` .. `addition_5`.
- "copy": "s>" -> "s", s a string of 3..8 lowercase letters. Evaluated as `copy`.

Held-out split. A problem is held out for evaluation when the first 8 bytes of
sha256("scalinglab-task:" + its key) fall below EVAL_FRACTION * 2**64. The key of an
addition problem is its *unordered* pair (so 12+345 and 345+12 are held out together);
of a copy problem its string. Training draws reject held-out problems; evaluation draws
only held-out ones. Membership depends on nothing but the problem, so train and eval are
disjoint for every seed. Evaluation instances are the same for every run (a fixed seed,
EVAL_SEED): up to `n_eval` distinct held-out problems per sub-task (k = 1 has only ~25).

Randomness is splitmix64 of integer keys (`scaling.data.order`), independent of numpy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from scaling.data.order import M64, mix64_int, window_permutation

EVAL_FRACTION = 0.25
EVAL_SEED = 20220615  # evaluation instances: the same for every run and size
_SPLIT_SALT = b"scalinglab-task:"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
ADDITION_DIGITS = (1, 2, 3, 4, 5)
COPY_LENGTHS = (3, 8)


class _Rand:
    """A stream of 64-bit integers from integer keys (splitmix64 over a counter)."""

    def __init__(self, *keys: int):
        h = 0x5CA11AB
        for k in keys:
            h = mix64_int(h ^ mix64_int(int(k) & M64))
        self.state, self.i = h, 0

    def below(self, n: int) -> int:
        self.i += 1
        return mix64_int(self.state + self.i * 0x9E3779B97F4A7C15) % n


def held_out(key: str) -> bool:
    """Whether a problem (by its key) belongs to the evaluation split."""
    h = int.from_bytes(hashlib.sha256(_SPLIT_SALT + key.encode()).digest()[:8], "big")
    return h < int(EVAL_FRACTION * 2.0**64)


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    key: str  # identity for the held-out split


def addition_problem(r: _Rand, k: int) -> Problem:
    lo = 0 if k == 1 else 10 ** (k - 1)
    span = 10 ** k - lo
    a, b = lo + r.below(span), lo + r.below(span)
    return Problem(f"{a}+{b}=", str(a + b), f"add:{min(a, b)}+{max(a, b)}")


def copy_problem(r: _Rand) -> Problem:
    n = COPY_LENGTHS[0] + r.below(COPY_LENGTHS[1] - COPY_LENGTHS[0] + 1)
    s = "".join(_LETTERS[r.below(26)] for _ in range(n))
    return Problem(f"{s}>", s, f"copy:{s}")


@dataclass(frozen=True)
class Task:
    """A task: how to draw one problem of each sub-task, and how training picks one."""

    name: str
    subtasks: tuple[str, ...]  # evaluation names, `task/<subtask>/<metric>`
    draw: Callable[[_Rand, str], Problem]  # (random stream, sub-task) -> problem

    def train_problem(self, r: _Rand) -> Problem:
        """A training problem: a uniform sub-task, held-out problems rejected."""
        sub = self.subtasks[r.below(len(self.subtasks))]
        while True:
            p = self.draw(r, sub)
            if not held_out(p.key):
                return p

    def eval_problems(self, sub: str, n: int) -> list[Problem]:
        """Up to n distinct held-out problems of `sub`, the same for every run."""
        r = _Rand(EVAL_SEED, _name_key(sub))
        seen: dict[str, Problem] = {}
        for _ in range(max(200, 40 * n)):
            p = self.draw(r, sub)
            if held_out(p.key) and p.prompt not in seen:
                seen[p.prompt] = p
                if len(seen) == n:
                    break
        return list(seen.values())


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


TASKS: dict[str, Task] = {
    "addition": Task("addition", tuple(f"addition_{k}" for k in ADDITION_DIGITS),
                     lambda r, sub: addition_problem(r, int(sub.rsplit("_", 1)[1]))),
    "copy": Task("copy", ("copy",), lambda r, sub: copy_problem(r)),
}
# scaling.config.TASK_NAMES lists these names for the config's check (tests/test_tasks.py)


N_EVAL = 200  # evaluation instances per sub-task (fewer where fewer are held out)


def eval_width(tokenizer, names: Sequence[str]) -> int:
    """The width the evaluation of the tasks `names` needs: longest [eot] + prompt plus
    longest answer + [eot] over their evaluation instances (model.seq_len must be >= it - 1;
    `scaling.train.taskeval` feeds all but the final [eot])."""
    prompt = answer = 0
    for task, sub in eval_subtasks(names):
        for p in task.eval_problems(sub, N_EVAL):
            prompt = max(prompt, len(tokenizer.encode(p.prompt)) + 1)
            answer = max(answer, len(tokenizer.encode(p.answer)) + 1)
    return prompt + answer


def instance_tokens(tokenizer, p: Problem) -> np.ndarray:
    """encode(prompt) + encode(answer) + [eot]: one instance as it is trained on."""
    return np.concatenate([np.asarray(tokenizer.encode(p.prompt), np.int64),
                           np.asarray(tokenizer.encode(p.answer), np.int64),
                           [tokenizer.eot_id]])


# --------------------------------------------------------------------------------------
# Mixing into the training stream
# --------------------------------------------------------------------------------------

_ROW_SALT = 0x7A5C5EED
_PLACE_SALT = 0x91ACE


class TaskMix:
    """Which rows of a training batch are task sequences, and their tokens.

    Per step s of batch size B, task t (fraction f_t, as an exact decimal) takes
    floor((s+1) B f_t) - floor(s B f_t) rows, so after S steps it has had exactly
    floor(S B f_t) sequences (the fraction is honoured to within one sequence at every
    step, exactly whenever S B f_t is whole). The config guarantees sum_t ceil(B f_t) <= B.
    Which rows: a hashed permutation of the B rows per (seed, step); the remaining rows
    read the corpus stream in its own order, which task rows do not consume (corpus
    sequence index = s B - task sequences before s + rank). Task sequence j of task t is a
    pure function of (seed, t, j). Everything is a pure function of (seed, step)."""

    def __init__(self, tasks: dict[str, float], tokenizer, seq_len: int):
        from fractions import Fraction

        self.names = sorted(tasks)
        self.fractions = [Fraction(str(tasks[n])) for n in self.names]
        self.tasks = [TASKS[n] for n in self.names]
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)

    def task_before(self, step: int, batch_size: int) -> list[int]:
        """Sequences of each task in steps 0 .. step-1."""
        return [int((step * batch_size * f).__floor__()) for f in self.fractions]

    def corpus_before(self, step: int, batch_size: int) -> int:
        return step * batch_size - sum(self.task_before(step, batch_size))

    def layout(self, step: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(task index per row, -1 for corpus; sequence index within its stream per row)."""
        before = self.task_before(step, batch_size)
        after = self.task_before(step + 1, batch_size)
        order = window_permutation(batch_size, mix64_int(seed ^ _PLACE_SALT), step)
        which = np.full(batch_size, -1, np.int64)
        index = np.zeros(batch_size, np.int64)
        pos = 0
        for t, (b, a) in enumerate(zip(before, after)):
            rows = order[pos:pos + a - b]
            which[rows] = t
            index[rows] = b + np.arange(a - b)
            pos += a - b
        corpus = np.flatnonzero(which < 0)
        index[corpus] = self.corpus_before(step, batch_size) + np.arange(len(corpus))
        return which, index

    def row(self, t: int, j: int, seed: int) -> np.ndarray:
        """Task sequence j of task t: [eot] + instances packed, cut to seq_len + 1 tokens."""
        r = _Rand(seed, _ROW_SALT, _name_key(self.names[t]), j)
        parts, n = [np.array([self.tokenizer.eot_id], np.int64)], 1
        while n < self.seq_len + 1:
            inst = instance_tokens(self.tokenizer, self.tasks[t].train_problem(r))
            parts.append(inst)
            n += len(inst)
        return np.concatenate(parts)[: self.seq_len + 1].astype(np.int32)


def eval_subtasks(names: Sequence[str]) -> list[tuple[Task, str]]:
    """(task, sub-task) pairs evaluated for the configured task names, in a fixed order."""
    return [(TASKS[n], sub) for n in sorted(names) for sub in TASKS[n].subtasks]
