"""µP (model.parametrization = "mup"): inits, multipliers, per-layer learning rates, the
refusals, SP left unchanged, and the coordinate check (scaling.evaluation.coordcheck)."""

from __future__ import annotations

import dataclasses
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling.config import MUP_OPTIMIZERS, OPTIMIZERS, ConfigError, from_dict
from scaling.evaluation.coordcheck import coord_check, main as coordcheck_main, within
from scaling.models import init_params
from scaling.models.transformer import loss_fn
from scaling.train.optimizers import make_runtime_optimizer
from scaling.train.param_groups import mup_lr_multipliers, mup_role
from scaling.train.step import Trainer

VOCAB = 256  # the byte tokenizer's


def config(width=32, par="sp", opt="adamw", lr=1e-2, tie=True, **model):
    m = dict(n_layer=2, d_model=width, n_head=width // 16, vocab_size=VOCAB, seq_len=16,
             tie_embeddings=tie, parametrization=par)
    if par == "mup":
        m.update(mup_base_width=32, mup_attn_mult=4.0)  # 4 / 16 = 1 / sqrt(16): SP's scale
    m.update(model)
    optim = dict(name=opt, lr=lr, schedule="constant",
                 weight_decay=0.1 if opt in ("adamw", "lamb") else 0.0)
    return from_dict({"model": m, "optim": optim, "train": {"steps": 10, "batch_size": 4}})


def random_batches(n=4, seq=16, b=4, seed=0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.integers(0, VOCAB, (b, seq + 1)), jnp.int32) for _ in range(n)]


def manual_losses(cfg, batches, with_model=True):
    """Losses of a plain jitted loop: init_params + make_runtime_optimizer(optim, model)."""
    opt = make_runtime_optimizer(cfg.optim, cfg.model if with_model else None)
    params = init_params(cfg.model, 0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, cfg.model)
        updates, state = opt.update(grads, state, params, lr=jnp.float32(cfg.optim.lr))
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for batch in batches:
        params, state, loss = step(params, state, batch)
        losses.append(float(loss))
    return params, losses


# --------------------------------------------------------------------------------------
# SP unchanged; µP at the base width is SP
# --------------------------------------------------------------------------------------

# First four losses of fixed SP configs through scaling.train.step, recorded on main before µP
# was added (commit c13c83a), float32 on CPU, with the step compiled at XLA's default
# -O3. The CPU step is compiled at -O1 since (scaling.runtime.compiler_options), which
# rounds differently: the losses agree to ~2e-7 relative, so they are compared to 1e-6
# (a change to the model or optimizer moves them by far more).
SP_REFERENCE = {
    "adamw": [5.568585395812988, 5.555521011352539, 5.557754039764404, 5.58322811126709],
    "sgd": [5.568585395812988, 5.554213047027588, 5.55985689163208, 5.550344467163086],
    "momentum_untied": [5.557971000671387, 5.560273170471191, 5.552700519561768,
                        5.5322651863098145],
}


@pytest.mark.parametrize("name", list(SP_REFERENCE))
def test_sp_first_losses_unchanged(name):
    opt = "momentum" if name.startswith("momentum") else name
    cfg = from_dict({
        "model": dict(n_layer=2, d_model=32, n_head=2, vocab_size=VOCAB, seq_len=16,
                      tie_embeddings=not name.endswith("untied")),
        "optim": {"name": opt, "lr": 1e-2 if opt == "adamw" else 0.1, "schedule": "constant",
                  "weight_decay": 0.1 if opt == "adamw" else 0.0},
        "train": {"steps": 10, "batch_size": 4}})
    trainer = Trainer(cfg)
    state, step = trainer.init_state(0), trainer.compile_step()
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(4):
        batch = jnp.asarray(rng.integers(0, VOCAB, (4, 17)), jnp.int32)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses == pytest.approx(SP_REFERENCE[name], rel=1e-6, abs=0)


# sgd-untied slow (3 s): adamw-tied keeps µP = SP at the base width in the fast tier, and the
# untied readout's init and output multiplier (test_mup_init_scales_with_width,
# test_mup_output_multiplier_scales_logits) and SGD's multipliers (test_mup_lr_multipliers_table)
# are checked away from it
@pytest.mark.parametrize("opt,tie", [("adamw", True),
                                     pytest.param("sgd", False, marks=pytest.mark.slow)])
def test_mup_at_base_width_equals_sp(opt, tie):
    # Two programs (the SP and the µP config) doing the same arithmetic at width_mult 1;
    # XLA may fuse them differently, so float32 rounding, not bits (a missing or wrong
    # multiplier is off by far more than 1e-6).
    sp, mup = config(32, "sp", opt, tie=tie), config(32, "mup", opt, tie=tie)
    assert mup.model.width_mult == 1.0
    p_sp, p_mup = init_params(sp.model, 0), init_params(mup.model, 0)
    for a, b in zip(jax.tree.leaves(p_sp), jax.tree.leaves(p_mup)):
        np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), maxulp=2)
    batches = random_batches()
    end_sp, losses_sp = manual_losses(sp, batches)
    end_mup, losses_mup = manual_losses(mup, batches)
    assert losses_sp == pytest.approx(losses_mup, rel=1e-6, abs=0)
    for a, b in zip(jax.tree.leaves(end_sp), jax.tree.leaves(end_mup)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# µP's init, multipliers and learning rates away from the base width
# --------------------------------------------------------------------------------------


def test_mup_init_scales_with_width():
    wide = config(128, "mup", tie=False)  # width_mult 4
    sp = config(128, "sp", tie=False)
    p_mup, p_sp = init_params(wide.model, 0), init_params(sp.model, 0)
    blocks_mup, blocks_sp = p_mup["blocks"], p_sp["blocks"]
    for mod, name in [("attn", "qkv"), ("attn", "proj"), ("mlp", "fc"), ("mlp", "proj")]:
        s_mup = float(jnp.std(blocks_mup[mod][name]["kernel"]))
        s_sp = float(jnp.std(blocks_sp[mod][name]["kernel"]))
        assert s_mup == pytest.approx(s_sp / 2, rel=0.05), (mod, name)  # 1/sqrt(4)
    for key in ("token_embed", "pos_embed"):  # input weights: unchanged
        assert float(jnp.std(p_mup[key]["embedding"])) == pytest.approx(0.02, rel=0.05)
    assert float(jnp.std(p_mup["unembed"]["kernel"])) == pytest.approx(0.02, rel=0.05)
    zero = config(128, "mup", tie=False, mup_zero_readout=True)
    assert not np.any(np.asarray(init_params(zero.model, 0)["unembed"]["kernel"]))


def test_mup_output_multiplier_scales_logits():
    """Same params, µP at width_mult 4 and output mult 2: logits = SP logits * 2 / 4."""
    from scaling.models.transformer import Transformer
    sp = config(128, "sp", tie=False)
    mup = config(128, "mup", tie=False, mup_output_mult=2.0, mup_attn_mult=math.sqrt(16))
    params = init_params(sp.model, 0)
    tokens = random_batches(1)[0][:, :-1]
    lg_sp = Transformer(sp.model).apply({"params": params}, tokens)
    lg_mup = Transformer(mup.model).apply({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(lg_mup), np.asarray(lg_sp) * 0.5, rtol=1e-5,
                               atol=1e-7)


def test_mup_attention_scale_is_attn_mult_over_head_dim():
    """Doubling mup_attn_mult at a fixed head size changes the logits (the scale is used)."""
    from scaling.models.transformer import Transformer
    a = config(64, "mup", mup_attn_mult=4.0)
    b = config(64, "mup", mup_attn_mult=8.0)
    params = init_params(a.model, 0)
    tokens = random_batches(1)[0][:, :-1]
    la = Transformer(a.model).apply({"params": params}, tokens)
    lb = Transformer(b.model).apply({"params": params}, tokens)
    assert not np.allclose(np.asarray(la), np.asarray(lb))


@pytest.mark.parametrize("scan", [True, False])
def test_mup_lr_multipliers_table(scan):
    cfg = config(128, "mup", tie=False, scan_layers=scan)  # width_mult 4
    params = jax.eval_shape(lambda: init_params(cfg.model, 0))
    roles = jax.tree_util.tree_map_with_path(mup_role, params)
    adam = mup_lr_multipliers(params, cfg.model, "adamw")
    sgd = mup_lr_multipliers(params, cfg.model, "momentum")
    flat_roles = jax.tree_util.tree_leaves_with_path(roles)
    seen = set()
    for (path, role), a, s in zip(flat_roles, jax.tree.leaves(adam), jax.tree.leaves(sgd)):
        name = jax.tree_util.keystr(path)
        seen.add(role)
        if role == "hidden":
            assert (a, s) == (0.25, 1.0), name
            assert "kernel" in name and "unembed" not in name
        else:
            assert (a, s) == (1.0, 4.0), name
        if "unembed" in name:
            assert role == "readout"
        if "embed" in name and "unembed" not in name or "ln_" in name or "bias" in name:
            assert role == "vector", name
    assert seen == {"hidden", "vector", "readout"}
    ones = mup_lr_multipliers(params, config(128, "sp").model, "adamw")
    assert set(jax.tree.leaves(ones)) == {1.0}


def test_mup_adam_step_of_hidden_matrices_scales_as_one_over_width():
    """Adam's first step is ~lr * sign(g) per entry: under µP at width_mult 4 a hidden
    kernel moves 1/4 as far as under SP, an embedding as far."""
    sp, mup = config(128, "sp", "adam"), config(128, "mup", "adam")
    params = init_params(sp.model, 0)
    grads = jax.tree.map(jnp.ones_like, params)

    def first_update(cfg):
        opt = make_runtime_optimizer(cfg.optim, cfg.model)
        return jax.jit(lambda g, p: opt.update(g, opt.init(p), p, lr=1e-2)[0])(grads, params)

    u_sp, u_mup = first_update(sp), first_update(mup)
    k_sp = np.asarray(u_sp["blocks"]["mlp"]["fc"]["kernel"])
    k_mup = np.asarray(u_mup["blocks"]["mlp"]["fc"]["kernel"])
    np.testing.assert_allclose(k_mup, k_sp / 4, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u_mup["token_embed"]["embedding"]),  # two programs
                               np.asarray(u_sp["token_embed"]["embedding"]), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Config checks and refusals
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_every_optimizer_supported_or_refused_before_training(opt):
    if opt in MUP_OPTIMIZERS:
        cfg = config(64, "mup", opt)
        make_runtime_optimizer(cfg.optim, cfg.model)  # builds
        return
    with pytest.raises(ConfigError, match=r"model\.parametrization.*optim\.name") as e:
        config(64, "mup", opt)
    assert "trust ratio" in str(e.value)
    sp = config(64, "sp", opt)
    with pytest.raises(ConfigError, match=r"model\.parametrization"):
        make_runtime_optimizer(sp.optim, dataclasses.replace(
            sp.model, parametrization="mup", mup_base_width=32))


@pytest.mark.parametrize("model,match", [
    (dict(parametrization="mup"), r"model\.mup_base_width"),
    (dict(parametrization="mup", mup_base_width=32, mup_zero_readout=True),
     r"model\.mup_zero_readout.*tie_embeddings"),
    (dict(parametrization="mup", mup_base_width=32, mup_output_mult=0.0),
     r"model\.mup_output_mult"),
    (dict(mup_attn_mult=-1.0), r"model\.mup_attn_mult"),
    (dict(mup_base_width=-2), r"model\.mup_base_width"),
    (dict(parametrization="mu-p"), r"model\.parametrization"),
])
def test_bad_mup_config_refused(model, match):
    m = dict(n_layer=1, d_model=64, n_head=4, vocab_size=VOCAB, seq_len=16)
    m.update(model)
    with pytest.raises(ConfigError, match=match):
        from_dict({"model": m})


def test_trainer_step_uses_mup_learning_rates():
    """The training step (scaling.train.step) builds its optimizer with the model config, so
    a µP run gets µP's per-layer learning rates (needs train.py to pass model_config to
    make_runtime_optimizer)."""
    cfg = config(128, "mup", "adam")
    trainer = Trainer(cfg)
    packing = trainer.packing  # the step's optimizer takes packed parameters
    params = packing.pack(init_params(trainer.model_config, 0))
    grads = jax.tree.map(jnp.ones_like, params)
    opt = trainer.optimizer
    updates = jax.jit(lambda g, p: opt.update(g, opt.init(p), p, lr=1e-2)[0])(grads, params)
    step = np.abs(np.asarray(packing.unpack(updates)["blocks"]["mlp"]["fc"]["kernel"]))
    np.testing.assert_allclose(step, 1e-2 / 4, rtol=1e-3)


# --------------------------------------------------------------------------------------
# Coordinate check
# --------------------------------------------------------------------------------------


def text_batches(steps=3, b=8, seq=32):
    """Real text (this package's and the standard library's Python source, as bytes):
    µP's coordinates stay Theta(1) through the correlation of inputs across steps, which
    uniformly random tokens lack."""
    text = (inspect.getsource(inspect) + inspect.getsource(dataclasses)).encode("utf-8")
    data = np.frombuffer(text, np.uint8).astype(np.int32)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        starts = rng.integers(0, len(data) - seq - 1, b)
        out.append(np.stack([data[s:s + seq + 1] for s in starts]))
    return out


def check_config(par):
    return from_dict({
        "model": dict(n_layer=2, d_model=64, n_head=8, vocab_size=VOCAB, seq_len=32,
                      tie_embeddings=False, parametrization=par, mup_base_width=64,
                      mup_zero_readout=True, mup_attn_mult=math.sqrt(8)),
        "optim": dict(name="adamw", lr=3e-3, schedule="constant", weight_decay=0.0,
                      clip_norm=0.0),
        "train": dict(steps=10, batch_size=8)})


@pytest.fixture(scope="module")
def coordcheck_results():
    batches = text_batches()
    return {par: coord_check(check_config(par), [64, 256], 3, batches) for par in ("sp", "mup")}


def test_coordcheck_mup_within_band(coordcheck_results):
    res = coordcheck_results["mup"]
    assert res["passed"], res["ratio"]
    modules = set(res["ratio"][0])
    assert modules == {"embedding", "attn_0", "mlp_0", "attn_1", "mlp_1", "ln_f", "logits"}
    assert res["l1"][64][0]["logits"] == 0.0  # zero readout at t = 1


def test_coordcheck_sp_logits_outside_band(coordcheck_results):
    res = coordcheck_results["sp"]
    assert not res["passed"]
    assert all(not within(row["logits"]) for row in res["ratio"]), res["ratio"]


def test_coordcheck_cli_refuses_bad_input(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nd_model = 64\nn_head = 4\n')
    out = tmp_path / "out"
    assert coordcheck_main([str(cfg), "--widths", "64,x", "--out", str(out)]) == 2
    assert coordcheck_main([str(cfg), "--widths", "64,72", "--out", str(out)]) == 2
    assert coordcheck_main([str(cfg), "model.parametrization=mup", "--out", str(out)]) == 2
    assert "model.mup_base_width" in capsys.readouterr().err
    assert not out.exists()
