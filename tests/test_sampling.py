"""Sampling: greedy determinism, top-k, lengths, the sliding window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import ModelConfig
from scaling.model import Transformer, init_params
from scaling.sampling import filter_logits, generate

CFG = ModelConfig(n_layer=1, d_model=32, n_head=2, vocab_size=48, seq_len=12, init_std=0.5)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def greedy_reference(params, prompt, n):
    """Argmax decoding by full forward passes over the (windowed) text, no buffers."""
    ids = list(prompt)
    apply = jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))
    for _ in range(n):
        window = jnp.asarray([ids[-CFG.seq_len:]], jnp.int32)
        ids.append(int(jnp.argmax(apply(params, window)[0, -1])))
    return ids[len(prompt):]


def test_lengths(params):
    for n in (0, 1, 5):
        out = generate(params, CFG, [1, 2, 3], n, temperature=1.0, seed=1)
        assert len(out) == n
        assert all(0 <= t < CFG.vocab_size for t in out)


def test_greedy_is_deterministic_and_argmax(params):
    prompt = [5, 7, 11, 2, 9, 30, 1, 4, 4, 17]
    # 6 new tokens: the text outgrows seq_len = 12, so the window slides
    a = generate(params, CFG, prompt, 6, temperature=0.0, seed=0)
    b = generate(params, CFG, prompt, 6, temperature=0.0, seed=123)
    assert a == b
    assert a == greedy_reference(params, prompt, 6)


def test_top_k_one_equals_greedy(params):
    prompt = [3, 1, 4, 1, 5]
    greedy = generate(params, CFG, prompt, 8, temperature=0.0)
    for seed in (0, 1):
        assert generate(params, CFG, prompt, 8, temperature=1.3, top_k=1, seed=seed) == greedy


def test_sampling_reproducible_and_seed_dependent(params):
    a = generate(params, CFG, [1], 20, temperature=1.0, seed=7)
    assert a == generate(params, CFG, [1], 20, temperature=1.0, seed=7)
    assert a != generate(params, CFG, [1], 20, temperature=1.0, seed=8)


def test_top_k_restricts_support(params):
    prompt = [2, 40, 41, 3, 3, 8, 19, 22, 5, 6, 7]
    out = generate(params, CFG, prompt, 8, temperature=5.0, top_k=3, seed=0)
    # every sampled token must be among the 3 most likely at its step
    ids = prompt + out
    apply = jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))
    for i in range(len(prompt), len(ids)):
        window = jnp.asarray([ids[max(0, i - CFG.seq_len):i]], jnp.int32)
        top3 = np.argsort(np.asarray(apply(params, window)[0, -1]))[-3:]
        assert ids[i] in top3


def test_filter_logits():
    logits = jnp.asarray([1.0, 3.0, 2.0, 0.0])
    f = filter_logits(logits, 1.0, 2)
    assert np.isinf(np.asarray(f)[[0, 3]]).all()
    np.testing.assert_allclose(np.asarray(f)[[1, 2]], [3.0, 2.0])
    np.testing.assert_allclose(filter_logits(logits, 2.0, 0), logits / 2)


def test_bad_arguments(params):
    with pytest.raises(ValueError):
        generate(params, CFG, [], 3)
    with pytest.raises(ValueError):
        generate(params, CFG, [CFG.vocab_size], 3)
    with pytest.raises(ValueError):
        generate(params, CFG, [1], 3, temperature=-1.0)
