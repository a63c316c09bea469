"""Trackers (TensorBoard, W&B offline) and the profiler switch around the training loop."""

import importlib.util
import logging
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from scaling.train import tracking
from scaling.config import ConfigError, load_config
from scaling.train.loop import train
from scaling.runs.runfiles import read_metrics

# The model and batch of tests/test_loop.py's runs (and test_branches', test_sweep_run's):
# one compiled step and eval for all of them in a test session.
TINY = [
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=300000", "train.batch_size=8", "train.steps=12",
    "train.log_every=2", "train.eval_every=6", "train.eval_tokens=512",
    "train.curve_eval_tokens=256", "train.checkpoint_every=4", "train.progress=false",
]


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def test_tracker_names_and_profile_steps_are_validated():
    assert tiny().train.tracker_names == ("jsonl",)
    assert tiny("train.trackers='tensorboard, jsonl,wandb'").train.tracker_names == (
        "jsonl", "tensorboard", "wandb")
    with pytest.raises(ConfigError, match=r"train.trackers = 'tensorbord': unknown 'tensorbord'; "
                                          r"allowed: .*'jsonl', 'tensorboard', 'wandb'"):
        tiny("train.trackers='tensorbord'")
    for bad in ("'8,5'", "'0,3'", "'3,99'", "'a,b'", "'1,2,3'"):
        with pytest.raises(ConfigError, match="train.profile_steps"):
            tiny(f"train.profile_steps={bad}")
    assert tiny("train.profile_steps='5,8'").train.profile_window == (5, 8)
    assert tiny("train.profile_steps='5'").train.profile_window == (5, 5)
    # watching a run does not change what it computes
    assert tiny("train.trackers='tensorboard'", "train.profile_steps='2,3'").semantic_dict() \
        == tiny().semantic_dict()


def test_trackers_off_by_default_add_no_files(tmp_path):
    train(tiny(), tmp_path / "run")
    names = set(os.listdir(tmp_path / "run"))
    assert names <= {"config.json", "metrics.jsonl", "checkpoints", "result.json", ".lock"}
    assert {"config.json", "metrics.jsonl", "checkpoints", "result.json"} <= names


def test_missing_package_names_the_extra_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"'wandb' needs the `wandb` package: "
                                          r"pip install 'scalinglab\[wandb\]'"):
        train(tiny("train.trackers='wandb'"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_every_logged_number_and_survive_a_resume(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    cfg = tiny("train.trackers='tensorboard'")
    run = tmp_path / "run"
    assert train(cfg, run, stop_after_steps=8)["status"] == "stopped"  # checkpoint at 8
    result = train(cfg, run)
    rows = read_metrics(run)
    got = tensorboard_scalars(run / tracking.TENSORBOARD_DIR)
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    assert [s for s, _ in got["train/loss"]] == [s for s, _ in loss] == [1, 2, 4, 6, 8, 10, 12]
    assert np.allclose([v for _, v in got["train/loss"]], [v for _, v in loss], rtol=1e-6)
    assert [s for s, _ in got["train/grad_norm"]] == [s for s, _ in loss]
    curve = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r and not r["eval_final"]]
    assert [s for s, _ in got["eval/eval_loss"]] == [s for s, _ in curve] == [6]
    assert np.allclose([v for _, v in got["eval/eval_loss"]], [v for _, v in curve], rtol=1e-6)
    (step, final), = got["eval_final/eval_loss"]
    assert step == 12 and final == pytest.approx(result["final_eval_loss"], rel=1e-6)
    assert "eval_final/eval_loss_stderr" in got and "train/tokens_per_s" in got

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / tracking.TENSORBOARD_DIR), size_guidance={"tensors": 0})
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"d_model": 32' in text and acc.Tensors("config/text_summary")[0].step == 0
    assert set(acc.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_a_resumed_run_replaces_tensorboard_events_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboardX")
    cfg = tiny("train.trackers='tensorboard'")
    first = tracking.Trackers(cfg, tmp_path, 0, primary=True)
    for step in range(1, 11):  # logged up to 10, then killed; its checkpoint is at 6
        first.log({"step": step, "loss": 1.0})
    first.close(None)
    resumed = tracking.Trackers(cfg, tmp_path, 6, primary=True)
    for step in (7, 8):
        resumed.log({"step": step, "loss": 2.0})
    resumed.close({"status": "done"})
    got = tensorboard_scalars(tmp_path / tracking.TENSORBOARD_DIR)["train/loss"]
    assert got == [(s, 1.0) for s in range(1, 7)] + [(7, 2.0), (8, 2.0)]


# ---- W&B, offline --------------------------------------------------------------------


def wandb_records(run_file: Path):
    """The records of a W&B run file (.wandb): a 7-byte header, then LevelDB-style log
    records (crc32, length, type; FULL=1, FIRST=2, MIDDLE=3, LAST=4) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = run_file.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0 and n == 0:
            pos += block - pos % block if pos % block else 0
            continue
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending + data if kind == 4 else data)
            pending = b""
            yield record
        else:
            pending = (pending if kind == 3 else b"") + data


def wandb_runs(run_dir: Path) -> list[dict]:
    """One dict per offline W&B run in the folder: id, group, config keys, history, summary."""
    out = []
    for f in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        info = {"dir": f.parent.name, "history": {}, "summary": {}}
        for r in wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                info.update(id=r.run.run_id, group=r.run.run_group, project=r.run.project,
                            config={i.key for i in r.run.config.update})
            elif kind == "history":
                item = {"/".join(i.nested_key) or i.key: i.value_json for i in r.history.item}
                info["history"][int(item["_step"])] = item
            elif kind == "summary":
                info["summary"].update({"/".join(i.nested_key) or i.key: i.value_json
                                        for i in r.summary.update})
        out.append(info)
    return out


def test_wandb_offline_run_has_the_sweep_group_the_point_id_and_resumes_it(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    point = tmp_path / "sweeps" / "lr-sweep" / "points" / "0123abcd"
    cfg = tiny("train.trackers='wandb'", "train.wandb_project='scalinglab-test'")
    train(cfg, point, stop_after_steps=4)
    result = train(cfg, point)
    first, second = wandb_runs(point)
    for run in (first, second):
        assert (run["id"], run["group"], run["project"]) == ("0123abcd", "lr-sweep",
                                                              "scalinglab-test")
        # W&B names a run's folder offline-run-<second>-<id>, adding "-1" when two runs of
        # one id start within the same second (as a quick resume can)
        assert re.search(r"-0123abcd(-\d+)?$", run["dir"]), run["dir"]
    assert {"model", "train", "optim", "data"} <= first["config"]
    assert sorted(first["history"]) == [1, 2, 4] and sorted(second["history"]) == [6, 8, 10, 12]
    assert float(second["history"][12]["train/loss"]) == pytest.approx(
        [r["loss"] for r in read_metrics(point) if r.get("step") == 12 and "loss" in r][0])
    assert float(second["summary"]["final_eval_loss"]) == pytest.approx(result["final_eval_loss"])
    assert second["summary"]["status"] == '"done"' and "final_eval_loss" not in first["summary"]


def test_wandb_identity_outside_a_sweep_is_unique_per_folder(tmp_path):
    g1, id1, name1 = tracking.wandb_identity(tmp_path / "a" / "run")
    g2, id2, _ = tracking.wandb_identity(tmp_path / "b" / "run")
    assert g1 is g2 is None and id1 != id2 and id1.startswith("run-") and name1 == "run"
    point = tmp_path / "out" / "my-sweep" / "points" / "p9"
    assert tracking.wandb_identity(point) == ("my-sweep", "p9", "p9")
    point.mkdir(parents=True)
    (point / "point.json").write_text('{"sweep": "demo", "point_id": "p9", "label": "n2-d64"}')
    assert tracking.wandb_identity(point) == ("demo", "p9", "n2-d64")


def test_wandb_that_cannot_start_warns_and_training_goes_on(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")

    def refuse(*a, **kw):
        raise wandb.errors.CommError("no network")

    monkeypatch.setattr(wandb, "init", refuse)
    with caplog.at_level(logging.WARNING, logger="scaling.train.tracking"):
        r = train(tiny("train.trackers='wandb'"), tmp_path / "run")
    assert r["status"] == "done"
    assert any("W&B tracking is off" in m and "no network" in m for m in caplog.messages)


def test_only_process_0_writes(tmp_path):
    pytest.importorskip("tensorboardX")
    t = tracking.Trackers(tiny("train.trackers='tensorboard,wandb'"), tmp_path, 0, primary=False)
    t.log({"step": 1, "loss": 2.0})
    t.close({"status": "done"})
    assert list(tmp_path.iterdir()) == []


def test_profile_steps_write_a_trace(tmp_path):
    train(tiny("train.profile_steps='3,4'"), tmp_path / "run")
    traces = list((tmp_path / "run" / tracking.PROFILE_DIR).glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert list(traces[0].parent.glob("*.trace.json.gz"))  # for Perfetto
