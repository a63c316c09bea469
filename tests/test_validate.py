"""The validation stage (followup.validate): spec checks and the planning of the 10x run.

Fast (no training, no fit): the law's fit runs in a subprocess in the real stage; here the
subprocess is replaced by a function answering with a fixed JSON, as `python -m analysis
fit --json` would, and the results table is written by hand.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from scaling.sweep import stages
from scaling.cli import main as cli_main
from scaling.sweep import SpecError, format_plan, load_spec
from scaling.sweep import validate as V


@pytest.fixture(autouse=True)
def _no_device_probe(monkeypatch):
    monkeypatch.setenv("SCALINGLAB_ACHIEVED_FLOPS", "5e10")


BASE = """
accounting = "total"
[model]
seq_len = 32
tie_embeddings = true
[data]
max_corpus_bytes = 1000000
[train]
batch_size = 8
"""


def spec_file(tmp_path: Path, validate="[10]", compute=True, cooldown=True) -> Path:
    p = tmp_path / "val.toml"
    axis = ("compute = { budgets = [1e11, 2e11], tokens_per_param_range = [1, 5000] }"
            if compute else "data = { tokens_per_param = [20] }")
    p.write_text(textwrap.dedent(BASE + f"""
[sweep]
warmup_tokens = "N"
model = {{ n = [1e4, 2e4, 4e4], aspect_ratio = 32, head_dim = 8, d_multiple = 8 }}
{axis}
{'cooldown = { fraction = 0.2 }' if cooldown else ''}
[followup]
validate = {validate}
"""))
    return p


def law(N, D):
    return 1.5 + 300.0 / N ** 0.4 + 400.0 / D ** 0.3


def results(spec) -> pd.DataFrame:
    rows = []
    for p in spec.points:
        rows.append({"point_id": p.point_id, "status": "done", "group": p.group,
                     "role": p.role, "N": p.n_params, "N_total": p.n_params_total,
                     "D": p.tokens, "C_exact": p.flops_exact, "C_6ND": p.flops_6nd,
                     "C": p.flops, "accounting": p.accounting,
                     "compute_budget": p.compute_budget,
                     "final_eval_loss": law(p.n_params_total, p.tokens) + (
                         0.5 if p.role == "trunk" else 0.0),
                     "eval_loss_stderr": 0.005})
    return pd.DataFrame(rows)


class FakeFit:
    """Answers `fit --predict C` with N_opt and `fit --predict-at N:D` with an interval."""

    def __init__(self, n_opt: float, shift: float = 0.0):
        self.n_opt, self.shift = n_opt, shift
        self.calls: list[list[str]] = []

    def __call__(self, args):
        self.calls.append(list(args))
        table = pd.read_csv(args[2])
        self.tables = getattr(self, "tables", []) + [table]
        out = {"law": "chinchilla"}
        stop = args.index("--n-boot")
        if "--predict-at" in args:
            at = args.index("--predict-at")
            first = args.index("--predict") + 1 if "--predict" in args else at
            cs, targets = args[first: at], args[at + 1: stop]
        else:
            cs, targets = args[args.index("--predict") + 1: stop], []
        out["compute_optimal"] = [{"C": float(c), "N_opt": self.n_opt,
                                   "D_opt": float(c) / (6 * self.n_opt), "loss_opt": 2.0}
                                  for c in cs]
        preds = []
        for t in targets:
            n, d = (float(x) for x in t.split(":"))
            loss = law(n, d) + self.shift
            preds.append({"N": n, "D": d, "loss": loss, "low": loss - 0.05, "high": loss + 0.05,
                          "param_low": loss - 0.02, "param_high": loss + 0.02,
                          "misspec_sd": 0.02})
        out["predictions"] = preds
        return 0, "some log line\n" + json.dumps(out) + "\n"


# --------------------------------------------------------------------------- spec


def test_spec_keeps_the_multiples_and_turns_the_lr_stage_off(tmp_path):
    spec = load_spec(spec_file(tmp_path, validate="[10, 3]"))
    assert spec.followup["validate"] == [10.0, 3.0]
    assert spec.followup["seeds"] == [] and spec.followup["widen"] == 0  # no seeds asked for
    assert stages.wanted(spec)


@pytest.mark.parametrize("bad", ["[]", "10", "[1]", "[0.5]", "[10, 10]", "['x']", "[true]",
                                 "[inf]"])
def test_bad_validate_values_are_refused_naming_the_field(tmp_path, bad):
    with pytest.raises(SpecError, match=r"followup\.validate = .*expected a non-empty list of "
                                        r"distinct numbers > 1"):
        load_spec(spec_file(tmp_path, validate=bad))


def test_validate_needs_compute_budgets(tmp_path):
    with pytest.raises(SpecError, match=r"followup\.validate .* needs a \[sweep\.compute\] axis"):
        load_spec(spec_file(tmp_path, compute=False, cooldown=False))


def test_cli_refuses_a_bad_value_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["run", str(spec_file(tmp_path, validate="[0]")), "--out", str(out),
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "followup.validate" in err[0]
    assert not out.exists()


def test_plan_states_the_stage_with_a_guessed_size(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    text = format_plan(spec)
    assert "follow-up: validate: after the sweep, one run at 10x the largest budget (C = 2e+12)" \
        in text


# --------------------------------------------------------------------------- planning


def test_planning_fits_the_sweeps_rows_snaps_n_opt_and_predicts_before_training(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    res = results(spec)
    assert (res["role"] == "trunk").any()
    n_opt = 9.0e4
    fake = FakeFit(n_opt)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    new, report = V.plan_validation(spec, sweep, res, runner=fake)
    (vp,) = new
    # the fit saw the sweep's own points, trunks left out
    fitted = fake.tables[0]
    assert set(fitted["point_id"]) == set(res.loc[res["role"] != "trunk", "point_id"])
    assert (sweep / "validate" / "fit_rows.csv").exists()
    (call,) = fake.calls  # one fit: N_opt and the loss at every candidate size
    assert call[call.index("--predict") + 1] == "2000000000000.0"
    assert call[call.index("--seed") + 1] == str(V.SEED)
    # snapped: the accounting's N (N_total) nearest N_opt among the shape rule's shapes
    rec = vp.requested["validate"]
    assert rec["N"] == vp.n_params_total and rec["N_opt"] == n_opt
    assert abs(math.log(vp.n_params_total / n_opt)) < math.log(2 ** (1 / 8)) + 0.05
    for t in rec["shapes_tried"]:
        assert abs(math.log(vp.n_params_total / n_opt)) <= abs(math.log(t["N"] / n_opt)) + 1e-12
    # D from the budget under the accounting: C_exact lands on 10 x the largest budget
    assert vp.compute_budget == pytest.approx(2e12)
    assert vp.flops_exact == pytest.approx(2e12, rel=2e-3)
    assert vp.tokens == vp.steps * 8 * 32
    # an ordinary point: plain wsd run (no trunk), warm-up of N_tot tokens, group "validate"
    assert vp.group == "validate" and vp.role == "run" and vp.config.train.init_from in ("", None)
    assert vp.config.optim.schedule == "wsd"
    assert vp.config.optim.warmup_steps == round(vp.n_params_total / (8 * 32))
    # the record: target C, law, unsnapped N_opt, the prediction at the snapped (N, D)
    assert rec["C_target"] == pytest.approx(2e12) and rec["law"] == "chinchilla"
    pred = rec["prediction"]
    assert pred["loss"] == pytest.approx(law(vp.n_params_total, vp.tokens))
    assert pred["low"] < pred["loss"] < pred["high"] and pred["made_before_training"]
    assert f"{float(vp.n_params_total)!r}:{float(vp.tokens)!r}" in call
    assert report["points"][0]["id"] == vp.point_id


def test_the_decision_is_the_same_on_a_rerun_and_the_first_prediction_is_kept(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    res = results(spec)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (vp,), _ = V.plan_validation(spec, sweep, res, runner=FakeFit(9e4))
    # the point ran (its point.json holds the record); the validation row joins the table
    d = sweep / "points" / vp.point_id
    d.mkdir(parents=True)
    (d / "point.json").write_text(json.dumps({"requested": vp.requested}))
    (d / "result.json").write_text("{}")
    row = {"point_id": vp.point_id, "status": "done", "group": "validate", "role": "run",
           "final_eval_loss": 9.0, "N_total": vp.n_params_total, "D": vp.tokens}
    res2 = pd.concat([res, pd.DataFrame([row])], ignore_index=True)
    fake = FakeFit(9e4, shift=0.1)  # a fit that would predict otherwise now
    (again,), _ = V.plan_validation(spec, sweep, res2, runner=fake)
    assert again.point_id == vp.point_id and again.requested == vp.requested  # the first kept
    assert vp.point_id not in set(fake.tables[0]["point_id"])  # validation rows not fitted


def test_a_failed_prediction_still_plans_the_run_and_says_so(tmp_path):
    spec = load_spec(spec_file(tmp_path))

    def runner(args):
        if "--predict-at" in args:
            return 2, json.dumps({"law": "chinchilla", "error": "no such option"})
        return FakeFit(9e4)(args)

    (vp,), _ = V.plan_validation(spec, tmp_path, results(spec), runner=runner)
    assert "no such option" in vp.requested["validate"]["prediction"]["error"]


def test_unfinished_points_postpone_the_stage(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    res = results(spec)
    res.loc[res.index[res["role"] != "trunk"][0], "status"] = "running"
    fake = FakeFit(9e4)
    new, report = V.plan_validation(spec, tmp_path, res, runner=fake)
    assert new == [] and "not finished" in report["skipped"] and fake.calls == []


def test_run_followup_runs_the_validation_point_last(tmp_path, monkeypatch):
    spec = load_spec(spec_file(tmp_path))
    res = results(spec)
    ran = []

    def execute(points):
        ran.append([p.point_id for p in points])
        return res

    monkeypatch.setattr(V, "run_fit", FakeFit(9e4))
    monkeypatch.setattr(stages, "run_validate",
                        lambda *a, **k: V.run_validate(*a, runner=V.run_fit, **k))
    report = stages.run_followup(spec, tmp_path, execute)
    assert len(ran[-1]) == 1 and report["validate"]["points"][0]["id"] == ran[-1][0]
    assert json.loads((tmp_path / "followup.json").read_text())["validate"]["law"] == "chinchilla"


def test_n_opt_outside_the_candidate_sizes_is_snapped_and_predicted_on_its_own(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    fake = FakeFit(4e3)  # far below the largest budget's sizes: not among the fit's sizes
    (vp,), _ = V.plan_validation(spec, tmp_path, results(spec), runner=fake)
    assert abs(math.log(vp.n_params_total / 4e3)) < 0.3
    assert len(fake.calls) == 2 and fake.calls[1][fake.calls[1].index("--predict-at") + 1] == \
        f"{float(vp.n_params_total)!r}:{float(vp.tokens)!r}"
    assert vp.requested["validate"]["prediction"]["loss"] == pytest.approx(
        law(vp.n_params_total, vp.tokens))
