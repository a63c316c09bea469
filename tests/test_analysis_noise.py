"""The two-part noise model (analysis/noise.py) against known truths on synthetic data.

The eval-set noise is shared: every run is scored on the same documents, so a resampling of
documents must be applied to all runs at once, and then it largely cancels in a slope. The
seed noise is independent per run. Each claim is checked against a Monte-Carlo truth.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.fits.chinchilla import fit_approach3
from analysis.fits.isoflop import fit_isoflop
from analysis.noise import (EvalDocuments, LossNoise, eval_documents, noise_model, noise_replicates,
                            pooled_seed_noise, read_documents, seed_cells, shared_factors, trajectories)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- a synthetic world
#
# A population of held-out documents; run i's loss on document d is
#   exp(c - s x_i + delta_d + gamma_d x_i)
# per token: delta_d (how hard the document is) is common to every run, gamma_d (how much
# more a larger x helps on this document) differs from document to document. An eval set is
# a sample of documents; a run's eval loss is sum(loss_sum) / sum(tokens) over it.

POP = 20_000
X = np.linspace(0.0, 2.0, 8)
SLOPE = 0.2


def _population(seed=0):
    rng = np.random.default_rng(seed)
    return {"delta": 0.3 * rng.standard_normal(POP), "gamma": 0.03 * rng.standard_normal(POP),
            "tokens": rng.integers(20, 2000, POP).astype(float)}


def _doc_losses(pop, docs):
    """(runs, docs) per-token losses, tokens (docs,)."""
    per_tok = np.exp(1.0 - SLOPE * X[:, None] + pop["delta"][docs][None, :] + pop["gamma"][docs][None, :] * X[:, None])
    return per_tok, pop["tokens"][docs]


def _eval_docs(per_tok, tok, docs) -> EvalDocuments:
    n = X.size
    return EvalDocuments(set_of=np.zeros(n, dtype=np.int64), tokens=[tok.copy() for _ in range(n)],
                         loss_sum=[per_tok[i] * tok for i in range(n)], sets=["s"], n_docs=[docs.size])


def _slopes(Y):
    """OLS slope of each row of log-losses Y (B, runs) on X."""
    xc = X - X.mean()
    return (Y - Y.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)


def _loss(per_tok, tok):
    return (per_tok * tok).sum(axis=1) / tok.sum()


def test_shared_eval_noise_cancels_in_a_slope_and_matches_monte_carlo():
    pop = _population()
    rng = np.random.default_rng(1)
    n_docs = 300
    # Monte-Carlo truth: the slope's sd over fresh eval sets (documents drawn anew)
    truth = []
    for _ in range(400):
        docs = rng.choice(POP, n_docs, replace=False)
        truth.append(_slopes(np.log(_loss(*_doc_losses(pop, docs)))[None])[0])
    sd_true = float(np.std(truth, ddof=1))
    # the bootstrap from single eval sets: documents resampled jointly for all runs
    sds, sds_indep = [], []
    for k in range(5):
        docs = rng.choice(POP, n_docs, replace=False)
        per_tok, tok = _doc_losses(pop, docs)
        L = _loss(per_tok, tok)
        noise = LossNoise(sigma=np.zeros(X.size), source="test", shared=_eval_docs(per_tok, tok, docs))
        g = shared_factors(noise, None, 400, seed=k)
        R = noise_replicates(L, noise.sigma, 400, np.random.default_rng(k), shared=g)
        sds.append(np.std(_slopes(np.log(R)), ddof=1))
        # the old model: each run's eval stderr (the same document resampling, per run) drawn
        # independently for every run
        se = np.std(L[None, :] * np.exp(g), axis=0, ddof=1)
        R_ind = noise_replicates(L, se, 400, np.random.default_rng(k))
        sds_indep.append(np.std(_slopes(np.log(R_ind)), ddof=1))
    ratio = float(np.mean(sds)) / sd_true
    assert 0.7 < ratio < 1.4, (ratio, sd_true)
    # treated as independent, the same eval noise overstates the slope's sd many times over
    assert float(np.mean(sds_indep)) > 3 * sd_true


def test_two_part_intervals_cover_over_repeated_draws():
    """95 % percentile intervals of the slope, eval set and seed noise redrawn each time:
    coverage near 95 % (200 draws: a Monte-Carlo error of about 1.5 %). Without the seed
    part, the same intervals under-cover: the test can tell."""
    pop = _population(2)
    L_pop = _loss(*_doc_losses(pop, np.arange(POP)))
    true_slope = float(_slopes(np.log(L_pop)[None])[0])
    rng = np.random.default_rng(3)
    rel_seed, n_docs, B = 0.01, 300, 200
    hit, hit_no_seed = 0, 0
    draws = 200
    for k in range(draws):
        docs = rng.choice(POP, n_docs, replace=False)
        per_tok, tok = _doc_losses(pop, docs)
        L = _loss(per_tok, tok) * np.exp(rel_seed * rng.standard_normal(X.size))
        est = float(_slopes(np.log(L)[None])[0])
        noise = LossNoise(sigma=rel_seed * L, source="test", shared=_eval_docs(per_tok, tok, docs))
        g = shared_factors(noise, None, B, seed=k)
        R = noise_replicates(L, noise.sigma, B, np.random.default_rng(k), shared=g)
        lo, hi = np.quantile(_slopes(np.log(R)), [0.025, 0.975])
        hit += lo <= true_slope <= hi
        R0 = noise_replicates(L, np.zeros(X.size), B, np.random.default_rng(k), shared=g)
        lo0, hi0 = np.quantile(_slopes(np.log(R0)), [0.025, 0.975])
        hit_no_seed += lo0 <= true_slope <= hi0
        assert math.isfinite(est)
    assert 0.90 <= hit / draws <= 0.99, hit / draws
    assert hit_no_seed / draws < 0.85, hit_no_seed / draws


# ---------------------------------------------------------------------------- trajectories
#
# Runs of one size and seed (a trunk and its cooldown branches, or separate runs with the
# same initialisation and data order) share their seed noise: a slope over N fitted on
# several D per N sees one draw per size, not one per run.

N_SIZES = np.linspace(0.0, 2.0, 6)  # log N of the sizes
D_PER_N = 4


def _traj_rows(seed_col=True):
    x = np.repeat(N_SIZES, D_PER_N)
    rows = pd.DataFrame({"N": 10 ** (4 + x), "D": np.tile(10 ** np.linspace(6, 7, D_PER_N), N_SIZES.size)})
    if seed_col:
        rows["seed"] = 0
    return rows, x


def _slope_on(x, Y):
    xc = x - x.mean()
    return (Y - Y.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)


def test_trajectories_group_runs_of_one_size_and_seed_and_split_averaged_cells():
    rows, _ = _traj_rows()
    T = trajectories(rows)
    assert T.shape == (N_SIZES.size * D_PER_N, N_SIZES.size) and np.all(T.sum(axis=1) == 1)
    assert np.all((T > 0).sum(axis=0) == D_PER_N)  # each size's runs share one trajectory
    assert trajectories(rows.drop(columns="seed")) is None
    # a cell averaged over seeds 0, 1, 2 takes a third of each seed's trajectory; the
    # seed-0 one is shared with the other seed-0 runs of that size
    runs = pd.DataFrame({"N": [1e4, 1e4, 1e4, 1e4, 2e4], "D": [1e6, 1e6, 1e6, 2e6, 1e6],
                         "seed": [0, 1, 2, 0, 0], "loss": [3.0, 3.1, 2.9, 2.8, 2.7]})
    cells = seed_cells(runs, ["N", "D"], mean=())
    assert list(cells["seeds"]) == ["0,1,2", "0", "0"]
    Tc = trajectories(cells)
    assert Tc.shape == (3, 4)
    assert sorted(Tc[0]) == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    assert Tc[0] @ Tc[1] == pytest.approx(1 / 3)  # they share seed 0 of N = 1e4
    assert Tc[2] @ Tc[0] == 0 and Tc[2] @ Tc[1] == 0


def test_trajectory_factors_have_the_seed_variance_and_the_stated_correlation():
    rows, _ = _traj_rows()
    rows["loss"] = 3.0
    for rho in (1.0, 0.6):
        nz = noise_model(rows, None, seed_noise=0.01, seed_corr=rho)  # without documents: ...
        assert nz.trajectories is None  # ... the older independent model, said so
        nz = LossNoise(sigma=np.sqrt(1 - rho) * 0.01 * rows["loss"].to_numpy(), source="t",
                       trajectories=trajectories(rows), trajectory_rel=np.sqrt(rho) * 0.01)
        R = np.log(noise_replicates(rows["loss"], nz.sigma, 40_000, np.random.default_rng(1),
                                    shared=shared_factors(nz, None, 40_000, seed=2)) / 3.0)
        C = np.corrcoef(R.T)
        assert R.std(axis=0) == pytest.approx(0.01, rel=0.03)
        assert C[0, 1] == pytest.approx(rho, abs=0.03)  # same size: one trajectory
        assert abs(C[0, D_PER_N]) < 0.03  # different sizes: independent


def test_trajectory_shared_seed_noise_covers_a_slope_over_sizes():
    """A slope over N from several D per N, the seed noise drawn once per trajectory (as
    cooldown branches of one trunk share it): 95 % intervals with the trajectory model
    cover near 95 % over 300 draws; treating the same noise as independent per run
    (seed_corr = 0) under-covers, so the test can tell."""
    rows, x = _traj_rows()
    T = trajectories(rows)
    rng = np.random.default_rng(7)
    rel, B, draws = 0.01, 300, 300
    truth = -0.2
    hit = {1.0: 0, 0.0: 0}
    for k in range(draws):
        L = np.exp(1.0 + truth * x + rel * (T @ rng.standard_normal(T.shape[1])))
        for rho in hit:
            nz = LossNoise(sigma=np.sqrt(1 - rho) * rel * L, source="t", trajectories=T,
                           trajectory_rel=np.sqrt(rho) * rel)
            R = noise_replicates(L, nz.sigma, B, np.random.default_rng(k),
                                 shared=shared_factors(nz, None, B, seed=k))
            est = _slope_on(x, np.log(L)[None])[0]
            lo, hi = np.quantile(_slope_on(x, np.log(R)), [0.025, 0.975])
            hit[rho] += lo <= truth <= hi
            assert lo <= est <= hi
    assert 0.91 <= hit[1.0] / draws <= 0.99, hit
    assert hit[0.0] / draws < 0.80, hit


def test_cli_seed_corr_bad_value_one_line(tmp_path, capsys):
    from analysis.__main__ import main

    folder, _ = _sweep_with_documents(tmp_path / "sw")
    for bad in ("1.5", "-0.1", "nan"):
        assert main(["fit", "--law", "isoflop", str(folder), "--seed-corr", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: --seed-corr = ")


# ---------------------------------------------------------------------------- the fits use it


def _common_factor_docs(n_rows, n_docs=200, seed=0):
    """Every run has the same per-document profile: one common factor per document, so a
    document resampling multiplies every run's loss by the same number."""
    rng = np.random.default_rng(seed)
    prof = np.exp(0.3 * rng.standard_normal(n_docs))
    tok = rng.integers(50, 500, n_docs).astype(float)
    prof = prof / ((prof * tok).sum() / tok.sum())  # the eval loss of each run is its own loss
    return EvalDocuments(set_of=np.zeros(n_rows, dtype=np.int64), tokens=[tok] * n_rows,
                         loss_sum=[prof * tok] * n_rows, sets=["s"], n_docs=[n_docs])


def _isoflop_design():
    rows = []
    for C in (1e17, 3e17, 1e18, 3e18):
        n_opt = 0.1 * C ** 0.5
        for u in np.linspace(-0.5, 0.5, 5):
            N = n_opt * 10 ** u
            rows.append((C, N, C / (6 * N), 2.0 + 0.05 * u ** 2 * 10 + 0.1 * (1e18 / C) ** 0.1))
    C, N, D, L = (np.array(v) for v in zip(*rows))
    return C, N, D, L


def test_isoflop_bootstrap_applies_the_eval_factor_jointly():
    C, N, D, L = _isoflop_design()
    docs = _common_factor_docs(L.size)
    g = docs.log_factors(50, seed=0)
    assert np.std(g[:, 0]) > 0.005 and np.allclose(g, g[:, :1])  # a real, common perturbation
    fit = fit_isoflop(C, L, N=N, D=D, budget=C, n_boot=50, seed=0,
                      noise=LossNoise(sigma=np.zeros(L.size), source="shared only", shared=docs))
    lo, hi = fit.interval("a")
    assert hi - lo < 1e-6, (lo, hi)  # a common factor moves no argmin
    # the same perturbation drawn per run (independently) does move them
    se = np.std(L[None, :] * np.exp(g), axis=0)
    fit2 = fit_isoflop(C, L, N=N, D=D, budget=C, n_boot=50, seed=0, noise=se)
    lo2, hi2 = fit2.interval("a")
    assert hi2 - lo2 > 0.01


@pytest.mark.slow
def test_approach3_bootstrap_applies_the_eval_factor_jointly():
    """E + A/N^a + B/D^b times a common factor is the same law with E, A, B scaled: the
    exponents' intervals collapse, E's does not."""
    N = np.repeat(np.geomspace(1e6, 1e8, 5), 5)
    D = np.tile(np.geomspace(1e8, 1e10, 5), 5)
    L = 1.7 + 400 / N ** 0.34 + 400 / D ** 0.28
    docs = _common_factor_docs(L.size)
    fit = fit_approach3(N, D, L, n_boot=12, seed=0,
                        noise=LossNoise(sigma=np.zeros(L.size), source="shared only", shared=docs))
    lo, hi = fit.interval("alpha")
    loE, hiE = fit.interval("E")
    assert hi - lo < 0.02 * (hiE - loE) / fit.params["E"] + 1e-3
    assert (hiE - loE) / fit.params["E"] > 0.005


# ---------------------------------------------------------------------------- the model itself


def test_pooled_seed_noise_cells_and_runs():
    cells = pd.DataFrame({"loss": [3.0, 3.1, 2.9], "n_seeds": [3, 1, 2], "seed_std": [0.03, np.nan, 0.029]})
    s = pooled_seed_noise(cells)
    assert s["cells"] == 2 and s["dof"] == 3
    assert s["rel"] == pytest.approx(math.sqrt((2 * 0.01 ** 2 + 1 * 0.01 ** 2) / 3))
    runs = pd.DataFrame({"N": [1, 1, 1, 2, 2, 3], "D": [5, 5, 5, 7, 7, 9], "seed": [0, 1, 2, 0, 1, 0],
                         "loss": [1.0, 1.02, 0.98, 2.0, 2.02, 3.0]})
    s = pooled_seed_noise(runs)
    ss = 0.02 ** 2 * 2 + 2 * (0.01 / 2.01) ** 2  # relative deviations from each cell's mean
    assert s["cells"] == 2 and s["dof"] == 3 and s["rel"] == pytest.approx(math.sqrt(ss / 3))
    assert pooled_seed_noise(runs[runs["seed"] == 0]) is None


def _sweep_with_documents(folder: Path, *, seeds=(0,), with_docs=True, n_docs=40):
    """A small sweep folder: results.csv and points/<id>/result.json with eval_by_document."""
    rng = np.random.default_rng(0)
    pts = folder / "points"
    rows = []
    doc_ids = np.arange(n_docs) * 3 + 1
    tok = rng.integers(50, 500, n_docs).astype(float)
    prof = np.exp(0.2 * rng.standard_normal(n_docs))
    for C in (1e17, 3e17, 1e18):
        for u in (-0.4, -0.2, 0.0, 0.2, 0.4):
            N = 0.1 * C ** 0.5 * 10 ** u
            for s in (seeds if u == 0.0 else (0,)):
                pid = f"p{len(rows):03d}"
                per = (2.0 + 0.3 * u ** 2) * prof * np.exp(0.004 * rng.standard_normal() + 0.01 * rng.standard_normal(n_docs))
                L = float((per * tok).sum() / tok.sum())
                rows.append({"sweep": folder.name, "point_id": pid, "status": "done", "N": N, "N_total": N,
                             "D": C / (6 * N), "C": C, "C_exact": C, "compute_budget": C,
                             "final_eval_loss": L, "eval_loss_stderr": 0.006 * L, "seed": s,
                             "lr": 3e-3, "optimizer": "adamw", "accounting": "total", "eval_set_id": "abc"})
                (pts / pid).mkdir(parents=True)
                res = {"status": "done", "final_eval_loss": L, "eval_set_id": "abc"}
                if with_docs:
                    res["eval_by_document"] = {"doc": doc_ids.tolist(), "tokens": tok.tolist(),
                                               "loss_sum": (per * tok).tolist()}
                (pts / pid / "result.json").write_text(json.dumps(res))
    df = pd.DataFrame(rows)
    df.to_csv(folder / "results.csv", index=False)
    return folder, df


def test_noise_model_reads_documents_and_says_what_it_is(tmp_path):
    folder, df = _sweep_with_documents(tmp_path / "sw", seeds=(0, 1, 2))
    docs = read_documents(folder, df["point_id"])
    assert len(docs) == len(df) and docs["p000"]["set"] == "abc"
    ed = eval_documents(df["point_id"], docs)
    for i in range(len(df)):  # sum(loss_sum) / sum(tokens) is each run's eval loss
        assert ed.loss_sum[i].sum() / ed.tokens[i].sum() == pytest.approx(df["final_eval_loss"][i])
    rows = df.rename(columns={"final_eval_loss": "loss"})
    nz = noise_model(rows, folder)
    assert nz.shared is not None and nz.info["seed_noise"]["from"] == "seeds"
    assert nz.sentence.startswith("Intervals: noise bootstrap with the eval-set noise shared across runs")
    assert "40 documents" in nz.sentence and "pooled over 3 cells with 3 seeds" in nz.sentence
    assert nz.sentence.count(".") <= 3 and "\n" not in nz.sentence
    # one seed: said so, nothing assumed; the user's value only when given
    one = rows[rows["seed"] == 0]
    nz1 = noise_model(one, folder)
    assert "no repeated seeds" in nz1.sentence and np.all(nz1.sigma == 0)
    nz2 = noise_model(one, folder, seed_noise=0.004, seed_corr=0.0)
    assert "given by the user" in nz2.sentence and "independent per run" in nz2.sentence
    assert nz2.sigma == pytest.approx(0.004 * one["loss"].to_numpy())
    # by default all of it is shared by the runs of one trajectory (same N and seed)
    nz3 = noise_model(one, folder, seed_noise=0.004)
    assert np.all(nz3.sigma == 0) and nz3.trajectory_rel == pytest.approx(0.004)
    assert "100 % of its variance shared by the runs of one trajectory" in nz3.sentence
    with pytest.raises(ValueError, match="seed_noise"):
        noise_model(one, folder, seed_noise=1.5)
    # a subset keeps its rows' documents
    sub = nz.take(np.array([0, 2]))
    assert sub.shared.set_of.size == 2 and sub.sigma.size == 2


def test_noise_model_without_documents_falls_back_and_says_so(tmp_path):
    folder, df = _sweep_with_documents(tmp_path / "sw", with_docs=False)
    rows = df.rename(columns={"final_eval_loss": "loss"})
    nz = noise_model(rows, folder)
    assert nz.shared is None and "no per-document eval losses" in nz.sentence
    assert nz.sigma == pytest.approx(rows["eval_loss_stderr"].to_numpy())
    nz = noise_model(rows, None, seed_noise=0.003)
    assert "--seed-noise" in nz.source
    assert nz.sigma == pytest.approx(np.hypot(rows["eval_loss_stderr"], 0.003 * rows["loss"]))


def test_document_resampling_matches_the_cluster_stderr():
    """One run: the sd of its bootstrap losses is the ratio estimator's cluster-robust stderr."""
    rng = np.random.default_rng(5)
    n = 400
    tok = rng.integers(50, 800, n).astype(float)
    per = np.exp(0.3 * rng.standard_normal(n))
    ed = EvalDocuments(np.zeros(1, dtype=np.int64), [tok], [per * tok], ["s"], [n])
    L = (per * tok).sum() / tok.sum()
    boot_sd = np.std(L * np.exp(ed.log_factors(4000, seed=1)[:, 0]))
    resid = (per - L) * tok
    cluster_se = math.sqrt(n / (n - 1) * np.sum(resid ** 2)) / tok.sum()
    assert boot_sd == pytest.approx(cluster_se, rel=0.06)


def test_cli_seed_noise_bad_value_one_line(tmp_path):
    folder, _ = _sweep_with_documents(tmp_path / "sw")
    r = subprocess.run([sys.executable, "-m", "analysis", "fit", "--law", "isoflop", str(folder),
                        "--seed-noise", "2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--seed-noise" in r.stderr


@pytest.mark.slow
def test_report_states_the_noise_model_in_one_sentence(tmp_path):
    from analysis.report.build import analyze

    folder, _ = _sweep_with_documents(tmp_path / "sw", seeds=(0, 1, 2))
    out = analyze(folder, n_boot=20)
    summary = (out / "summary.md").read_text()
    lines = [ln for ln in summary.splitlines() if ln.startswith("- Intervals: noise bootstrap")]
    assert len(lines) == 1, summary
    assert "shared across runs (documents resampled jointly, 40 documents)" in lines[0]
    assert "pooled over 3 cells with 3 seeds" in lines[0]
    fits = json.loads((out / "fits.json").read_text())
    assert fits["Approach 2 (IsoFLOP)"]["info"]["noise_source"].startswith("eval documents shared (40)")


def test_fit_cli_on_a_sweep_folder_uses_the_two_part_model(tmp_path, analysis_main):
    folder, _ = _sweep_with_documents(tmp_path / "sw", seeds=(0, 1, 2))
    # in this process; the command in a subprocess: test_cli_seed_noise_bad_value_one_line
    r = analysis_main("fit", "--law", "isoflop", folder, "--json", "--n-boot", "20")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["noise_model"].startswith("Intervals: noise bootstrap with the eval-set noise shared")
    assert "pooled over 3 cells with 3 seeds" in out["noise_model"]
    assert out["info"]["noise_source"].startswith("eval documents shared (40) + seed")


def test_weighted_isoflop_line_uses_the_whole_seed_noise_under_trajectories(tmp_path):
    """The weighted line (weights propagated from each run's noise, fixed before the
    bootstrap) uses the whole seed noise of a run: the part shared within a trajectory
    counts too. With it all shared (the default) the independent sigma is 0, and the
    weighted line came out NaN in the demo's report; it equals the independent model's."""
    folder, df = _sweep_with_documents(tmp_path / "sw", seeds=(0, 1, 2))
    rows = df.rename(columns={"final_eval_loss": "loss"})
    cells = seed_cells(rows, ["N", "D"], mean=("C", "compute_budget"))
    got = {}
    for rho in (1.0, 0.0):
        nz = noise_model(cells, folder, seed_corr=rho)
        fit = fit_isoflop(cells["C"], cells["loss"], N=cells["N"], budget=cells["compute_budget"],
                          noise=nz, n_boot=0, estimator="parabola")
        got[rho] = fit.estimators["parabola"]["weighted"]["a"]
    assert math.isfinite(got[1.0]) and got[1.0] == pytest.approx(got[0.0], rel=1e-9)
