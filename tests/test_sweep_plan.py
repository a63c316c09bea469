"""Sweep specs: planning, exact N/D/C bookkeeping, stable ids, ladders and spec errors.

Fast (no training, no jax): every test plans specs only.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scaling.accounting import param_counts as acc_param_counts
from scaling.config import ConfigError, ModelConfig
from scaling.sweep import (
    SpecError,
    format_plan,
    ladder_shape,
    load_spec,
    param_counts,
    point_id,
    seed_followup,
)

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"

EXPECTED_COUNTS = {
    "tiny.toml": 1,
    "demo.toml": 14,  # 3 IsoFLOP budgets x 4-5 of six sizes
    "isoflop.toml": 20,  # 4 budgets x 5 sizes
    "optimizers.toml": 144,  # 6 optimizers x 6 lrs x 4 sizes
    "optimizers_large.toml": 144,
}


@pytest.fixture(autouse=True)
def _no_device_probe(monkeypatch):
    # time estimates without importing jax or measuring the CPU
    monkeypatch.setenv("SCALINGLAB_ACHIEVED_FLOPS", "5e10")


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
[model]
seq_len = 64
[data]
max_corpus_bytes = 1000000
[train]
batch_size = 8
"""


# --------------------------------------------------------------------------------------
# The experiments/ specs
# --------------------------------------------------------------------------------------


def test_every_experiment_is_covered():
    assert sorted(p.name for p in EXP.glob("*.toml")) == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_experiment_plans_with_exact_bookkeeping(name):
    spec = load_spec(EXP / name)
    assert len(spec.points) == EXPECTED_COUNTS[name]
    assert len({p.point_id for p in spec.points}) == len(spec.points)
    for p in spec.points:
        cfg = p.config
        per_step = cfg.train.batch_size * cfg.model.seq_len
        assert p.tokens == cfg.train.steps * per_step  # D = steps x batch x seq_len, exactly
        assert p.flops == 6.0 * p.n_params * p.tokens  # C = 6 N D
        counts = acc_param_counts(cfg.model)
        assert (p.n_params, p.n_params_total) == (counts.non_embedding, counts.total)
        assert p.tokens_per_param == pytest.approx(p.tokens / p.n_params)
        assert 0 <= cfg.optim.warmup_steps < cfg.train.steps
        assert cfg.name and len(p.point_id) == 12
        json.dumps(p.requested)  # recorded in point.json
    text = format_plan(spec)
    assert all(p.point_id in text for p in spec.points)
    assert "rough estimate" in text


def test_demo_shape():
    """Six sizes, three budgets of 4-5 points each, D/N in the window, C within rounding."""
    spec = load_spec(EXP / "demo.toml")
    sizes = sorted({p.n_params for p in spec.points})
    assert len(sizes) == 6 and sizes[0] < 4e3 and sizes[-1] > 1.5e5
    budgets = sorted({p.compute_budget for p in spec.points})
    assert budgets == [3e10, 1.2e11, 4.8e11]
    for c in budgets:
        pts = [p for p in spec.points if p.compute_budget == c]
        assert 4 <= len(pts) <= 5
        for p in pts:
            assert 1 <= p.tokens_per_param <= 2000
            assert abs(p.flops / c - 1) < 0.02
            assert p.config.optim.warmup_steps == math.floor(0.05 * p.steps + 0.5)
            assert p.config.train.eval_every == math.ceil(p.steps / 8)


def test_tokens_per_param_range_drops_sizes_outside_it():
    spec = load_spec(EXP / "demo.toml")
    assert any("outside tokens_per_param_range" in n for n in spec.notes)
    assert not [p for p in spec.points if p.compute_budget == 4.8e11 and p.n_params < 5e3]


def test_isoflop_points_hit_their_budget_within_rounding():
    spec = load_spec(EXP / "isoflop.toml")
    budgets = sorted({p.compute_budget for p in spec.points})
    assert len(budgets) >= 3
    for c in budgets:
        sizes = [p for p in spec.points if p.compute_budget == c]
        assert len({p.n_params for p in sizes}) >= 5
        assert len({p.group for p in sizes}) == 1
    for p in spec.points:
        c = p.compute_budget
        half_step = 6.0 * p.n_params * p.config.train.batch_size * p.config.model.seq_len / 2
        assert abs(p.flops - c) <= half_step + 1e-6 * c
        assert p.requested["compute"] == c
        assert p.requested["rounding"]["flops_rel"] == pytest.approx(p.flops / c - 1.0)
        assert p.requested["tokens"] == pytest.approx(c / (6.0 * p.n_params))
        assert "C = 6ND" in p.requested["derivation"]


def test_isoflop_large_variant():
    small = load_spec(EXP / "isoflop.toml")
    large = load_spec(EXP / "isoflop.toml", variant="large")
    assert large.executor == "slurm" and large.slurm["gpus_per_job"] == 1
    assert len(large.points) == len(small.points)
    assert min(p.compute_budget for p in large.points) >= 1e17
    with pytest.raises(SpecError, match="variant 'huge' not found"):
        load_spec(EXP / "isoflop.toml", variant="huge")


def test_optimizer_grids():
    spec = load_spec(EXP / "optimizers.toml")
    opts = {p.config.optim.name for p in spec.points}
    assert opts == {"sgd", "momentum", "adam", "adamw", "lars", "lamb"}
    sizes = sorted({p.n_params for p in spec.points})
    assert len(sizes) == 4
    assert len({round(p.tokens_per_param) for p in spec.points}) == 1
    for opt in opts:
        lrs = sorted({p.config.optim.lr for p in spec.points if p.config.optim.name == opt})
        assert len(lrs) >= 6 and math.log10(lrs[-1] / lrs[0]) >= 3 - 1e-9
        for p in (q for q in spec.points if q.config.optim.name == opt):
            assert p.config.optim.weight_decay == (0.1 if opt in ("adamw", "lamb") else 0.0)
    sgd = min(p.config.optim.lr for p in spec.points if p.config.optim.name == "sgd")
    adam = max(p.config.optim.lr for p in spec.points if p.config.optim.name == "adam")
    assert sgd >= adam / 10  # SGD's grid sits far above Adam's
    sched = {(p.config.optim.schedule, p.config.optim.clip_norm) for p in spec.points}
    assert sched == {("cosine", 1.0)}


def test_optimizers_large_changes_only_the_ladder_and_throughput_knobs():
    small = load_spec(EXP / "optimizers.toml")
    large = load_spec(EXP / "optimizers_large.toml")
    assert large.name == "optimizers_large"
    assert min(p.n_params for p in large.points) > 10 * max(p.n_params for p in small.points)
    key = lambda p: (p.config.optim.name, p.config.optim.lr)  # noqa: E731
    assert sorted(map(key, small.points)) == sorted(map(key, large.points))
    for a, b in zip(small.points, large.points):
        assert a.config.replace({"optim.warmup_steps": 0}).optim == \
            b.config.replace({"optim.warmup_steps": 0}).optim
        assert a.config.optim.warmup_steps / a.steps == pytest.approx(
            b.config.optim.warmup_steps / b.steps, abs=0.01)
        assert a.tokens_per_param == pytest.approx(b.tokens_per_param, rel=0.05)


def test_seed_followup():
    spec = load_spec(EXP / "optimizers.toml")
    n = sorted({p.n_params for p in spec.points})[1]
    best = {("adamw", n): 6.3e-3, ("sgd", n): 0.63}
    follow = seed_followup(spec, best, seeds=(1, 2))
    assert len(follow) == 4
    stage1 = {p.point_id for p in spec.points}
    for p in follow:
        assert p.point_id not in stage1 and p.group == "seeds"
        src = next(q for q in spec.points if q.point_id == p.requested["from_point"])
        assert p.config.train.seed in (1, 2)
        assert p.config.replace({"train.seed": 0, "name": src.config.name}) == src.config
        assert (p.tokens, p.flops, p.n_params) == (src.tokens, src.flops, src.n_params)
    assert [p.point_id for p in seed_followup(spec, best)] == [p.point_id for p in follow]
    assert len(seed_followup(spec, best, seeds=None)) == 4  # the spec's [followup] seeds
    rounded = {(o, float(f"{n:.4g}")): lr for (o, n), lr in best.items()}
    assert {p.point_id for p in seed_followup(spec, rounded)} == {p.point_id for p in follow}
    with pytest.raises(SpecError, match="optim.lr = 0.005"):
        seed_followup(spec, {("adamw", n): 5e-3})


# --------------------------------------------------------------------------------------
# Point ids
# --------------------------------------------------------------------------------------


def _ids(path, overrides=None):
    return [p.point_id for p in load_spec(path, overrides).points]


def test_ids_stable_across_calls_and_processes():
    path = EXP / "demo.toml"
    first = _ids(path)
    assert first == _ids(path)
    code = ("import json; from scaling.sweep import load_spec; "
            f"print(json.dumps([p.point_id for p in load_spec({str(path)!r}).points]))")
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert json.loads(out) == first


def test_ids_ignore_non_semantic_keys():
    spec = load_spec(EXP / "tiny.toml")
    cfg = spec.points[0].config
    same = cfg.replace({"name": "other", "train.progress": False, "train.log_every": 3,
                        "train.checkpoint_every": 7, "train.keep_checkpoints": 5,
                        "train.parallel": "none"})
    assert point_id(same) == point_id(cfg)
    assert point_id(cfg.replace({"optim.lr": 1e-3})) != point_id(cfg)
    assert point_id(cfg.replace({"train.seed": 1})) != point_id(cfg)


def test_ids_unchanged_when_axes_gain_values(tmp_path):
    def spec(lrs, sizes, seeds):
        return write(tmp_path, BASE + f"""
            [sweep]
            seeds = {seeds}
            warmup_fraction = 0.1
            model = {{ presets = {json.dumps(sizes)} }}
            data = {{ tokens_per_param = [2] }}
            [sweep.axes]
            "optim.lr" = {lrs}
            """, name=f"s{len(lrs)}{len(sizes)}{len(seeds)}.toml")

    small = set(_ids(spec([1e-3, 3e-3], ["n25k"], [0])))
    assert len(small) == 2
    for bigger in (spec([1e-3, 3e-3, 1e-2], ["n25k"], [0]),
                   spec([1e-3, 3e-3], ["n25k", "n100k"], [0]),
                   spec([1e-3, 3e-3], ["n25k"], [0, 1])):
        ids = set(_ids(bigger))
        assert small < ids


# --------------------------------------------------------------------------------------
# Ladders
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("target,head,aspect", [
    (1e5, 8, 32), (3e5, 8, 32), (1e6, 16, 32), (3e6, 32, 64), (1e7, 64, 64), (3e7, 64, 64),
    (1e8, 64, 64), (1e9, 128, 128)])
def test_ladder_hits_target_and_respects_shape_rule(target, head, aspect):
    base = ModelConfig(seq_len=256, vocab_size=8192)
    shape = ladder_shape(target, base, aspect_ratio=aspect, head_dim=head)
    m = ModelConfig(**{**base.__dict__, **shape})
    n = param_counts(m)[0]
    assert abs(n / target - 1) < 0.1
    assert shape["d_model"] % head == 0 and shape["n_head"] * head == shape["d_model"]
    assert 0.5 < (shape["d_model"] / shape["n_layer"]) / aspect < 2
    assert shape["d_ff"] == 0


def test_ladder_fixed_depth_and_fixed_heads():
    base = ModelConfig(seq_len=64)
    s = ladder_shape(2e5, base, aspect_ratio=None, n_layer=2, n_head=4, d_multiple=8)
    assert s["n_layer"] == 2 and s["n_head"] == 4 and s["d_model"] % 8 == 0
    n = param_counts(ModelConfig(**{**base.__dict__, **s}))[0]
    assert abs(n / 2e5 - 1) < 0.1


def test_ladder_spec_reports_exact_n(tmp_path):
    path = write(tmp_path, BASE + """
        [sweep]
        model = { n = [5e4, 2e5], aspect_ratio = 32, head_dim = 16 }
        data = { tokens = [1e5] }
        """)
    spec = load_spec(path)
    for p, target in zip(spec.points, (5e4, 2e5)):
        assert p.requested["n_target"] == target
        assert p.n_params == acc_param_counts(p.config.model).non_embedding != target
        assert p.config.model.preset == ""
        assert p.config.name.startswith("n")


# --------------------------------------------------------------------------------------
# Spec features
# --------------------------------------------------------------------------------------


def test_product_zip_conditional_override_and_extra_points(tmp_path):
    path = write(tmp_path, BASE + """
        [sweep]
        zip = [["model", "optim.lr"]]
        model = { presets = ["n25k", "n100k"] }
        data = { tokens = [2e5] }
        warmup_fraction = 0.05
        [sweep.axes]
        "optim.lr" = [1e-2, 3e-3]
        "optim.name" = ["sgd", "adamw"]
        "optim.b1" = { sgd = [0.9], adamw = [0.8, 0.9] }

        [[override]]
        where = { "optim.name" = "sgd", n_params = "< 5e4" }
        set = { "optim.clip_norm" = 0.5 }

        [[point]]
        set = { "model.preset" = "n200k", "optim.lr" = 1e-3 }
        tokens_per_param = 1
        group = "extra"
        """)
    spec = load_spec(path)
    assert len(spec.points) == 2 * 3 + 1  # zip(model, lr) x (sgd: 1 b1, adamw: 2 b1) + 1
    pairs = {(p.config.model.preset, p.config.optim.lr) for p in spec.points}
    assert pairs == {("n25k", 1e-2), ("n100k", 3e-3), ("n200k", 1e-3)}
    for p in spec.points:
        clipped = p.config.optim.name == "sgd" and p.n_params < 5e4
        assert p.config.optim.clip_norm == (0.5 if clipped else 1.0)
    extra = [p for p in spec.points if p.group == "extra"]
    assert len(extra) == 1 and extra[0].tokens_per_param == pytest.approx(1, rel=0.05)
    assert extra[0].config.model.d_model == 96  # the preset's shape, not the base's


def test_overrides_for_base_and_spec():
    path = EXP / "demo.toml"
    spec = load_spec(path, ["optim.lr=1e-2"])
    assert {p.config.optim.lr for p in spec.points} == {1e-2}
    iso = load_spec(EXP / "isoflop.toml", ["sweep.seeds=[0, 1]"])
    assert len(iso.points) == 40
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_spec(path, ["optim.lrr=1"])


def test_extends_and_base_file(tmp_path):
    write(tmp_path, "[model]\nseq_len = 32\n[train]\nbatch_size = 4\nsteps = 10\n", "run.toml")
    write(tmp_path, 'base = "run.toml"\n[sweep.axes]\n"optim.lr" = [1e-3, 2e-3]\n', "a.toml")
    child = write(tmp_path, 'extends = "a.toml"\nname = "b"\n[train]\nsteps = 20\n', "b.toml")
    spec = load_spec(child)
    assert spec.name == "b" and len(spec.points) == 2
    assert {(p.config.model.seq_len, p.steps, p.tokens) for p in spec.points} == {(32, 20, 20 * 4 * 32)}


def test_slurm_table_is_validated(tmp_path):
    path = write(tmp_path, """
        executor = "slurm"
        [slurm]
        partition = "gpu"
        gpus_per_job = 1
        cpus_per_job = 8
        mem_gb = 64
        time_min = 120
        account = "me"
        qos = "normal"
        nodes = 1
        extra = { constraint = "h100", exclusive = true }
        """)
    spec = load_spec(path)
    assert spec.executor == "slurm" and spec.slurm["extra"]["constraint"] == "h100"


def test_duplicates_are_dropped_with_a_warning(tmp_path):
    path = write(tmp_path, BASE + '[sweep.axes]\n"optim.lr" = [1e-3, 1e-3, 2e-3]\n')
    with pytest.warns(UserWarning, match="duplicates"):
        spec = load_spec(path)
    assert len(spec.points) == 2 and any("duplicates" in n for n in spec.notes)


def test_budget_dropping_some_sizes_is_noted(tmp_path):
    path = write(tmp_path, BASE + """
        [optim]
        warmup_steps = 1000
        [sweep]
        model = { presets = ["n25k", "n800k"] }
        compute = { budgets = [1e12] }
        """)
    spec = load_spec(path)
    assert [p.config.model.preset for p in spec.points] == ["n25k"]
    assert any("n800k" in n and "warmup_steps" in n for n in spec.notes)


def test_format_plan_with_measured_throughput():
    spec = load_spec(EXP / "demo.toml")
    text = format_plan(spec, tokens_per_s=lambda p: 1e5)
    assert "D/N" in text and "total" in text and "rough estimate" not in text
    half = format_plan(spec, tokens_per_s=lambda p: 1e5 if p.n_params < 1e5 else None)
    assert "rough estimate" in half


def test_no_jax_at_import():
    code = ("import sys; import scaling.sweep as s; s.load_spec('experiments/demo.toml'); "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------------------
# Malformed specs: each fails before training with the field named
# --------------------------------------------------------------------------------------

BAD = {
    "unknown axis": ('[sweep.axes]\n"optim.lrr" = [1e-3]\n', r"unknown axis 'optim.lrr'.*optim\.lr"),
    "unknown sweep key": ('[sweep]\noptimizer = ["sgd"]\n', r"'sweep.optimizer'"),
    "unknown top-level key": ("sweeps = 1\n", r"'sweeps'.*did you mean 'sweep'"),
    "unknown config key": ("[optim]\nlrr = 1\n", r"optim.lrr"),
    "unknown key in point set": ('[[point]]\nset = { "model.d_modl" = 64 }\n', r"model.d_modl"),
    "bad axis value": ('[sweep.axes]\n"optim.name" = ["adamm"]\n', r"optim.name = 'adamm'"),
    "bad value in a point": ('[sweep.axes]\n"model.n_head" = [3]\n', r"model.n_head = 3"),
    "D below one batch": ('[sweep]\nmodel = { presets = ["n25k"] }\ndata = { tokens = [100] }\n',
                          r"sweep.data.*less than one batch.*batch_size"),
    "budget fits no size": ('[sweep]\nmodel = { presets = ["n25k", "n100k"] }\n'
                            'compute = { budgets = [1e6] }\n',
                            r"sweep.compute.budgets: budget C1e6.*n25k.*n100k"),
    "budget: warm-up too long": ('[optim]\nwarmup_steps = 10000\n[sweep]\n'
                                 'model = { presets = ["n25k", "n100k"] }\n'
                                 'compute = { budgets = [1e11] }\n',
                                 r"budget C1e11.*n25k.*warmup_steps.*n100k"),
    "warm-up too long (data)": ('[optim]\nwarmup_steps = 10000\n[sweep]\n'
                                'model = { presets = ["n25k"] }\ndata = { tokens_per_param = [1] }\n',
                                r"optim.warmup_steps = 10000.*warmup_fraction"),
    "bad warmup_fraction": ("[sweep]\nwarmup_fraction = 1.5\n", r"sweep.warmup_fraction"),
    "unknown executor": ('executor = "slurn"\n', r"executor = 'slurn'.*did you mean 'slurm'"),
    "unknown slurm key": ('[slurm]\npartitoin = "gpu"\n', r"slurm.partitoin.*partition"),
    "bad slurm value": ('[slurm]\ntime_min = "1h"\n', r"slurm.time_min"),
    "unknown preset": ('[sweep]\nmodel = { presets = ["n26k"] }\n', r"model.preset = 'n26k'"),
    "presets and n": ('[sweep]\nmodel = { presets = ["n25k"], n = [1e5] }\n', r"sweep.model"),
    "ladder without head rule": ("[sweep]\nmodel = { n = [1e5] }\n", r"head_dim"),
    "data and compute": ('[sweep]\nmodel = { presets = ["n25k"] }\ndata = { tokens = [1e6] }\n'
                         'compute = { budgets = [1e12] }\n', r"sweep.data.*sweep.compute"),
    "zip lengths": ('[sweep]\nzip = [["optim.lr", "optim.name"]]\n[sweep.axes]\n'
                    '"optim.lr" = [1e-3, 2e-3]\n"optim.name" = ["sgd"]\n', r"sweep.zip.*equal lengths"),
    "zip unknown axis": ('[sweep]\nzip = [["lr"]]\n[sweep.axes]\n"optim.lr" = [1e-3]\n',
                         r"sweep.zip: unknown axis 'lr'"),
    "conditional axis without parent": ('[sweep.axes]\n"optim.name" = ["sgd", "adam"]\n'
                                        '"optim.lr" = { sgd = [1.0] }\n', r"sweep.axes.optim.lr"),
    "axis conflicts with the ladder": ('[sweep]\nmodel = { presets = ["n25k"] }\n'
                                       '[sweep.axes]\n"model.d_model" = [64]\n', r"model.d_model"),
    "override where key": ('[[override]]\nwhere = { "optim.nam" = "sgd" }\nset = { "optim.lr" = 1 }\n',
                           r"override\[0\].where.*optim.nam"),
    "override set key": ('[[override]]\nset = { "optim.lrr" = 1 }\n', r"override\[0\].set.*optim.lrr"),
    "seeds": ("[sweep]\nseeds = [-1]\n", r"sweep.seeds"),
    "followup seeds": ('[followup]\nseeds = "1"\n', r"followup.seeds"),
    "missing base file": ('base = "nope.toml"\n', r"base = 'nope.toml'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_specs_name_the_field(tmp_path, case):
    text, pattern = BAD[case]
    path = write(tmp_path, BASE + "\n" + text if not text.startswith(("executor", "sweeps", "base"))
                 else text + BASE)
    with pytest.raises(SpecError, match=pattern):
        load_spec(path)


def test_spec_errors_are_config_errors():
    assert issubclass(SpecError, ConfigError) and issubclass(SpecError, ValueError)
