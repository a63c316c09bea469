"""Validation runs in the analysis (analysis/validation.py): left out of fits, compared with
the prediction in the report and in fits.json. Fast: small tables written here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import validation as V


class FakeFit:
    """predict_loss as analysis/fits/prediction.py gives it (an object with as_dict)."""

    class P:
        def __init__(self, N, D):
            self.d = {"N": N, "D": D, "C": 6 * N * D, "x_decades": 1.0, "loss": 3.0,
                      "low": 2.9, "high": 3.1, "param_low": 2.95, "param_high": 3.05,
                      "misspec_sd": 0.02}

        def as_dict(self):
            return self.d

    def __init__(self):
        self.asked = []

    def predict_loss(self, N, D, level=0.95):
        self.asked.append((N, D))
        return self.P(N, D)


def table() -> pd.DataFrame:
    return pd.DataFrame({
        "point_id": ["a", "b", "v"], "group": ["C1e11", "C1e11", "validate"],
        "status": ["done", "done", "done"], "N": [1e4, 2e4, 1e5], "D": [1e6, 5e5, 6e6],
        "C": [6e10, 6e10, 3.6e12], "loss": [3.2, 3.3, 3.03], "eval_loss_stderr": [0.01] * 3})


def test_validation_rows_are_split_off_by_group():
    df = table()
    df.attrs["folder"] = None
    rest, val = V.drop_validation(df)
    assert list(rest["point_id"]) == ["a", "b"] and list(val["point_id"]) == ["v"]
    assert rest.attrs == df.attrs


def test_without_a_group_column_point_json_says_which_rows_validate(tmp_path):
    df = table().drop(columns="group")
    for pid, stage in (("a", None), ("v", "validate")):
        d = tmp_path / "points" / pid
        d.mkdir(parents=True)
        (d / "point.json").write_text(json.dumps({"requested": {"stage": stage}}))
    assert list(V.is_validation(df, tmp_path)) == [False, False, True]


def test_records_compare_the_prediction_at_the_runs_n_and_d_with_the_observed_loss(tmp_path):
    df = table()
    d = tmp_path / "points" / "v"
    d.mkdir(parents=True)
    before = {"multiple": 10.0, "C_target": 3.6e12, "law": "chinchilla", "N_opt": 9.1e4,
              "allocation": "Approach 3", "prediction": {"loss": 3.01, "low": 2.9, "high": 3.12,
                                                         "made_before_training": True}}
    (d / "point.json").write_text(json.dumps({"requested": {"stage": "validate",
                                                             "validate": before}}))
    _, val = V.drop_validation(df)
    fit = FakeFit()
    (rec,) = V.records(val, fit, tmp_path)
    assert fit.asked == [(1e5, 6e6)]  # the run's actual N and D
    assert {"C", "N", "D", "predicted", "low", "high", "observed", "observed_stderr"} <= set(rec)
    assert rec["predicted"] == 3.0 and (rec["low"], rec["high"]) == (2.9, 3.1)
    assert rec["observed"] == 3.03 and rec["observed_stderr"] == 0.01
    assert rec["rel_error"] == pytest.approx(0.03 / 3.03) and rec["inside"]
    assert rec["before"]["N_opt"] == 9.1e4 and rec["before"]["prediction"]["loss"] == 3.01
    json.dumps(rec)  # fits.json
    text = V.section([rec])
    assert text.startswith(V.TITLE) and "0.99 %" in text and "before training: 3.0100" in text


def test_an_unfinished_run_has_no_observed_loss_and_no_error():
    df = table()
    df.loc[2, "status"] = "running"
    _, val = V.drop_validation(df)
    (rec,) = V.records(val, FakeFit())
    assert rec["observed"] is None and "rel_error" not in rec and V.finding([rec]) is None
    assert "(running)" in V.section([rec])


def test_a_report_gets_the_section_and_the_fits_json_list():
    class Rep:
        fits: dict = {}
        sections: list = []
        findings: list = []
        convention = "N = N_total"

    rep = Rep()
    rep.fits, rep.sections, rep.findings = {}, [], []
    _, val = V.drop_validation(table())
    V.add_to_report(rep, val, FakeFit())
    assert rep.fits["validation"][0]["observed"] == 3.03
    assert rep.sections[0].startswith(V.TITLE)
    assert "inside the 95 % prediction interval" in rep.findings[0]
    V.add_to_report(rep, val.iloc[:0], FakeFit())  # no validation rows: nothing added
    assert len(rep.sections) == 1 and np.isfinite(rep.fits["validation"][0]["C"])


def test_the_shared_row_selection_leaves_validation_runs_out_of_every_fit():
    from analysis.fitrows import select_fit_rows

    df = table()
    df.attrs = {"folder": None}
    sel = select_fit_rows(df)
    assert list(sel.rows["point_id"]) == ["a", "b"] and list(sel.done["point_id"]) == ["a", "b"]
    assert list(sel.validation["point_id"]) == ["v"]
    assert any(line.startswith("1 validation run(s) left out") for line in sel.left_out())
