"""Sampling: greedy determinism, top-k, lengths, the sliding window."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import ModelConfig
from scaling.models import init_params
from scaling.models.transformer import Transformer
from scaling.evaluation.sampling import filter_logits, generate

CFG = ModelConfig(n_layer=1, d_model=32, n_head=2, vocab_size=48, seq_len=12, init_std=0.5)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


# Full forward passes, jitted once for the tests that check generate against them (one
# program per window length, shared).
apply = jax.jit(lambda p, t: Transformer(CFG).apply({"params": p}, t))


def greedy_reference(params, prompt, n):
    """Argmax decoding by full forward passes over the (windowed) text, no buffers."""
    ids = list(prompt)
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


# --------------------------------------------------------------------------------------
# The `sample` command: bad arguments and folders stop with one line, exit 2, no writes
# --------------------------------------------------------------------------------------


def _sample_cli(run_dir, *args):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "run_sweep.py", "sample", str(run_dir), *args],
                          cwd=root, capture_output=True, text=True, timeout=300)


def _files(folder):
    return sorted((str(p), p.stat().st_mtime) for p in folder.rglob("*"))


@pytest.fixture
def run_without_checkpoints(tmp_path):
    from scaling.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(load_config(None, ["model.n_layer=1"]).to_json())
    return run


@pytest.mark.parametrize("args, words", [
    (["--temperature", "-1"], ["temperature = -1.0", ">= 0"]),
    (["--temperature", "nan"], ["temperature = nan", "finite"]),
    (["--temperature", "inf"], ["temperature = inf", "finite"]),
    (["--top-k", "-3"], ["top_k = -3", ">= 0"]),
    (["--max-new-tokens", "-5"], ["max_new_tokens = -5", ">= 1"]),
    ([], ["no checkpoint"]),
])
def test_sample_cli_refuses_bad_input_and_writes_nothing(run_without_checkpoints, args, words,
                                                         run_sweep_main):
    run = run_without_checkpoints
    before = _files(run)
    if args:  # the argument checks, in this process (a subprocess costs ~3 s of imports)
        out = run_sweep_main("sample", run, *args)
    else:  # and one case through the real command line: run_sweep.py and its exit status
        out = _sample_cli(run)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    for w in words:
        assert w in out.stderr, out.stderr
    assert out.stdout.strip() == ""
    assert _files(run) == before
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_sample_of_a_missing_folder_or_garbled_config(tmp_path):
    out = _sample_cli(tmp_path / "nope")
    assert out.returncode == 2 and "no such run folder" in out.stderr
    (tmp_path / "config.json").write_text("{garbage")
    out = _sample_cli(tmp_path)
    assert out.returncode == 2 and "config.json is corrupt" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_refuses_non_finite_temperature(params):
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            generate(params, CFG, [1], 3, temperature=bad)
    with pytest.raises(ValueError, match="top_k"):
        generate(params, CFG, [1], 3, top_k=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(params, CFG, [1], -5)
