"""[followup] seeds_at: extra seeds at a few IsoFLOP points, each cooldown branch from its own
trunk at that seed (scaling/sweep/followup.py, scaling/sweep/stages.py); planning only, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from scaling.sweep.stages import run_followup
from scaling.sweep import SpecError, load_spec
from scaling.sweep.followup import chosen_points, seed_cost, seed_points

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.toml"


def _semantic_without(cfg, keys):
    d = cfg.semantic_dict()
    for dotted in keys:
        s, k = dotted.split(".")
        d.get(s, {}).pop(k, None)
    return d


def test_demo_seed_points_are_middle_sizes_with_their_own_trunks():
    spec = load_spec(DEMO)
    at = spec.followup["seeds_at"]
    assert spec.followup["seeds"] == [1, 2] and at == {"size": "middle", "budgets": 3}
    chosen = chosen_points(spec, at)
    # the lower middle of the three smallest budgets' sizes
    assert [p.label for p in chosen] == ["C1.13e11_n7.27k_D1.17M", "C1.6e11_n7.27k_D1.65M",
                                         "C2.26e11_n12.8k_D1.53M"]
    pts = seed_points(spec, [1, 2], at)
    trunks = [p for p in pts if p.role == "trunk"]
    branches = [p for p in pts if p.role == "branch"]
    assert len(trunks) == 4 and len(branches) == 6
    assert pts[: len(trunks)] == trunks  # trunks first
    by_id = {p.point_id: p for p in pts}
    orig = {p.point_id: p for p in spec.points}
    for b in branches:
        t = by_id[b.depends_on]
        src = orig[b.requested["from_point"]]
        s = b.requested["seed"]
        assert b.config.train.seed == t.config.train.seed == s != src.config.train.seed
        assert b.config.train.init_from == f"../{t.point_id}"
        assert b.config.train.init_step == src.config.train.init_step
        assert b.config.train.init_step in [int(k) for k in t.config.train.save_steps.split(",")]
        assert t.config.train.steps >= b.config.train.init_step
        # the trunk evaluates wherever the branch's separate run would before k, so the
        # branch starts from it instead of training from step 0 (scaling.sweep.cooldown)
        e, te = b.config.train.eval_every, t.config.train.eval_every
        want = set(range(e, b.config.train.init_step, e))
        have = t.config.train.extra_eval_steps | set(range(te, t.config.train.steps + 1, te))
        assert want <= have
        # the branch is its source with another seed, nothing else
        keys = ("train.seed",)
        assert _semantic_without(b.config, keys) == _semantic_without(src.config, keys)
        # its trunk is the source's trunk with another seed, shorter, nothing else
        t0 = orig[src.depends_on]
        keys = ("train.seed", "train.steps", "train.eval_every")
        assert _semantic_without(t.config, keys) == _semantic_without(t0.config, keys)
        assert t.config.train.steps <= t0.config.train.steps
    assert len({p.point_id for p in pts}) == len(pts)
    cost = seed_cost(spec, pts)
    assert 0.1 < cost["share"] <= 0.25  # the demo's claim: +19 % training FLOPs


def test_seed_points_are_stable_and_skip_the_base_seed():
    spec = load_spec(DEMO)
    at = {"size": "middle", "budgets": 2}
    a = [p.point_id for p in seed_points(spec, [0, 1], at)]
    b = [p.point_id for p in seed_points(load_spec(DEMO), [0, 1], at)]
    assert a == b and len(a) == 3  # seed 0 is the base seed: one trunk, two branches at seed 1


def test_seeds_at_bad_input_names_the_field(tmp_path):
    with pytest.raises(SpecError, match="followup.seeds_at.size"):
        load_spec(DEMO, ['followup.seeds_at={size="largest"}'])
    with pytest.raises(SpecError, match="followup.seeds_at.budgets"):
        load_spec(DEMO, ['followup.seeds_at={budgets=0}'])
    with pytest.raises(SpecError, match="followup.seeds_at needs followup.seeds"):
        load_spec(DEMO, ["followup.seeds=[]"])
    tiny = ROOT / "experiments" / "tiny.toml"
    with pytest.raises(SpecError, match="seeds_at"):
        load_spec(tiny, ["followup.seeds=[1]", 'followup.seeds_at={size="middle"}'])


def test_run_followup_runs_the_seed_points_and_records_them(tmp_path):
    spec = load_spec(DEMO, ["followup.bracket={max_extra=1}"])
    calls = []

    def execute(points):
        calls.append([p.point_id for p in points])
        rows = [{"point_id": p.point_id, "status": "done", "final_eval_loss": 2.0,
                 "compute_budget": p.compute_budget, "N": p.n_params_total}
                for p in spec.points]
        return pd.DataFrame(rows)

    report = run_followup(spec, tmp_path, execute)
    expect = [p.point_id for p in seed_points(spec, [1, 2], spec.followup["seeds_at"])]
    assert expect in calls
    rec = json.loads((tmp_path / "followup.json").read_text())["seeds"]
    assert [p["id"] for p in rec["points"]] == expect and rec["seeds"] == [1, 2]
    assert report["seeds"]["training_flops"]["share"] == pytest.approx(
        seed_cost(spec, seed_points(spec, [1, 2], spec.followup["seeds_at"]))["share"])
