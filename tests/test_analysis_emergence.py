"""analysis/emergence.py: fits of the smooth metrics, the p^L prediction and the verdict."""

import numpy as np
import pandas as pd
import pytest

from analysis import emergence
from analysis.report import analyze


def table(clustered: bool, seed=0, n=400) -> pd.DataFrame:
    """Runs at 6 sizes; per-token accuracy logistic in log10 C; exact match simulated from
    n instances of L = 4 tokens, with independent token errors or errors that cluster."""
    rng = np.random.default_rng(seed)
    C = np.logspace(11, 13, 6)
    N = C / (6 * 1e6)
    rows = []
    for c, nn in zip(C, N):
        p = 1 / (1 + np.exp(-(-1.0 + 1.5 * (np.log10(c) - 11))))
        if clustered:  # a fraction of instances all right, the rest all wrong
            hits = np.repeat(rng.random(n)[:, None] < p, 4, axis=1)
        else:
            hits = rng.random((n, 4)) < p
        em = hits.all(1).mean()
        acc = hits.mean()
        acc_se = hits.mean(1).std(ddof=1) / np.sqrt(n)
        ed = (~hits).sum(1)
        lp = np.log(p) * 4 + rng.normal(0, 0.05, n)
        row = {"N": nn, "D": 1e6, "C": c, "final_eval_loss": 2.0, "status": "done",
               "label": f"n{nn:.3g}"}
        for m, v, se in (("exact_match", em, np.sqrt(em * (1 - em) / n)),
                         ("token_accuracy", acc, acc_se),
                         ("edit_distance", ed.mean(), ed.std(ddof=1) / np.sqrt(n)),
                         ("answer_logprob", lp.mean(), lp.std(ddof=1) / np.sqrt(n))):
            row[f"task/addition_2/{m}"] = v
            row[f"task/addition_2/{m}_stderr"] = se
        ind = float(np.prod(hits.mean(0)))  # what scaling/taskeval.py records
        row["task/addition_2/exact_match_independent"] = ind
        row["task/addition_2/exact_match_independent_stderr"] = 4 * ind * acc_se / max(acc, 1e-9)
        row["task/addition_2/answer_tokens"] = 4.0
        row["task/addition_2/n"] = n
        rows.append(row)
    return pd.DataFrame(rows)


def test_independent_errors_are_consistent_with_p_to_the_L():
    df = table(clustered=False)
    res = emergence.analyze_tasks(df, n_boot=50)
    v = res["verdicts"]["addition_2"]
    assert v["p_value"] > 0.01 and v["text"].startswith("consistent")
    assert v["p_value_positions"] > 0.01 and v["text_positions"].startswith("consistent")
    fit = res["fits"][("addition_2", "token_accuracy", "C")]
    assert fit["theta"][1] == pytest.approx(1.5, rel=0.15)  # the logistic slope per decade
    lo, hi = fit["slope_ci"]
    assert lo < 1.5 < hi


def test_clustered_errors_put_exact_match_above_p_to_the_L():
    v = emergence.analyze_tasks(table(clustered=True), n_boot=20)["verdicts"]["addition_2"]
    assert v["p_value"] < 1e-3 and "above p^L" in v["text"]
    assert v["p_value_positions"] < 1e-3 and v["text_positions"].startswith("above")


def test_binomial_stderr_is_positive_at_zero():
    se = emergence.binomial_se(np.array([0.0, 1.0, 0.5]), np.array([100, 100, 100]))
    assert (se > 0).all() and se[2] == pytest.approx(0.05, rel=0.02)


def test_report_has_the_section_figures_and_table(tmp_path):
    csv = tmp_path / "results.csv"
    table(clustered=False).to_csv(csv, index=False)
    out = analyze(csv, tmp_path / "report", n_boot=20)
    text = (out / "summary.md").read_text()
    assert "## Task abilities across scale" in text and "addition_2" in text
    for x in ("C", "N"):
        assert (out / "figures" / f"emergence_addition_{x}.png").stat().st_size > 10_000
    assert (out / "tables" / "emergence_addition.md").exists()
    # a table without task columns gets no such section
    plain = table(clustered=False)[["N", "D", "C", "final_eval_loss", "status"]]
    plain.to_csv(tmp_path / "plain.csv", index=False)
    out = analyze(tmp_path / "plain.csv", tmp_path / "plain_report", n_boot=20)
    assert "Task abilities" not in (out / "summary.md").read_text()
