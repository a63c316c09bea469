"""One bad file never stops a sweep; runs never silently become other runs; bad input gets
one line (issue 30 §2-§4). Most tests work on a copy of one finished two-point sweep."""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scaling.executors import sweep as sweep_driver
from scaling.config import ConfigError
from scaling.executors.point_runner import point_config
from scaling.runs.results import format_status, point_state, write_tables
from scaling.runs.runfiles import read_result
from tests.test_sweep_run import write_spec

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "run_sweep.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep of two points x 20 steps (spec path, sweep folder)."""
    base = tmp_path_factory.mktemp("finished")
    spec = write_spec(base, tokens="5_120", lrs="1e-3, 3e-3")
    out = sweep_driver.run_sweep(spec, out=base / "sw", progress=False, workers=1)
    assert out["counts"] == {"done": 2}
    return spec, out["sweep_dir"]


@pytest.fixture
def sweep(finished, tmp_path):
    """A private copy of the finished sweep: (spec, sweep folder, [point A, point B])."""
    spec, src = finished
    dst = tmp_path / "sw" / src.name
    shutil.copytree(src, dst)
    return spec, dst, sorted(d for d in (dst / "points").iterdir() if d.is_dir())


# --------------------------------------------------------------------------------------
# §2 One bad file never stops a sweep
# --------------------------------------------------------------------------------------


def test_non_utf8_config_and_point_files_are_named_and_healed(sweep, caplog):
    spec, sw, (a, b) = sweep
    before = {d.name: read_result(d)["final_eval_loss"] for d in (a, b)}
    (a / "config.json").write_bytes(b"\xff\xfe\x00 not text")
    (b / "point.json").write_bytes(b"{\"label\": \"\xff\xff\"}")
    assert point_state(a) == point_state(b) == "corrupt"
    text = format_status(sw)  # was: UnicodeDecodeError
    assert f"{a / 'config.json'}: not UTF-8 text" in text and f"{b / 'point.json'}" in text
    status = cli("status", sw)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    with caplog.at_level(logging.WARNING):
        again = sweep_driver.run_sweep(spec, out=sw.parent, progress=False, workers=1)
    assert again["counts"] == {"done": 2}
    assert len(list(a.glob("config.json.corrupt-*"))) == 1
    assert any(str(a / "config.json") in r.getMessage() for r in caplog.records)
    for d in (a, b):
        assert point_state(d) == "done" and read_result(d)["final_eval_loss"] == before[d.name]
    assert json.loads((b / "point.json").read_text())["point_id"] == b.name  # from the plan


@pytest.mark.parametrize("garbage", ['{"model": 3, "train": []}', "[1, 2]", '"text"'])
def test_garbage_config_json_in_a_finished_point(sweep, garbage):
    spec, sw, (a, b) = sweep
    (a / "config.json").write_text(garbage)
    table = write_tables(sw)  # was: AttributeError ('int' object has no attribute 'get')
    row = table.set_index("point_id").loc[a.name]
    assert row["status"] == "corrupt" and str(a / "config.json") in row["error"]
    assert row["final_eval_loss"] == read_result(a)["final_eval_loss"]  # the result is kept
    assert table.set_index("point_id").loc[b.name]["status"] == "done"


def test_result_is_rebuilt_from_the_final_checkpoint_when_metrics_are_empty(sweep, caplog):
    spec, sw, (a, b) = sweep
    old = read_result(a)
    (a / "result.json").unlink()
    (a / "metrics.jsonl").write_text("")
    with caplog.at_level(logging.WARNING):
        again = sweep_driver.run_sweep(spec, out=sw.parent, progress=False, workers=1)
    assert again["counts"] == {"done": 2}  # was: IndexError, on every rerun
    r = read_result(a)
    assert r["steps"] == 20 and r["resumed_from_step"] == 20
    assert math.isnan(r["final_train_loss"])  # said, not made up
    # the same program evaluates the same checkpoint: equal up to float32 summation order
    assert r["final_eval_loss"] == pytest.approx(old["final_eval_loss"], rel=1e-5)
    assert any(str(a / "metrics.jsonl") in m.getMessage() and "no train-loss rows" in m.getMessage()
               for m in caplog.records)


def test_garbled_and_cut_metrics_lines_are_named(sweep, caplog):
    spec, sw, (a, b) = sweep
    lines = (a / "metrics.jsonl").read_text().splitlines()
    n = len(lines)
    lines[2] = "{\"step\": 10, \"loss\": \x00garbage"
    (a / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:7])  # cut last
    with caplog.at_level(logging.WARNING, logger="scaling.runs.results"):
        write_tables(sw)
    said = [r.getMessage() for r in caplog.records if str(a / "metrics.jsonl") in r.getMessage()]
    assert len(said) == 1 and "2 unreadable line(s)" in said[0] and f"3, {n}" in said[0], said
    assert not [r for r in caplog.records if str(b / "metrics.jsonl") in r.getMessage()]


@pytest.mark.slow
def test_analyze_rebuilds_garbage_and_stale_tables_from_the_points(sweep):
    spec, sw, (a, b) = sweep
    (sw / "results.parquet").write_bytes(b"garbage")
    (sw / "results.csv").write_text("garbage\n")
    (a / "result.json").write_text('{"status": "do')  # the tables said done: stale
    out = cli("analyze", sw, "--out", sw.parent / "report", timeout=900)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    table = pd.read_parquet(sw / "results.parquet").set_index("point_id")
    assert table.loc[a.name, "status"] == "corrupt" and table.loc[b.name, "status"] == "done"
    assert pd.read_csv(sw / "results.csv").set_index("point_id").loc[a.name, "status"] == "corrupt"


def test_analyze_a_sweep_with_no_finished_point_says_so(sweep):
    spec, sw, (a, b) = sweep
    for d in (a, b):
        (d / "result.json").unlink()
    out = cli("analyze", sw, "--out", sw.parent / "report", timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "no point has finished" in out.stderr and "pending 2" in out.stderr
    assert not (sw.parent / "report").exists()


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_replaced(tmp_path):
    """After the restore falls back from a corrupt final checkpoint, the rerun's final
    checkpoint replaces it (it was skipped as 'already saved')."""
    from scaling.train.checkpoint import Checkpointer
    from scaling.train.loop import train
    from scaling.train.step import Trainer
    from tests.test_loop import tiny

    run_dir = tmp_path / "run"
    cfg = tiny()
    first = train(cfg, run_dir)
    (run_dir / "result.json").unlink()
    last = run_dir / "checkpoints" / str(cfg.train.steps)
    for f in last.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            f.write_bytes(b"garbage")
    again = train(cfg, run_dir)
    assert again["resumed_from_step"] < cfg.train.steps  # it fell back
    assert again["final_eval_loss"] == pytest.approx(first["final_eval_loss"], rel=1e-5)
    ck = Checkpointer(run_dir / "checkpoints", create=False)
    try:
        assert ck.restore_step(cfg.train.steps, Trainer(cfg).abstract_checkpoint()) is not None
    finally:
        ck.close()


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_in_train_is_one_line(tmp_path, monkeypatch, capsys):
    from scaling.train import checkpoint
    from scaling.cli import main

    monkeypatch.setattr(checkpoint.Checkpointer, "save", _enospc)
    run_dir = tmp_path / "run"
    # tiny.toml at the model and batch of tests/test_loop.py's SIGTERM run: one compiled step
    rc = main(["train", str(ROOT / "experiments" / "tiny.toml"), "--run-dir", str(run_dir),
               "model.n_layer=2", "optim.warmup_steps=2",
               "model.d_model=32", "model.n_head=2", "model.seq_len=32", "train.steps=12",
               "train.checkpoint_every=5", "train.batch_size=8", "data.max_corpus_bytes=200000",
               "train.progress=false"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 1 and len(err) == 1, err
    assert "no space left" in err[0] and str(run_dir / "checkpoints" / "5") in err[0]
    assert "needs about" in err[0] and "MiB" in err[0]


def test_a_full_disk_in_a_sweep_keeps_the_results_and_stops_cleanly(sweep, monkeypatch, capsys):
    from scaling.runs import results
    from scaling.cli import main

    spec, sw, (a, b) = sweep
    shutil.rmtree(b / "checkpoints")
    (b / "result.json").unlink()  # b trains again, then the table write fails
    real = results.atomic_write

    def full(path, write):
        if Path(path).name == "results.parquet":  # the writer fails mid-write
            return real(path, lambda tmp: (tmp.write_bytes(b"PAR1" * 100), _enospc()))
        return real(path, write)

    monkeypatch.setattr(results, "atomic_write", full)
    rc = main(["run", str(spec), "--out", str(sw.parent), "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    err = [ln for ln in captured.err.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and str(sw / "results.parquet") in err[0] and "no space" in err[0]
    assert read_result(a)["status"] == "done" and read_result(b)["status"] == "done"


# --------------------------------------------------------------------------------------
# §3 Runs never silently become other runs; §4 bad input
# --------------------------------------------------------------------------------------


def test_train_into_a_finished_run_of_another_config_is_refused(sweep):
    from scaling.train.loop import train

    spec, sw, (a, b) = sweep
    before = (a / "result.json").read_text()
    other = point_config(a).replace({"model.d_model": 48})
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        train(other, a)  # was: the old run's result, as if it were this config's
    assert (a / "result.json").read_text() == before
    assert train(point_config(a), a)["final_eval_loss"] == read_result(a)["final_eval_loss"]


def test_an_override_of_an_axis_key_is_refused_naming_the_axis(tmp_path):
    spec = write_spec(tmp_path, tokens="5_120", lrs="1e-3, 3e-3")
    out = cli("run", spec, "optim.lr=nan", "--out", tmp_path / "out", timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    line = out.stderr.strip().splitlines()[-1]
    assert 'sweep.axes."optim.lr"' in line and "optim.lr=nan" in line
    assert not (tmp_path / "out").exists()


def test_a_missing_trunk_is_one_line(tmp_path, run_sweep_main):
    # in this process (~3 s less); `train` through run_sweep.py: tests/test_loop.py,
    # tests/test_models_families.py
    out = run_sweep_main("train", "experiments/tiny.toml", "--run-dir", tmp_path / "run",
                         "train.init_from=/nonexistent", "train.init_step=10")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "/nonexistent" in out.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_result_records_what_its_numbers_depend_on(sweep, tmp_path):
    """The thread count (XLA's reduction order) and a branch's origin are in result.json;
    a branch whose trunk has no checkpoint at init_step says it trained from step 0."""
    import os

    from scaling.train.loop import train
    from tests.test_loop import tiny

    spec, sw, (a, b) = sweep
    r = read_result(a)
    assert r["cpu_threads"] == len(os.sched_getaffinity(0)) and r["branch_origin"] is None
    trunk = tmp_path / "trunk"
    train(tiny(), trunk)  # checkpoints at 10, 20, 30; the newest two kept
    assert not (trunk / "checkpoints" / "10").exists()
    branch = train(tiny(f"train.init_from={trunk}", "train.init_step=10"), tmp_path / "branch")
    assert branch["resumed_from_step"] == 0 and branch["branch_origin"].startswith("step 0")


@pytest.mark.slow
def test_sample_on_a_token_shard_run_with_text_or_out_of_vocabulary_ids(tmp_path):
    from scaling.config import load_config
    from scaling.train.loop import train
    from tests.test_shards import SEQ, VOCAB, make_docs, write_corpus

    folder = write_corpus(tmp_path / "shards", make_docs(n_shards=8, docs_per_shard=20))
    cfg = load_config(None, [
        f"data.corpus=tokens:{folder}", f"data.tokens_vocab_size={VOCAB}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.3",
        "model.vocab_size=300", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
        f"model.seq_len={SEQ}", "train.batch_size=4", "train.steps=4", "train.log_every=1",
        "train.eval_every=0", f"train.eval_tokens={8 * SEQ}", "train.curve_eval_tokens=0",
        "train.progress=false", "optim.warmup_steps=1",
    ])
    run = tmp_path / "run"
    train(cfg, run)
    listing = sorted(p.name for p in run.rglob("*"))
    for prompt, words in [("def f():", "token ids separated by spaces"),
                          ("5 300 7", "token id(s) 300 outside the model's vocabulary"),
                          ("-1", "token id(s) -1 outside")]:
        out = cli("sample", run, "--prompt", prompt, "--max-new-tokens", "3", timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert words in out.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in run.rglob("*")) == listing  # nothing written
    ok = cli("sample", run, "--prompt", "5 7", "--max-new-tokens", "3", timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
