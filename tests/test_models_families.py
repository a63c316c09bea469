"""The LSTM and the masked-LM encoder as model families: gradients, masking, attention
direction, accounting, exact resume, data parallelism, refusals, and the CLI."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling import models
from scaling.accounting.counts import count_tree, flops_per_token, param_counts, xla_flops
from scaling.config import ConfigError, ModelConfig, load_config
from scaling.data.evalset import build_eval_set
from scaling.train.loop import train
from scaling.data.masking import (IGNORE, MaskedEvalSet, MaskedTokenData, mask_windows, n_selected,
                             train_keys)
from scaling.models import encoder, lstm
from scaling.config.presets import LSTM_PRESETS
from scaling.runs.runfiles import read_metrics, read_result
from scaling.train.step import masked_lm_losses

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------
# LSTM: gradient against finite differences (float64)
# --------------------------------------------------------------------------------------


def test_lstm_gradient_matches_central_finite_differences(monkeypatch):
    """The whole model's gradient (embedding, both layers' input/recurrent kernels and
    biases, final norm, tied head) against central differences along random directions,
    in float64: the recurrence's backward pass through time is right."""
    cfg = ModelConfig(arch="lstm", n_layer=2, d_model=8, vocab_size=11, seq_len=7)
    with jax.enable_x64(True):
        monkeypatch.setattr(lstm, "dtype_of", lambda name: jnp.float64)
        params = jax.tree.map(lambda x: np.asarray(x, np.float64), models.init_params(cfg, 0))
        params = jax.tree.map(jnp.asarray, params)
        rng = np.random.default_rng(0)
        batch = jnp.asarray(rng.integers(0, 11, (3, 8)), jnp.int32)

        @jax.jit
        def loss(p):
            logits = lstm.LSTM(cfg).apply({"params": p}, batch[:, :-1])
            assert logits.dtype == jnp.float64
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

        grads = jax.grad(loss)(params)
        leaves, treedef = jax.tree.flatten(params)
        worst = 0.0
        for trial in range(6):
            # a random direction in the whole tree, and one confined to a single leaf
            dirs = [rng.standard_normal(x.shape) for x in leaves]
            if trial >= 2:
                only = trial % len(leaves)
                dirs = [d if i == only else np.zeros_like(d) for i, d in enumerate(dirs)]
            v = jax.tree.unflatten(treedef, [jnp.asarray(d) for d in dirs])
            eps = 1e-6  # float64: truncation ~eps^2, round-off ~1e-16 / eps
            plus = jax.tree.map(lambda p, d: p + eps * d, params, v)
            minus = jax.tree.map(lambda p, d: p - eps * d, params, v)
            fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
            an = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
            worst = max(worst, abs(fd - an) / max(abs(an), 1e-2))
        assert worst < 1e-6, worst  # seen: 3e-8


# --------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------


def test_masking_follows_bert_15_percent_and_80_10_10():
    V, T, B = 256, 100, 4000
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    out = mask_windows(tokens, train_keys(3, 7, np.arange(B)), V, mask_id=V)
    inputs, labels = out[:, 0], out[:, 1]
    assert out.shape == (B, 2, T) and out.dtype == np.int32
    selected = labels != IGNORE
    assert (selected.sum(axis=1) == 15).all() and n_selected(T) == 15  # exactly 15 % per window
    assert (labels[selected] == tokens[selected]).all()
    assert (inputs[~selected] == tokens[~selected]).all()  # nothing else is touched
    n = selected.sum()
    masked = (inputs == V) & selected
    replaced = selected & (inputs != V) & (inputs != tokens)
    kept = selected & (inputs == tokens)
    assert not ((inputs == V) & ~selected).any()
    # 80 / 10 / 10 (a random replacement equals the original with probability 1/V);
    # 5 binomial standard deviations at n = 60,000 are below 0.006
    assert abs(masked.sum() / n - 0.8) < 0.008
    assert abs(replaced.sum() / n - 0.1 * (1 - 1 / V)) < 0.006
    assert abs(kept.sum() / n - (0.1 + 0.1 / V)) < 0.006
    # selected positions spread over the whole window, random tokens over the vocabulary
    per_pos = selected.mean(axis=0)
    assert per_pos.min() > 0.12 and per_pos.max() < 0.18
    assert len(np.unique(inputs[replaced])) > 0.9 * V


class _FakeData:
    """The part of TokenData that MaskedTokenData uses: batches a pure function of (seed, step)."""
    vocab_size = 256

    def train_batch(self, step, batch_size, seed, shard=(0, 1)):
        index, count = shard
        rows = batch_size // count
        rng = np.random.default_rng([seed, step])
        full = rng.integers(0, 256, (batch_size, 33)).astype(np.int32)
        return full[index * rows:(index + 1) * rows]


def test_training_masks_are_a_pure_function_of_seed_and_step_and_shard_invariant():
    data = MaskedTokenData(_FakeData(), mask_id=256)
    a = data.train_batch(5, 8, seed=0)
    assert a.shape == (8, 2, 32)
    assert np.array_equal(a, data.train_batch(5, 8, seed=0))  # deterministic
    assert not np.array_equal(a[:, 1] >= 0, data.train_batch(6, 8, seed=0)[:, 1] >= 0)
    assert not np.array_equal(a[:, 1] >= 0, data.train_batch(5, 8, seed=1)[:, 1] >= 0)
    halves = [data.train_batch(5, 8, seed=0, shard=(i, 2)) for i in range(2)]
    assert np.array_equal(np.concatenate(halves), a)  # two devices mask as one would


def test_eval_masking_is_fixed_per_window_whatever_the_batch_or_prefix():
    rng = np.random.default_rng(2)
    val = rng.integers(0, 256, 40 * 16 + 1).astype(np.int32)
    base = build_eval_set(val, np.array([200, 200, len(val) - 400]), 16, 40)
    es = MaskedEvalSet(base, vocab_size=256, mask_id=256)
    by4 = np.concatenate([es.batch(i, 4)[0] for i in range(es.n_batches(4))])
    by7 = np.concatenate([es.batch(i, 7)[0][es.batch(i, 7)[1] > 0] for i in range(es.n_batches(7))])
    assert np.array_equal(by4, by7)
    assert np.array_equal(es.prefix(9).batch(0, 9)[0], by4[:9])
    last, weights = es.batch(es.n_batches(7) - 1, 7)
    assert (last[weights == 0, 1] == IGNORE).all()  # padding rows score nothing
    assert es.tokens == 40 * n_selected(16)
    s = es.summarize(np.linspace(1, 2, 40))
    assert s["eval_tokens"] == es.tokens and s["eval_loss"] == pytest.approx(1.5)


def test_masked_lm_loss_reads_selected_positions_only():
    logits = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 7)), jnp.float32)
    labels = jnp.asarray([[1, -1, -1, 3, -1], [-1, -1, -1, -1, 6]])
    loss, count = masked_lm_losses(logits, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    np.testing.assert_allclose(loss, [ce[0, 0] + ce[0, 3], ce[1, 4]], rtol=1e-6)
    assert count.tolist() == [2.0, 1.0]


# --------------------------------------------------------------------------------------
# Attention direction
# --------------------------------------------------------------------------------------


# the transformer's case is slow: tests/test_model.py::test_causal checks that the decoder
# does not see later tokens, for each position encoding, in the fast tier
@pytest.mark.parametrize("arch", ["encoder", pytest.param("transformer", marks=pytest.mark.slow),
                                  "lstm"])
def test_only_the_encoder_sees_later_tokens(arch):
    extra = {"n_head": 2} if arch != "lstm" else {}
    cfg = ModelConfig(arch=arch, n_layer=2, d_model=32, vocab_size=50, seq_len=12, **extra)
    params = models.init_params(cfg, 0)
    tokens = np.random.default_rng(4).integers(0, 50, (2, 12)).astype(np.int32)
    changed = tokens.copy()
    changed[:, 8] = (changed[:, 8] + 1) % 50
    impl = "reference" if arch != "lstm" else "auto"
    a = models.build(cfg, impl).apply({"params": params}, tokens)
    b = models.build(cfg, impl).apply({"params": params}, changed)
    earlier = float(jnp.abs(a[:, :8] - b[:, :8]).max())
    assert float(jnp.abs(a[:, 8:] - b[:, 8:]).max()) > 1e-4
    if arch == "encoder":
        assert earlier > 1e-4  # bidirectional: position 2 sees position 8
    else:
        assert earlier == 0.0  # causal


def test_encoder_attention_impls_agree():
    cfg = ModelConfig(arch="encoder", n_layer=1, d_model=32, n_head=4, vocab_size=50, seq_len=16)
    params = models.init_params(cfg, 0)
    tokens = np.random.default_rng(5).integers(0, 51, (2, 16)).astype(np.int32)  # 50 = [MASK]
    ref = encoder.Encoder(cfg, "reference").apply({"params": params}, tokens)
    for impl in ("auto", "xla"):
        np.testing.assert_allclose(encoder.Encoder(cfg, impl).apply({"params": params}, tokens),
                                   ref, atol=2e-5)
    with pytest.raises(ValueError, match="causal only"):
        encoder.Encoder(cfg, "packed").apply({"params": params}, tokens)


# --------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,tie,scan,pos", [
    (a, t, s, p) for a, t, s, p in itertools.product(["lstm", "encoder"], [True, False],
                                                     [True, False], ["learned", "rotary"])
    if not (a == "lstm" and p != "learned")])
def test_closed_form_counts_equal_the_parameter_tree(arch, tie, scan, pos):
    for shape in (dict(n_layer=1, d_model=16, vocab_size=37, seq_len=8),
                  dict(n_layer=3, d_model=24, vocab_size=256, seq_len=32)):
        heads = {"n_head": 2} if arch == "encoder" else {}
        cfg = ModelConfig(arch=arch, tie_embeddings=tie, scan_layers=scan, pos_encoding=pos,
                          **shape, **heads)
        assert count_tree(models.param_shapes(cfg)) == param_counts(cfg)


def test_closed_form_values():
    D, V, L = 64, 256, 2
    c = param_counts(ModelConfig(arch="lstm", n_layer=L, d_model=D, vocab_size=V))
    assert c.non_embedding == L * (8 * D * D + 4 * D) + 2 * D and c.embedding == V * D
    f = flops_per_token(ModelConfig(arch="lstm", n_layer=L, d_model=D, vocab_size=V))
    assert f.kaplan == 6 * c.non_embedding and f.exact == 3 * (16 * L * D * D + 2 * D * V)
    t = ModelConfig(n_layer=2, d_model=64, n_head=2, seq_len=64)
    e = dataclasses.replace(t, arch="encoder")
    assert param_counts(e).non_embedding == param_counts(t).non_embedding
    assert param_counts(e).embedding == param_counts(t).embedding + 64  # the [MASK] row
    assert flops_per_token(e) == flops_per_token(t)  # the same matmuls, full T x T square


@pytest.mark.parametrize("name", list(LSTM_PRESETS))
def test_lstm_presets_match_their_names(name):
    cfg = load_config(None, {"model.arch": "lstm", "model.preset": name}).model
    nominal = float(name[1:].replace("k", "e3").replace("m", "e6"))
    assert abs(param_counts(cfg).non_embedding / nominal - 1) < 0.05


def test_lstm_flops_match_xla_within_20_percent():
    """XLA's count of a jitted loss+gradient (time loop unrolled, so every step is counted)
    vs 3 x the closed-form forward matmuls. XLA also counts the gates' elementwise work
    (sigmoid, tanh, products: O(D) per token, here ~5 %), the loss and the norm."""
    cfg = ModelConfig(arch="lstm", n_layer=2, d_model=128, vocab_size=256, seq_len=8,
                      scan_layers=False)
    B = 4

    def loss(p, b):
        logits = lstm.LSTM(cfg, time_unroll=True).apply({"params": p}, b[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, b[:, 1:]).mean()

    batch = jax.ShapeDtypeStruct((B, cfg.seq_len + 1), jnp.int32)
    got = xla_flops(jax.jit(jax.value_and_grad(loss)).lower(models.param_shapes(cfg), batch).compile())
    ratio = got / (flops_per_token(cfg).exact * B * cfg.seq_len)
    assert 1.0 <= ratio < 1.2, ratio


def test_encoder_flops_match_xla_within_10_percent():
    cfg = ModelConfig(arch="encoder", n_layer=2, d_model=64, n_head=2, vocab_size=256,
                      seq_len=64, scan_layers=False)
    B = 4

    def loss(p, b):
        logits = encoder.Encoder(cfg, "reference").apply({"params": p}, b[:, 0])
        total, count = masked_lm_losses(logits, b[:, 1])
        return total.sum() / count.sum()

    batch = jax.ShapeDtypeStruct((B, 2, cfg.seq_len), jnp.int32)
    got = xla_flops(jax.jit(jax.value_and_grad(loss)).lower(models.param_shapes(cfg), batch).compile())
    ratio = got / (flops_per_token(cfg).exact * B * cfg.seq_len)
    assert 0.95 < ratio < 1.1, ratio


# --------------------------------------------------------------------------------------
# Training: exact resume, refusals, CLI, data parallelism
# --------------------------------------------------------------------------------------

TINY = [
    "model.n_layer=2", "model.d_model=32", "model.seq_len=32",
    "data.max_corpus_bytes=1000000", "train.batch_size=8", "train.steps=24",
    "train.log_every=1", "train.eval_every=8", "train.eval_tokens=2048",
    "train.curve_eval_tokens=1024", "train.checkpoint_every=8", "train.progress=false",
    "optim.warmup_steps=3",
]
FAMILIES = {"lstm": ["model.arch=lstm"],
            "encoder": ["model.arch=encoder", "data.objective=mlm", "model.n_head=2"]}


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_resumes_bit_identically(family, tmp_path):
    cfg = load_config(None, TINY + FAMILIES[family])
    full = train(cfg, tmp_path / "full")
    assert full["status"] == "done" and full["arch"] == family
    assert full["objective"] == ("mlm" if family == "encoder" else "next_token")
    assert train(cfg, tmp_path / "resumed", stop_after_steps=11) == {"status": "stopped", "step": 11}
    assert read_result(tmp_path / "resumed") is None
    resumed = train(cfg, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 11
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "full")  # exact, on CPU
    assert resumed["final_eval_loss"] == full["final_eval_loss"]
    evals = [(r["step"], r["eval_loss"]) for r in read_metrics(tmp_path / "resumed") if "eval_loss" in r]
    assert evals == [(r["step"], r["eval_loss"]) for r in read_metrics(tmp_path / "full")
                     if "eval_loss" in r]
    first, last = _losses(tmp_path / "full")[0][1], full["final_train_loss"]
    assert last < first - 0.5  # it learns
    if family == "encoder":  # scored tokens: 15 % of each window's 32 positions
        assert full["eval_tokens"] == full["eval_windows"] * n_selected(32)
    from scaling.runs.results import point_row

    row = point_row("s", tmp_path / "full")  # the results table's columns
    assert (row["arch"], row["objective"]) == (family, full["objective"])
    if family == "lstm":  # attention keys do not apply
        assert full["n_head"] is None and full["d_ff"] is None and row["n_head"] is None
    # XLA's count with every trip of the time / layer loops counted (scaling.accounting.xla_count)
    assert 0.9 < full["C_xla"] / full["C_exact"] < 1.3, full["C_xla"] / full["C_exact"]


def test_bad_combinations_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.arch = 'transformer'.*data\.objective = 'mlm'"):
        load_config(None, ["data.objective=mlm"])
    with pytest.raises(ConfigError, match=r"model\.arch = 'encoder'.*data\.objective = 'next_token'"):
        load_config(None, ["model.arch=encoder"])
    with pytest.raises(ConfigError, match=r"model\.n_head = 8: does not apply to model\.arch = 'lstm'"):
        load_config(None, ["model.arch=lstm", "model.n_head=8"])
    for bad in (["model.d_ff=64"], ["model.pos_encoding=rotary"],
                ["model.parametrization=mup", "model.mup_base_width=64"]):
        with pytest.raises(ConfigError, match="does not apply to model.arch = 'lstm'"):
            load_config(None, ["model.arch=lstm", *bad])
    # at their defaults the attention keys are inert: a transformer preset switches family
    assert load_config(ROOT / "experiments" / "tiny.toml", ["model.arch=lstm"]).model.d_model == 80
    # sampling an encoder run is refused before anything is loaded
    from scaling.evaluation.sampling import generate, sample_from_run

    run = tmp_path / "enc"
    run.mkdir()
    cfg = load_config(None, TINY + FAMILIES["encoder"])
    (run / "config.json").write_text(cfg.to_json())
    with pytest.raises(ConfigError, match="cannot sample"):
        sample_from_run(run, "def ")
    with pytest.raises(ConfigError, match="cannot sample"):
        generate({}, cfg.model, [1, 2], 3)


def _cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_cli_refuses_a_bad_combination_with_exit_2_and_writes_nothing(tmp_path):
    out = _cli(tmp_path, "train", str(ROOT / "experiments" / "tiny.toml"), "model.arch=encoder",
               "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2 and "data.objective" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", [["model.arch=lstm"],
                                    ["model.arch=encoder", "data.objective=mlm"]])
@pytest.mark.slow
def test_tiny_toml_trains_as_is_with_another_family(family, tmp_path):
    out = _cli(tmp_path, "train", str(ROOT / "experiments" / "tiny.toml"), *family,
               "train.steps=12", "optim.warmup_steps=2", "train.eval_every=0",
               "train.eval_tokens=4096", "train.progress=false", "--run-dir", "run")
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "done" and result["arch"] == family[0].split("=")[1]
    assert np.isfinite(result["final_eval_loss"]) and result["eval_loss_stderr"] > 0


def test_plan_sizes_each_family_by_its_own_ladder(tmp_path):
    from scaling.sweep import load_spec

    spec = tmp_path / "archs.toml"
    spec.write_text(
        f'base = "{ROOT / "experiments" / "tiny.toml"}"\n[sweep]\n[sweep.model]\n'
        'n = [2e4, 1e5]\nhead_dim = 16\n[sweep.data]\ntokens_per_param = [2]\n'
        '[sweep.axes]\n"model.arch" = ["transformer", "lstm"]\n')
    points = load_spec(spec).points
    by_arch = {}
    for p in points:
        by_arch.setdefault(p.config.model.arch, []).append(p)
    assert sorted(by_arch) == ["lstm", "transformer"]
    for p in by_arch["lstm"]:
        m = p.config.model
        assert (m.n_head, m.d_ff) == (4, 0)  # the attention keys stay at their defaults
        assert p.n_params == param_counts(m).non_embedding and p.flops_exact > 0
        assert abs(p.n_params / p.requested["n_target"] - 1) < 0.25


@pytest.mark.slow  # ~45-60 s: three fresh processes per family
@pytest.mark.multidevice
@pytest.mark.parametrize("family", list(FAMILIES))
def test_shard_map_and_pmap_on_two_devices_match_one_device(family, tmp_path):
    worker = ROOT / "tests" / "multidevice" / "worker.py"
    extra = FAMILIES[family] + (["model.n_head=4"] if family == "lstm" else [])

    def run(name, devices, *args):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, str(worker), str(tmp_path / name), *args, *extra,
                              "train.steps=8"], env=env, capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
        return json.loads(line[len("RESULT "):])

    one = run("one", 1, "parallel=none")
    for driver in ("shard_map", "pmap"):
        two = run(driver, 2, f"parallel={driver}")
        assert two["device_count"] == 2 and two["D"] == one["D"] and two["parallel"] == driver
        np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
        np.testing.assert_allclose(two["evals"], one["evals"], rtol=1e-5)


def test_masked_lm_step_with_micro_batches_matches_one_pass():
    """Gradient accumulation averages per-micro-batch masked means; every window scores the
    same number of positions, so that is the mean over the whole batch's scored tokens."""
    from scaling.train.step import Trainer

    data = MaskedTokenData(_FakeData(), mask_id=256)
    batch = jnp.asarray(data.train_batch(3, 8, seed=0))
    out = {}
    for micro in (1, 2):
        cfg = load_config(None, TINY + FAMILIES["encoder"] + [f"train.micro_batches={micro}"])
        trainer = Trainer(cfg)
        _, metrics = jax.jit(trainer.train_step_body)(trainer.init_state(), batch)
        out[micro] = metrics
    for k in ("loss", "grad_norm", "update_norm"):
        np.testing.assert_allclose(out[2][k], out[1][k], rtol=2e-5)


def test_lstm_samples_left_to_right():
    from scaling.evaluation.sampling import generate

    cfg = ModelConfig(arch="lstm", n_layer=1, d_model=16, vocab_size=40, seq_len=8)
    params = models.init_params(cfg, 0)
    a = generate(params, cfg, [1, 2, 3], 10, temperature=0)
    assert len(a) == 10 and all(0 <= t < 40 for t in a)
    assert generate(params, cfg, [1, 2, 3], 10, temperature=0) == a  # deterministic


def test_analysis_tables_carry_the_family(tmp_path):
    import pandas as pd

    from analysis.load import load_results

    rows = [dict(point_id="a", N=1e4, D=1e6, C=6e10, final_eval_loss=3.0, status="done"),
            dict(point_id="b", N=2e4, D=1e6, C=1.2e11, final_eval_loss=2.9, status="done",
                 arch="lstm", objective="next_token")]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    df = load_results(tmp_path / "results.csv")
    assert df["arch"].tolist() == ["transformer", "lstm"]  # a row from before the column
    assert df["objective"].tolist() == ["next_token", "next_token"]
