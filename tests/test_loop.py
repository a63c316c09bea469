"""The training loop: loss falls, tokens are exact, resume is exact, nothing is clobbered."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scaling.config import ConfigError, load_config
from scaling.loop import train
from scaling.runfiles import read_metrics, read_result

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=1000000", "train.batch_size=8", "train.steps=30",
    "train.log_every=1", "train.eval_every=10", "train.eval_batches=2",
    "train.checkpoint_every=10", "train.progress=false", "optim.warmup_steps=3",
]


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def test_loss_falls_on_the_builtin_corpus(tmp_path):
    cfg = load_config(ROOT / "experiments" / "tiny.toml",
                      ["train.steps=300", "train.progress=false", "train.eval_every=100"])
    t0 = time.time()
    r = train(cfg, tmp_path / "run")
    assert time.time() - t0 < 120
    assert r["status"] == "done"
    curve = losses(tmp_path / "run")
    assert curve[0][1] > 5.0  # ~log(256) = 5.55 at initialisation
    assert r["final_train_loss"] < 2.8 and r["final_eval_loss"] < 2.8, r


def test_token_accounting_is_exact(tmp_path):
    cfg = tiny("train.steps=12", "train.batch_size=4", "train.micro_batches=2")
    r = train(cfg, tmp_path / "run")
    assert r["D"] == 12 * 4 * 32
    assert r["C"] == 6 * r["N"] * r["D"]
    assert r["tokens_per_param"] == pytest.approx(r["D"] / r["N"])
    rows = read_metrics(tmp_path / "run")
    assert all(row["tokens"] == row["step"] * 4 * 32 for row in rows)
    assert r["data"]["unique_tokens"] > 0 and r["corpus_fingerprint"]


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = train(tiny(), tmp_path / "full")
    stopped = train(tiny(), tmp_path / "resumed", stop_after_steps=13)
    assert stopped == {"status": "stopped", "step": 13}
    assert read_result(tmp_path / "resumed") is None
    resumed = train(tiny(), tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 13
    assert losses(tmp_path / "resumed") == losses(tmp_path / "full")  # exact, on CPU
    assert resumed["final_eval_loss"] == full["final_eval_loss"]
    # A rerun of a finished run trains nothing and returns the same result.
    again = train(tiny(), tmp_path / "resumed")
    assert again == resumed


def test_sigkill_then_rerun_resumes_from_checkpoint(tmp_path):
    """A real kill -9 mid-run; the rerun continues from the newest checkpoint."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "run_sweep.py", "train", "experiments/tiny.toml", "--run-dir",
            str(run_dir), *TINY, "train.steps=400", "train.checkpoint_every=25",
            "train.eval_every=0"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(p.name) for p in ckpts.glob("[0-9]*") if p.name.isdigit()] if ckpts.exists() else []
        if steps and max(steps) >= 50:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_result(run_dir) is None
    saved = max(int(p.name) for p in ckpts.glob("[0-9]*") if p.name.isdigit())
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = read_result(run_dir)
    assert r["status"] == "done" and r["steps"] == 400
    assert r["resumed_from_step"] >= saved > 0
    steps = [s for s, _ in losses(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # no duplicated steps


def test_divergence_is_recorded_not_raised(tmp_path):
    cfg = tiny("optim.name=sgd", "optim.lr=1e4", "optim.clip_norm=0", "optim.warmup_steps=0",
               "optim.schedule=constant")
    r = train(cfg, tmp_path / "run")
    assert r["status"] == "diverged"
    assert read_result(tmp_path / "run")["status"] == "diverged"
    assert r["steps"] < 30


def test_a_different_config_is_never_written_into_a_run_folder(tmp_path):
    train(tiny("train.steps=5"), tmp_path / "run", stop_after_steps=2)
    with pytest.raises(ConfigError, match="different config"):
        train(tiny("train.steps=5", "optim.lr=1e-4"), tmp_path / "run")
    # Execution-only keys may change on resume.
    r = train(tiny("train.steps=5", "train.log_every=2"), tmp_path / "run")
    assert r["status"] == "done"


def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, stop_after_steps=20)  # checkpoints at 10 and 20
    newest = run_dir / "checkpoints" / "20"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="step 20"):
        r = train(tiny(), run_dir)
    assert r["resumed_from_step"] == 10 and r["status"] == "done"
    assert losses(run_dir) == losses(_fresh(tmp_path))


def _fresh(tmp_path):
    train(tiny(), tmp_path / "fresh")
    return tmp_path / "fresh"


def test_every_optimizer_and_schedule_trains_without_nan(tmp_path):
    for i, (opt, sched) in enumerate([("sgd", "constant"), ("momentum", "cosine"),
                                      ("nesterov", "linear"), ("adam", "wsd"),
                                      ("adamw", "cosine"), ("lars", "cosine"),
                                      ("lamb", "wsd")]):
        lr = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.1, "lars": 1.0}.get(opt, 3e-3)
        cfg = tiny("train.steps=8", "train.eval_every=0", f"optim.name={opt}",
                   f"optim.schedule={sched}", f"optim.lr={lr}", "train.checkpoint_every=0")
        r = train(cfg, tmp_path / f"r{i}")
        assert r["status"] == "done", (opt, sched)
        curve = [l for _, l in losses(tmp_path / f"r{i}")]
        assert np.isfinite(curve).all() and curve[-1] < curve[0], (opt, sched, curve)


def test_learning_rate_sweep_compiles_once_per_shape(tmp_path):
    """The peak lr lives in the train state, so points that differ only in lr share one
    compiled step; their updates still scale with their own lr."""
    import scaling.loop

    before = len(scaling.loop._COMPILED)
    a = train(tiny("train.steps=6", "optim.lr=1e-3", "train.eval_every=0"), tmp_path / "a")
    b = train(tiny("train.steps=6", "optim.lr=3e-3", "train.eval_every=0"), tmp_path / "b")
    assert len(scaling.loop._COMPILED) == before + 1
    assert b["compile_time_s"] < 0.1
    lr_a = [r["lr"] for r in read_metrics(tmp_path / "a") if "lr" in r]
    lr_b = [r["lr"] for r in read_metrics(tmp_path / "b") if "lr" in r]
    np.testing.assert_allclose(np.array(lr_b), 3 * np.array(lr_a), rtol=1e-6)
    assert a["final_train_loss"] != b["final_train_loss"]


def test_a_corpus_too_small_stops_before_anything_is_written(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("too short to make one batch\n")
    with pytest.raises(ConfigError, match="data.corpus|model.seq_len"):
        train(tiny(f"data.corpus={json.dumps(str(corpus))}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
