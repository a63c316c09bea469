"""Reading configuration values: TOML/JSON files, command-line overrides, type checks.

`ConfigError` (every config error), `read_config_file`, `parse_overrides` / `parse_value`
(`section.key=value` strings), `build_section` and `coerce` (a section's values checked
against its annotations, converting only lossless cases; a key that holds several names,
such as train.trackers, takes a TOML list or a comma-separated string), and
`preset_values` (a named shape of scaling.config.presets). Nothing here knows the
sections themselves (`scaling.config.sections`) or the whole run (`run_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from scaling.config.presets import presets_of


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or impossible."""




def read_config_file(path: str | Path, error: type[ConfigError] = ConfigError,
                     what: str = "config file") -> dict[str, Any]:
    """The raw tables of a TOML (or .json) file; `error` (naming the file) if it is missing
    or does not parse. Shared by configs, sweep specs and the coordinate check."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {str(path)!r} does not exist")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: cannot parse: {e}") from None


def preset_values(name: Any, arch: Any = "transformer") -> dict[str, Any]:
    """The shape keys of preset `name` for the family `arch` (scaling.config.presets: one size
    ladder per family, the same names for the same nominal N)."""
    PRESETS = presets_of(arch)
    if name not in PRESETS:
        raise ConfigError(
            f"model.preset = {name!r}: unknown{suggest(str(name), list(PRESETS))}; "
            f"allowed: {', '.join(PRESETS)}"
        )
    return dict(PRESETS[name])


def parse_overrides(overrides: list[str] | dict | None) -> dict[str, Any]:
    """`["model.d_model=256", ...]` (strings parsed as TOML values) or a dict -> dict."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_value(text.strip())
    return out


def parse_value(text: str) -> Any:
    """A command-line value: a TOML literal if it parses as one, else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_section(cls: type, section: str, values: dict[str, Any]):
    """An instance of the section class `cls` from `values`, each coerced to its annotation.

    A field marked NAME_LIST in its metadata holds several names: it takes a TOML list of
    strings or the comma-separated string, stored as that string.
    """
    names = field_names(cls)
    hints = typing.get_type_hints(cls)
    lists = {f.name for f in dataclasses.fields(cls) if f.metadata.get(NAME_LIST)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"unknown config key '{section}.{key}'{suggest(key, names)}; "
                f"allowed in [{section}]: {', '.join(names)}"
            )
        if key in lists and isinstance(value, list):
            value = join_names(f"{section}.{key}", value)
        kwargs[key] = coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


# Field metadata key: the field holds several names, given as a TOML list or "a,b".
NAME_LIST = "name_list"


def join_names(where: str, value: list) -> str:
    """["tensorboard", "wandb"] -> "tensorboard,wandb"; ConfigError unless names (strings)."""
    if not all(isinstance(v, str) and v.strip() and "," not in v for v in value):
        raise ConfigError(f"{where} = {value!r}: expected a list of names (strings), e.g. "
                          '["tensorboard", "wandb"], or a comma-separated string')
    return ",".join(v.strip() for v in value)


def coerce(where: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{where} = {value!r}: not allowed; allowed: {', '.join(repr(a) for a in allowed)}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(where, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} = {value!r}: expected a table, e.g. {{ name = value }}")
        key_tp, value_tp = get_args(tp)
        return {coerce(f"{where} key", k, key_tp): coerce(f"{where}.{k}", v, value_tp)
                for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} = {value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where} = {value!r}: expected an integer")
            value = int(value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {where}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
