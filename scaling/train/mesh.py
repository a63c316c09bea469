"""The mesh driver: one `jax.jit` of the step over a (data, fsdp, model) device mesh.

    train.mesh = { data = 2, fsdp = 2, model = 2 }      (or train.parallel = "mesh")

The step body is the one every driver runs (scaling.train.step), traced once on the
global batch with no axis bound; XLA's SPMD partitioner (GSPMD) splits it from the
shardings of its arguments and of the activations the model constrains:

    batch        rows over ("data", "fsdp"); whole along "model"
    parameters   scaling.models.sharding.param_spec: "model" on heads / MLP hidden /
                 vocabulary (Megatron), "fsdp" on the largest other dimension it divides
    moments      each optimizer moment as its parameter (same path, same shape)
    scalars      (step, lr, schedule, metrics, eval losses) on every device

so FSDP's gather of a parameter before use and the reduce-scatter of its gradient are
XLA's, as are the all-reduces of the model axis. The state is the trees, not packed
(`Trainer.packed`). It is built sharded (`fresh_state`: the initializer compiled with
the state's shardings), never whole on one device, and comes back whole to the host for
a checkpoint (`fetch_state`, gathered across processes), so a checkpoint restores under
any driver, mesh or device count.

A mesh spans every device of every process (jax.distributed); each process loads the
rows of the global batch its own devices hold (`batch_shard`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from scaling.config import MESH_AXES, ConfigError
from scaling.models.sharding import activation_sharding, param_spec, replicated_along
from scaling.runtime import compiler_options
from scaling.train.step import runtime_values

BATCH = P(("data", "fsdp"))  # the batch's rows; its other dimensions whole


def resolve_mesh(axes: dict[str, int], n_devices: int) -> dict[str, int]:
    """train.mesh_axes with its -1 filled in for `n_devices`; ConfigError unless the
    sizes multiply to the device count."""
    known = math.prod(v for v in axes.values() if v != -1)
    shown = "{ " + ", ".join(f"{a} = {axes[a]}" for a in MESH_AXES) + " }"
    if -1 in axes.values():
        if n_devices % known:
            raise ConfigError(f"train.mesh = {shown}: {n_devices} devices do not split into "
                              f"{known} x the rest; use axis sizes whose product divides {n_devices}")
        return {a: (n_devices // known if v == -1 else v) for a, v in axes.items()}
    if known != n_devices:
        raise ConfigError(f"train.mesh = {shown} needs {known} devices, found {n_devices}; "
                          "make the sizes multiply to the device count, or set one axis to -1")
    return dict(axes)


@dataclass
class MeshDriver:
    """The step and its state on a (data, fsdp, model) mesh; Driver's interface
    (scaling.train.parallel), so the loop does not know which one it has."""

    axes: dict[str, int]  # train.mesh_axes, -1 allowed
    devices: list = field(default_factory=list)
    kind: str = "mesh"

    def __post_init__(self):
        if not self.devices:
            self.devices = jax.devices()
        self.shape = resolve_mesh(self.axes, len(self.devices))
        grid = np.array(self.devices).reshape([self.shape[a] for a in MESH_AXES])
        self.mesh = Mesh(grid, MESH_AXES)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, BATCH)

    # ---- sizes -------------------------------------------------------------------
    @property
    def n_devices(self) -> int:
        return len(self.devices)

    @property
    def data_shards(self) -> int:
        """How many ways the batch's rows are split (data x fsdp)."""
        return self.shape["data"] * self.shape["fsdp"]

    @property
    def key(self) -> str:
        """What a compiled step of this driver depends on besides the config."""
        return repr((self.kind, self.shape, [str(d) for d in self.devices]))

    @property
    def batch_shard(self) -> tuple[int, int]:
        """(index, count): the slice of every global batch this process's devices hold."""
        rows = self.data_shards
        spans = {(s[0].start or 0, s[0].stop or rows) for s in
                 self.batch_sharding.addressable_devices_indices_map((rows,)).values()}
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        return lo // (hi - lo), rows // (hi - lo)

    # ---- state ---------------------------------------------------------------------
    def param_shardings(self, params: Any) -> Any:
        """A NamedSharding per parameter (scaling.models.sharding.param_spec)."""
        def one(path, leaf):
            names = _names(path)
            return NamedSharding(self.mesh, param_spec(names, tuple(leaf.shape), self.shape,
                                                       stacked=names[0] == "blocks"))
        return jax.tree_util.tree_map_with_path(one, params)

    def state_shardings(self, state: Any) -> Any:
        """A NamedSharding per leaf of a TrainState (of trees, arrays or shapes): the
        parameters', each optimizer moment as its parameter, the scalars replicated."""
        by_path = {_names(path): (tuple(leaf.shape), sh) for (path, leaf), sh in zip(
            jax.tree_util.tree_leaves_with_path(state.params),
            jax.tree.leaves(self.param_shardings(state.params)))}

        def one(path, leaf):
            names = _names(path)
            for start in range(len(names)):  # a moment: its parameter's path as a suffix
                hit = by_path.get(names[start:])
                if hit is not None and hit[0] == tuple(leaf.shape):
                    return hit[1]
            return self.replicated

        return jax.tree_util.tree_map_with_path(one, state)

    def unsharded(self, params: Any) -> list[str]:
        """Parameters left whole along a sharding axis (no dimension it divides)."""
        out = []
        for path, sh in jax.tree_util.tree_leaves_with_path(self.param_shardings(params)):
            axes = replicated_along(sh.spec, self.shape)
            if axes:
                out.append(f"{jax.tree_util.keystr(path)} ({', '.join(axes)})")
        return out

    def fresh_state(self, trainer: Any, seed: int | None = None) -> Any:
        """A new state of `trainer`'s config built on the devices, each shard where it
        lives (never whole on one device)."""
        seed = trainer.config.train.seed if seed is None else seed
        lr, schedule = runtime_values(trainer.config)
        init = trainer.init_fn()
        abstract = jax.eval_shape(init, jax.random.key(seed), lr, schedule)
        build = jax.jit(init, out_shardings=self.state_shardings(abstract),
                        compiler_options=compiler_options("init"))
        return build(jax.random.key(seed), lr, schedule)

    def place_state(self, host_state: Any) -> Any:
        shardings = self.state_shardings(host_state)
        return jax.tree.map(
            lambda x, sh: jax.make_array_from_callback(np.shape(x), sh,
                                                       lambda i: np.asarray(x)[i]),
            host_state, shardings)

    def fetch_state(self, state: Any) -> Any:
        """Host numpy copy of the whole state (every process gets all of it)."""
        def whole(x):
            if x.is_fully_addressable:
                return np.asarray(x)
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.tree.map(whole, state)

    def fetch_metrics(self, metrics: dict, keys: tuple[str, ...] | None = None) -> dict[str, float]:
        if keys is not None:
            metrics = {k: metrics[k] for k in keys}
        return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}

    def fetch_array(self, x: Any) -> np.ndarray:
        return np.asarray(x.addressable_data(0))

    # ---- batches -------------------------------------------------------------------
    def place_batch(self, local_batch: np.ndarray) -> Any:
        index, count = self.batch_shard
        global_shape = (local_batch.shape[0] * count, *local_batch.shape[1:])
        return jax.make_array_from_process_local_data(self.batch_sharding, local_batch,
                                                      global_shape)

    # ---- compilation -----------------------------------------------------------------
    def wrap(self, body: Callable, first: Any, *, donate: bool) -> Callable:
        """body(state or params, batch, axis_name=None) under jit with the mesh's
        shardings; `first`: the first argument or its shapes (a TrainState: the train
        step, which returns the state and metrics; params: the eval step)."""
        train = hasattr(first, "opt_state")
        shardings = self.state_shardings(first) if train else self.param_shardings(first)
        return jax.jit(lambda s, b: body(s, b, axis_name=None),
                       in_shardings=(shardings, self.batch_sharding),
                       out_shardings=(shardings, self.replicated) if train else self.replicated,
                       donate_argnums=(0,) if donate else (),
                       compiler_options=compiler_options("step"))

    def compile(self, body: Callable, first: Any, batch: Any, *, donate: bool) -> Any:
        """Ahead-of-time compile, the model's activation constraints on this mesh."""
        with activation_sharding(self.mesh):
            return self.wrap(body, first, donate=donate).lower(first, batch).compile()

    def devices_flops_factor(self) -> int:
        """XLA's count is taken of the unpartitioned step (scaling.train.compiled): the
        whole global batch's work, as for the plain driver."""
        return 1


def _names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
