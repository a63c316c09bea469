"""The learning-rate follow-up stage: edge optima widen the grid, then seeds at the best."""

import json
import math

import pandas as pd

from scaling.executors import sweep as sweep_driver
from scaling.runs.runfiles import RESULT_FILE, write_json_atomic

SPEC = """
name = "lrs"
[model]
n_layer = 1
d_model = 32
n_head = 2
seq_len = 32
[data]
max_corpus_bytes = 1_000_000
[train]
batch_size = 8
steps = 10
[sweep.axes]
"optim.name" = ["sgd", "adamw"]
[sweep.axes."optim.lr"]
sgd = [0.01, 0.1, 1.0]
adamw = [1e-4, 1e-3, 1e-2]
[followup]
seeds = [1, 2]
widen = 2
"""

# The true optimum of each optimizer (on a log scale), both past the top of their grids:
# sgd's one step past (10 after 1.0), adamw's three steps past (1.0 after 1e-2).
OPTIMUM = {"sgd": 10.0, "adamw": 1.0}


def fake_train(cfg, run_dir, **kw):
    """Stands in for training: loss is a parabola in log lr around the optimum."""
    loss = 3.0 + (math.log10(cfg.optim.lr) - math.log10(OPTIMUM[cfg.optim.name])) ** 2
    result = {"status": "done", "final_eval_loss": loss + 0.001 * cfg.train.seed,
              "final_train_loss": loss, "steps": cfg.train.steps}
    write_json_atomic(run_dir / RESULT_FILE, result)
    return result


def test_edge_optimum_is_widened_then_seeded(tmp_path, monkeypatch):
    import scaling.train.loop

    monkeypatch.setattr(scaling.train.loop, "train", fake_train)
    spec = tmp_path / "lrs.toml"
    spec.write_text(SPEC)
    # workers=1: points train in this process, where the fake train is patched in
    summary = sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False, workers=1)
    sweep_dir = summary["sweep_dir"]
    table = pd.read_csv(sweep_dir / "results.csv")
    report = json.loads((sweep_dir / "followup.json").read_text())
    pairs = {r["optimizer"]: r for r in report["pairs"]}
    # sgd: 1.0 was the edge -> 10 added; 10 was the edge -> 100 added; 10 is interior.
    assert pairs["sgd"]["tried"] == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert pairs["sgd"]["best_lr"] == 10.0 and pairs["sgd"]["on_edge"] is None
    # adamw: two widenings (0.1, 1.0) are the limit; the optimum is reported on the edge.
    assert pairs["adamw"]["tried"] == [1e-4, 1e-3, 1e-2, 0.1, 1.0]
    assert pairs["adamw"]["best_lr"] == 1.0 and pairs["adamw"]["on_edge"] == "high"
    assert len(report["widened_points"]) == 4
    seeds = table[table["group"] == "seeds"]
    assert sorted(seeds["seed"]) == [1, 1, 2, 2]
    assert set(zip(seeds["optimizer"], seeds["lr"])) == {("sgd", 10.0), ("adamw", 1.0)}
    assert (table["status"] == "done").all()
    # A rerun recomputes the same decisions and trains nothing new.
    sweep_driver.run_sweep(spec, out=tmp_path / "sw", progress=False, workers=1)
    assert len(pd.read_csv(sweep_dir / "results.csv")) == len(table)
    assert json.loads((sweep_dir / "followup.json").read_text()) == report
