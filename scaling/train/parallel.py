"""Drivers of the one per-device step body: data parallelism, and the mesh's interface.

    none       plain `jax.jit` on one device; no axis is bound, so no pmean.
    mesh       `jax.jit` over a (data, fsdp, model) mesh, parameters and moments sharded
               (train.mesh; scaling.train.mesh.MeshDriver, the same interface).
    shard_map  `jax.jit(jax.shard_map(body))` over a 1-D ("data",) mesh of every device
               of every process; batch split on "data", state replicated.
    pmap       `jax.pmap(body, axis_name="data")`; state replicated along a leading
               device axis, un-replicated for checkpoints and results.

Every driver takes host (numpy) state in and gives host state out
(`place_state` / `fetch_state`), so a checkpoint written under one driver and device
count restores under any other. Each process loads only its own slice of every batch
(`batch_shard`); `place_batch` assembles the global batch from those slices.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scaling.config import ConfigError
from scaling.runtime import compiler_options
from scaling.train.mesh import MeshDriver

log = logging.getLogger(__name__)

AXIS = "data"
DRIVERS = ("none", "shard_map", "pmap")


def initialize_distributed() -> bool:
    """Join the other processes of a multi-process launch; a no-op for one process.

    Recognised launches: SLURM with more than one task (`srun`), or the coordinator
    variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. CPU processes
    talk through gloo collectives.
    """
    if getattr(initialize_distributed, "_done", False):
        return jax.process_count() > 1
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    if not (explicit or slurm):
        return False
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # option renamed or removed in some JAX versions: default is fine
        pass
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()  # reads the SLURM environment
    initialize_distributed._done = True
    log.info("process %d of %d, %d devices in all", jax.process_index(), jax.process_count(),
             jax.device_count())
    return True


def resolve_driver(name: str) -> str:
    """The driver train.parallel = `name` picks when train.mesh is not set."""
    if name == "auto":
        return "shard_map" if jax.device_count() > 1 else "none"
    if name not in (*DRIVERS, "mesh"):
        raise ConfigError(f"train.parallel = {name!r}: allowed: 'auto', {', '.join(DRIVERS)}, 'mesh'")
    return name


def check_batch(batch_size: int, micro_batches: int, n_devices: int,
                noise_scale: bool = False, what: str = "devices") -> None:
    """The global batch must split evenly over devices (under a mesh: its data x fsdp
    rows, `what`), then over micro-batches (two at least on one device with
    train.noise_scale: its small batch; scaling.train.noise_scale)."""
    if noise_scale and micro_batches == 1 and n_devices == 1 and batch_size % 2:
        raise ConfigError(f"train.noise_scale = true on one device without micro-batches splits "
                          f"the batch in two: train.batch_size = {batch_size} must be even")
    if batch_size % n_devices:
        raise ConfigError(
            f"train.batch_size = {batch_size} does not divide evenly over {n_devices} {what}; "
            f"use a multiple of {n_devices}"
        )
    per_device = batch_size // n_devices
    if per_device % micro_batches:
        raise ConfigError(
            f"train.micro_batches = {micro_batches} does not divide the per-device batch "
            f"{per_device} (train.batch_size {batch_size} / {n_devices} {what})"
        )


@dataclass
class Driver:
    """How one step body is compiled and fed on the devices at hand."""

    kind: str
    devices: list = field(default_factory=list)

    def __post_init__(self):
        if not self.devices:
            self.devices = jax.devices() if self.kind == "shard_map" else (
                jax.local_devices() if self.kind == "pmap" else [jax.local_devices()[0]])
        # pmap (since JAX 0.8 a jit(shard_map)) takes arrays laid out along its device
        # axis as a NamedSharding over a 1-D mesh of its devices, like shard_map.
        self.mesh = None if self.kind == "none" else Mesh(np.array(self.devices), (AXIS,))

    # ---- sizes -------------------------------------------------------------------
    @property
    def n_devices(self) -> int:
        """Devices sharing the global batch (all processes' for pmap too)."""
        if self.kind == "pmap":
            return len(self.devices) * jax.process_count()
        return len(self.devices)

    @property
    def batch_shard(self) -> tuple[int, int]:
        """(index, count): which slice of every global batch this process loads."""
        if self.kind == "none":
            return (0, 1)
        return (jax.process_index(), jax.process_count())

    @property
    def data_shards(self) -> int:
        """How many ways the batch's rows are split."""
        return 1 if self.kind == "none" else self.n_devices

    @property
    def key(self) -> str:
        """What a compiled step of this driver depends on besides the config."""
        return repr((self.kind, [str(d) for d in self.devices]))

    # ---- state ---------------------------------------------------------------------
    def fresh_state(self, trainer: Any, seed: int | None = None) -> Any:
        """A new training state of `trainer`'s config on this driver's devices."""
        return self.place_state(jax.device_get(trainer.init_state(seed)))

    def place_state(self, host_state: Any) -> Any:
        if self.kind == "none":
            return jax.device_put(host_state, self.devices[0])
        if self.kind == "pmap":
            n, along = len(self.devices), NamedSharding(self.mesh, P(AXIS))
            return jax.tree.map(
                lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n, *np.shape(x))), along),
                host_state)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
            host_state,
        )

    def fetch_state(self, state: Any) -> Any:
        """Host numpy copy of a (replicated) device state."""
        if self.kind == "pmap":
            return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:]), state)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)

    def fetch_metrics(self, metrics: dict, keys: tuple[str, ...] | None = None) -> dict[str, float]:
        """Host floats of the step's metrics (only `keys`, when given: one transfer each)."""
        if keys is not None:
            metrics = {k: metrics[k] for k in keys}
        if self.kind == "pmap":
            metrics = jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(()), metrics)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    def fetch_array(self, x: Any) -> np.ndarray:
        """Host copy of an array every device holds whole (e.g. gathered eval losses)."""
        if self.kind == "pmap":
            return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])
        return np.asarray(x.addressable_data(0))

    # ---- batches -------------------------------------------------------------------
    def place_batch(self, local_batch: np.ndarray) -> Any:
        """This process's rows of the global batch -> the array the step takes."""
        if self.kind == "none":
            if self.devices[0].platform == "cpu":  # the step takes host memory as it is;
                return local_batch                  # an explicit device_put costs ~0.3 ms
            return jax.device_put(local_batch, self.devices[0])
        if self.kind == "pmap":
            n = len(self.devices)
            per_device = local_batch.reshape(n, local_batch.shape[0] // n, *local_batch.shape[1:])
            return jax.device_put(per_device, NamedSharding(self.mesh, P(AXIS)))
        sharding = NamedSharding(self.mesh, P(AXIS))
        global_shape = (local_batch.shape[0] * jax.process_count(), *local_batch.shape[1:])
        return jax.make_array_from_process_local_data(sharding, local_batch, global_shape)

    # ---- compilation -----------------------------------------------------------------
    def wrap(self, body: Callable, *, donate: bool) -> Callable:
        """body(replicated, sharded_batch, axis_name=...) -> replicated outputs."""
        donate_argnums = (0,) if donate else ()
        options = compiler_options("step")
        if self.kind == "none":
            return jax.jit(lambda s, b: body(s, b, axis_name=None), donate_argnums=donate_argnums,
                           compiler_options=options)
        if self.kind == "pmap":
            return jax.pmap(lambda s, b: body(s, b, axis_name=AXIS), axis_name=AXIS,
                            devices=self.devices, donate_argnums=donate_argnums)
        mapped = jax.shard_map(lambda s, b: body(s, b, axis_name=AXIS), mesh=self.mesh,
                               in_specs=(P(), P(AXIS)), out_specs=P())
        return jax.jit(mapped, donate_argnums=donate_argnums, compiler_options=options)

    def compile(self, body: Callable, state: Any, batch: Any, *, donate: bool) -> Any:
        """Ahead-of-time compile for these argument shapes (compile time measured apart),
        with the backend's step compiler options (`scaling.runtime.compiler_options`)."""
        lowered = self.wrap(body, donate=donate).lower(state, batch)
        if self.kind == "pmap":  # jax.pmap takes no compiler options of its own
            return lowered.compile(compiler_options=compiler_options("step"))
        return lowered.compile()

    def devices_flops_factor(self) -> int:
        """XLA's cost analysis counts one device's program under pmap and shard_map."""
        return 1 if self.kind == "none" else self.n_devices


def make_driver(parallel: str, mesh: dict | None = None):
    """The driver of train.parallel and train.mesh (its axes, `TrainConfig.mesh_axes`):
    a Driver, or a MeshDriver (scaling.train.mesh) when a mesh is configured."""
    kind = "mesh" if mesh else resolve_driver(parallel)
    if kind == "mesh":
        return MeshDriver(mesh or {"data": -1, "fsdp": 1, "model": 1})
    return Driver(kind)
