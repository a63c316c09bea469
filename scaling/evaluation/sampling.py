"""Autoregressive generation with temperature and top-k.

    ids = generate(params, cfg, prompt_ids, 100, temperature=0.8, top_k=40, seed=0)

The model sees a fixed-size window of the last `cfg.seq_len` tokens held in an int32
buffer [1, seq_len]. While the text is shorter than the window, it sits left-aligned in
the buffer (causal attention makes the padding to its right invisible) and the logits
are read at the last real position; once it is longer, the buffer holds the last
seq_len tokens. Every step has the same shapes, so the per-token step compiles once per
(cfg, top_k, greedy); there is no KV cache (each step is a full forward of the window).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import ModelConfig
from scaling import models


def filter_logits(logits_V: jax.Array, temperature, top_k: int) -> jax.Array:
    """Temperature-scaled logits with all but the top_k largest set to -inf (top_k 0: all)."""
    logits_V = logits_V.astype(jnp.float32) / temperature
    if top_k and top_k < logits_V.shape[-1]:
        kth = jax.lax.top_k(logits_V, top_k)[0][..., -1:]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    return logits_V


@functools.partial(jax.jit, static_argnames=("cfg", "top_k", "greedy"))
def _step(params, buf_1xT, pos, key, temperature, *, cfg: ModelConfig, top_k: int,
          greedy: bool):
    """Next token after position `pos` of the window buffer."""
    logits_1xTxV = models.build(cfg).apply({"params": params}, buf_1xT)
    logits_V = jax.lax.dynamic_index_in_dim(logits_1xTxV[0], pos, axis=0, keepdims=False)
    if greedy:
        return jnp.argmax(logits_V).astype(jnp.int32)
    logits_V = filter_logits(logits_V, temperature, top_k)
    return jax.random.categorical(key, logits_V).astype(jnp.int32)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, *,
                   min_new_tokens: int = 0) -> None:
    """ConfigError naming the argument for a value generation cannot honour.

    temperature: a finite number >= 0 (nan would otherwise silently sample at 1.0);
    top_k and max_new_tokens: integers >= 0 (>= min_new_tokens).
    """
    from scaling.config import ConfigError

    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature = {temperature}: must be a finite number >= 0 "
                          "(0 is greedy decoding)")
    for name, value, low in (("top_k", top_k, 0), ("max_new_tokens", max_new_tokens, min_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            allowed = f">= {low}" + (" (0: no top-k filter)" if name == "top_k" else "")
            raise ConfigError(f"{name} = {value}: must be an integer {allowed}")


def check_samplable(cfg: ModelConfig) -> None:
    """ConfigError for a model that cannot generate left to right: the masked-LM encoder
    (bidirectional, trained to fill in masked positions, not to continue a text)."""
    from scaling.config import ConfigError

    if cfg.arch == "encoder":
        raise ConfigError(
            "model.arch = 'encoder': a masked-LM encoder attends both ways and predicts "
            "masked positions, not the next token, so it cannot sample text; sample from a "
            "run of model.arch = 'transformer' or 'lstm'")


def generate(params, cfg: ModelConfig, prompt_ids: Sequence[int], max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> list[int]:
    """The `max_new_tokens` tokens generated after the prompt (the prompt not included).

    temperature 0 is greedy decoding (argmax); top_k > 0 samples among the k most
    likely tokens; `seed` makes sampling reproducible. Bad arguments raise ConfigError
    (a ValueError) naming the argument.
    """
    check_samplable(cfg)
    check_sampling(max_new_tokens, temperature, top_k)
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("generate needs a non-empty prompt")
    if any(not 0 <= t < cfg.vocab_size for t in ids):
        raise ValueError(f"prompt token ids must lie in [0, {cfg.vocab_size})")
    T = cfg.seq_len
    greedy = temperature == 0
    temp = jnp.float32(temperature if temperature > 0 else 1.0)
    key = jax.random.key(seed)
    window = np.zeros((1, T), np.int32)
    new: list[int] = []
    for _ in range(max_new_tokens):
        tail = ids[-T:]
        window[0, : len(tail)] = tail
        window[0, len(tail):] = 0
        key, sub = jax.random.split(key)
        nxt = _step(params, jnp.asarray(window), jnp.int32(len(tail) - 1), sub, temp,
                    cfg=cfg, top_k=int(top_k), greedy=greedy)
        ids.append(int(nxt))
        new.append(ids[-1])
    return new


def sample_from_run(run_dir, prompt: str = "", *, max_new_tokens: int = 200,
                    temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> str:
    """Text generated from a run folder's newest checkpoint, after `prompt`.

    The run's own config gives the model and the tokenizer (cached with the corpus), so
    this works on a laptop for a run trained anywhere, under any driver. Bad arguments
    and folders without a checkpoint raise ConfigError before anything is loaded; nothing
    is written into the run folder.
    """
    from pathlib import Path

    from scaling.train.checkpoint import Checkpointer
    from scaling.config import ConfigError, from_dict
    from scaling.data.dataset import load_corpus
    from scaling.runs.runfiles import CONFIG_FILE, read_json
    from scaling.train.step import Trainer

    check_sampling(max_new_tokens, temperature, top_k, min_new_tokens=1)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    raw = read_json(run_dir / CONFIG_FILE)  # CorruptRunFile (a ConfigError) if garbled
    if raw is None:
        raise ConfigError(f"{run_dir} is not a run folder (no {CONFIG_FILE})")
    cfg = from_dict(raw)
    check_samplable(cfg.model)
    folder = run_dir / "checkpoints"
    if not folder.is_dir():  # never create it: sampling writes nothing
        raise ConfigError(f"{run_dir} has no checkpoint to sample from yet")
    tokenizer = load_corpus(cfg.data, cfg.model.seq_len).tokenizer
    try:  # a token-shard run reads ids: text is bad input, one line
        ids = [int(t) for t in tokenizer.encode(prompt)] if prompt else [tokenizer.eot_id]
    except ValueError as e:
        raise ConfigError(f"--prompt {prompt!r}: {e}") from None
    bad = [t for t in ids if not 0 <= t < cfg.model.vocab_size]
    if bad:
        raise ConfigError(f"--prompt {prompt!r}: token id(s) {', '.join(map(str, bad[:5]))} "
                          f"outside the model's vocabulary; allowed: 0 to "
                          f"{cfg.model.vocab_size - 1}")
    ckpt = Checkpointer(folder, keep=cfg.train.keep_checkpoints, create=False)
    restored = ckpt.restore_latest(Trainer(cfg).abstract_checkpoint())
    ckpt.close()
    if restored is None:
        raise ConfigError(f"{run_dir} has no checkpoint to sample from yet")
    state, meta = restored
    new = generate(state.params, cfg.model, ids, max_new_tokens, temperature=temperature,
                   top_k=top_k, seed=seed)
    return prompt + tokenizer.decode(new)
