"""The parameters of a training state packed into a few flat vectors while they train.

    packing = ParamPacking.build(abstract_params, optim_cfg, model_cfg)
    packed = packing.pack(params_tree)       # {group name: vector or whole tensor}
    params_tree = packing.unpack(packed)     # inside a jitted function: slices, reshapes
    packing.pack_state(tree_state)           # TrainState, moments included, and back:
    packing.unpack_state(packed_state)       #   checkpoints always hold the tree

Why. On a CPU a small model's step is a few hundred small kernels, and about 60 % of them
are per-tensor optimizer work: clipping's norms, Adam's two moments, the decay, the
update and the logged norms, each once per parameter tensor, each paying a kernel's
fixed cost on a tensor of a few hundred elements. Packing every tensor that the
optimizer treats alike (same weight decay, same µP learning-rate multiplier, same dtype)
into one vector lets each of those be one kernel per group, and the model reads its
tensors back as slices of the vectors inside the compiled step. Measured on one core
(`benchmarks/packing.py`; benchmarks/README.md, "Packed parameters"): 0.5-1 s less compile
per model shape, one-layer models' steps 6-11 % faster, larger ones within noise.

Which tensors are packed. Every parameter with at most `PACK_MAX_ELEMENTS` elements. A
larger one stays a group of its own, in its own shape: its optimizer work is already one
sizeable kernel per operation, and a slice of a packed vector would be one more copy of
it per step for the matmul that reads it.

What stays the same. Packing moves values, never changes one: the step computes what it
computed on the tree. It is compiled as another program, though, so XLA may order a
gradient's sums differently, and sums over the whole model (the clip's global norm, the
logged norms) add their terms in another order: float32 rounding (tests/test_packing.py:
every tensor within 2e-6 of the tree's after six steps). Checkpoints hold the tree, as
before: `unpack_state` before a save, `pack_state` after a restore, so a run resumes
exactly and checkpoints written before packing restore unchanged.

Not packed: LARS and LAMB (their trust ratios are per-tensor norms, or per layer of a
stacked tensor); for them `pack` and `unpack` return the tree as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.config import ModelConfig, OptimConfig
from scaling.train.param_groups import decay_mask, mup_lr_multipliers

# A parameter with more elements than this is not packed (see the module's docstring):
# 2^16 float32 values (256 KB), ~ the size above which a CPU kernel's fixed cost no
# longer matters beside its work (benchmarks/README.md, "Packed parameters").
PACK_MAX_ELEMENTS = 1 << 16

# Optimizers whose update is elementwise given the global clipping norm: packable.
PACKABLE_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


@dataclass(frozen=True)
class Group:
    """One entry of the packed dict: the tree leaves it holds (indices in the tree's
    flatten order), and what the optimizer applies to all of them."""

    name: str
    leaves: tuple[int, ...]
    decayed: bool
    lr_multiplier: float
    whole: bool  # one large parameter kept in its own shape, not a vector


def _path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


class ParamPacking:
    """How one model's parameter tree is held as a dict of packed groups (see the module
    docstring). Built once per model shape and optimizer; holds no arrays."""

    def __init__(self, abstract_params: Any, decayed: Any, multipliers: Any, enabled: bool,
                 max_elements: int | None = None):
        paths_leaves, self.treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
        self.enabled = enabled
        self.shapes = tuple(tuple(leaf.shape) for _, leaf in paths_leaves)
        self.dtypes = tuple(np.dtype(leaf.dtype) for _, leaf in paths_leaves)
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        max_elements = PACK_MAX_ELEMENTS if max_elements is None else max_elements
        groups: dict[str, list[int]] = {}
        attrs: dict[str, tuple[bool, float, bool]] = {}
        if enabled:
            decayed_leaves = [bool(d) for d in self.treedef.flatten_up_to(decayed)]
            mult_leaves = [float(m) for m in self.treedef.flatten_up_to(multipliers)]
        for i, (path, _) in enumerate(paths_leaves if enabled else ()):
            d, m = decayed_leaves[i], mult_leaves[i]
            if self.sizes[i] > max_elements:
                name = f"whole:{_path_name(path)}"
                whole = True
            else:
                name = (f"packed:{'decayed' if d else 'not_decayed'}:lr_x{m:g}:"
                        f"{self.dtypes[i].name}")
                whole = False
            groups.setdefault(name, []).append(i)
            attrs[name] = (d, m, whole)
        self.groups = tuple(Group(n, tuple(ix), *attrs[n]) for n, ix in groups.items())

    @classmethod
    def build(cls, abstract_params: Any, optim: OptimConfig,
              model: ModelConfig | None = None) -> "ParamPacking":
        """The packing of `abstract_params` (shapes and dtypes) under `optim`; identity
        (not enabled) for LARS and LAMB."""
        return cls(abstract_params, decay_mask(abstract_params, optim),
                   mup_lr_multipliers(abstract_params, model, optim.name),
                   enabled=optim.name in PACKABLE_OPTIMIZERS)

    # ---- the parameters ------------------------------------------------------------------
    def pack(self, params: Any) -> Any:
        """{group name: vector} from the tree (jax arrays inside a jitted function, numpy
        arrays on the host); the tree itself when not enabled."""
        if not self.enabled:
            return params
        leaves = self.treedef.flatten_up_to(params)
        xp = np if all(isinstance(x, (np.ndarray, np.generic)) for x in leaves) else jnp
        out = {}
        for g in self.groups:
            if g.whole:
                out[g.name] = leaves[g.leaves[0]]
            else:
                parts = [xp.reshape(leaves[i], (-1,)) for i in g.leaves]
                out[g.name] = parts[0] if len(parts) == 1 else xp.concatenate(parts)
        return out

    def unpack(self, packed: Any) -> Any:
        """The tree from `pack`'s dict (slices and reshapes: free inside a jitted
        function, views of the vectors on the host)."""
        if not self.enabled:
            return packed
        leaves: list[Any] = [None] * len(self.shapes)
        for g in self.groups:
            vec = packed[g.name]
            if g.whole:
                leaves[g.leaves[0]] = vec
                continue
            start = 0
            for i in g.leaves:
                leaves[i] = vec[start:start + self.sizes[i]].reshape(self.shapes[i])
                start += self.sizes[i]
        return self.treedef.unflatten(leaves)

    # ---- what the optimizer needs per group ---------------------------------------------
    def decay_mask(self, packed: Any) -> dict[str, bool]:
        """`param_groups.decay_mask` for the packed dict: one bool per group."""
        return {g.name: g.decayed for g in self.groups}

    def lr_multipliers(self, packed: Any) -> dict[str, float]:
        """`param_groups.mup_lr_multipliers` for the packed dict: one float per group."""
        return {g.name: g.lr_multiplier for g in self.groups}

    # ---- a whole TrainState ---------------------------------------------------------------
    def _is_tree(self, node: Any) -> bool:
        return jax.tree.structure(node) == self.treedef

    def _is_packed(self, node: Any) -> bool:
        return isinstance(node, dict) and set(node) == {g.name for g in self.groups}

    def pack_state(self, state: Any) -> Any:
        """A TrainState (or any tree holding parameter-shaped trees: optimizer moments)
        with every parameter-shaped tree packed."""
        if not self.enabled:
            return state
        return jax.tree.map(lambda n: self.pack(n) if self._is_tree(n) else n, state,
                            is_leaf=self._is_tree)

    def unpack_state(self, state: Any) -> Any:
        """The inverse of `pack_state`: the state as checkpoints hold it."""
        if not self.enabled:
            return state
        return jax.tree.map(lambda n: self.unpack(n) if self._is_packed(n) else n, state,
                            is_leaf=self._is_packed)
