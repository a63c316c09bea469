"""Cooldown branches (WSD): a branch that starts from its trunk's checkpoint computes exactly
what a separate run of its own config computes, and refuses a trunk that is another run."""

import json

import pytest

from scaling.config import ConfigError, load_config
from scaling.loop import TrunkNotReady, train
from scaling.runfiles import read_metrics

BASE = [
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=1000000", "train.batch_size=8", "train.log_every=1",
    "train.eval_every=5", "train.eval_tokens=2048", "train.curve_eval_tokens=1024",
    "train.checkpoint_every=0", "train.progress=false", "optim.warmup_steps=3",
    "optim.lr=3e-3",
]
STEPS, FRACTION = 20, 0.4  # the wsd decay starts at step 20 - round(0.4 * 20) = 12


def cfg(*extra):
    return load_config(None, BASE + list(extra))


def trunk_cfg(*extra):
    return cfg("optim.schedule=constant", "train.steps=12", 'train.save_steps="8,12"', *extra)


def branch_cfg(*extra):
    return cfg("optim.schedule=wsd", f"optim.decay_fraction={FRACTION}", f"train.steps={STEPS}",
               *extra)


def losses(run_dir, after=0):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r and r["step"] > after]


def test_a_branch_equals_the_separate_run(tmp_path):
    train(trunk_cfg(), tmp_path / "trunk")
    assert sorted(p.name for p in (tmp_path / "trunk" / "keep").iterdir() if p.name.isdigit()) == ["12", "8"]
    branch = train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "branch")
    separate = train(branch_cfg(), tmp_path / "separate")
    assert branch["trunk"] == "trunk" and branch["branched_at_step"] == 12
    assert separate["trunk"] is None
    assert losses(tmp_path / "branch") == losses(tmp_path / "separate")  # exact, on CPU
    assert branch["final_eval_loss"] == separate["final_eval_loss"]
    # The branch's curve starts with the trunk's rows, marked as such.
    rows = read_metrics(tmp_path / "branch")
    assert all(r.get("trunk") for r in rows if r["step"] <= 12)
    assert not any(r.get("trunk") for r in rows if r["step"] > 12)


def test_a_killed_branch_resumes_as_a_branch(tmp_path):
    train(trunk_cfg(), tmp_path / "trunk")
    c = branch_cfg('train.init_from="../trunk"', "train.init_step=12", "train.checkpoint_every=2")
    assert train(c, tmp_path / "branch", stop_after_steps=3)["status"] == "stopped"
    r = train(c, tmp_path / "branch")
    assert r["resumed_from_step"] == 15 and r["branched_at_step"] == 12
    separate = train(branch_cfg(), tmp_path / "separate")
    assert losses(tmp_path / "branch") == losses(tmp_path / "separate")


def test_a_branch_waits_for_its_trunk(tmp_path):
    with pytest.raises(TrunkNotReady, match="run the trunk first"):
        train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "branch")
    train(trunk_cfg(), tmp_path / "trunk", stop_after_steps=5)
    with pytest.raises(TrunkNotReady, match="step 12"):
        train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "branch")


def test_a_trunk_of_another_run_is_refused(tmp_path):
    train(trunk_cfg("optim.lr=1e-3"), tmp_path / "trunk")
    with pytest.raises(ConfigError, match="optim.lr"):
        train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "b1")
    train(trunk_cfg(), tmp_path / "trunk2")
    with pytest.raises(ConfigError, match="learning rate differs"):  # decay starts before step 12
        train(branch_cfg('train.init_from="../trunk2"', "train.init_step=12",
                         "optim.decay_fraction=0.5"), tmp_path / "b2")
    assert not (tmp_path / "b2" / "result.json").exists()
