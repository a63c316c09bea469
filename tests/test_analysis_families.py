"""Model families in the analysis: L(N) per family at fixed D, the n-gram line, loss by
position; read from plain files (a hand-made two-family sweep folder)."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import families as fam
from analysis.fitrows import scaling_rows
from analysis.report.build import analyze

D = 2_000_000
TRUTH = {"transformer": (2e6, 0.30), "lstm": (3e5, 0.15)}  # (N_c, alpha_N)


def _table(rng, rel_noise=0.002, with_arch=True):
    rows = []
    for arch, (nc, al) in TRUTH.items():
        for i, n in enumerate(np.geomspace(2e4, 6e5, 6)):
            loss = (nc / n) ** al * np.exp(rel_noise * rng.standard_normal())
            rows.append({"point_id": f"{arch[:2]}{i}", "arch": arch, "status": "done", "N": n,
                         "N_total": n + 20_000, "D": D, "C_6ND": 6 * n * D, "C_exact": 7 * n * D,
                         "accounting": "kaplan", "final_eval_loss": loss,
                         "eval_loss_stderr": rel_noise * loss, "eval_tokens": 524288,
                         "eval_documents": 590, "optimizer": "adamw", "lr": 3e-3, "seed": 0,
                         "corpus_fingerprint": "f" * 64})
    # a run of another D: left out of the fixed-D fit, and said so
    rows.append(dict(rows[0], point_id="tr-longer", D=4 * D, final_eval_loss=1.0))
    df = pd.DataFrame(rows)
    return df if with_arch else df.drop(columns=["arch"])


def _sweep(tmp_path, rng):
    sweep = tmp_path / "sweeps" / "arch"
    df = _table(rng)
    sweep.mkdir(parents=True)
    df.to_csv(sweep / "results.csv", index=False)
    for r in df.itertuples():  # per-position losses: falling with position, lower for large N
        pos = r.final_eval_loss * (1 + 0.5 / np.sqrt(np.arange(1, 65)))
        pos *= r.final_eval_loss / pos.mean()
        (sweep / "points" / r.point_id).mkdir(parents=True)
        (sweep / "points" / r.point_id / "result.json").write_text(json.dumps(
            {"final_eval_loss": r.final_eval_loss, "eval_loss_by_position": pos.tolist()}))
    ng = sweep / "ngram" / "order5"
    ng.mkdir(parents=True)
    ng.joinpath("result.json").write_text(json.dumps({
        "arch": "ngram", "order": 5, "eval_loss": 1.9, "eval_loss_stderr": 0.012,
        "eval_tokens": 524288, "eval_documents": 590, "N": 604337, "D": D,
        "corpus_fingerprint": "f" * 64, "eval_loss_by_position": list(np.linspace(3, 1.8, 64))}))
    return sweep


def test_each_family_recovers_its_exponent_at_fixed_d():
    done = _table(np.random.default_rng(0))
    done["loss"] = done["final_eval_loss"]
    fits, rows_by, notes = fam.fit_families(done, n_boot=100)
    assert set(fits) == {"transformer", "lstm"}
    for arch, (nc, al) in TRUTH.items():
        f = fits[arch]
        assert f.n == 6 and f["alpha"] == pytest.approx(al, abs=0.01)
        lo, hi = f.interval("alpha")
        assert lo < al < hi and hi - lo < 0.05
        assert f.info["noise_source"].startswith("eval_loss_stderr")
    assert any("transformer" in n and "left out" in n for n in notes)
    assert (rows_by["transformer"]["D"] == D).all()


def test_no_arch_column_is_one_transformer_family():
    done = _table(np.random.default_rng(1), with_arch=False)
    assert set(fam.arch_series(done)) == {"transformer"} and fam.n_families(done) == 1
    blank = _table(np.random.default_rng(1)).assign(arch="")
    assert set(fam.arch_series(blank)) == {"transformer"}


def test_a_family_with_too_few_sizes_is_not_fitted():
    done = _table(np.random.default_rng(2))
    done = done[(done["arch"] == "transformer") | done["point_id"].isin(["ls0", "ls1"])].copy()
    done["loss"] = done["final_eval_loss"]
    fits, _, notes = fam.fit_families(done, n_boot=20)
    assert "lstm" not in fits and any("lstm: 2 distinct N" in n for n in notes)


def test_scaling_rows_keep_one_family():
    done = _table(np.random.default_rng(3))
    done["loss"] = done["final_eval_loss"]
    rows, notes = scaling_rows(done)
    assert set(rows["arch"]) == {"transformer"} and any("model family" in n for n in notes)


def test_report_draws_families_the_ngram_line_and_positions(tmp_path):
    sweep = _sweep(tmp_path, np.random.default_rng(4))
    out = analyze(sweep, tmp_path / "report", n_boot=50)
    for name in ("families", "loss_by_position"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    table = (out / "tables" / "families.md").read_text()
    assert "transformer" in table and "lstm" in table and "5-gram" in table
    assert "1.9000 ± 0.0120" in table
    summary = (out / "summary.md").read_text()
    assert "## Model families" in summary and "non-embedding" in summary
    assert "L(N) of the lstm family" in summary and "5-gram Kneser-Ney" in summary
    fits = json.loads((out / "fits.json").read_text())
    assert fits["L(N) lstm"]["params"]["alpha"] == pytest.approx(0.15, abs=0.01)
    assert fits["families"]["ngram"][0]["order"] == 5
    # an n-gram result given by path, for a table outside its sweep folder
    csv = tmp_path / "elsewhere.csv"
    pd.read_csv(sweep / "results.csv").to_csv(csv, index=False)
    out2 = analyze(csv, tmp_path / "report2", n_boot=20, ngram=[sweep / "ngram" / "order5"])
    assert "5-gram" in (out2 / "tables" / "families.md").read_text()
    assert not (out2 / "figures" / "loss_by_position.png").exists()  # no points/ beside it


def test_read_ngrams_ignores_other_files(tmp_path):
    (tmp_path / "ngram" / "x").mkdir(parents=True)
    (tmp_path / "ngram" / "x" / "result.json").write_text(json.dumps({"arch": "transformer"}))
    (tmp_path / "ngram" / "y").mkdir()
    (tmp_path / "ngram" / "y" / "result.json").write_text("{not json")
    assert fam.read_ngrams(tmp_path).empty


def test_reference_family_is_the_transformer_else_the_most_common():
    done = _table(np.random.default_rng(5))
    assert fam.reference_family(done) == "transformer"
    assert fam.reference_family(done[done["arch"] == "lstm"]) is None
    other = done.assign(arch=["lstm"] * 7 + ["rnn"] * (len(done) - 7))
    assert fam.reference_family(other) == "lstm"


def test_a_masked_lm_family_is_tabled_but_not_drawn_with_next_token_losses(tmp_path):
    df = _table(np.random.default_rng(6))
    enc = df[df["arch"] == "lstm"].assign(arch="encoder", objective="mlm",
                                          point_id=lambda d: "en" + d["point_id"])
    df = pd.concat([df.assign(objective="next_token"), enc], ignore_index=True)
    csv = tmp_path / "results.csv"
    df.to_csv(csv, index=False)
    out = analyze(csv, tmp_path / "report", n_boot=20)
    table = (out / "tables" / "families.md").read_text()
    assert "| encoder | mlm |" in table and "| lstm | next_token |" in table
    summary = (out / "summary.md").read_text()
    assert "encoder: trained on the mlm objective" in summary
