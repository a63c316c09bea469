"""Configs: files, overrides, types and impossible values fail early and name the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from scaling.config import Config, ConfigError, from_dict, load_config, parse_overrides
from scaling.config.presets import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_valid():
    cfg = from_dict({})
    assert isinstance(cfg, Config)
    assert cfg.model.ff == 4 * cfg.model.d_model


def test_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nd_model = 64\nn_head = 2\n[optim]\nname = "adam"\n')
    cfg = load_config(path, ["model.n_layer=3", "optim.lr=1e-3", "steps=50", "name=x"])
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.optim.name) == (64, 3, "adam")
    assert cfg.optim.lr == 1e-3 and cfg.train.steps == 50 and cfg.name == "x"
    assert load_config(path).name == "c"  # the file's stem by default


def test_preset_expands_and_explicit_keys_win():
    cfg = from_dict({"model": {"preset": "n800k", "seq_len": 32}})
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.seq_len) == (4, 128, 32)
    cfg = from_dict({"model": {"preset": "n800k", "n_layer": 2}})
    assert cfg.model.n_layer == 2


def test_round_trip_through_dict():
    cfg = load_config(None, ["model.pos_encoding=rotary", "optim.schedule=wsd"])
    assert from_dict(cfg.to_dict()) == cfg


def test_values_parse_as_toml():
    got = parse_overrides(["a.b=3", "a.c=1e-3", "a.d=true", "a.e=adam", 'a.f="x y"'])
    assert got == {"a.b": 3, "a.c": 1e-3, "a.d": True, "a.e": "adam", "a.f": "x y"}


@pytest.mark.parametrize("overrides, words", [
    (["model.d_modle=3"], ["model.d_modle", "d_model", "allowed in [model]"]),
    (["modle.d_model=3"], ["modle", "model"]),
    (["lr_peak=3"], ["lr_peak"]),
    (["model.n_head=5"], ["model.n_head", "model.d_model", "allowed n_head"]),
    (["optim.name=adamx"], ["optim.name", "'adamw'", "'lamb'"]),
    (["model.pos_encoding=alibi"], ["model.pos_encoding", "'rotary'"]),
    (["train.steps=1.5"], ["train.steps", "integer"]),
    (["train.steps=0"], ["train.steps", "> 0"]),
    (["optim.lr=-1"], ["optim.lr"]),
    (["optim.warmup_steps=300", "train.steps=200"], ["optim.warmup_steps", "train.steps"]),
    (["train.batch_size=10", "train.micro_batches=4"], ["train.micro_batches", "train.batch_size"]),
    (["data.corpus=/no/such/corpus.txt"], ["data.corpus", "/no/such/corpus.txt", "stdlib"]),
    (["model.preset=n7"], ["model.preset", "n800k"]),
    (["model.tie_embeddings=1"], ["model.tie_embeddings", "true or false"]),
    (["model.vocab_size=100"], ["model.vocab_size", "256"]),
    (["model.n_head=6", "model.d_model=66", "model.pos_encoding=rotary"], ["even head size"]),
])
def test_bad_values_name_the_key(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for w in words:
        assert w in str(err.value)


def test_ambiguous_bare_key_is_refused():
    """A bare key resolves to its one section; one in several sections must be dotted.

    (A bare `name` is the run's name; the optimizer's is `optim.name`.)"""
    import dataclasses

    from scaling.config import SECTIONS, split_key

    assert split_key("name") == ("name", "")

    names = {}
    for s, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            names.setdefault(f.name, []).append(s)
    for key, owners in names.items():
        if key == "name":
            continue
        if len(owners) == 1:
            assert split_key(key) == (owners[0], key)
        else:
            with pytest.raises(ConfigError, match="ambiguous"):
                split_key(key)


def test_unknown_section_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[modell]\nd_model = 64\n")
    with pytest.raises(ConfigError, match="modell"):
        load_config(path)


def test_every_preset_is_valid():
    for name in PRESETS:
        from_dict({"model": {"preset": name}})


def test_cli_bad_key_stops_before_training(tmp_path):
    """The command line prints one line naming the key, exit code 2, no run folder."""
    out = subprocess.run(
        [sys.executable, "run_sweep.py", "train", "experiments/tiny.toml", "model.d_modl=64",
         "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "model.d_modl" in out.stderr and "d_model" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("optim.lr=inf", "optim.lr"),
    ("optim.clip_norm=nan", "optim.clip_norm"),
    ("model.init_std=-inf", "model.init_std"),
    ("train.divergence_factor=inf", "train.divergence_factor"),
    ("data.val_fraction=nan", "data.val_fraction"),
])
def test_non_finite_floats_are_refused(override, key):
    with pytest.raises(ConfigError, match=f"{key} = .*finite"):
        load_config(None, [override])


def test_every_float_field_is_checked_for_finiteness():
    """The check is generic: every float field of every section refuses inf and nan."""
    import dataclasses

    from scaling.config import NON_FINITE_ALLOWED, SECTIONS

    floats = [(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)
              if isinstance(getattr(cls(), f.name), float)]
    assert len(floats) >= 10
    for section, name in floats:
        if f"{section}.{name}" in NON_FINITE_ALLOWED:
            continue
        for bad in ("inf", "nan", "-inf"):
            with pytest.raises(ConfigError, match=f"{section}.{name}"):
                load_config(None, [f"{section}.{name}={bad}"])


@pytest.mark.parametrize("override, key", [("optim.lr=inf", "optim.lr"),
                                           ("optim.clip_norm=nan", "optim.clip_norm")])
def test_cli_non_finite_value_stops_before_training(tmp_path, override, key):
    out = subprocess.run(
        [sys.executable, "run_sweep.py", "train", "experiments/tiny.toml", override,
         "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert key in out.stderr and "finite" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_keys_added_later_leave_point_identity_alone_at_their_defaults():
    from scaling.config import IDENTITY_DEFAULTS, Config

    d = Config().semantic_dict()
    for dotted in IDENTITY_DEFAULTS:
        section, key = dotted.split(".")
        assert key not in d[section], dotted


def test_trackers_take_a_toml_list_or_a_comma_string(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\ntrackers = ["tensorboard", "wandb"]\n')
    listed = load_config(path)
    comma = from_dict({"name": "c", "train": {"trackers": "tensorboard,wandb"}})
    assert listed == comma  # the same config, kept as the comma string
    assert listed.train.trackers == "tensorboard,wandb"
    assert listed.train.tracker_names == ("jsonl", "tensorboard", "wandb")
    from scaling.sweep import point_id

    assert point_id(listed) == point_id(comma)
    assert Config().replace(['train.trackers=["wandb"]']).train.trackers == "wandb"


@pytest.mark.parametrize("trackers", [["tensorboard", "wandx"], "tensorboard,wandx"])
def test_unknown_tracker_is_refused_naming_the_key_and_the_allowed_names(trackers):
    with pytest.raises(ConfigError, match="train.trackers") as e:
        from_dict({"train": {"trackers": trackers}})
    assert "'wandx'" in str(e.value)
    assert all(repr(n) in str(e.value) for n in ("jsonl", "tensorboard", "wandb"))


def test_trackers_list_of_non_names_is_refused():
    with pytest.raises(ConfigError, match="train.trackers"):
        from_dict({"train": {"trackers": ["tensorboard", 1]}})


def test_cli_bad_tracker_in_a_list_exits_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "run_sweep.py", "train", "experiments/tiny.toml",
         'train.trackers=["tensorboard","wandx"]', "--run-dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "train.trackers" in out.stderr and "wandx" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
