"""Task evaluation: held-out instances of `data.tasks`, scored four ways (emergence studies).

For every sub-task (`scaling.data.tasks`: addition_1 .. addition_5, copy) a fixed set of up to
N_EVAL held-out instances, the same for every run, is fed as `[eot] + prompt` and scored:

- `exact_match`: greedy decoding (argmax, len(answer) tokens) reproduces the answer and
  its closing [eot] exactly; stderr binomial, sqrt(p (1 - p) / n).
- `token_accuracy`: teacher-forced, per answer token (the [eot] included): argmax ==
  target, pooled over all answer tokens; stderr clustered by instance.
- `edit_distance`: token Levenshtein distance between the greedy output (its first L
  tokens, L = len(answer + [eot]), cut after a first [eot]) and answer + [eot], mean over
  instances (so in [0, L]); stderr over instances.
- `answer_logprob`: log-probability (nats) of the whole correct answer + [eot] given the
  prompt, mean over instances; stderr over instances.

Plus `exact_match_independent`: the exact match that the per-*position* accuracies predict
if token errors were independent (within each answer length, the product over positions j
of the teacher-forced hit rate at j; mean over instances; stderr by a bootstrap over
instances) -- unlike p^L with the pooled p it does not count an easy closing [eot] as
evidence about the hard digits; `answer_tokens` (mean L, the answer's tokens with [eot])
and `n` (instances). `exact_match_excess_positions` and `exact_match_excess_pl`: EM minus
each prediction from the hit matrix (all-right rows), with a paired bootstrap over instances
(`_stderr`, `_lo`/`_hi` 95 %), and `exact_match_excess_positions_p`: a permutation test of
independent position errors (scaling/train/taskstats.py). Keys: `task/<sub-task>/<metric>` and
`task/<sub-task>/<metric>_stderr`. Greedy output equals the answer iff every
teacher-forced argmax is right, so exact match is the product of the per-token hits.

Shapes are fixed: every instance of every sub-task is padded to one width W (longest
prompt + longest answer) and scored in batches of EVAL_BATCH rows by one jitted function
per model shape; decoding is a fori_loop of full forwards (no KV cache, W is ~20 tokens).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaling import models
from scaling.config import ModelConfig
from scaling.data.tasks import N_EVAL, eval_subtasks
from scaling.train.taskstats import paired_excess, permutation_p

EVAL_BATCH = 128
METRICS = ("exact_match", "token_accuracy", "edit_distance", "answer_logprob")


@functools.partial(jax.jit, static_argnames=("cfg", "a_max"))
def _score(params, tokens_BxW, plen_B, answer_BxA, *, cfg: ModelConfig, a_max: int):
    """(log p of each answer token, teacher-forced argmax hit, greedy tokens), each [B, A]."""
    model = models.build(cfg)
    B, W = tokens_BxW.shape
    j_A = jnp.arange(a_max)
    pos_BxA = plen_B[:, None] - 1 + j_A[None, :]  # the positions that predict the answer
    rows_B1 = jnp.arange(B)[:, None]

    logits = model.apply({"params": params}, tokens_BxW[:, :-1]).astype(jnp.float32)
    lg_BxAxV = logits[rows_B1, pos_BxA]
    logp_BxA = jnp.take_along_axis(jax.nn.log_softmax(lg_BxAxV), answer_BxA[..., None],
                                   axis=-1)[..., 0]
    hit_BxA = jnp.argmax(lg_BxAxV, axis=-1) == answer_BxA

    col_W = jnp.arange(W)[None, :]
    buf = jnp.where(col_W < plen_B[:, None], tokens_BxW, 0)  # the prompt alone

    def step(j, buf):
        lg = model.apply({"params": params}, buf[:, :-1])
        p_B = plen_B - 1 + j
        nxt = jnp.argmax(lg[jnp.arange(B), p_B].astype(jnp.float32), axis=-1).astype(buf.dtype)
        return buf.at[jnp.arange(B), p_B + 1].set(nxt)

    buf = jax.lax.fori_loop(0, a_max, step, buf)
    greedy_BxA = buf[rows_B1, pos_BxA + 1]
    return logp_BxA, hit_BxA, greedy_BxA


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Token edit distance (insertions, deletions, substitutions, each 1)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cut_at(tokens: Sequence[int], eot: int) -> list[int]:
    """Greedy output up to and including its first [eot] (all of it if none)."""
    out = []
    for t in tokens:
        out.append(int(t))
        if t == eot:
            break
    return out


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def metrics_of(answers: list[list[int]], logp: np.ndarray, hit: np.ndarray,
               greedy: np.ndarray, eot: int) -> dict[str, float]:
    """The four metrics (and their stderr) of one sub-task from per-token arrays [n, A]
    (entries past each answer's length are ignored); `answers` include the final [eot]."""
    n = len(answers)
    lens = np.array([len(a) for a in answers])
    mask = np.arange(hit.shape[1])[None, :] < lens[:, None]
    hits_i = (hit & mask).sum(1)
    exact = np.array([list(map(int, greedy[i, :lens[i]])) == answers[i] for i in range(n)],
                     dtype=float)
    edit = np.array([levenshtein(cut_at(greedy[i, :lens[i]], eot), answers[i])
                     for i in range(n)], float)
    lp = np.where(mask, logp, 0.0).sum(1)
    p = hits_i.sum() / lens.sum()
    # pooled ratio estimator, clustered by instance
    tok_se = (math.sqrt(n / (n - 1) * ((hits_i - p * lens) ** 2).sum()) / lens.sum()
              if n > 1 else float("nan"))
    em = exact.mean()
    out = {"exact_match": float(em), "exact_match_stderr": math.sqrt(em * (1 - em) / n),
           "token_accuracy": float(p), "token_accuracy_stderr": tok_se}
    out["edit_distance"], out["edit_distance_stderr"] = _mean_se(edit)
    out["answer_logprob"], out["answer_logprob_stderr"] = _mean_se(lp)
    out["exact_match_independent"], out["exact_match_independent_stderr"] = \
        _independent(hit & mask, lens)
    # EM minus each prediction, paired over instances (scaling/train/taskstats.py); from the hits
    pe = paired_excess(hit & mask, lens)
    for k in ("positions", "pl"):
        out[f"exact_match_excess_{k}"] = pe[k]
        out[f"exact_match_excess_{k}_stderr"] = pe[f"{k}_se"]
        out[f"exact_match_excess_{k}_lo"], out[f"exact_match_excess_{k}_hi"] = pe[f"{k}_lo"], pe[f"{k}_hi"]
    out["exact_match_excess_positions_p"] = permutation_p(hit & mask, lens)
    out["answer_tokens"] = float(lens.mean())
    out["n"] = n
    return out


def _independent(hit: np.ndarray, lens: np.ndarray, n_boot: int = 200) -> tuple[float, float]:
    """Mean over instances of prod_j p_j (p_j: hit rate at answer position j among answers
    of the same length), and its stderr over a bootstrap of the instances (fixed seed)."""
    def predict(idx):
        total = 0.0
        for L in np.unique(lens[idx]):
            rows = idx[lens[idx] == L]
            total += len(rows) * float(np.prod(hit[rows, :L].mean(0)))
        return total / len(idx)

    n = len(lens)
    est = predict(np.arange(n))
    rng = np.random.default_rng(0)
    boots = [predict(rng.integers(0, n, n)) for _ in range(n_boot)] if n > 1 else []
    return est, (float(np.std(boots, ddof=1)) if boots else float("nan"))


class TaskEvaluator:
    """The fixed held-out instances of the configured tasks, and their scoring."""

    def __init__(self, task_names: Sequence[str], tokenizer, model_cfg: ModelConfig,
                 n_eval: int = N_EVAL):
        self.cfg, self.eot = model_cfg, int(tokenizer.eot_id)
        prompts, answers, self.subtasks = [], [], []
        for task, sub in eval_subtasks(task_names):
            probs = task.eval_problems(sub, n_eval)
            self.subtasks.append((sub, len(probs)))
            for p in probs:
                prompts.append([self.eot, *map(int, tokenizer.encode(p.prompt))])
                answers.append([*map(int, tokenizer.encode(p.answer)), self.eot])
        self.answers = answers
        self.a_max = max(len(a) for a in answers)
        W = max(len(p) for p in prompts) + self.a_max
        if W - 1 > model_cfg.seq_len:
            raise ValueError(f"task instances need {W - 1} input tokens > model.seq_len = "
                             f"{model_cfg.seq_len}")
        n = len(prompts)
        n_pad = -n % EVAL_BATCH
        self.tokens = np.zeros((n + n_pad, W), np.int32)
        self.answer = np.zeros((n + n_pad, self.a_max), np.int32)
        self.plen = np.ones(n + n_pad, np.int32)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            self.tokens[i, :len(p) + len(a)] = p + a
            self.answer[i, :len(a)] = a
            self.plen[i] = len(p)
        self.n = n

    def __call__(self, params) -> dict[str, float]:
        """`task/<sub-task>/<metric>` for the (host or single-device) parameters `params`."""
        outs = [[], [], []]
        for s in range(0, len(self.tokens), EVAL_BATCH):
            sl = slice(s, s + EVAL_BATCH)
            res = _score(params, self.tokens[sl], self.plen[sl], self.answer[sl],
                         cfg=self.cfg, a_max=self.a_max)
            for o, r in zip(outs, res):
                o.append(np.asarray(r))
        logp, hit, greedy = (np.concatenate(o)[:self.n] for o in outs)
        result: dict[str, float] = {}
        start = 0
        for sub, k in self.subtasks:
            sl = slice(start, start + k)
            m = metrics_of(self.answers[sl], logp[sl], hit[sl], greedy[sl], self.eot)
            result.update({f"task/{sub}/{name}": v for name, v in m.items()})
            start += k
        return result
