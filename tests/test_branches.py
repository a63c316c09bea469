"""Cooldown branches (WSD): a branch that starts from its trunk's checkpoint computes exactly
what a separate run of its own config computes, and refuses a trunk that is another run."""

import json
import shutil

import pytest

from scaling.config import ConfigError, load_config
from scaling.train.loop import train
from scaling.train.prepare import TrunkNotReady
from scaling.runs.runfiles import read_metrics

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


@pytest.fixture(scope="module")
def finished_trunk(tmp_path_factory):
    """A finished run of trunk_cfg() (evaluated at 5 and 10, kept checkpoints at 8 and 12),
    trained once; `trunk_copy` gives each test its own copy."""
    run_dir = tmp_path_factory.mktemp("shared") / "trunk"
    train(trunk_cfg(), run_dir)
    return run_dir


@pytest.fixture
def trunk_copy(finished_trunk):
    """copy(folder): a private copy of the finished trunk_cfg() run at `folder`."""
    return lambda folder: shutil.copytree(finished_trunk, folder)


def losses(run_dir, after=0):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r and r["step"] > after]


TIMING = ("tokens_per_s", "mfu", "trunk")  # wall-clock figures; the branch's marker


def rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def test_a_branch_equals_the_separate_run(tmp_path):
    # Log and eval cadences that do not divide the branch step 12: the trunk logs step 12
    # (its last) and evaluates at its own steps (5, 10, its final eval at 12); a separate
    # run logs 1, 5, 10, 15, 20 and evaluates at its own steps. The trunk evaluates at
    # its branches' eval steps too (train.eval_steps, as scaling.sweep.cooldown plans it).
    train(trunk_cfg("train.log_every=5", 'train.eval_steps="3,6,9"'), tmp_path / "trunk")
    assert sorted(p.name for p in (tmp_path / "trunk" / "keep").iterdir() if p.name.isdigit()) == ["12", "8"]
    for every in (5, 3):  # 12 % 5 != 0; 12 % 3 == 0: the branch evaluates step 12 itself
        extra = ("train.log_every=5", f"train.eval_every={every}")
        branch = train(branch_cfg('train.init_from="../trunk"', "train.init_step=12", *extra),
                       tmp_path / f"branch{every}")
        separate = train(branch_cfg(*extra), tmp_path / f"separate{every}")
        assert branch["trunk"] == "trunk" and branch["branched_at_step"] == 12
        assert separate["trunk"] is None
        # the same compiled programs on the same CPU: bit for bit
        assert losses(tmp_path / f"branch{every}") == losses(tmp_path / f"separate{every}")
        # every row the separate run wrote (losses: the divergence monitor's inputs; curve
        # evals: best_eval_loss's), and no other, up to the timing figures
        assert rows(tmp_path / f"branch{every}") == rows(tmp_path / f"separate{every}")
        for key in ("final_eval_loss", "best_eval_loss", "status", "final_train_loss"):
            assert branch[key] == separate[key], key
        assert branch.get("divergence_reason") == separate.get("divergence_reason")
        # eval compute (analysis.branches): the separate run's, less what the trunk evaluated
        assert branch["eval_forward_tokens"] == separate["eval_forward_tokens"] > 0
        assert separate["eval_forward_tokens_from_trunk"] == 0
        before_k = sum(r["eval_windows"] * 32 for r in read_metrics(tmp_path / f"separate{every}")
                       if "eval_loss" in r and r["step"] < 12)
        assert branch["eval_forward_tokens_from_trunk"] == before_k > 0
        # The branch's curve starts with the trunk's rows, marked as such.
        marked = read_metrics(tmp_path / f"branch{every}")
        assert all(r.get("trunk") for r in marked if r["step"] < 12)
        assert not any(r.get("trunk") for r in marked if r["step"] > 12)


def test_a_trunk_without_the_separate_runs_evals_is_not_branched_from(tmp_path, caplog,
                                                                    trunk_copy):
    """A trunk that did not evaluate at the branch's eval steps (a branch added later, an
    eval_every changed): the branch trains from step 0, as the separate run, and says why."""
    trunk_copy(tmp_path / "trunk")  # trunk_cfg(): evaluates at 5, 10
    with caplog.at_level("WARNING", logger="scaling.train.restore"):
        r = train(branch_cfg('train.init_from="../trunk"', "train.init_step=12",
                             "train.eval_every=4"), tmp_path / "branch")
    assert "lacks a curve eval at step 4" in caplog.text and "from step 0" in caplog.text
    assert r["trunk"] is None and r["resumed_from_step"] == 0
    train(branch_cfg("train.eval_every=4"), tmp_path / "separate")
    assert rows(tmp_path / "branch") == rows(tmp_path / "separate")


def test_a_killed_branch_resumes_as_a_branch(tmp_path, trunk_copy):
    trunk_copy(tmp_path / "trunk")  # trunk_cfg()
    c = branch_cfg('train.init_from="../trunk"', "train.init_step=12", "train.checkpoint_every=2")
    assert train(c, tmp_path / "branch", stop_after_steps=3)["status"] == "stopped"
    r = train(c, tmp_path / "branch")
    assert r["resumed_from_step"] == 15 and r["branched_at_step"] == 12
    train(branch_cfg(), tmp_path / "separate")
    assert losses(tmp_path / "branch") == losses(tmp_path / "separate")


def test_a_branch_waits_for_its_trunk(tmp_path):
    with pytest.raises(TrunkNotReady, match="run the trunk first"):
        train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "branch")
    train(trunk_cfg(), tmp_path / "trunk", stop_after_steps=5)
    with pytest.raises(TrunkNotReady, match="step 12"):
        train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "branch")


def test_a_trunk_of_another_run_is_refused(tmp_path, trunk_copy):
    train(trunk_cfg("optim.lr=1e-3"), tmp_path / "trunk")
    with pytest.raises(ConfigError, match="optim.lr"):
        train(branch_cfg('train.init_from="../trunk"', "train.init_step=12"), tmp_path / "b1")
    trunk_copy(tmp_path / "trunk2")  # trunk_cfg()
    with pytest.raises(ConfigError, match="learning rate differs"):  # decay starts before step 12
        train(branch_cfg('train.init_from="../trunk2"', "train.init_step=12",
                         "optim.decay_fraction=0.5"), tmp_path / "b2")
    assert not (tmp_path / "b2" / "result.json").exists()
