"""The gradient noise scale (scaling.train.noise_scale; McCandlish et al. 2018, appendix A.1):
the estimator against a problem whose gradient covariance is known exactly, the step's
squared norms against a direct computation, and what a run records."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import Config, ConfigError, ModelConfig, OptimConfig, TrainConfig, load_config
from scaling.train import noise_scale
from scaling.train.loop import train
from scaling.train.step import Trainer, compile_key


def test_estimator_recovers_the_exact_trace_and_gradient_of_linear_regression():
    """Least squares, x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2), at a fixed w with
    delta = w - w*: the per-example gradient g = x (x.delta - eps) has mean G = delta and
    covariance Sigma = (|delta|^2 + s^2) I + delta delta^T, so |G|^2 = |delta|^2 and
    tr(Sigma) = d (|delta|^2 + s^2) + |delta|^2 exactly. Steps of a global batch of 32
    split in 8 micro-batches of 4, as the training step measures them."""
    rng = np.random.default_rng(0)
    d, s, micro, b, steps = 10, 0.5, 8, 4, 6000
    delta = 0.3 * rng.standard_normal(d)
    true_g = float(delta @ delta)
    true_tr = d * (true_g + s ** 2) + true_g
    grad_sq, trace = [], []
    for _ in range(steps):
        x = rng.standard_normal((micro, b, d))
        r = x @ delta - s * rng.standard_normal((micro, b))
        g_micro = (x * r[..., None]).mean(axis=1)  # (micro, d): the mean gradient of each micro-batch
        small = float(np.mean(np.sum(g_micro ** 2, axis=1)))
        big = float(np.sum(g_micro.mean(axis=0) ** 2))
        g, t = noise_scale.parts(small, big, b, b * micro)
        grad_sq.append(g)
        trace.append(t)
    se_g = np.std(grad_sq) / math.sqrt(steps)
    se_t = np.std(trace) / math.sqrt(steps)
    assert abs(np.mean(grad_sq) - true_g) < 4 * se_g, (np.mean(grad_sq), true_g, se_g)
    assert abs(np.mean(trace) - true_tr) < 4 * se_t, (np.mean(trace), true_tr, se_t)
    assert np.mean(trace) / np.mean(grad_sq) == pytest.approx(true_tr / true_g, rel=0.05)


def test_window_averages_the_parts_over_the_second_half_before_the_ratio():
    rows = [{"step": k, noise_scale.GRAD_SQ: g, noise_scale.TRACE: t}
            for k, g, t in [(10, 1.0, 100.0), (20, -0.5, 50.0), (30, 2.0, 300.0), (40, 1.5, 30.0)]]
    w = noise_scale.window(rows, 40)  # steps 20..40
    assert w["n"] == 3 and w["grad_sq"] == pytest.approx(1.0) and w["trace_sigma"] == pytest.approx(380 / 3)
    assert w["b_simple"] == pytest.approx(380 / 3)
    assert noise_scale.result_fields([], 40) == {}


MODEL = ModelConfig(n_layer=1, d_model=16, n_head=2, vocab_size=32, seq_len=8)


def _config(micro=1, noise=True):
    return Config(model=MODEL, optim=OptimConfig(name="adamw", lr=3e-3, warmup_steps=0),
                  train=TrainConfig(steps=10, batch_size=8, micro_batches=micro, noise_scale=noise))


@pytest.mark.parametrize("micro", [pytest.param(1, marks=pytest.mark.slow), 4])  # ~15 s each
def test_the_step_measures_the_squared_norms_of_its_micro_batch_and_global_gradients(micro):
    """small_sq is the mean of |grad|^2 over the step's micro-batches (two halves when it
    has none), big_sq the |grad|^2 of the whole batch; B in tokens."""
    cfg = _config(micro)
    tr = Trainer(cfg)
    state = tr.init_state()
    params = state.params
    batch = jnp.asarray(np.random.default_rng(0).integers(0, 32, (8, 9)), jnp.int32)
    k = max(micro, 2)
    grad = jax.jit(jax.grad(tr.loss))
    parts = [grad(params, batch[i * (8 // k):(i + 1) * (8 // k)]) for i in range(k)]
    small = np.mean([float(noise_scale.squared_norm(g)) for g in parts])
    big = float(noise_scale.squared_norm(jax.tree.map(lambda *g: sum(g) / k, *parts)))
    _, m = jax.jit(tr.train_step_body)(state, batch)
    assert float(m["noise_scale/small_sq"]) == pytest.approx(small, rel=1e-4)
    assert float(m["noise_scale/big_sq"]) == pytest.approx(big, rel=1e-4)
    assert float(m["noise_scale/b_small"]) == 8 // k * MODEL.seq_len
    assert float(m["noise_scale/b_big"]) == 8 * MODEL.seq_len
    assert small > big  # a small batch's gradient is noisier
    assert compile_key(cfg) != compile_key(_config(micro, noise=False))


TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
        "data.max_corpus_bytes=200000", "train.steps=40", "train.batch_size=8",
        "train.progress=false", "train.eval_every=0", "train.log_every=5", "train.eval_tokens=2048",
        "train.curve_eval_tokens=1024"]


def test_a_run_logs_the_noise_scale_and_records_its_last_half(tmp_path):
    cfg = load_config(None, TINY + ["train.noise_scale=true"])
    train(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r]
    assert all(noise_scale.B_SIMPLE in r and noise_scale.GRAD_SQ in r for r in logged)
    assert not any(k in r for r in rows for k in noise_scale.RAW)  # raw parts are not logged
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    w = noise_scale.window(logged, 40)
    assert res["noise_scale_b_simple"] == pytest.approx(w["b_simple"])
    assert res["noise_scale_steps_averaged"] == w["n"] == 5  # steps 20, 25, ..., 40
    assert res["noise_scale_units"] == "tokens"
    assert 0 < res["noise_scale_b_simple"] < 1e6


def test_an_odd_batch_on_one_device_is_refused_before_training(tmp_path):
    cfg = load_config(None, TINY + ["train.noise_scale=true", "train.batch_size=7"])
    with pytest.raises(ConfigError, match="train.noise_scale .* train.batch_size = 7 must be even"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    off = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, noise_scale=False))
    assert "noise_scale" not in compile_key(off)


def test_the_sweep_tables_carry_the_noise_scale(tmp_path):
    """results.csv / .parquet get noise_scale_b_simple (what `analysis batch` shows beside
    B_crit) where a point measured it, and no such column where none did."""
    from scaling.runs.results import collect
    from tests.test_executors_order import make_point

    measured = {"status": "done", "steps": 20, "final_eval_loss": 3.0,
                "noise_scale_b_simple": 812.5, "noise_scale_grad_sq": 0.4,
                "noise_scale_trace_sigma": 325.0, "noise_scale_steps_averaged": 3,
                "noise_scale_units": "tokens"}
    d = make_point(tmp_path / "sw", "p1")
    (d / "result.json").write_text(json.dumps(measured))
    res, _ = collect(tmp_path / "sw")
    assert res.loc[0, "noise_scale_b_simple"] == 812.5 and res.loc[0, "noise_scale_steps_averaged"] == 3
    d2 = make_point(tmp_path / "sw2", "p1")
    (d2 / "result.json").write_text(json.dumps({k: v for k, v in measured.items()
                                                if not k.startswith("noise")}))
    res2, _ = collect(tmp_path / "sw2")
    assert not any(c.startswith("noise_scale") for c in res2.columns)
