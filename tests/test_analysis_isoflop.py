"""IsoFLOP (Approach 2) fixes of issue 25: a point estimate that does not move with the
bootstrap, one vertex rule, the `auto` estimator, and `fit` reading the rows `analyze` reads."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fitrows import select_fit_rows
from analysis.fits.isoflop import fit_isoflop
from analysis.fits.isoflop_minima import VERTEX_SLACK
from analysis.fits.isoflop_choice import ALPHA_TEST, choose_estimator
from analysis.load import NO_EVAL_NOTE, describe_dropped, load_results
from analysis.synthetic import ASYMMETRIC_LAW, make_scaling_sweep, true_exponent

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("coverage_bench_isoflop", ROOT / "benchmarks" / "coverage.py")
cov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cov)


def _cli(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "analysis", *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_point_estimate_does_not_depend_on_the_bootstrap(kind):
    """a, b (every estimator, and the weighted line beside them) are the same for n_boot 0, 50,
    200, 400 and for two bootstrap seeds: nothing drawn in the bootstrap enters them. Before
    the fix the line was weighted by bootstrap variances (demo: a = 0.4665 / 0.4621 / 0.4609 /
    0.4667 for n_boot 0 / 50 / 200 / 400)."""
    C, N, D, L, se = cov.design_grid(kind, np.random.default_rng(3))
    ref = None
    for n_boot, seed in ((0, 0), (50, 0), (200, 0), (400, 0), (200, 7)):
        fit = fit_isoflop(C, L, N=N, D=D, budget=C, noise=se, n_boot=n_boot, seed=seed)
        got = {e: (d["a"], d["b"], d["k_N"], d["weighted"]["a"]) for e, d in fit.estimators.items()}
        got["params"] = (fit.params["a"], fit.params["b"])
        if ref is None:
            ref = got
        assert got == ref, (n_boot, seed)
    assert fit.info["line"].startswith("unweighted")
    w = fit.estimators[fit.info["estimator"]]["weighted"]
    assert math.isfinite(w["a"]) and "noise" in w["weights"]
    # the unweighted line is the ordinary least-squares line through the minima
    used = fit.budgets[fit.budgets["used"]]
    slope = np.polyfit(np.log(used["C"]), np.log(used["N_opt"]), 1)[0]
    assert fit.params["a"] == pytest.approx(slope, rel=1e-9)


def _budget(C, u, L):
    N = 10 ** np.asarray(u, dtype=float)
    return np.full(N.size, C), N, np.asarray(L, dtype=float)


def test_one_vertex_rule_for_point_estimate_and_replicates():
    """A budget whose lowest loss is at an interior size but whose parabola vertex lies 0.2
    of the span below the smallest size: the replicates accept such a vertex (up to
    VERTEX_SLACK of the span), so the point estimate must too. With zero noise every replicate
    equals the data: the budget is used and no replicate fails. Before the fix the point
    estimate required the vertex inside and left the budget out."""
    u = np.array([0, 0.15, 0.3, 0.45, 0.6])
    parts = [_budget(1e18, u + 7.0, [1.0, 0.99999, 1.002, 1.004, 1.006])]
    for k, C in enumerate((3e18, 1e19, 3e19)):
        parts.append(_budget(C, u + 7.1 + 0.15 * k, 1.0 + 0.01 * (u - 0.3) ** 2))
    C, N, L = (np.concatenate(x) for x in zip(*parts))
    fit = fit_isoflop(C, L, N=N, budget=C, noise=np.zeros_like(L), n_boot=20, estimator="parabola")
    row = fit.budgets.iloc[0]
    assert VERTEX_SLACK > 0.2
    assert bool(row["used"]), row["note"]
    assert math.log10(row["N_opt"]) < 7.0  # the vertex lies outside the sampled sizes
    assert fit.info["n_boot_failed"] == 0
    assert row["N_opt_low"] == pytest.approx(row["N_opt"]) and row["N_opt_high"] == pytest.approx(row["N_opt"])


def test_auto_chooses_parabola_on_sparse_and_local_on_dense_asymmetric_grids():
    """The rule on one draw of each design (benchmarks/coverage.py validates it over 100):
    sparse narrow grids keep the global parabola, dense wide asymmetric ones take the local
    parabola; the choice and why are in the fit's info and JSON."""
    for kind, want in (("sparse", "parabola"), ("dense", "local")):
        C, N, D, L, se = cov.design_grid(kind, np.random.default_rng(11))
        fit = fit_isoflop(C, L, N=N, D=D, budget=C, noise=se, n_boot=0)
        assert fit.info["estimator_requested"] == "auto"
        assert fit.info["estimator"] == want, fit.info["estimator_choice"]
        assert fit.info["estimator_choice"].startswith(f"auto -> {want}")
        d = fit.to_dict()
        assert d["estimator"] == want and d["estimator_choice"] == fit.info["estimator_choice"]
        assert fit.params["a"] == fit.estimators[want]["a"]
    # asked for by name: no test, and it says so
    fit = fit_isoflop(C, L, N=N, D=D, budget=C, noise=se, n_boot=0, estimator="akima")
    assert fit.info["estimator"] == "akima" and "asked for" in fit.info["estimator_choice"]


def test_auto_rule_has_its_nominal_size():
    """Exactly parabolic profiles (in log L) on the dense design's grids plus noise: the cubic
    lack-of-fit test rejects (choosing local) in about ALPHA_TEST of 400 draws; and it keeps
    the parabola when no budget has 5 sizes."""
    rng = np.random.default_rng(0)
    rej = 0
    for _ in range(400):
        prof = []
        for _b in range(6):
            u = np.linspace(0, 2, 11) + rng.uniform(-0.1, 0.1)
            prof.append((u, np.exp(1.0 + 0.05 * (u - 1.0 - rng.uniform(-0.5, 0.5)) ** 2
                                   + 0.005 * rng.standard_normal(u.size))))
        rej += choose_estimator(prof)[0] == "local"
    # binomial(400, 0.05): sd 0.011
    assert abs(rej / 400 - ALPHA_TEST) < 0.035, rej
    est, why = choose_estimator([(np.linspace(0, 0.6, 4), np.array([1.01, 1.0, 1.0, 1.01]))] * 6)
    assert est == "parabola" and why["n_budgets_tested"] == 0


def test_auto_is_unbiased_on_the_asymmetric_designs_small():
    """A small version of benchmarks/coverage.py (its README table has 100 draws): auto's mean
    error in a within 3 standard errors of 0 on both designs of the asymmetric law."""
    ta = true_exponent(ASYMMETRIC_LAW)
    for kind in ("sparse", "dense"):
        res = cov.summary(cov.run(kind, 12, 0), ta)["auto"]
        assert abs(res["bias"]) < max(3 * res["se"], 0.01), (kind, res)


def _sweep_with_trunks(tmp_path):
    folder = make_scaling_sweep(tmp_path / "s", seed=4, curves=False, extra_failed=False)
    df = pd.read_csv(folder / "results.csv")
    # one constant-lr trunk per size of the largest budget: long runs whose loss is not that
    # of a run of their length, off every budget
    top = df[df["compute_budget"] == df["compute_budget"].max()].head(4)
    tr = top.copy()
    tr["point_id"] = [f"trunk{i}" for i in range(len(tr))]
    tr["group"] = "isoflop/trunk"
    tr["D"] = tr["D"] * 1.7
    tr["C"] = 6 * tr["N"] * tr["D"]
    tr["C_exact"] = tr["C"] * 1.05
    tr["final_eval_loss"] = tr["final_eval_loss"] * 0.97
    tr["compute_budget"] = np.nan
    df = pd.concat([df, tr], ignore_index=True)
    df.to_csv(folder / "results.csv", index=False)
    (folder / "results.parquet").unlink()
    return folder, len(tr), len(df)


def test_fit_on_a_sweep_reads_the_rows_analyze_reads(tmp_path, analysis_main):
    """`fit --law isoflop SWEEP` leaves the cooldown trunks out, as `analyze` does (one
    function, analysis/fitrows.py), groups budgets by compute_budget as analyze does, gives
    the same a, and says what it left out. Before the fix the trunks were fitted."""
    folder, n_tr, n_all = _sweep_with_trunks(tmp_path)
    # the command in this process (the slow tier's test_fit_and_analyze_give_the_same_a and
    # tests/test_analysis_report.py run it in a subprocess)
    out = analysis_main("fit", "--law", "isoflop", folder, "--n-boot", "0", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["n_rows"] == n_all - n_tr
    assert any("trunk" in s and f"{n_tr} cooldown" in s for s in res["left_out"])
    sel = select_fit_rows(load_results(folder))
    assert len(sel.rows) == res["n_rows"] and len(sel.trunks) == n_tr
    r = sel.rows
    fit = fit_isoflop(r["C"], r["loss"], N=r["N"], D=r["D"], budget=r["compute_budget"], n_boot=0)
    assert res["params"]["a"] == pytest.approx(fit.params["a"], rel=1e-12)
    assert len(res["budgets"]) == 5
    out = analysis_main("fit", "--law", "isoflop", folder, "--n-boot", "0")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"rows: {n_tr} cooldown trunk run(s) left out" in text
    assert "estimator: auto -> " in text


@pytest.mark.slow
def test_fit_and_analyze_give_the_same_a(tmp_path):
    folder, _, _ = _sweep_with_trunks(tmp_path)
    res = json.loads(_cli("fit", "--law", "isoflop", str(folder), "--n-boot", "20", "--json"))
    _cli("analyze", str(folder), "--out", str(tmp_path / "rep"), "--n-boot", "20")
    fits = json.loads((tmp_path / "rep" / "fits.json").read_text())
    assert fits["Approach 2 (IsoFLOP)"]["params"]["a"] == pytest.approx(res["params"]["a"], rel=1e-12)


def test_missing_eval_loss_is_not_filled_with_the_train_loss(tmp_path, analysis_main):
    """Rows without final_eval_loss (but with final_train_loss) are not fitted and are
    counted under their own reason; train_loss_fallback=True fits them and says so. Before
    the fix the train loss was substituted row by row, silently."""
    folder = make_scaling_sweep(tmp_path / "s", seed=1, curves=False)
    df = pd.read_csv(folder / "results.csv")
    miss = df.index[df["status"] == "done"][:3]
    df.loc[miss, "final_eval_loss"] = np.nan
    df.to_csv(folder / "results.csv", index=False)
    (folder / "results.parquet").unlink()
    d = load_results(folder)
    assert d.loc[miss, "loss"].isna().all()
    assert d.attrs["dropped"] == {f"loss (final_eval_loss): {NO_EVAL_NOTE}": 3}
    assert "final_train_loss present" in describe_dropped(d)
    d2 = load_results(folder, train_loss_fallback=True)
    assert np.allclose(d2.loc[miss, "loss"], df.loc[miss, "final_train_loss"])
    assert any("final_train_loss used" in s for s in d2.attrs["derived"])
    # the CLI counts them as not fitted (run in this process)
    out = analysis_main("fit", "--law", "isoflop", folder, "--n-boot", "0", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["rows_not_fitted"] == {f"loss (final_eval_loss): {NO_EVAL_NOTE}": 3}

