"""Cooldown trunks and branches in the analysis; points added by follow-up stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.branches import (annotate_roles, compute_spent, compute_text, drop_trunks,
                               fit_curves, split_curves)
from analysis.followups import added_points, added_points_section
from analysis.load import load_results
from analysis.report.build import analyze

SIZES = (1e4, 3e4, 1e5)
LENGTHS = (100, 200)  # steps of each branch; k = 0.8 S
TOK = 1024


def _loss(N, D):
    return 1.8 + 400 / N ** 0.35 + 300 / D ** 0.3


EVAL_EVERY, EVAL_TOKENS = 20, 2048  # every run evaluates each 20 steps (and at its end)


def cooldown_sweep(folder: Path, with_role_column: bool = False, bracket: bool = False,
                   evals: bool = True) -> Path:
    """A sweep folder as scaling writes it: per size a trunk (group "trunk", constant lr,
    steps = the latest branch start, an absurdly low loss that must never be fitted) and a
    branch per length; point.json carries requested.role/trunk/branched_at_step, and a
    branch's metrics start with its trunk's rows."""
    pts = folder / "points"
    rows, curves = [], []
    for i, N in enumerate(SIZES):
        tid = f"trunk{i}"
        ks = [int(0.8 * S) for S in LENGTHS]
        members = [(tid, "trunk", max(ks), None)] + [(f"b{i}_{S}", "branch", S, k)
                                                     for S, k in zip(LENGTHS, ks)]
        for pid, role, steps, k in members:
            D = steps * TOK
            C = 6 * N * D
            loss = 0.5 if role == "trunk" else _loss(N, D)
            req = {"role": role, "trunk": tid, "branched_at_step": k}
            d = pts / pid
            d.mkdir(parents=True)
            (d / "point.json").write_text(json.dumps({"point_id": pid, "label": pid, "N": N,
                                                      "requested": req}))
            res = {"status": "done", "final_eval_loss": loss}
            if role == "branch":
                res.update({"trunk": tid, "branched_at_step": k})
            if evals:  # forward tokens of its evals; a branch's before k were its trunk's
                res["eval_forward_tokens"] = EVAL_TOKENS * (steps // EVAL_EVERY)
                res["eval_forward_tokens_from_trunk"] = (
                    EVAL_TOKENS * ((k - 1) // EVAL_EVERY) if role == "branch" else 0)
            (d / "result.json").write_text(json.dumps(res))
            row = {"point_id": pid, "label": pid, "group": "trunk" if role == "trunk" else "",
                   "status": "done", "N": N, "N_total": 2 * N, "D": D, "C": 12 * N * D,
                   "C_exact": 12 * N * D, "C_6ND": C, "accounting": "total", "steps": steps,
                   "final_eval_loss": loss, "eval_loss_stderr": 0.005 * loss, "optimizer": "adamw",
                   "lr": 3e-3, "seed": 0, "schedule": "constant" if role == "trunk" else "wsd"}
            if with_role_column:
                row.update({"role": role, "trunk": tid if role == "branch" else None,
                            "branched_at_step": k})
            rows.append(row)
            for s in range(10, steps + 1, 10):
                trunk_part = role == "branch" and s <= k
                L = _loss(N, s * TOK) + (0.05 if trunk_part or role == "trunk" else 0.0)
                curves.append({"point_id": pid, "step": s, "tokens": s * TOK, "eval_loss": L,
                               "train_loss": L})
    if bracket:
        d = pts / "added1"
        d.mkdir()
        why = "bracket: budget b1 (C = 1e+12)'s best size n30k was at the large edge"
        (d / "point.json").write_text(json.dumps({"point_id": "added1", "label": "b1_n60k", "N": 6e4,
                                                  "config": {"optim": {"lr": 3e-3}},
                                                  "requested": {"stage": "bracket", "bracket": why}}))
        (d / "result.json").write_text(json.dumps({"status": "done", "final_eval_loss": 2.5}))
        d = pts / "added2"
        d.mkdir()
        (d / "point.json").write_text(json.dumps({"point_id": "added2", "label": "lr6e-3", "N": 1e4,
                                                  "config": {"optim": {"lr": 6e-3}},
                                                  "requested": {"stage": "lr_widen", "lr": 6e-3,
                                                                "from_point": "b0_100"}}))
        (folder / "followup.json").write_text(json.dumps({
            "bracket": {"max_extra": 2, "budgets": [
                {"group": "b1", "budget": 1e12, "best": "n60k", "bracketed": False, "edge": "large",
                 "limit": "max_extra = 2 sizes already added to this budget"},
                {"group": "b2", "budget": 3e12, "best": "n30k", "bracketed": True}],
                "added_points": [{"id": "added1", "why": why}]},
            "pairs": [{"optimizer": "adamw", "N": 1e4, "best_lr": 6e-3, "tried": [3e-3, 6e-3],
                       "on_edge": "high"}]}))
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    pd.DataFrame(curves).to_csv(folder / "curves.csv", index=False)
    return folder


def _expected_spent(field: str = "C_exact"):
    spent = sep = 0.0
    for N in SIZES:
        per_step = 12 * N * TOK if field == "C_exact" else 6 * N * TOK
        ks = [int(0.8 * S) for S in LENGTHS]
        spent += per_step * max(ks) + sum(per_step * (S - k) for S, k in zip(LENGTHS, ks))
        sep += sum(per_step * S for S in LENGTHS)
    return spent, sep


def test_compute_spent_with_evaluation(tmp_path):
    """Training + eval: a run's evals cost C/(3D) = 4N FLOPs per forward token here
    (C = 12 N D); a trunk evaluates to its end (160 steps: 8 evals), a branch of S = 100
    (k = 80) spends 2 of its 5 evals, of S = 200 (k = 160) 3 of its 10; separate runs all."""
    df = load_results(cooldown_sweep(tmp_path / "sw"))
    annotate_roles(df, tmp_path / "sw")
    cs = compute_spent(df)
    spent, sep = _expected_spent()
    ev_spent = sum(4 * N * EVAL_TOKENS * (8 + 2 + 3) for N in SIZES)
    ev_sep = sum(4 * N * EVAL_TOKENS * (5 + 10) for N in SIZES)
    assert math.isclose(cs["eval_spent"], ev_spent) and math.isclose(cs["eval_separate"], ev_sep)
    assert math.isclose(cs["ratio_with_eval"], (spent + ev_spent) / (sep + ev_sep))
    assert math.isclose(cs["ratio"], spent / sep)  # training only, as before
    text = compute_text(cs)
    assert f"{(spent + ev_spent) / (sep + ev_sep):.3g}x" in text and f"{spent / sep:.3g}x" in text
    # results from before the eval tokens were recorded: not known, never a guess
    df = load_results(cooldown_sweep(tmp_path / "old", evals=False))
    annotate_roles(df, tmp_path / "old")
    cs = compute_spent(df)
    assert math.isnan(cs["ratio_with_eval"]) and math.isclose(cs["ratio"], spent / sep)
    assert "evaluation FLOPs not known" in compute_text(cs)


@pytest.mark.parametrize("with_role_column", [False, True])
def test_roles_from_point_json_or_table(tmp_path, with_role_column):
    sweep = cooldown_sweep(tmp_path / "sw", with_role_column)
    df = load_results(sweep)
    annotate_roles(df, sweep)
    assert (df["role"] == "trunk").sum() == 3 and (df["role"] == "branch").sum() == 6
    assert df.loc[df["point_id"] == "b1_200", "trunk"].item() == "trunk1"
    assert df.loc[df["point_id"] == "b1_200", "branched_at_step"].item() == 160
    kept, n = drop_trunks(df)
    assert n == 3 and not kept["point_id"].str.startswith("trunk").any()


def test_trunk_by_group_name_without_point_folders(tmp_path):
    sweep = cooldown_sweep(tmp_path / "sw")
    csv = tmp_path / "plain.csv"
    pd.read_csv(sweep / "results.csv").to_csv(csv, index=False)
    df = load_results(csv)
    annotate_roles(df, None)  # no point folders: the group "trunk" (or ".../trunk") decides
    assert sorted(df.loc[df["role"] == "trunk", "point_id"]) == ["trunk0", "trunk1", "trunk2"]


def test_compute_spent_counts_trunks_once_and_cooldowns_only(tmp_path):
    sweep = cooldown_sweep(tmp_path / "sw")
    df = load_results(sweep)
    annotate_roles(df, sweep)
    cs = compute_spent(df)
    spent, sep = _expected_spent()
    assert math.isclose(cs["spent"], spent) and math.isclose(cs["separate"], sep)
    assert math.isclose(cs["ratio"], spent / sep)
    assert math.isclose(cs["spent_C_6ND"], _expected_spent("C_6ND")[0])
    assert cs["n_trunks"] == 3 and cs["n_branches"] == 6 and cs["n_not_counted"] == 0
    assert cs["accounting"] == "total"
    # kaplan accounting: C := C_6ND
    dk = load_results(sweep, accounting="kaplan")
    annotate_roles(dk, sweep)
    assert math.isclose(compute_spent(dk)["spent"], _expected_spent("C_6ND")[0])
    # no branch, nothing to say
    assert compute_spent(df[df["role"] != "branch"]) is None


def test_curves_draw_the_trunk_once_and_branches_from_k(tmp_path):
    sweep = cooldown_sweep(tmp_path / "sw")
    df = load_results(sweep)
    annotate_roles(df, sweep)
    cv = pd.read_csv(sweep / "curves.csv")
    own, trunks = split_curves(cv, df)
    assert set(trunks["point_id"]) == {"trunk0", "trunk1", "trunk2"}
    b = own[own["point_id"] == "b0_200"]
    assert b["step"].min() == 160  # starts at its branch step
    fit = fit_curves(cv, df)
    assert not fit["point_id"].str.startswith("trunk").any()
    assert fit.loc[fit["point_id"] == "b0_200", "step"].min() == 170  # trunk's row at k not fitted


@pytest.fixture(scope="module")
def cooldown_report(tmp_path_factory):
    """(sweep, report folder): the cooldown sweep with its follow-up points (bracket=True),
    analyzed once for the tests that read the report."""
    base = tmp_path_factory.mktemp("cooldown_report")
    sweep = cooldown_sweep(base / "sw", bracket=True)
    return sweep, analyze(sweep, base / "rep", n_boot=10)


def test_report_excludes_trunks_and_states_compute(cooldown_report):
    sweep, out = cooldown_report
    fits = json.loads((out / "fits.json").read_text())
    spent, sep = _expected_spent()
    assert fits["trunks_excluded"]["n"] == 3
    assert math.isclose(fits["compute"]["spent"], spent)  # added points are not in results.csv
    assert math.isclose(fits["compute"]["separate"], sep)
    assert math.isclose(fits["compute"]["branches_spent"], spent)
    assert math.isclose(fits["compute"]["branches_ratio"], spent / sep)
    summary = (out / "summary.md").read_text()
    assert "3 cooldown trunk run(s) left out" in summary
    assert f"{spent / sep:.3g}x" in summary
    assert "with evaluation" in summary and math.isfinite(fits["compute"]["ratio_with_eval"])
    assert "scaling-law rows: 6;" in summary
    # points added by follow-up stages, and why
    assert "## Points added by follow-up stages" in summary
    assert "best size n30k was at the large edge" in summary and "`added1`" in summary
    assert "lr_widen" in summary and "1 of 2 budget series bracket" in summary
    assert "max_extra = 2" in summary and "still at the high edge" in summary
    assert {p["point_id"] for p in fits["added_points"]["points"]} == {"added1", "added2"}
    cv = (out / "figures" / "learning_curves.png").read_bytes()
    assert cv[:8] == b"\x89PNG\r\n\x1a\n"


def test_trunk_loss_never_reaches_a_fit(cooldown_report):
    """The trunks' loss (0.5) is far below every branch's: a fit that saw it would report a
    minimum loss near 0.5 somewhere; the L(N) envelope and every table must stay above 1.8.
    (The report of the sweep with follow-up points: those are not in results.csv.)"""
    sweep, out = cooldown_report
    df = load_results(sweep)
    annotate_roles(df, sweep)
    kept, _ = drop_trunks(df)
    assert kept["loss"].min() > 1.8
    summary = (out / "summary.md").read_text()
    assert "rows: 6 (done: 6)" in summary


def test_added_points_none_without_followups(tmp_path):
    sweep = cooldown_sweep(tmp_path / "sw")
    assert added_points(sweep) is None
    assert added_points(None) is None
    sweep2 = cooldown_sweep(tmp_path / "sw2", bracket=True)
    text = added_points_section(added_points(sweep2))
    assert "bracket: 1 point(s) added" in text and "lr_widen: 1 point(s) added" in text
