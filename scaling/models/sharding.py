"""How a model's tensors split over a device mesh with axes (data, fsdp, model).

The models name what each dimension of a tensor is (logical axes); the mesh driver
(scaling.train.mesh) maps those names to mesh axes. Outside a mesh every call here is the
identity, so the models run unchanged under the other drivers.

Activations (`shard(x, "batch", None, "heads", None)`, called inside the models):

    batch    -> ("data", "fsdp")   every device of a data or fsdp row sees its own rows
    heads    -> "model"            attention: q, k, v and the output, per head
    hidden   -> "model"            the MLP's hidden units (d_ff)
    vocab    -> "model"            the logits (tied or untied head)

Parameters (`param_spec(path, shape, mesh_shape)`), Megatron-style (Shoeybi et al. 2019):
the first matmul of attention (qkv) and of the MLP (fc) is column-parallel (its output
dimension on "model"), the second (proj) row-parallel (its input dimension on "model"), so
the activation between them stays split and one all-reduce joins each pair's output. An
untied head's kernel [D, V] and the token embedding [V, D] (the tied head) split their
vocabulary on "model", as the logits are constrained. (The embedding must: split the other
way round, [V on fsdp, D on model], XLA 0.10's partitioner computed the tied logits wrong,
the loss off by 6e-5 relative at the first step on a (2, 2, 2) mesh; tests/test_mesh.py
compares every mesh with one device. The lookup itself gathers the table along fsdp
first: from a table split two ways XLA could only gather by replicating it, with an
"Involuntary full rematerialization" warning.) Then FSDP (Zhao et al. 2023; XLA gathers a parameter for use
and reduce-scatters its gradient): "fsdp" goes on the largest other dimension it divides,
on every tensor, and so does "model" on a tensor no rule above splits (the position
embedding, the LayerNorms, the row-parallel biases), so that the state per device falls by the
whole fsdp x model factor. An axis that divides no free dimension joins one already
split if the product divides it, else leaves the tensor whole along it
(`replicated_along` lists those); the stacked layer axis of `model.scan_layers` is never
split.

The fused qkv kernel [D, 3D] holds its columns as (q, k, v) x heads, so a contiguous split
of its 3D columns over "model" is a split by heads only where the model axis divides 3;
the activations are constrained per head regardless, and XLA moves data between the
model shards to get there (kernel columns or activations: its choice). A kernel stored as
[D, 3, H, K] would avoid that; it is not, so that checkpoints and the packed state of the
other drivers keep their layout. Every choice here changes speed and memory only: the
step under any mesh computes what it computes on one device (tests/test_mesh.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LOGICAL_AXES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "heads": ("model",),
    "hidden": ("model",),
    "vocab": ("model",),
}

# (module, parameter) -> the dimension "model" splits, counted from the end
MODEL_DIM: dict[tuple[str, str], int] = {
    ("qkv", "kernel"): -1, ("qkv", "bias"): -1,          # column-parallel
    ("fc", "kernel"): -1, ("fc", "bias"): -1,
    ("proj", "kernel"): -2,                                # row-parallel (attn and mlp)
    ("token_embed", "embedding"): -2,                      # vocab-parallel, as the logits
    ("unembed", "kernel"): -1,
}

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh | None) -> Iterator[None]:
    """While tracing under it, `shard` constrains activations on `mesh` (None: off)."""
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


def on_mesh() -> bool:
    """Whether the model is being traced for a mesh (inside `activation_sharding`)."""
    return _MESH.get() is not None


def _axes_for(name: str | None, size: int, mesh_shape: dict[str, int]) -> tuple[str, ...] | None:
    """The mesh axes of logical `name` for a dimension of `size`, or None (whole)."""
    axes = tuple(a for a in LOGICAL_AXES.get(name, ()) if mesh_shape.get(a, 1) > 1) if name else ()
    n = math.prod(mesh_shape[a] for a in axes)
    return axes if axes and size % n == 0 else None


def shard(x: jax.Array, *logical: str | None) -> jax.Array:
    """`x` constrained to the logical layout `logical` (one name or None per dimension)
    on the mesh being traced for; the identity outside `activation_sharding`."""
    mesh = _MESH.get()
    if mesh is None:
        return x
    shape = dict(mesh.shape)
    spec = [_axes_for(name, dim, shape) for dim, name in zip(x.shape, logical)]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], mesh_shape: dict[str, int],
               stacked: bool = False) -> P:
    """The PartitionSpec of the parameter at `path` (its module names, then its own name)
    with `shape`; `stacked`: its first dimension is the scanned layer axis."""
    spec: list = [None] * len(shape)
    free = list(range(1 if stacked and len(shape) > 1 else 0, len(shape)))
    model = mesh_shape.get("model", 1)
    dim = MODEL_DIM.get(tuple(path[-2:]))
    if model > 1 and dim is not None and len(shape) >= -dim:
        d = len(shape) + dim
        if d in free and shape[d] % model == 0:
            spec[d] = "model"
            free.remove(d)
    # FSDP, and "model" where no rule placed it: on the largest free dimension the axis
    # divides, else folded into a dimension already split if the product still divides
    for axis in [a for a in ("fsdp", "model") if mesh_shape.get(a, 1) > 1 and a not in spec]:
        size = mesh_shape[axis]
        fits = [d for d in free if shape[d] % size == 0]
        if fits:
            d = max(fits, key=lambda d: (shape[d], -d))
            spec[d] = axis
            free.remove(d)
            continue
        for d, entry in enumerate(spec):
            if entry and shape[d] % (_size(entry, mesh_shape) * size) == 0:
                spec[d] = (*((entry,) if isinstance(entry, str) else entry), axis)
                break
    return P(*spec)


def _size(entry: str | tuple[str, ...], mesh_shape: dict[str, int]) -> int:
    return math.prod(mesh_shape[a] for a in ((entry,) if isinstance(entry, str) else entry))


def replicated_along(spec: P, mesh_shape: dict[str, int]) -> list[str]:
    """The parameter-sharding axes (fsdp, model) of size > 1 that `spec` does not use."""
    used = {a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)}
    return [a for a in ("fsdp", "model") if mesh_shape.get(a, 1) > 1 and a not in used]
