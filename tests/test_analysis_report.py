"""analyze() on synthetic sweep folders and plain CSVs; the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.report.build import analyze, default_out_dir
from analysis.synthetic import make_optimizer_sweep, make_scaling_sweep

ROOT = Path(__file__).resolve().parents[1]
CHIN = ROOT / "tests" / "data" / "chinchilla" / "svg_extracted_data.csv"


def _figures_ok(out: Path, names):
    for name in names:
        png = out / "figures" / f"{name}.png"
        pdf = out / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert pdf.read_bytes()[:5] == b"%PDF-", name


def _tables_ok(out: Path, names):
    for name in names:
        md = (out / "tables" / f"{name}.md").read_text()
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert md.count("|") > 4, name
        assert "\\begin{tabular}" in tex and "\\bottomrule" in tex, name


@pytest.mark.slow
def test_analyze_scaling_sweep(tmp_path):
    sweep = make_scaling_sweep(tmp_path / "scaling", seed=1)
    out = analyze(sweep, n_boot=30)
    assert out == sweep / "report" == default_out_dir(sweep)
    _figures_ok(out, ["learning_curves", "loss_vs_size", "isoflop", "optimal_allocation", "residuals"])
    _tables_ok(out, ["parameters", "predictions", "isoflop_budgets"])
    summary = (out / "summary.md").read_text()
    for phrase in ("Approach 3", "Approach 2 (IsoFLOP, 5 of 5 budgets bracket", "frontier", "Approach 1",
                   "## Skipped", "optimizer comparison", "failed: 1", "running: 1"):
        assert phrase in summary, phrase
    fits = json.loads((out / "fits.json").read_text())
    assert {"Approach 2 (IsoFLOP)", "Approach 1 (frontier)", "predictions"} <= set(fits)
    a3 = fits["Approach 3: E + A/N^α + B/D^β"]
    assert 0.35 < a3["params"]["a"] < 0.55
    assert len(a3["ci"]["a"]) == 2


def test_analyze_optimizer_sweep(tmp_path):
    sweep = make_optimizer_sweep(tmp_path / "opt")
    out = analyze(sweep / "results.csv", tmp_path / "rep", n_boot=30)
    assert out == tmp_path / "rep"
    _figures_ok(out, ["lr_sensitivity", "best_lr", "optimizer_compute", "loss_vs_size"])
    _tables_ok(out, ["best_lr", "lr_scaling", "optimizer_laws", "compute_multipliers", "parameters"])
    summary = (out / "summary.md").read_text()
    assert "## Optimizer comparison" in summary
    assert "momentum needs" in summary
    assert "Approach 3 and Kaplan L(N, D)" in summary  # skipped: 5 cells only


@pytest.mark.slow
def test_analyze_plain_csv_says_what_was_skipped(tmp_path):
    df = pd.read_csv(CHIN)
    p = tmp_path / "chinchilla.csv"
    df.sort_values("loss").iloc[:-5:2].to_csv(p, index=False)  # 120 rows keep the test fast
    out = analyze(p, n_boot=20, n_col="Model Size", c_col="Training FLOP", loss_col="loss")
    assert out == tmp_path / "chinchilla_report"
    summary = (out / "summary.md").read_text()
    assert "no compute_budget column" in summary
    assert "no curves.parquet" in summary
    assert "D = C / (6 N)" in summary
    fits = json.loads((out / "fits.json").read_text())
    a3 = fits["Approach 3: E + A/N^α + B/D^β"]
    assert a3["n"] == 120 and 0.45 < a3["params"]["a"] < 0.58
    _figures_ok(out, ["residuals", "optimal_allocation", "loss_vs_size"])


def _cli(*args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "analysis", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_cli_chinchilla_json():
    out = _cli("fit", "--law", "chinchilla", str(CHIN), "--n-col", "Model Size", "--c-col",
               "Training FLOP", "--loss-col", "loss", "--drop-highest-loss", "5", "--n-boot", "20",
               "--predict", "1e24", "--json")
    res = json.loads(out)
    assert res["n_rows"] == 240
    p = res["params"]
    for k, v in {"E": 1.8172, "alpha": 0.3473, "beta": 0.3672, "a": 0.514}.items():
        assert p[k] == pytest.approx(v, abs=0.003), k
    assert p["A"] == pytest.approx(477.8, rel=0.03) and p["B"] == pytest.approx(2143.9, rel=0.03)
    assert set(res["ci"]) >= {"E", "A", "B", "alpha", "beta", "a", "b"}
    assert res["ci"]["a"][0] < p["a"] < res["ci"]["a"][1]
    assert res["predictions"][0]["C"] == 1e24


@pytest.mark.slow
def test_cli_isoflop_power_and_frontier(tmp_path):
    sweep = make_scaling_sweep(tmp_path / "s", seed=2)
    # IsoFLOP from a table that only has D: N is derived from C = 6 N D
    df = pd.read_csv(sweep / "results.csv")
    df[["compute_budget", "D", "final_eval_loss", "status"]].to_csv(tmp_path / "d_only.csv", index=False)
    res = json.loads(_cli("fit", "--law", "isoflop", str(tmp_path / "d_only.csv"), "--c-col",
                          "compute_budget", "--d-col", "D", "--loss-col", "final_eval_loss",
                          "--n-boot", "50", "--json"))
    assert 0.3 < res["params"]["a"] < 0.6 and len(res["budgets"]) == 5
    assert res["params"]["a"] + res["params"]["b"] == pytest.approx(1.0)
    # the estimator auto chose stays at params.a / ci.a, with its reason; all three under their own key
    est = res["estimator"]
    assert res["estimator_choice"].startswith(f"auto -> {est}")
    assert res["ci"]["a"][0] < res["params"]["a"] < res["ci"]["a"][1]
    assert res["estimators"][est]["a"] == res["params"]["a"]
    assert {"parabola", "akima", "local"} <= set(res["estimators"]) and "a" in res["estimators"]["akima"]
    assert res["info"]["bootstrap"] == "noise" and res["n_boot_failed"] == 0
    assert res["info"]["noise_source"].startswith("assumed 0.5 % relative noise")
    res = json.loads(_cli("fit", "--law", "power", str(sweep / "results.csv"), "--x", "C",
                          "--envelope", "--n-boot", "30", "--json"))
    assert res["x"] == "C" and 0.05 < res["params"]["alpha"] < 0.5
    res = json.loads(_cli("fit", "--law", "frontier", str(sweep / "curves.csv"), "--c-col", "flops",
                          "--loss-col", "eval_loss", "--n-boot", "30", "--json"))
    assert 0.1 < res["params"]["alpha"] < 0.25 and len(res["frontier"]) > 10
    text = _cli("fit", "--law", "power", str(sweep / "results.csv"), "--x", "N", "--n-boot", "0")
    assert "power law L(N)" in text


def test_cli_bad_column_is_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "analysis", "fit", "--law", "chinchilla", str(CHIN),
                        "--n-col", "Model Sise", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert "Model Size" in json.loads(r.stdout)["error"]


def _cli_rc(*args, cwd=ROOT):
    r = subprocess.run([sys.executable, "-m", "analysis", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.slow
def test_cli_bad_input_one_error_line_exit_2(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    pd.DataFrame({"N": [1e6, 2e6], "D": [1e9, 1e9]}).to_csv(tmp_path / "noloss.csv", index=False)
    pd.DataFrame({"N": [1e6, 2e6, 3e6], "loss": ["abc", "inf", -1]}).to_csv(tmp_path / "bad.csv", index=False)
    pd.DataFrame({"N": [1e6, 2e6, 3e6], "loss": [3.0, 2.9, 2.8]}).to_csv(tmp_path / "nod.csv", index=False)
    cases = [
        (("analyze", str(tmp_path / "empty.csv")), "empty"),
        (("analyze", str(tmp_path / "noloss.csv")), "no loss column"),
        (("analyze", str(tmp_path / "nope.csv")), "no such file"),
        (("fit", "--law", "power", str(tmp_path / "empty.csv")), "empty"),
        (("fit", "--law", "power", str(tmp_path / "bad.csv")), "loss (loss): non-numeric in 1 row"),
        (("fit", "--law", "chinchilla", str(tmp_path / "nod.csv")), "needs column D"),
        (("analyze", str(tmp_path / "bad.csv")), "no row can be fitted"),
    ]
    for args, phrase in cases:
        rc, out, err = _cli_rc(*args)
        assert rc == 2, (args, err)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and phrase in lines[0], (args, err)
    assert not (tmp_path / "empty_report").exists()  # nothing written for bad input
    assert not (tmp_path / "bad_report").exists()


@pytest.mark.slow
def test_analyze_rebuilds_deleted_tables_and_selects_accounting(tmp_path):
    sweep = make_scaling_sweep(tmp_path / "s", seed=3, curves=False, extra_failed=False)
    df = pd.read_csv(sweep / "results.csv")
    pts = sweep / "points"
    for r in df.to_dict("records"):
        d = pts / r["point_id"]
        d.mkdir(parents=True)
        plan = {k: r[k] for k in ("N", "N_total", "D", "C", "C_exact", "compute_budget")}
        plan.update(accounting="kaplan", C_6ND=r["C"])
        (d / "point.json").write_text(json.dumps(plan))
        (d / "result.json").write_text(json.dumps({"status": "done", "final_eval_loss": r["final_eval_loss"],
                                                   "eval_loss_stderr": 0.005 * r["final_eval_loss"]}))
    for name in ("results.csv", "results.parquet"):
        (sweep / name).unlink()
    out = analyze(sweep, n_boot=20)
    summary = (out / "summary.md").read_text()
    assert "rebuilt from the point folders" in summary
    assert "accounting kaplan" in summary and "eval_loss_stderr" in summary
    fits = json.loads((out / "fits.json").read_text())
    iso = fits["Approach 2 (IsoFLOP)"]
    assert iso["kind"] == "isoflop" and iso["info"]["n_budgets_used"] == 5
    assert len(iso["ci"]["a"]) == 2 and "akima" in iso["estimators"]
    # the other accounting: the kaplan budget labels are dropped, never mixed into an IsoFLOP fit
    out2 = analyze(sweep, tmp_path / "r2", n_boot=0, accounting="total")
    s2 = (out2 / "summary.md").read_text()
    assert "accounting total" in s2 and "budget labels are dropped" in s2
    assert "Approach 2 (IsoFLOP)" not in json.loads((out2 / "fits.json").read_text())


def test_curves_follow_the_chosen_accounting():
    """The loop logs 6 N_non-embedding tokens; under total accounting a curve's compute is
    tokens x C_exact / D of its run, so the frontier never mixes the two."""
    from analysis.load import prepare_curves

    res = pd.DataFrame({"point_id": ["a", "b"], "N": [1e6, 2e6], "D": [1e9, 1e9], "C": [9e15, 1.5e16]})
    res.attrs["accounting"] = "total"
    cv = pd.DataFrame({"point_id": ["a"] * 4 + ["b"] * 4, "step": [1, 2, 3, 4] * 2,
                       "tokens": [1e8, 2e8, 5e8, 1e9] * 2, "flops": [0.0] * 8,
                       "eval_loss": [4.0, 3.5, 3.2, 3.0, 3.9, 3.4, 3.1, 2.9]})
    out = prepare_curves(cv, results=res)
    assert np.allclose(out.loc[out["point_id"] == "a", "flops"], [9e14, 1.8e15, 4.5e15, 9e15])
    assert np.allclose(out.loc[out["point_id"] == "b", "flops"].iloc[-1], 1.5e16)
    res.attrs["accounting"] = None  # a table without accounting: the logged flops stay
    assert (prepare_curves(cv, results=res)["flops"] == 0).all()


_WRITER_SCRIPT = """
import json, sys
from pathlib import Path
from matplotlib.artist import Artist
from analysis.figures.style import FigureWriter, new_figure

class Boom(Artist):
    def draw(self, renderer):
        raise RuntimeError("boom at draw time")

out, children = Path(sys.argv[1]), int(sys.argv[2])
writer = FigureWriter(children)
fig, ax = new_figure()
ax[0, 0].plot([1, 2], [3, 4])
writer.save(fig, out, "fine")
bad, _ = new_figure()
bad.add_artist(Boom())
try:
    writer.save(bad, out, "broken")
    raised = None
except RuntimeError as exc:
    raised = str(exc)
print(json.dumps({"failed": writer.wait(), "raised": raised,
                  "jax": "jax" in sys.modules}))
"""


@pytest.mark.parametrize("children", [0, 2])
def test_figure_writer_writes_figures_and_reports_a_failed_one(tmp_path, children):
    # in a fresh process: the writer forks, which a process running jax (pytest's) must not
    r = subprocess.run([sys.executable, "-c", _WRITER_SCRIPT, str(tmp_path), str(children)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert not got["jax"]
    if children:  # drawn in a child: the error comes back from wait()
        assert got == {"failed": {"broken": "RuntimeError: boom at draw time"}, "raised": None,
                       "jax": False}
    else:  # written here and now: the error surfaces at once (Report.figure skips it)
        assert got == {"failed": {}, "raised": "boom at draw time", "jax": False}
    assert (tmp_path / "fine.png").stat().st_size > 0 and (tmp_path / "fine.pdf").stat().st_size > 0
    assert not list(tmp_path.glob(".*.error"))


@pytest.mark.slow
def test_run_sweep_analyze_writes_the_report_in_a_process_without_jax(tmp_path):
    """`run_sweep.py analyze` (and `run --analyze`) hand the report to `python -m analysis
    analyze` in a fresh process: its figures are drawn in forked children, which a process
    that has started jax's thread pools must not fork (jax warns of deadlocks)."""
    sweep = make_scaling_sweep(tmp_path / "s", seed=2)
    r = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), "analyze", str(sweep)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"report: {sweep / 'report'}" in r.stdout
    assert "fork" not in r.stderr
    _figures_ok(sweep / "report", ["isoflop", "optimal_allocation"])
    bad = subprocess.run([sys.executable, str(ROOT / "run_sweep.py"), "analyze",
                          str(tmp_path / "nope")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: no such file")
