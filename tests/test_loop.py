"""The training loop: loss falls, tokens are exact, resume is exact, nothing is clobbered."""

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scaling.config import ConfigError, load_config
from scaling.train.loop import train
from scaling.runs.runfiles import read_metrics, read_result

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=1000000", "train.batch_size=8", "train.steps=30",
    "train.log_every=1", "train.eval_every=10", "train.eval_tokens=2048",
    "train.curve_eval_tokens=1024",
    "train.checkpoint_every=10", "train.progress=false", "optim.warmup_steps=3",
]


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.slow
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
    assert r["C"] == r["C_6ND"] == 6 * r["N"] * r["D"]
    assert r["C_exact"] > r["C_6ND"]  # embeddings, head and attention count too
    assert r["eval_tokens"] == 2048 and r["eval_windows"] == 64 and r["curve_eval_tokens"] == 1024
    assert r["eval_documents"] >= 5 and 0 < r["eval_loss_stderr"] < 0.2 * r["final_eval_loss"]
    evals = [row for row in read_metrics(tmp_path / "run") if "eval_loss" in row]
    assert [e["eval_tokens"] for e in evals] == [1024, 2048]  # curve eval, then the final one
    assert evals[-1]["eval_final"] and evals[-1]["eval_loss"] == r["final_eval_loss"]
    assert r["tokens_per_param"] == pytest.approx(r["D"] / r["N"])
    rows = read_metrics(tmp_path / "run")
    assert all(row["tokens"] == row["step"] * 4 * 32 for row in rows)
    assert r["data"]["unique_tokens"] > 0 and r["corpus_fingerprint"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The uninterrupted run of tiny(), trained once for the tests that compare with it
    (read only): (its result, its folder)."""
    run_dir = tmp_path_factory.mktemp("full") / "run"
    return train(tiny(), run_dir), run_dir


def test_resume_reproduces_the_uninterrupted_run(tmp_path, full_run):
    full, full_dir = full_run
    stopped = train(tiny(), tmp_path / "resumed", stop_after_steps=13)
    assert stopped == {"status": "stopped", "step": 13}
    assert read_result(tmp_path / "resumed") is None
    resumed = train(tiny(), tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 13
    assert losses(tmp_path / "resumed") == losses(full_dir)  # exact, on CPU
    assert resumed["final_eval_loss"] == full["final_eval_loss"]
    # A rerun of a finished run trains nothing and returns the same result.
    again = train(tiny(), tmp_path / "resumed")
    assert again == resumed


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A run that diverges (tiny()'s AdamW at a constant lr of 1e4: its loss exceeds 3 x the
    first step's at step 2), trained once for the tests that read it: (what train returned,
    its folder). The optimizer and shape of tiny(): its compiled step, no compile of its own."""
    cfg = tiny("optim.lr=1e4", "optim.warmup_steps=0", "optim.schedule=constant")
    run_dir = tmp_path_factory.mktemp("diverged") / "run"
    return train(cfg, run_dir), run_dir


def test_divergence_is_recorded_not_raised(diverged):
    r, run_dir = diverged
    assert r["status"] == "diverged"
    assert read_result(run_dir)["status"] == "diverged"
    assert r["steps"] < 30


def test_a_different_config_is_never_written_into_a_run_folder(tmp_path):
    train(tiny("train.steps=5"), tmp_path / "run", stop_after_steps=2)
    with pytest.raises(ConfigError, match="different config"):
        train(tiny("train.steps=5", "optim.lr=1e-4"), tmp_path / "run")
    # Execution-only keys may change on resume.
    r = train(tiny("train.steps=5", "train.log_every=2"), tmp_path / "run")
    assert r["status"] == "done"


def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, full_run):
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, stop_after_steps=20)  # checkpoints at 10 and 20
    newest = run_dir / "checkpoints" / "20"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            f.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="scaling.train.checkpoint"):
        r = train(tiny(), run_dir)
    said = [x.getMessage() for x in caplog.records if x.name == "scaling.train.checkpoint"]
    assert len(said) == 1 and "step 20" in said[0] and "cannot be restored" in said[0]
    assert r["resumed_from_step"] == 10 and r["status"] == "done"
    assert losses(run_dir) == losses(full_run[1])  # the same as a fresh run


@pytest.mark.slow
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


def test_one_compile_per_shape_whatever_lr_steps_and_warmup(tmp_path):
    """The peak lr and the whole schedule live in the train state, so points of one shape
    that differ in lr, D (steps) and warm-up share one compiled step; each still follows its
    own learning rate."""
    import scaling.train.compiled as compiled

    class Watched(dict):
        """The process's compiled steps, recording the keys looked up and those compiled
        (not cleared: an earlier test may have compiled this shape, and keeps it)."""

        looked_up: list
        added: list

        def __contains__(self, key):
            self.looked_up.append(key)
            return super().__contains__(key)

        def __setitem__(self, key, value):
            self.added.append(key)
            super().__setitem__(key, value)

    shared = compiled._COMPILED
    watched = Watched(shared)
    watched.looked_up, watched.added = [], []
    compiled._COMPILED = watched
    try:
        a = train(tiny("train.steps=6", "optim.lr=1e-3", "train.eval_every=0"), tmp_path / "a")
        seen_a, added_a = list(watched.looked_up), list(watched.added)
        b = train(tiny("train.steps=9", "optim.lr=3e-3", "optim.warmup_steps=5",
                       "train.eval_every=0"), tmp_path / "b")
    finally:
        compiled._COMPILED = shared
        shared.update(watched)
    # one compiled step for both: the same single key, and b compiled nothing
    assert len(set(seen_a)) == 1 and set(watched.looked_up) == set(seen_a)
    assert len(watched.looked_up) > len(seen_a) and watched.added == added_a
    assert b["compile_time_s"] < 0.1
    lr_a = [r["lr"] for r in read_metrics(tmp_path / "a") if "lr" in r]
    lr_b = [r["lr"] for r in read_metrics(tmp_path / "b") if "lr" in r]
    # The third update (state step 2) is in each run's own linear warm-up.
    assert lr_a[2] == pytest.approx(1e-3 * 2 / 3, rel=1e-5)  # warm-up of 3 steps
    assert lr_b[2] == pytest.approx(3e-3 * 2 / 5, rel=1e-5)  # warm-up of 5 steps
    assert len(lr_b) == 9 and a["final_train_loss"] != b["final_train_loss"]


def test_a_corpus_too_small_stops_before_anything_is_written(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("too short to make one batch\n")
    with pytest.raises(ConfigError, match="data.corpus|model.seq_len"):
        train(tiny(f"data.corpus={json.dumps(str(corpus))}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---- divergence --------------------------------------------------------------------------


def _monitor(steps=200, log_every=1, rise=0.25):
    from scaling.train.monitor import DivergenceMonitor as _DivergenceMonitor

    return _DivergenceMonitor(tiny(f"train.steps={steps}", f"train.log_every={log_every}",
                                   f"train.divergence_rise={rise}"))


def test_a_loss_that_blows_up_to_a_plateau_is_diverged():
    m = _monitor()
    curve = list(np.linspace(5.5, 2.0, 100)) + [3.5] * 100  # falls, then jumps to a plateau
    reasons = [m.observe(i + 1, x, logged=True) for i, x in enumerate(curve)]
    first = next(i for i, r in enumerate(reasons) if r)
    assert 100 < first <= 100 + m.patience + 10
    assert "running minimum" in reasons[first] and "2" in reasons[first]


def test_a_noisy_falling_loss_is_not_diverged():
    m = _monitor()
    rng = np.random.default_rng(0)
    curve = np.linspace(5.5, 2.0, 200) * (1 + 0.05 * rng.standard_normal(200))
    assert all(m.observe(i + 1, float(x), logged=True) is None for i, x in enumerate(curve))
    assert m.check_final_eval(2.1, best_curve=2.0) is None
    assert "final eval loss" in m.check_final_eval(2.8, best_curve=2.0)


def test_nan_and_factor_rules_name_the_step():
    m = _monitor()
    m.observe(1, 5.0, logged=True)
    assert "exceeds 3 x" in m.observe(2, 16.0, logged=False)
    m = _monitor()
    m.observe(1, 5.0, logged=True)
    assert "nan at step 2" in m.observe(2, float("nan"), logged=False)


def test_divergence_reason_is_recorded(diverged):
    r, run_dir = diverged
    assert r["status"] == "diverged" and r["divergence_reason"]
    assert read_result(run_dir)["divergence_reason"] == r["divergence_reason"]


# ---- signals, locks, bad run folders ------------------------------------------------------


LONG = [*TINY, "train.steps=2000", "train.checkpoint_every=1000", "train.eval_every=0"]


def _default_signals():
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _cli_train(run_dir):
    return [sys.executable, "run_sweep.py", "train", "experiments/tiny.toml", "--run-dir",
            str(run_dir), *LONG]


def _same_as_cli():
    return load_config(ROOT / "experiments" / "tiny.toml", LONG)


def _wait_for_steps(run_dir, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if len(losses(run_dir)) >= n:
            return
        time.sleep(0.1)
    raise AssertionError("the run did not start in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143),
                                       pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_sigterm_and_ctrl_c_checkpoint_then_exit(tmp_path, sig, code):
    """The current step finishes, a checkpoint is saved, one line, the conventional status;
    the rerun resumes from that checkpoint."""
    run_dir = tmp_path / "run"
    # default dispositions in the child: a shell running the tests in the background
    # ignores SIGINT, and an ignored signal stays ignored across exec
    proc = subprocess.Popen(_cli_train(run_dir), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    _wait_for_steps(run_dir, 20, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "checkpoint" in stopped[0], err[-2000:]
    assert read_result(run_dir) is None
    saved = [int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) >= 20
    last_logged = losses(run_dir)[-1][0]
    assert max(saved) == last_logged  # nothing trained after the checkpoint went unsaved
    r = train(_same_as_cli(), run_dir, stop_after_steps=5)
    assert r == {"status": "stopped", "step": max(saved) + 5}


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_is_refused(tmp_path):
    from scaling.runs.lock import RunFolderBusy

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_cli_train(run_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(run_dir, 5, proc)
        with pytest.raises(RunFolderBusy, match=f"pid {proc.pid}"):
            train(_same_as_cli(), run_dir)
    finally:
        proc.kill()
        proc.wait()
    # The lock of a killed process is no obstacle.
    r = train(_same_as_cli(), run_dir, stop_after_steps=2)
    assert r["status"] == "stopped"


def test_resume_on_a_different_corpus_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(), run_dir, stop_after_steps=10)
    metas = [p for p in (run_dir / "checkpoints" / "10").rglob("*") if p.is_file()
             and "corpus_fingerprint" in p.read_text(errors="ignore")]
    assert metas
    for p in metas:
        meta = json.loads(p.read_text())
        meta["corpus_fingerprint"] = "0" * 64
        p.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="different corpus"):
        train(tiny(), run_dir)
    assert read_result(run_dir) is None


def test_garbage_config_json_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json is corrupt"):
        train(tiny(), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]
