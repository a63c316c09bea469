"""Cooldown branches, per-size warm-up (warmup_tokens) and lr law (lr_law): planning only.

Fast (no training): every test plans specs; one imports scaling.train.schedules to check that a
branch's k is where the wsd schedule starts its decay.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from scaling.sweep import SpecError, format_plan, load_spec, plan_records
from scaling.sweep.cooldown import decay_start

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_device_probe(monkeypatch):
    monkeypatch.setenv("SCALINGLAB_ACHIEVED_FLOPS", "5e10")


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


BASE = """
[model]
seq_len = 32
[data]
max_corpus_bytes = 1000000
[optim]
lr = 3e-3
schedule = "cosine"
[train]
batch_size = 8
"""

SIZES = 'model = { n = [2e4, 6e4], aspect_ratio = 32, head_dim = 16 }\n'


def cooldown_spec(tmp_path, warmup='warmup_fraction = 0.05',
                  cooldown='fraction = 0.2, shape = "1-sqrt"',
                  data='data = { tokens_per_param = [10, 20, 40] }', extra=""):
    return write(tmp_path, BASE + f"""
[sweep]
seeds = [0, 1]
{warmup}
evals_per_run = 4
{SIZES}{data}
cooldown = {{ {cooldown} }}
{extra}""")


def test_trunks_and_branches(tmp_path):
    spec = load_spec(cooldown_spec(tmp_path))
    trunks = [p for p in spec.points if p.role == "trunk"]
    branches = [p for p in spec.points if p.role == "branch"]
    assert len(trunks) == 4 and len(branches) == 12  # (2 sizes x 2 seeds) x (1 + 3 lengths)
    assert len(spec.points) == 16
    for t in trunks:
        mine = [b for b in branches if b.depends_on == t.point_id]
        assert len(mine) == 3
        assert {b.n_params for b in mine} == {t.n_params}
        assert {b.config.train.seed for b in mine} == {t.config.train.seed}
        shortest = min(b.steps for b in mine)
        warmup = min(shortest - 1, math.floor(0.05 * shortest + 0.5))  # the shortest's
        ks = []
        for b in mine:
            S = b.steps
            k = S - min(max(int(round(0.2 * S)), 1), S - warmup)
            ks.append(k)
            o, tr = b.config.optim, b.config.train
            assert (o.schedule, o.decay_fraction, o.decay_shape) == ("wsd", 0.2, "1-sqrt")
            assert o.warmup_steps == warmup  # identical for trunk and every branch
            assert (tr.init_from, tr.init_step) == (f"../{t.point_id}", k)
            assert b.requested["role"] == "branch" and b.requested["trunk"] == t.point_id
            assert b.requested["branched_at_step"] == k == b.branched_at_step
            assert b.spent_steps == S - k and b.flops_spent == pytest.approx(b.flops * (S - k) / S)
            assert 0 < k < S and k > warmup
        o, tr = t.config.optim, t.config.train
        assert o.schedule == "constant" and o.warmup_steps == warmup
        assert tr.steps == max(ks)
        assert tr.save_steps == ",".join(str(k) for k in sorted(ks))
        assert (tr.init_from, tr.init_step) == ("", 0)
        assert t.group == "trunk" and t.compute_budget is None and t.depends_on is None
        assert t.flops_spent == t.flops and t.tokens == tr.steps * 8 * 32
        # a trunk comes before its branches in the plan (a sequential executor needs it)
        order = [p.point_id for p in spec.points]
        assert all(order.index(t.point_id) < order.index(b.point_id) for b in mine)
    # every other key of a branch is its trunk's
    t, b = trunks[0], next(b for b in branches if b.depends_on == trunks[0].point_id)
    tf, bf = _flat(t.config.to_dict()), _flat(b.config.to_dict())
    differ = {k for k in tf if tf[k] != bf[k]}
    assert differ <= {"name", "optim.schedule", "optim.decay_fraction", "optim.decay_shape",
                      "train.steps", "train.eval_every", "train.save_steps", "train.init_from",
                      "train.init_step", "train.eval_tokens", "train.eval_steps"}
    # the trunk evaluates wherever a branch's separate run does before the branch's k
    for t in trunks:
        tr = t.config.train
        done = {j for j in range(1, tr.steps) if j % tr.eval_every == 0} | tr.extra_eval_steps
        for b in (b for b in branches if b.depends_on == t.point_id):
            e = b.config.train.eval_every
            assert set(range(e, b.config.train.init_step, e)) <= done, (b.label, e)
    # a trunk's final eval is a learning-curve point (its loss is no result): the curve's
    # eval sample, not the whole eval set
    assert t.config.train.eval_tokens == min(b.config.train.eval_tokens,
                                             b.config.train.curve_eval_tokens or 10**12)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_branch_ids_are_the_separate_runs_ids(tmp_path):
    """init_* are not semantic: a branch is the same computation as a separate wsd run."""
    branched = load_spec(cooldown_spec(tmp_path, warmup='warmup_tokens = "N"'))
    separate = load_spec(write(tmp_path, BASE + f"""
[sweep]
seeds = [0, 1]
warmup_tokens = "N"
evals_per_run = 4
{SIZES}data = {{ tokens_per_param = [10, 20, 40] }}
""", "separate.toml"), ["optim.schedule=wsd", "optim.decay_fraction=0.2",
                        "optim.decay_shape=1-sqrt"])
    branches = sorted(p.point_id for p in branched.points if p.role == "branch")
    assert branches == sorted(p.point_id for p in separate.points)
    assert all(p.role == "run" and p.depends_on is None for p in separate.points)


def test_branch_k_is_where_wsd_starts_decaying(tmp_path):
    from scaling.train.schedules import schedule

    spec = load_spec(cooldown_spec(tmp_path))
    for b in (p for p in spec.points if p.role == "branch"):
        lr_at = schedule(b.config.optim, b.steps)
        k, lr = b.branched_at_step, b.config.optim.lr
        assert float(lr_at(k)) == pytest.approx(lr, rel=1e-6)  # still stable at k
        assert float(lr_at(k + 1)) < lr * (1 - 1e-6)  # decaying after it
        assert float(lr_at(k - 1)) == pytest.approx(lr, rel=1e-6)
    for steps, f, w in [(10, 0.25, 0), (11, 0.5, 2), (7, 0.5, 1), (100, 0.2, 5), (5, 0.9, 1)]:
        # round half to even, clipped as optim clips: decay D in [1, S - W]
        assert decay_start(steps, f, w) == steps - min(max(round(f * steps), 1), steps - w)


def test_one_length_is_a_plain_wsd_run(tmp_path):
    spec = load_spec(cooldown_spec(tmp_path, data='data = { tokens_per_param = [20] }'))
    assert len(spec.points) == 4 and all(p.role == "run" for p in spec.points)
    assert all(p.config.optim.schedule == "wsd" and p.config.train.init_from == ""
               for p in spec.points)


def test_isoflop_branches_share_a_trunk_across_budgets(tmp_path):
    spec = load_spec(write(tmp_path, BASE + """
[sweep]
warmup_fraction = 0.05
model = { n = [2e4, 6e4], aspect_ratio = 32, head_dim = 16 }
compute = { budgets = [3e10, 1e11] }
cooldown = { fraction = 0.25 }
"""))
    trunks = [p for p in spec.points if p.role == "trunk"]
    assert len(trunks) == 2 and all(t.group == "trunk" for t in trunks)
    for t in trunks:
        mine = [b for b in spec.points if b.depends_on == t.point_id]
        assert sorted(b.group for b in mine) == ["C1e11", "C3e10"]
        assert all(b.compute_budget is not None for b in mine)
        assert {b.config.optim.decay_shape for b in mine} == {"1-sqrt"}  # the default shape
    records = plan_records(spec)
    assert {r["role"] for r in records} == {"trunk", "branch"}
    assert all(r["C_spent"] <= r["C"] for r in records)


def test_plan_shows_roles_and_compute_spent(tmp_path):
    spec = load_spec(cooldown_spec(tmp_path))
    text = format_plan(spec)
    assert "role" in text and "branch@" in text and "trunk" in text
    assert "cooldown: per size one constant-lr trunk" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("cooldown branches"))
    pts = spec.points
    spent = sum(p.flops_exact * p.spent_fraction for p in pts)
    separate = sum(p.flops_exact for p in pts if p.role == "branch")
    assert f"C_exact = {spent:.3g}" in line and f"C_exact = {separate:.3g}" in line
    assert f"{spent / separate:.2f}x (C_exact)" in line
    assert spent < separate


@pytest.mark.parametrize("cooldown, words", [
    ("fraction = 1.5", "sweep.cooldown.fraction = 1.5"),
    ("fraction = 0", "sweep.cooldown.fraction = 0"),
    ('shape = "sqrt"', "sweep.cooldown.shape = 'sqrt'"),
    ("frac = 0.2", "unknown key 'sweep.cooldown.frac'"),
])
def test_bad_cooldown_tables_are_refused(tmp_path, cooldown, words):
    with pytest.raises(SpecError, match=words.replace(".", r"\.").replace("(", r"\(")):
        load_spec(cooldown_spec(tmp_path, cooldown=cooldown))


def test_branch_inside_warmup_is_refused(tmp_path):
    # fraction 0.5: the shortest point (S ~ 860 steps) would leave its trunk at k ~ 430,
    # inside a warm-up of 500 steps: refused, naming the fraction and the warm-up
    path = cooldown_spec(tmp_path, warmup="", cooldown="fraction = 0.5")
    shortest = min(p.steps for p in load_spec(path).points if p.role == "branch")
    assert decay_start(shortest, 0.5, 0) < 500 < shortest
    with pytest.raises(SpecError, match=r"sweep\.cooldown\.fraction = 0\.5.*warm-up of 500"):
        load_spec(path, ["optim.warmup_steps=500"])
    assert load_spec(path, ["optim.warmup_steps=20"]).points  # k > 20 everywhere: fine


def test_cooldown_needs_a_data_axis_and_owns_the_schedule(tmp_path):
    with pytest.raises(SpecError, match=r"\[sweep\.cooldown\].*needs a \[sweep\.data\]"):
        load_spec(write(tmp_path, BASE + f"""
[sweep]
{SIZES}cooldown = {{ fraction = 0.2 }}
"""))
    with pytest.raises(SpecError, match="'optim.schedule' conflicts with \\[sweep.cooldown\\]"):
        load_spec(cooldown_spec(tmp_path, extra='[sweep.axes]\n"optim.schedule" = ["cosine"]\n'))


# --------------------------------------------------------------------------------------
# warmup_tokens
# --------------------------------------------------------------------------------------


def plain(tmp_path, sweep_keys, accounting="total"):
    return load_spec(write(tmp_path, f'accounting = "{accounting}"\n' + BASE + f"""
[sweep]
{sweep_keys}
{SIZES}data = {{ tokens_per_param = [20] }}
"""))


@pytest.mark.parametrize("accounting", ["total", "kaplan"])
@pytest.mark.parametrize("value, mult", [('"N"', 1.0), ('"2N"', 2.0), ('"0.5N"', 0.5),
                                         ('"3 * N"', 3.0)])
def test_warmup_tokens_in_multiples_of_n(tmp_path, accounting, value, mult):
    spec = plain(tmp_path, f"warmup_tokens = {value}", accounting)
    for p in spec.points:
        exact = mult * p.n_accounted / (8 * 32)  # N as the accounting counts it
        want = min(p.steps - 1, max(1, math.floor(exact + 0.5)))
        assert p.config.optim.warmup_steps == want
        assert "warm-up" in p.requested["derivation"]
    n_name = "N_tot" if accounting == "total" else "N"
    assert f"·{n_name} = " in spec.points[0].requested["derivation"]


def test_warmup_tokens_as_a_number_and_its_caps(tmp_path):
    spec = plain(tmp_path, "warmup_tokens = 2560")
    assert {p.config.optim.warmup_steps for p in spec.points} == {10}  # 2560 / 256 per step
    spec = plain(tmp_path, "warmup_tokens = 1")  # at least one step
    assert {p.config.optim.warmup_steps for p in spec.points} == {1}
    spec = plain(tmp_path, "warmup_tokens = 1e12")  # at most steps - 1
    assert all(p.config.optim.warmup_steps == p.steps - 1 for p in spec.points)


@pytest.mark.parametrize("keys, words", [
    ('warmup_tokens = "N"\nwarmup_fraction = 0.05', "are exclusive"),
    ('warmup_tokens = "M"', r"sweep\.warmup_tokens = 'M': expected \"N\""),
    ('warmup_tokens = "-2N"', r"sweep\.warmup_tokens = '-2N'"),
    ("warmup_tokens = 0", r"sweep\.warmup_tokens = 0"),
])
def test_bad_warmup_tokens_are_refused(tmp_path, keys, words):
    with pytest.raises(SpecError, match=words):
        plain(tmp_path, keys)


# --------------------------------------------------------------------------------------
# lr_law
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("accounting", ["total", "kaplan"])
def test_lr_law_sets_the_lr_per_size(tmp_path, accounting):
    spec = plain(tmp_path, "lr_law = { lr = 3e-3, n_ref = 1e5, exponent = -0.25 }", accounting)
    lrs = []
    for p in spec.points:
        want = 3e-3 * (p.n_accounted / 1e5) ** -0.25
        assert p.config.optim.lr == float(f"{want:.4g}")
        assert "lr = 3e-3·(" in p.requested["derivation"]
        assert p.requested["lr_law"] == {"lr": 3e-3, "n_ref": 1e5, "exponent": -0.25}
        lrs.append(p.config.optim.lr)
    assert lrs[0] > lrs[1]  # smaller model, larger lr


def test_lr_law_yields_to_an_override_and_refuses_an_lr_axis(tmp_path):
    spec = load_spec(write(tmp_path, BASE + f"""
[sweep]
lr_law = {{ lr = 3e-3, n_ref = 1e5, exponent = -0.25 }}
{SIZES}data = {{ tokens_per_param = [20] }}
[[override]]
where = {{ n_params = "> 4e4" }}
set = {{ "optim.lr" = 1e-3 }}
"""))
    small, large = sorted(spec.points, key=lambda p: p.n_params)
    assert large.config.optim.lr == 1e-3 and "lr_law" not in large.requested
    assert small.config.optim.lr != 3e-3 and "lr_law" in small.requested
    with pytest.raises(SpecError, match="lr_law sets optim.lr per size"):
        plain(tmp_path, 'lr_law = { lr = 3e-3, n_ref = 1e5, exponent = -0.25 }\n'
                        '[sweep.axes]\n"optim.lr" = [1e-3, 3e-3]')


@pytest.mark.parametrize("law, words", [
    ("{ lr = 3e-3, n_ref = 1e5 }", r"sweep\.lr_law\.exponent = None"),
    ("{ lr = -1, n_ref = 1e5, exponent = 0 }", r"sweep\.lr_law\.lr = -1: must be > 0"),
    ("{ lr = 1e-3, n_ref = 1e5, exponent = 0, k = 1 }", "unknown key 'sweep.lr_law.k'"),
    ("3e-3", "lr_law must be a table"),
])
def test_bad_lr_laws_are_refused(tmp_path, law, words):
    with pytest.raises(SpecError, match=words):
        plain(tmp_path, f"lr_law = {law}")


# --------------------------------------------------------------------------------------
# lr_batch_rule (the batch-size study: lr relative to a base batch, warm-up in tokens)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule, k", [("none", 0.0), ("sqrt", 0.5), ("linear", 1.0)])
def test_lr_batch_rule_scales_each_lr_from_the_base_batch(tmp_path, rule, k):
    spec = load_spec(write(tmp_path, BASE + f"""
[sweep]
warmup_tokens = 4096
lr_batch_rule = {{ rule = "{rule}", base_batch = 8 }}
data = {{ tokens = [200_000] }}
[sweep.axes]
"train.batch_size" = [4, 8, 32]
"optim.lr" = [1e-3, 3e-3]
"""))
    assert len(spec.points) == 6
    for p in spec.points:
        b = p.config.train.batch_size
        base = 1e-3 if "lr1e-3" in p.label else 3e-3
        assert p.config.optim.lr == float(f"{base * (b / 8) ** k:.4g}")
        assert p.requested["lr_batch_rule"] == {"rule": rule, "base_batch": 8}
        assert f"({rule} batch rule)" in p.requested["derivation"]
        # the same tokens and the same warm-up in tokens at every batch
        assert p.config.train.steps == math.floor(200_000 / (b * 32) + 0.5)  # half up
        assert p.config.optim.warmup_steps == max(1, math.floor(4096 / (b * 32) + 0.5))


@pytest.mark.parametrize("rule, words", [
    ('{ rule = "cube", base_batch = 8 }', r"lr_batch_rule\.rule = 'cube': allowed: 'none', 'sqrt', 'linear'"),
    ('{ rule = "sqrt", base_batch = 0 }', r"lr_batch_rule\.base_batch = 0: an integer >= 1"),
    ('{ rule = "sqrt" }', r"lr_batch_rule\.base_batch = None"),
    ('"sqrt"', "lr_batch_rule must be a table"),
])
def test_bad_lr_batch_rules_are_refused(tmp_path, rule, words):
    with pytest.raises(SpecError, match=words):
        plain(tmp_path, f"lr_batch_rule = {rule}")


def test_batch_size_experiment():
    """experiments/batch_size.toml: 4 optimizers x 7 batches (64x) x 3-5 lrs, 1.2M tokens each."""
    spec = load_spec(ROOT / "experiments" / "batch_size.toml")
    assert len(spec.points) == 112
    assert {p.config.train.batch_size for p in spec.points} == {4, 8, 16, 32, 64, 128, 256}
    assert {p.config.optim.name for p in spec.points} == {"nesterov", "adamw", "lars", "lamb"}
    assert all(p.config.train.noise_scale and p.config.optim.schedule == "constant"
               for p in spec.points)
    for p in spec.points:
        per_step = p.config.train.batch_size * 64
        assert abs(p.tokens - 1_200_000) <= per_step / 2


def test_spec_overrides_reach_every_sweep_table():
    spec = load_spec(ROOT / "experiments" / "cooldown.toml", ["sweep.seeds=[0,1,2]"])
    assert len(spec.points) == 45
    assert {p.config.train.seed for p in spec.points} == {0, 1, 2}


def test_cooldown_experiment():
    """experiments/cooldown.toml: 3 sizes x 2 lengths as branches and as cosine runs."""
    spec = load_spec(ROOT / "experiments" / "cooldown.toml")
    roles = [p.role for p in spec.points]
    assert roles.count("trunk") == 3 and roles.count("branch") == 6 and roles.count("run") == 6
    branches = {(p.n_params, p.steps): p for p in spec.points if p.role == "branch"}
    cosine = {(p.n_params, p.steps): p for p in spec.points if p.role == "run"}
    assert set(branches) == set(cosine) and len({n for n, _ in cosine}) == 3
    for key, b in branches.items():
        c = cosine[key]
        assert c.config.optim.schedule == "cosine"
        assert c.config.optim.warmup_steps == b.config.optim.warmup_steps
        assert c.config.train.seed == b.config.train.seed and c.tokens == b.tokens


def test_branch_before_any_training_is_refused(tmp_path):
    # D = 256 tokens is one step of 8 x 32: its cooldown would start at step 0
    path = cooldown_spec(tmp_path, warmup="", data="data = { tokens = [256, 25600] }")
    with pytest.raises(SpecError, match=r"sweep\.cooldown\.fraction = 0\.2: point .* at step "
                                        r"k = 0, before any training"):
        load_spec(path)
