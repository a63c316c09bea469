"""Does a point fit in a device's memory, and what is the smallest change that makes it fit.

    target = memory_target(device="h100-80gb", devices=8)    # or device_memory="80GB"
    fit = check_fit(point.config, target)       # Fit: the estimate, fits, the change
    fit.override                                # "model.remat=true train.micro_batches=4"
    refuse_unfit(points, target)                # ConfigError naming the first point that
                                                # cannot fit and its change (`run`'s check)

The estimate is scaling.accounting.memory's closed form (parameters, optimizer state,
gradients, activations and batch per device); a point fits when its total is at most the
target's usable bytes. Where it does not, the changes are tried in this order, and the
first that fits is the suggestion:

    1. one key:    model.remat = true; train.micro_batches = k (the smallest k > the
                   current that divides the per-device batch and fits); a larger fsdp
                   axis, train.mesh = {fsdp = n} (the smallest n that divides the devices)
    2. two keys:   remat and micro-batches, remat and fsdp, micro-batches and fsdp
    3. all three

Each change is printed as a ready override (`section.key=value`, the mesh quoted for the
shell). None fits: the message says so (more devices, a smaller batch or model).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from scaling.accounting.memory import (Capacity, MemoryEstimate, device_capacity, estimate,
                                       format_bytes, layout, local_capacity, parse_size)
from scaling.config import Config, ConfigError


@dataclass(frozen=True)
class Target:
    """Where points must fit: the usable bytes per device and the devices a run uses."""

    capacity: Capacity
    devices: int = 1

    def describe(self) -> str:
        return (f"{format_bytes(self.capacity.usable)} usable per device "
                f"({self.capacity.source}), {self.devices} device"
                f"{'s' if self.devices > 1 else ''} per run")


@dataclass(frozen=True)
class Fit:
    """One point against a target: its estimate, whether it fits, and the change that
    makes it fit (None where it fits, or where nothing tried does)."""

    estimate: MemoryEstimate
    usable: int
    change: dict[str, Any] | None = None
    changed: MemoryEstimate | None = None

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.usable

    @property
    def override(self) -> str | None:
        """The change as command-line overrides, or None."""
        if self.change is None:
            return None
        return " ".join(_override(k, v) for k, v in self.change.items())

    def advice(self) -> str:
        """One phrase: the change and its total, or that nothing tried fits."""
        if self.fits:
            return "fits"
        if self.change is None:
            return ("does not fit with remat, any micro-batching or fsdp over every device: "
                    "use more devices, a smaller batch or a smaller model")
        return f"fits with {self.override} ({format_bytes(self.changed.total)})"


def memory_target(device: str | None = None, device_memory: str | None = None,
                  devices: int = 1, platform: str | None = None) -> Target | None:
    """The target of the command-line options --device NAME / --device-memory SIZE and
    --devices N (None when neither of the first two is given). ConfigError naming the
    option for an unknown device, a size that does not parse or devices < 1.
    `platform` ("cpu", "gpu", "tpu"): the attention kernel assumed under --device-memory
    (default: the local backend's)."""
    if not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"--devices {devices}: expected an integer >= 1")
    if device is not None:
        return Target(device_capacity(device), devices)
    if device_memory is not None:
        usable = parse_size(device_memory)
        platform = platform or local_platform()
        return Target(Capacity(usable, platform, f"--device-memory {device_memory}, attention "
                                                 f"as on {platform}"), devices)
    return None


def local_platform() -> str:
    """'cpu', 'gpu' or 'tpu': jax's default backend."""
    import jax

    backend = jax.default_backend()
    return backend if backend in ("cpu", "tpu") else "gpu"


def local_target() -> Target | None:
    """The local accelerator's allocator limit over all its devices (None on a CPU)."""
    capacity = local_capacity()
    if capacity is None:
        return None
    import jax

    return Target(capacity, jax.device_count())


def check_fit(cfg: Config, target: Target) -> Fit:
    """`cfg` against `target`, and where it does not fit the first change of the module
    docstring's order that does."""
    est = estimate(cfg, target.devices, target.capacity.platform)
    usable = target.capacity.usable
    if est.total <= usable:
        return Fit(est, usable)
    for change in _changes(cfg, target.devices):
        new_cfg = apply_change(cfg, change)
        if not _runs(new_cfg, target.devices):
            continue
        new = estimate(new_cfg, target.devices, target.capacity.platform)
        if new.total <= usable:
            return Fit(est, usable, change, new)
    return Fit(est, usable)


def _runs(cfg: Config, devices: int) -> bool:
    """Whether the batch splits evenly over the devices, then over the micro-batches."""
    shards = layout(cfg.train, devices).batch_shards
    batch, micro = cfg.train.batch_size, cfg.train.micro_batches
    return batch % shards == 0 and (batch // shards) % micro == 0


def apply_change(cfg: Config, change: dict[str, Any]) -> Config:
    """`cfg` with dotted keys set (model.remat, train.micro_batches, train.mesh, ...)."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in change.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, {})[key] = value
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv)
                                       for s, kv in sections.items()})


def refuse_unfit(points, target: Target | None, how: str = "") -> None:
    """ConfigError naming the first point that does not fit `target` and its change, and
    how many others do not; nothing when every point fits or there is no target.
    `how`: the options that reproduce the target, for the plan command in the message."""
    if target is None:
        return
    unfit = []
    for p in points:
        fit = check_fit(p.config, target)
        if not fit.fits:
            unfit.append((p, fit))
    if not unfit:
        return
    p, fit = unfit[0]
    more = (f"; {len(unfit) - 1} more point{'s do' if len(unfit) > 2 else ' does'} not fit "
            f"(`python run_sweep.py plan SPEC{how}` lists every one)") if len(unfit) > 1 else ""
    raise ConfigError(
        f"point {p.config.name} ({p.point_id}) needs {format_bytes(fit.estimate.total)} per "
        f"device, more than the {target.describe()}: it {fit.advice()}{more}; nothing "
        "was trained")


def _changes(cfg: Config, devices: int):
    """The candidate changes, in the order of the module docstring."""
    lay = layout(cfg.train, devices)
    rows = cfg.train.batch_size // lay.batch_shards
    remat = [{"model.remat": True}] if not cfg.model.remat else []
    micro = [{"train.micro_batches": k} for k in range(cfg.train.micro_batches + 1, rows + 1)
             if rows % k == 0]
    fsdp = [_fsdp_change(cfg, n) for n in _fsdp_sizes(cfg, devices)]
    groups = [remat, micro, fsdp]
    yield from (c for g in groups for c in g)
    for a, b in itertools.combinations(groups, 2):
        for x, y in itertools.product(a, b):
            yield {**x, **y}
    for x, y, z in itertools.product(*groups):
        yield {**x, **y, **z}


def _fsdp_sizes(cfg: Config, devices: int) -> list[int]:
    axes = cfg.train.mesh_axes or {}
    model, fsdp = axes.get("model", 1), axes.get("fsdp", 1)
    if model == -1:
        return []
    return [n for n in range(fsdp + 1, devices // model + 1) if devices % (n * model) == 0]


def _fsdp_change(cfg: Config, n: int) -> dict[str, Any]:
    mesh = {k: v for k, v in cfg.train.mesh.items() if k not in ("data", "fsdp")}
    change: dict[str, Any] = {"train.mesh": {"fsdp": n, **mesh}}
    if cfg.train.parallel not in ("auto", "mesh"):
        change["train.parallel"] = "auto"
    return change


def _override(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, dict):  # a TOML inline table, quoted for the shell
        inner = ", ".join(f"{k} = {v}" for k, v in value.items())
        return f"'{key}={{{inner}}}'"
    return f"{key}={value}"
