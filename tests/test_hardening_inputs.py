"""Bad input to `python -m analysis fit` gets one line and exit 2 (issue 30 §4); a flat
loss is not a power law (nothing identified)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.__main__ import main
from analysis.fits.powerlaw import fit_power_law


@pytest.fixture
def tables(tmp_path):
    N = np.geomspace(1e5, 1e8, 15)
    ok = pd.DataFrame({"N": N, "D": 20 * N, "C": 120 * N**2, "loss": 2 + 100 / N**0.3,
                       "status": "done"})
    ok.to_csv(tmp_path / "ok.csv", index=False)
    ok.iloc[:1].to_csv(tmp_path / "one.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("law, option, words", [
    ("power", ["--n-boot", "-5"], "--n-boot = -5"),
    ("power", ["--delta", "-1"], "--delta = -1.0"),
    ("power", ["--delta", "nan"], "--delta = nan"),
    ("isoflop", ["--budget-tol", "nan"], "--budget-tol = nan"),
    ("isoflop", ["--budget-tol", "0"], "--budget-tol = 0.0"),
    ("power", ["--drop-highest-loss", "100"], "--drop-highest-loss = 100: the table has 15 row"),
    ("power", ["--drop-highest-loss", "-2"], "--drop-highest-loss = -2"),
])
def test_bad_fit_options_are_one_line(tables, capsys, law, option, words):
    rc = main(["fit", str(tables / "ok.csv"), "--law", law, "--n-col", "N", "--loss-col", "loss",
               "--c-col", "C", *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err


def test_a_one_row_isoflop_fit_is_refused(tables, capsys):
    rc = main(["fit", str(tables / "one.csv"), "--law", "isoflop", "--c-col", "C", "--n-col", "N",
               "--loss-col", "loss"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "isoflop: 1 row(s)" in err[0], err


def test_all_equal_losses_identify_no_power_law():
    N = np.geomspace(1e5, 1e8, 15)
    fit = fit_power_law(N, np.full(15, 3.0), n_boot=0, name="N")
    assert set(fit.unidentified) == {"E", "x_c", "alpha"}
    assert "all equal" in fit.unidentified["alpha"]
    good = fit_power_law(N, 2 + 100 / N**0.3, n_boot=0, name="N")
    assert not good.unidentified and good.params["alpha"] == pytest.approx(0.3, rel=1e-3)
