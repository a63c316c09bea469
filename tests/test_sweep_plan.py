"""Sweep specs: planning, exact N/D/C bookkeeping, stable ids, ladders and spec errors.

Fast (no training, no jax): every test plans specs only.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scaling.accounting.counts import flops_per_token
from scaling.accounting.counts import param_counts as acc_param_counts
from scaling.config import ConfigError, ModelConfig
from scaling.sweep import (
    Point,
    SpecError,
    SweepSpec,
    estimate_seconds,
    format_plan,
    ladder_shape,
    load_spec,
    param_counts,
    plan_records,
    point_id,
    seed_followup,
)

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"

EXPECTED_COUNTS = {
    "tiny.toml": 1,
    "cooldown.toml": 15,  # 3 trunks + 6 branches + the same 6 points as separate cosine runs
    "demo.toml": 32,  # 6 IsoFLOP budgets x 4-5 of six sizes: 6 trunks, 26 branches
    "predict.toml": 32,  # the demo's points (its 10x validation run is planned after them)
    "isoflop.toml": 20,  # 4 budgets x 5 sizes
    "optimizers.toml": 144,  # 6 optimizers x 6 lrs x 4 sizes
    "optimizers_large.toml": 144,
    "mup_transfer.toml": 56,  # SP and muP x 4 widths x 7 learning rates
    "architectures.toml": 12,  # transformer and LSTM x 6 sizes at one D
    "emergence.toml": 6,  # six sizes at one D, addition mixed in
    "batch_size.toml": 112,  # 4 optimizers x 7 batches x 3-5 lrs (the sqrt rule), one D
}


@functools.cache
def shipped(name: str, *overrides: str, variant: str | None = None):
    """load_spec(EXP / name, overrides, variant=variant), planned once per test session for
    the tests that only read a shipped spec (a spec and its points are frozen; planning the
    eleven experiments takes ~5 s). The tests of planning itself call load_spec."""
    return load_spec(EXP / name, list(overrides) or None, variant=variant)


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
    spec = shipped(name)
    assert len(spec.points) == EXPECTED_COUNTS[name]
    assert len({p.point_id for p in spec.points}) == len(spec.points)
    for p in spec.points:
        cfg = p.config
        per_step = cfg.train.batch_size * cfg.model.seq_len
        assert p.tokens == cfg.train.steps * per_step  # D = steps x batch x seq_len, exactly
        assert p.flops_6nd == 6.0 * p.n_params * p.tokens  # C_6ND = 6 N D
        assert p.flops_exact == flops_per_token(cfg.model).exact * p.tokens  # real FLOPs
        assert p.accounting == spec.accounting
        assert p.flops == (p.flops_exact if p.accounting == "total" else p.flops_6nd)
        counts = acc_param_counts(cfg.model)
        assert (p.n_params, p.n_params_total) == (counts.non_embedding, counts.total)
        n_acc = p.n_params_total if p.accounting == "total" else p.n_params
        assert p.n_accounted == n_acc
        assert p.tokens_per_param == pytest.approx(p.tokens / n_acc)
        assert 0 <= cfg.optim.warmup_steps < cfg.train.steps
        assert cfg.name and len(p.point_id) == 12
        json.dumps(p.requested)  # recorded in point.json
    text = format_plan(spec)
    assert all(p.point_id in text for p in spec.points)
    assert "rough estimate" in text
    assert f"accounting: {spec.accounting}" in text and "C_6ND" in text and "C_exact" in text


def test_shipped_accountings():
    """Demo and IsoFLOP count as Chinchilla does; the optimizer study keeps its Kaplan D/N."""
    for name in ("demo.toml", "isoflop.toml"):
        assert shipped(name).accounting == "total"
    for name in ("optimizers.toml", "optimizers_large.toml"):
        assert shipped(name).accounting == "kaplan"
    assert shipped("tiny.toml").accounting == "total"  # the default


@pytest.mark.parametrize("accounting", ["total", "kaplan"])
def test_demo_shape(accounting):
    """Six sizes, six budgets sqrt(2) apart with 4-5 sizes each, D/N in the window, C
    within rounding; one trunk per size that appears at several budgets, every other point
    of it a cooldown branch; warm-up of N tokens.

    Under "total" every IsoFLOP point's C_exact (real training FLOPs) is within 2 % of its
    budget; under "kaplan" its 6ND is. The other figure is off by the accounting gap.
    """
    spec = shipped("demo.toml", f"accounting={accounting}")
    assert spec.accounting == accounting
    results = [p for p in spec.points if p.role != "trunk"]
    budgets = sorted({p.compute_budget for p in results})
    assert budgets == [1.13e11, 1.6e11, 2.26e11, 3.2e11, 4.53e11, 6.4e11]
    for c in budgets:
        pts = [p for p in results if p.compute_budget == c]
        assert 4 <= len(pts) <= 5 if accounting == "total" else 3 <= len(pts) <= 6
        for p in pts:
            assert 15 <= p.tokens_per_param <= 400
            spent = p.flops_exact if accounting == "total" else p.flops_6nd
            other = p.flops_6nd if accounting == "total" else p.flops_exact
            assert abs(spent / c - 1) < 0.02
            assert p.flops == spent
            assert abs(other / c - 1) > 0.1  # the two accountings differ at these sizes
            assert p.config.train.eval_every == math.ceil(p.steps / 8)
            n_acc = p.n_params_total if accounting == "total" else p.n_params
            per_step = p.config.train.batch_size * p.config.model.seq_len
            assert p.config.optim.warmup_steps == max(1, min(p.steps - 1, round(n_acc / per_step)))
    trunks = [p for p in spec.points if p.role == "trunk"]
    assert trunks and all(p.compute_budget is None for p in trunks)
    for p in results:
        if p.role == "branch":
            trunk = next(t for t in trunks if t.point_id == p.depends_on)
            assert trunk.n_params == p.n_params
            assert p.branched_at_step == p.steps - round(0.2 * p.steps)


def test_tokens_per_param_range_drops_sizes_outside_it():
    spec = shipped("demo.toml")
    assert any("outside tokens_per_param_range" in n for n in spec.notes)
    assert not [p for p in spec.points if p.compute_budget == 4.8e11 and p.n_params < 5e3]
    assert any("D/N_tot = " in n for n in spec.notes)  # the window speaks of N_total


@pytest.mark.parametrize("accounting", ["total", "kaplan"])
def test_isoflop_points_hit_their_budget_within_rounding(accounting):
    spec = shipped("isoflop.toml", f"accounting={accounting}")
    budgets = sorted({p.compute_budget for p in spec.points})
    assert len(budgets) >= 3
    for c in budgets:
        sizes = [p for p in spec.points if p.compute_budget == c]
        assert len({p.n_params for p in sizes}) >= 5
        assert len({p.group for p in sizes}) == 1
    for p in spec.points:
        c = p.compute_budget
        per_token = (flops_per_token(p.config.model).exact if accounting == "total"
                     else 6.0 * p.n_params)
        half_step = per_token * p.config.train.batch_size * p.config.model.seq_len / 2
        assert abs(p.flops - c) <= half_step + 1e-6 * c
        assert p.requested["compute"] == c
        assert p.requested["rounding"]["flops_rel"] == pytest.approx(p.flops / c - 1.0)
        assert p.requested["tokens"] == pytest.approx(c / per_token)
        spent = "C_exact" if accounting == "total" else "C_6ND = 6ND"
        assert f"budget spent in {spent}" in p.requested["derivation"]


def test_isoflop_sizes_follow_the_accountings_tokens_per_param():
    """Sizes by tokens_per_param: D / N of the accounting lands near each ratio r.

    Kaplan keeps N = sqrt(C / (6 r)) snapped (the pre-accounting rule); under total the
    chosen shape's D / N_total is the nearest the discrete ladder offers (within 2x of r,
    where the ladder's neighbouring shapes differ by up to 2x in N_total).
    """
    ratios = [2, 5.66, 16, 45, 128]
    for accounting in ("total", "kaplan"):
        spec = shipped("isoflop.toml", f"accounting={accounting}")
        for c in sorted({p.compute_budget for p in spec.points}):
            pts = sorted((p for p in spec.points if p.compute_budget == c),
                         key=lambda p: p.tokens_per_param)
            assert [p.requested["tokens_per_param_target"] for p in pts] == ratios
            for p, r in zip(pts, ratios):
                assert 0.5 < p.tokens_per_param / r < 2
            if accounting == "kaplan":
                for p in pts:
                    target = math.sqrt(c / (6 * p.requested["tokens_per_param_target"]))
                    assert p.requested["n_target"] == pytest.approx(target)


def test_total_accounting_picks_the_nearest_shape(tmp_path):
    """Under total no other shape of the ladder rule gets closer to the asked D / N_total."""
    path = write(tmp_path, BASE + """
        [sweep]
        model = { aspect_ratio = 32, head_dim = 16 }
        compute = { budgets = [1e12], tokens_per_param = [20] }
        """)
    (p,) = load_spec(path).points
    base = p.config.model

    def ratio(target):
        shape = ladder_shape(target, base, aspect_ratio=32, head_dim=16)
        m = ModelConfig(**{**base.__dict__, **shape, "preset": ""})
        return 1e12 / flops_per_token(m).exact / acc_param_counts(m).total

    got = abs(math.log(ratio(p.requested["n_target"]) / 20))
    others = [abs(math.log(ratio(t) / 20)) for t in (p.n_params * 2 ** (k / 8) for k in range(-16, 17))]
    assert got <= min(others) + 1e-12


def test_isoflop_large_variant():
    small = shipped("isoflop.toml")
    large = shipped("isoflop.toml", variant="large")
    assert large.executor == "slurm" and large.slurm["gpus_per_job"] == 1
    assert len(large.points) == len(small.points)
    assert min(p.compute_budget for p in large.points) >= 1e17
    with pytest.raises(SpecError, match="variant 'huge' not found"):
        load_spec(EXP / "isoflop.toml", variant="huge")


def test_optimizer_grids():
    spec = shipped("optimizers.toml")
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
    small = shipped("optimizers.toml")
    large = shipped("optimizers_large.toml")
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
    spec = shipped("optimizers.toml")
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


def test_duplicates_are_dropped_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, BASE + '[sweep.axes]\n"optim.lr" = [1e-3, 1e-3, 2e-3]\n')
    with caplog.at_level("WARNING", logger="scaling.sweep"):
        spec = load_spec(path)
    assert len(spec.points) == 2 and any("duplicates" in n for n in spec.notes)
    (record,) = [r for r in caplog.records if "duplicates" in r.getMessage()]
    assert record.levelname == "WARNING" and "\n" not in record.getMessage()


def test_duplicate_warning_is_one_clean_line_on_stderr(tmp_path):
    """`plan` prints the warning as one line on stderr, not a Python source line."""
    path = write(tmp_path, BASE + '[sweep.axes]\n"optim.lr" = [1e-3, 1e-3, 2e-3]\n')
    out = _cli("plan", str(path), "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "duplicates" in lines[0] and "WARNING" in lines[0]
    assert "warn(" not in out.stderr and "Warning" not in out.stderr


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
    spec = shipped("demo.toml")
    text = format_plan(spec, tokens_per_s=lambda p: 1e5)
    assert "D/N" in text and "total" in text and "rough estimate" not in text
    half = format_plan(spec, tokens_per_s=lambda p: 1e5 if p.n_params < 3e4 else None)
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


# --------------------------------------------------------------------------------------
# Compute accounting and `plan --json`
# --------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SCALINGLAB_ACHIEVED_FLOPS="5e10")
    return subprocess.run([sys.executable, "run_sweep.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


JSON_KEYS = {"id", "label", "group", "accounting", "N", "N_total", "D", "steps", "budget",
             "C", "C_6ND", "C_exact", "tokens_per_param", "lr", "warmup_steps", "role", "trunk",
             "branched_at_step", "C_spent"}


@pytest.mark.parametrize("accounting", ["total", "kaplan"])
def test_plan_json_lists_every_point(accounting, run_sweep_main):
    out = run_sweep_main("plan", "experiments/demo.toml", f"accounting={accounting}", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # stdout is the JSON list and nothing else
    spec = shipped("demo.toml", f"accounting={accounting}")
    assert [r["id"] for r in rows] == [p.point_id for p in spec.points]
    for r, p in zip(rows, spec.points):
        assert set(r) == JSON_KEYS
        assert (r["label"], r["group"], r["accounting"]) == (p.label, p.group, accounting)
        assert (r["N"], r["N_total"], r["D"], r["steps"]) == \
            (p.n_params, p.n_params_total, p.tokens, p.steps)
        assert r["D"] == r["steps"] * p.config.train.batch_size * p.config.model.seq_len
        assert r["C_6ND"] == 6 * r["N"] * r["D"]
        assert r["C_exact"] == flops_per_token(p.config.model).exact * r["D"]
        assert r["C"] == r["C_exact" if accounting == "total" else "C_6ND"]
        if r["role"] != "trunk":  # a trunk serves every budget of its size: it has none
            assert abs(r["C"] / r["budget"] - 1) < 0.02
        n_acc = r["N_total"] if accounting == "total" else r["N"]
        assert r["tokens_per_param"] == pytest.approx(r["D"] / n_acc)
        assert (r["lr"], r["warmup_steps"]) == (p.config.optim.lr, p.config.optim.warmup_steps)


def test_plan_json_budget_is_null_off_isoflop_axes():
    out = _cli("plan", "experiments/tiny.toml", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["budget"] is None and row["steps"] == 600 and row["accounting"] == "total"
    assert row["C"] == row["C_exact"] > row["C_6ND"] == 6 * row["N"] * row["D"]


def test_plan_table_shows_both_figures_and_the_accounting(run_sweep_main):
    out = run_sweep_main("plan", "experiments/demo.toml")
    assert out.returncode == 0, out.stderr
    head = next(line for line in out.stdout.splitlines() if line.startswith("id "))
    assert "C_6ND" in head and "C_exact" in head and "D/N_tot" in head
    assert "accounting: total" in out.stdout and "budget spent in C_exact" in out.stdout
    kaplan = run_sweep_main("plan", "experiments/demo.toml", "accounting=kaplan").stdout
    assert "accounting: kaplan" in kaplan and "budget spent in C_6ND" in kaplan


@pytest.mark.parametrize("value", ['"chinchilla"', "6", '"Total"'])
def test_bad_accounting_exits_2_naming_the_key(tmp_path, value, run_sweep_main):
    path = write(tmp_path, f"accounting = {value}\n" + BASE)
    out = run_sweep_main("plan", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert "accounting = " in out.stderr and "'total', 'kaplan'" in out.stderr
    assert "Traceback" not in out.stderr
    bad_override = run_sweep_main("plan", "experiments/demo.toml", "accounting=kaplan6", "--json")
    assert bad_override.returncode == 2 and bad_override.stdout == ""
    assert "accounting = 'kaplan6'" in bad_override.stderr


def test_accounting_in_sweep_tables_may_repeat_but_never_mix(tmp_path):
    grids = """
        [[sweep]]
        accounting = "{a}"
        model = {{ presets = ["n25k"] }}
        data = {{ tokens_per_param = [4] }}
        [[sweep]]
        accounting = "{b}"
        model = {{ presets = ["n100k"] }}
        data = {{ tokens_per_param = [4] }}
        """
    same = load_spec(write(tmp_path, BASE + grids.format(a="kaplan", b="kaplan"), "same.toml"))
    assert same.accounting == "kaplan" and len(same.points) == 2
    for p in same.points:
        assert p.tokens_per_param == pytest.approx(4, rel=0.05) and p.flops == p.flops_6nd
    mixed = write(tmp_path, BASE + grids.format(a="kaplan", b="total"), "mixed.toml")
    with pytest.raises(SpecError, match=r"must not mix accountings.*sweep\[0\].accounting = "
                                        r"'kaplan'.*sweep\[1\].accounting = 'total'"):
        load_spec(mixed)
    top = write(tmp_path, 'accounting = "total"\n' + BASE + grids.format(a="total", b="kaplan"),
                "top.toml")
    with pytest.raises(SpecError, match="must not mix accountings"):
        load_spec(top)
    # a command-line accounting sets the whole spec
    assert load_spec(mixed, ["accounting=total"]).accounting == "total"


def test_data_axis_tokens_per_param_counts_the_accountings_n(tmp_path):
    path = write(tmp_path, BASE + """
        [sweep]
        model = { presets = ["n25k"] }
        data = { tokens_per_param = [20] }
        """)
    total, kaplan = (load_spec(path, [f"accounting={a}"]).points[0] for a in ("total", "kaplan"))
    per_step = 8 * 64
    assert abs(total.tokens - 20 * total.n_params_total) <= per_step / 2
    assert abs(kaplan.tokens - 20 * kaplan.n_params) <= per_step / 2
    assert "20·N_tot" in total.requested["derivation"]


def test_followup_points_keep_both_figures():
    spec = shipped("optimizers.toml")
    n = sorted({p.n_params for p in spec.points})[0]
    (p, *_) = seed_followup(spec, {("adamw", n): 6.3e-3}, seeds=(1,))
    src = next(q for q in spec.points if q.point_id == p.requested["from_point"])
    assert (p.accounting, p.flops_6nd, p.flops_exact) == \
        (src.accounting, src.flops_6nd, src.flops_exact)
    assert isinstance(p, Point) and isinstance(spec, SweepSpec)
    assert estimate_seconds(p, "cpu") > 0
    assert plan_records(spec)[0]["accounting"] == "kaplan"


def test_architectures_study_compares_families_on_the_same_tokens():
    spec = shipped("architectures.toml")
    by_arch = {}
    for p in spec.points:
        by_arch.setdefault(p.config.model.arch, []).append(p)
    assert sorted(by_arch) == ["lstm", "transformer"]
    assert all(len(v) >= 5 for v in by_arch.values())
    # one D, one epoch over exactly the tokens the n-gram is counted on
    assert {p.tokens for p in spec.points} == {spec.points[0].config.data.max_unique_tokens}
    assert all(p.config.train.eval_per_position for p in spec.points)
    assert spec.accounting == "kaplan"  # non-embedding N, as Kaplan et al. compare the families
