"""`python -m analysis lr-law`: the fitted lr*(N) law and its spec line, on synthetic tables."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.lrlaw import fit_lr_law, load_for_lr_law

ROOT = Path(__file__).resolve().parents[1]
GAMMA, LR_REF, N_REF = -0.3, 3e-3, 3e4


def lr_table(path: Path, sizes=(1e4, 3e4, 1e5, 3e5), edge_size: float | None = 1e6,
             seeds=(0, 1, 2), noise=0.002, seed=0) -> Path:
    """A learning-rate grid per size around lr* = LR_REF (N/N_REF)^GAMMA (N = N_total, the
    table's accounting "total"), loss = 3 + 0.25 (log10 lr/lr*)^2; ``edge_size``: a size whose
    grid stops below its optimum (best lr = the highest tried). Non-embedding N = N_total / 2."""
    rng = np.random.default_rng(seed)
    rows = []
    for N in list(sizes) + ([edge_size] if edge_size else []):
        star = LR_REF * (N / N_REF) ** GAMMA
        grid = star * 10 ** np.arange(-0.6, 0.61, 0.2)
        if N == edge_size:
            grid = star * 10 ** np.arange(-1.2, -0.39, 0.2)
        for lr in grid:
            for s in seeds:
                L = (3 + 0.25 * math.log10(lr / star) ** 2) * math.exp(noise * rng.standard_normal())
                rows.append({"point_id": f"p{len(rows)}", "status": "done", "optimizer": "adamw",
                             "lr": float(f"{lr:.4g}"), "seed": s, "N_total": N, "N": N / 2,
                             "D": 20 * N, "C_exact": 6 * N * 20 * N, "C_6ND": 3 * N * 20 * N,
                             "C": 6 * N * 20 * N, "accounting": "total", "final_eval_loss": L,
                             "eval_loss_stderr": 0.003 * L, "group": "lr"})
    # a cooldown trunk with an absurd loss: must be left out
    rows.append({**rows[0], "point_id": "trunk0", "group": "lr/trunk", "final_eval_loss": 0.1})
    out = path / "results.csv"
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def test_fit_recovers_the_law_and_flags_the_edge(tmp_path):
    src = lr_table(tmp_path)
    df = load_for_lr_law(src)
    assert df.attrs["n_trunks"] == 1 and df.attrs["accounting"] == "total"
    (r,) = fit_lr_law(df, n_boot=100)
    assert r["n_sizes"] == 4
    lo, hi = r["exponent_ci"]
    assert lo < r["exponent"] < hi
    assert abs(r["exponent"] - GAMMA) < 0.05 and lo < GAMMA < hi
    n_ref = math.exp(np.mean(np.log([1e4, 3e4, 1e5, 3e5])))
    assert math.isclose(r["n_ref"], n_ref, rel_tol=1e-9)
    assert math.isclose(r["lr"], LR_REF * (n_ref / N_REF) ** GAMMA, rel_tol=0.1)
    assert [b["N"] for b in r["bounds"]] == [1e6]
    assert r["bounds"][0]["bound"].startswith("lr* >= ")
    law = tomllib.loads(r["toml"])["lr_law"]
    assert set(law) == {"lr", "n_ref", "exponent"}
    assert math.isclose(law["exponent"], r["exponent"], rel_tol=1e-3)
    assert math.isclose(law["n_ref"], r["n_ref"], rel_tol=1e-3)


def test_accounting_changes_n(tmp_path):
    src = lr_table(tmp_path, edge_size=None)
    (tot,) = fit_lr_law(load_for_lr_law(src, "total"), n_boot=20)
    (kap,) = fit_lr_law(load_for_lr_law(src, "kaplan"), n_boot=20)
    assert math.isclose(kap["n_ref"], tot["n_ref"] / 2, rel_tol=1e-6)
    assert math.isclose(kap["exponent"], tot["exponent"], rel_tol=1e-6)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "analysis", "lr-law", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_text_and_json(tmp_path, analysis_main):
    src = lr_table(tmp_path)
    p = _cli(str(src), "--n-boot", "30")
    assert p.returncode == 0, p.stderr
    assert "lr_law = { lr = " in p.stdout and "a bound, not an optimum" in p.stdout
    assert "N = N_total" in p.stdout
    # the text through `python -m analysis` above, the JSON in this process
    p = analysis_main("lr-law", src, "--n-boot", "30", "--json", "--accounting", "kaplan")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["accounting"] == "kaplan" and out["N"] == "N_non_embedding"
    assert out["trunks_excluded"] == 1
    (law,) = out["laws"]
    assert law["toml"].startswith("lr_law = {") and len(law["exponent_ci"]) == 2


def test_cli_refuses_too_few_interior_sizes(tmp_path, analysis_main):
    src = lr_table(tmp_path, sizes=(1e4,), edge_size=1e6)
    p = analysis_main("lr-law", src, "--n-boot", "10")  # in this process
    assert p.returncode == 2
    assert "need 2" in p.stderr and "lr* >= " in p.stderr


def test_one_d_per_size_is_required(tmp_path):
    src = lr_table(tmp_path, edge_size=None)
    df = pd.read_csv(src)
    more = df.assign(D=df["D"] * 2, point_id=df["point_id"] + "b")
    pd.concat([df, more]).to_csv(src, index=False)
    with pytest.raises(ValueError, match="token counts"):
        fit_lr_law(load_for_lr_law(src), n_boot=5)
