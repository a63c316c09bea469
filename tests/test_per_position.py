"""Per-position eval loss (train.eval_per_position): the final eval's loss at each position
of the window, consistent with the eval loss, and the same under every parallel driver."""

import json

import numpy as np
import pytest

from scaling.config import Config, load_config
from scaling.data.evalset import EvalSet
from scaling.train.loop import train
from scaling.runs.runfiles import read_metrics, read_result
from scaling.sweep import point_id

TINY = [  # the model and batch of tests/test_loop.py's runs: "off" reuses their compiled step
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=300000", "train.batch_size=8", "train.steps=12",
    "train.log_every=4", "train.eval_every=6", "train.eval_tokens=1600",
    "train.curve_eval_tokens=320", "train.checkpoint_every=0", "train.progress=false",
    "optim.warmup_steps=2",
]


def test_summarize_positions_by_hand():
    # two documents: windows 0, 1 in doc 0, window 2 in doc 1; T = 2
    es = EvalSet(np.zeros(10, np.int32), np.array([0, 2, 4]), np.array([0, 0, 1]), 2)
    L = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 8.0]])
    out = es.summarize_positions(L)
    assert out["eval_loss_by_position"] == pytest.approx([3.0, 4.0])
    # position 0: residual sums per document (1-3)+(3-3) = -2 and (5-3) = 2:
    # SE^2 = 2/1 * (4 + 4) / 9
    assert out["eval_loss_by_position_stderr"][0] == pytest.approx(np.sqrt(16 / 9))
    with pytest.raises(ValueError, match="shape"):
        es.summarize_positions(L[:, :1])


def test_per_position_loss_is_recorded_and_averages_to_the_eval_loss(tmp_path):
    off = train(load_config(None, TINY), tmp_path / "off")
    on = train(load_config(None, TINY + ["train.eval_per_position=true"]), tmp_path / "on")
    assert "eval_loss_by_position" not in off
    by_pos = on["eval_loss_by_position"]
    assert len(by_pos) == 32 == len(on["eval_loss_by_position_stderr"])  # model.seq_len
    # every window has T targets: the eval loss is the mean over positions
    assert np.mean(by_pos) == pytest.approx(on["final_eval_loss"], rel=1e-5)
    assert on["final_eval_loss"] == pytest.approx(off["final_eval_loss"], rel=1e-5)
    assert all(s > 0 for s in on["eval_loss_by_position_stderr"])
    saved = read_result(tmp_path / "on")
    assert saved["eval_loss_by_position"] == by_pos
    final_rows = [r for r in read_metrics(tmp_path / "on") if r.get("eval_final")]
    assert final_rows[-1]["eval_loss_by_position"] == by_pos
    curve_rows = [r for r in read_metrics(tmp_path / "on") if "eval_loss" in r and not r.get("eval_final")]
    assert curve_rows and all("eval_loss_by_position" not in r for r in curve_rows)


def test_the_switch_keeps_old_point_ids():
    cfg = Config()
    assert point_id(cfg) == point_id(cfg.replace(["train.eval_per_position=false"]))
    assert point_id(cfg) != point_id(cfg.replace(["train.eval_per_position=true"]))


@pytest.mark.slow
@pytest.mark.multidevice
def test_per_position_is_the_same_under_pmap_and_shard_map(tmp_path):
    from tests.test_parallel import run

    ref = run(tmp_path / "one", "parallel=none", "train.eval_per_position=true", devices=1)
    for kind in ("pmap", "shard_map"):
        got = run(tmp_path / kind, f"parallel={kind}", "train.eval_per_position=true", devices=2)
        assert got["devices"] == 2 and len(got["by_position"]) == 32
        np.testing.assert_allclose(got["by_position"], ref["by_position"], rtol=1e-4)
        assert np.mean(got["by_position"]) == pytest.approx(got["eval_loss"], rel=1e-5)


def test_per_position_is_refused_for_the_masked_lm():
    from scaling.config import ConfigError

    with pytest.raises(ConfigError, match="train.eval_per_position"):
        load_config(None, ["model.arch=encoder", "data.objective=mlm",
                           "train.eval_per_position=true"])
