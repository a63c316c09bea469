"""Self-bracketing IsoFLOP budgets (followup.bracket): decisions from fake results tables.

Fast (no training): the stage's proposals are checked against results tables written
here, with the loss a parabola in log N around a chosen optimum.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from scaling.sweep import stages
from scaling.sweep import SpecError, format_plan, load_spec
from scaling.sweep.bracket import propose, series_key


@pytest.fixture(autouse=True)
def _no_device_probe(monkeypatch):
    monkeypatch.setenv("SCALINGLAB_ACHIEVED_FLOPS", "5e10")


BASE = """
[model]
seq_len = 32
[data]
max_corpus_bytes = 1000000
[train]
batch_size = 8
"""


def spec_file(tmp_path: Path, model='{ n = [2e4, 4e4, 8e4], aspect_ratio = 32, head_dim = 16 }',
              window="[0.5, 5000]", bracket="{ max_extra = 2 }", extra="",
              budgets="[2e11]") -> Path:
    p = tmp_path / "iso.toml"
    p.write_text(textwrap.dedent(BASE + f"""
[sweep]
seeds = [0, 1]
warmup_fraction = 0.05
model = {model}
compute = {{ budgets = {budgets}, tokens_per_param_range = {window} }}
{extra}
[followup]
bracket = {bracket}
"""))
    return p


def loss(p, n_star: float) -> float:
    return 3.0 + 0.1 * math.log(p.n_params / n_star) ** 2 + 0.001 * p.config.train.seed


def table(points, n_star: float, status: dict | None = None) -> pd.DataFrame:
    status = status or {}
    return pd.DataFrame([{"point_id": p.point_id, "status": status.get(p.point_id, "done"),
                          "final_eval_loss": loss(p, n_star)} for p in points])


def test_min_at_the_small_edge_adds_the_next_smaller_size(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    pts = list(spec.points)
    new, decisions = propose(spec, pts, table(pts, 5e3), 2, {})
    (d,) = decisions
    assert d["edge"] == "small" and not d["bracketed"] and d["best"] == "n12.8k"
    smallest = min(p.n_params for p in pts)
    assert len(new) == 2 and {p.config.train.seed for p in new} == {0, 1}  # one per seed
    for p in new:
        assert p.n_params < smallest
        # the ladder's own step (x 1/2 in target N), snapped by the shape rule; 1e4 snaps
        # to the shape already tried (1 x 32), so one more step: 5e3 -> 1 x 16
        assert p.requested["n_target"] == pytest.approx(5e3)
        assert (p.config.model.n_layer, p.config.model.d_model) == (1, 16)
        assert p.requested["bracket"] == ("bracket: budget C2e11 (C = 2e+11)'s best size "
                                          "n12.8k was at the small edge")
        assert p.group == "C2e11" and p.compute_budget == 2e11
        assert p.flops == pytest.approx(2e11, rel=0.03)  # same budget, same accounting
        assert p.accounting == "total" and p.config.optim.warmup_steps == \
            min(p.steps - 1, math.floor(0.05 * p.steps + 0.5))
        assert series_key(p) == series_key(pts[0])


def test_min_at_the_large_edge_adds_the_next_larger_size(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    pts = list(spec.points)
    new, (d,) = propose(spec, pts, table(pts, 1e6), 2, {})
    assert d["edge"] == "large"
    largest = max(p.n_params for p in pts)
    assert len(new) == 2 and all(p.n_params > largest for p in new)
    assert all(p.requested["n_target"] == pytest.approx(1.6e5) for p in new)
    assert "large edge" in new[0].requested["bracket"]


def test_bracketed_minimum_adds_nothing(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    pts = list(spec.points)
    new, (d,) = propose(spec, pts, table(pts, 4e4), 2, {})
    assert new == [] and d["bracketed"] and d["limit"] is None


def test_limits_stop_the_stage(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    pts = list(spec.points)
    key = series_key(pts[0])
    new, (d,) = propose(spec, pts, table(pts, 5e3), 2, {key: 2})
    assert new == [] and "max_extra = 2" in d["limit"]
    # the next smaller size would train D / N_tot above the window's top
    spec = load_spec(spec_file(tmp_path, window="[0.5, 60]"))
    pts = list(spec.points)
    assert max(p.tokens_per_param for p in pts) < 60
    new, (d,) = propose(spec, pts, table(pts, 5e3), 2, {})
    assert new == [] and "tokens_per_param_range" in d["limit"]
    # a preset ladder ends
    spec = load_spec(spec_file(tmp_path, model='{ presets = ["n25k", "n100k", "n200k"] }',
                               window="[0.05, 5000]"))
    pts = list(spec.points)
    new, (d,) = propose(spec, pts, table(pts, 1e3), 2, {})
    assert new == [] and d["limit"].startswith("ladder end: no preset smaller than n25k")
    new, (d,) = propose(spec, pts, table(pts, 1e7), 2, {})
    assert [p.requested["preset"] for p in new] == ["n400k", "n400k"]


def test_waits_for_every_point_and_does_not_step_over_a_failed_size(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    pts = list(spec.points)
    new, (d,) = propose(spec, pts, table(pts[:-1], 5e3), 2, {})
    assert new == [] and d["limit"].startswith("waiting")
    smallest = [p for p in pts if p.n_params == min(q.n_params for q in pts)]
    status = {p.point_id: "diverged" for p in smallest}
    new, (d,) = propose(spec, pts, table(pts, 5e3, status), 2, {})
    assert new == [] and "was tried and ended diverged" in d["limit"]


def fake_execute(spec, n_star):
    known = {p.point_id: p for p in spec.points}
    ran: list[list[str]] = []

    def execute(points):
        known.update({p.point_id: p for p in points})
        ran.append([p.point_id for p in points])
        return table(list(known.values()), n_star)

    return execute, ran


@pytest.mark.parametrize("n_star, max_extra, added, limit", [
    (1.2e4, 2, 1, None),  # one smaller size brackets it
    (4e4, 2, 0, None),  # bracketed from the start
    (1e3, 2, 1, "shape-rule range"),  # nothing smaller than 1 x 16
    (1e3, 1, 1, "max_extra = 1"),
    (1e7, 3, 1, "tokens_per_param_range"),  # n336k would train D/N_tot = 0.245 < 0.5
])
def test_stage_runs_until_bracketed_or_limited(tmp_path, n_star, max_extra, added, limit):
    spec = load_spec(spec_file(tmp_path, bracket=f"{{ max_extra = {max_extra} }}"))
    execute, ran = fake_execute(spec, n_star)
    report = stages.run_followup(spec, tmp_path, execute)
    (d,) = report["bracket"]["budgets"]
    assert d["bracketed"] is (limit is None)
    if limit is not None:
        assert limit in d["limit"]
    assert len(report["bracket"]["added_points"]) == 2 * added  # two seeds per size
    assert len(ran) == 1 + added  # the first look, then one round per added size
    assert "pairs" not in report  # no learning-rate stage asked for
    assert (tmp_path / "followup.json").exists()
    # the same results give the same decisions (a rerun adds nothing new)
    again = stages.run_followup(spec, tmp_path, fake_execute(spec, n_star)[0])
    assert again["bracket"]["added_points"] == report["bracket"]["added_points"]


def test_bracket_with_cooldown_adds_a_plain_wsd_run(tmp_path):
    spec = load_spec(spec_file(tmp_path, extra="cooldown = { fraction = 0.2 }",
                               budgets="[2e11, 4e11]"))
    branches = [p for p in spec.points if p.role == "branch"]
    assert branches and all(p.compute_budget is not None for p in spec.points
                            if p.role != "trunk")
    new, decisions = propose(spec, list(spec.points), table(branches, 5e3), 2, {})
    assert len(decisions) == 2 and len(new) == 4  # two budgets x two seeds
    assert all(p.role == "run" and p.config.optim.schedule == "wsd" for p in new)


def test_bracket_spec_checks_and_plan_header(tmp_path):
    spec = load_spec(spec_file(tmp_path, bracket="{ max_extra = 3 }"))
    assert spec.followup["bracket"] == {"max_extra": 3}
    assert spec.followup["seeds"] == [] and spec.followup["widen"] == 0  # no lr stage
    assert stages.wanted(spec)
    assert "follow-up: bracket each budget's minimum" in format_plan(spec)
    assert "max_extra = 3" in format_plan(spec)
    with pytest.raises(SpecError, match=r"followup\.bracket\.max_extra = 0"):
        load_spec(spec_file(tmp_path, bracket="{ max_extra = 0 }"))
    with pytest.raises(SpecError, match=r"unknown key 'followup\.bracket\.extra'"):
        load_spec(spec_file(tmp_path, bracket="{ extra = 2 }"))
    p = tmp_path / "data.toml"
    p.write_text(BASE + '[sweep]\nmodel = { presets = ["n25k"] }\ndata = { tokens = [1e5] }\n'
                 "[followup]\nbracket = { max_extra = 2 }\n")
    with pytest.raises(SpecError, match=r"followup\.bracket .* needs a \[sweep\.compute\] axis"):
        load_spec(p)
