"""Evaluation during a run: the evaluator and the rules for when the curve is evaluated.

Evaluation uses the corpus's fixed eval set (`TokenData.eval_set`): a uniform sample of
the validation windows (drawn by `data.eval_seed`), the same for every run of a corpus, so
the loss estimates the per-token held-out loss. The final evaluation uses
`train.eval_tokens` of it; the evaluations along the learning curve use its first
`train.curve_eval_tokens` (a prefix, again a uniform sample: the same estimand). Each
records the loss, its standard error (cluster-robust over documents), how many tokens and
documents it covered, the estimand and the set's id; the final one also its loss sum and
tokens per document (`eval_by_document`) and its loss on the curve windows.
"""

from __future__ import annotations

import numpy as np

from scaling.train.taskeval import TaskEvaluator
from scaling.train.prepare import Setup


class Evaluator:
    """Loss on the corpus's fixed eval set (`data.eval_seed`'s draw): the whole
    `eval_tokens` sample at the end of a run, its first `curve_eval_tokens` along the
    learning curve. Both are uniform samples of the validation windows, so both estimate
    the per-token held-out loss; the final eval also records its per-document sums
    (`eval_by_document`) and its loss on the curve set's windows (`eval_loss_on_curve_set`,
    what the curve evals are compared with)."""

    def __init__(self, s: Setup, eval_fn):
        t, T = s.cfg.train, s.cfg.model.seq_len
        self.s, self.eval_fn = s, eval_fn
        self.final_set = s.data.eval_set(max(1, t.eval_tokens // T), s.cfg.data.eval_seed)
        curve = t.curve_eval_tokens or t.eval_tokens
        curve_windows = max(1, min(curve, t.eval_tokens) // T)
        self.curve_set = self.final_set.prefix(min(curve_windows, self.final_set.n_windows))
        self.tasks = (TaskEvaluator(list(s.cfg.data.tasks), s.data.tokenizer,
                                    s.trainer.model_config) if s.cfg.data.tasks else None)

    def __call__(self, params, final: bool) -> dict[str, float]:
        es = self.final_set if final else self.curve_set
        d, B = self.s.driver, self.s.cfg.train.batch_size
        index, count = d.batch_shard
        rows = B // count
        per_position = self.s.cfg.train.eval_per_position  # eval_fn returns (losses, [B, T])
        losses, positions = [], []
        for i in range(es.n_batches(B)):
            batch, weights = es.batch(i, B)
            out = self.eval_fn(params, d.place_batch(batch[index * rows:(index + 1) * rows]))
            losses.append(d.fetch_array(out[0] if per_position else out)[weights > 0])
            if per_position and final:
                positions.append(d.fetch_array(out[1])[weights > 0])
        window_losses = np.concatenate(losses)
        summary = es.summarize(window_losses, by_document=final)
        if final:  # the curve set is the final set's prefix: its loss at the end, like for like
            k = self.curve_set.n_windows
            summary["eval_loss_on_curve_set"] = self.curve_set.summarize(window_losses[:k])["eval_loss"]
        if positions:
            summary.update(es.summarize_positions(np.concatenate(positions)))
        if self.tasks is not None:  # data.tasks: task/<sub-task>/<metric> (scaling.train.taskeval)
            tree = self.s.trainer.params_tree(params if d.kind == "none" else d.fetch_state(params))
            summary.update(self.tasks(tree))
        return summary


def curve_eval_step(t, step: int) -> bool:
    """Whether a run of train config `t` evaluates the curve set after `step` (not the last)."""
    return (bool(t.eval_every) and step % t.eval_every == 0 or step in t.extra_eval_steps) \
        and step < t.steps


def curve_set_id(s: Setup) -> str:
    """The id of the windows this run's curve evals score (as `Evaluator` picks them)."""
    t, T = s.cfg.train, s.cfg.model.seq_len
    windows = max(1, min(t.curve_eval_tokens or t.eval_tokens, t.eval_tokens) // T)
    return s.data.eval_set(min(windows, max(1, t.eval_tokens // T)), s.cfg.data.eval_seed).set_id
