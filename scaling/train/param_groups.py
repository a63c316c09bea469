"""How the optimizer treats each parameter, decided from its path in the tree: its kind
(`param_kind`), whether it decays (`decay_mask`), whether LARS and LAMB adapt it
(`trust_ratio_mask`), whether its leading axis indexes layers (`stacked_layers_mask`),
and its µP learning-rate multiplier (`mup_lr_multipliers`).

Default decay mask (see `decay_mask`): only weight matrices decay (the untied output head
included) -- not biases, not norm scales/biases, not input embeddings.
`decay_norms_and_biases` / `decay_embeddings` turn those on. LARS and LAMB adapt only
matrices and embeddings layer-wise (`trust_ratio_mask`); see their docstrings for what
biases and norm parameters get.
"""

from __future__ import annotations

import re
from typing import Any

import jax

from scaling.config import ConfigError, ModelConfig, OptimConfig

__all__ = [
    "param_kind",
    "decay_mask",
    "trust_ratio_mask",
    "stacked_layers_mask",
    "mup_role",
    "mup_lr_multipliers",
    "ADAM_FAMILY",
    "SGD_FAMILY",
]


# --------------------------------------------------------------------------------------
# Parameter classification (drives both the decay mask and the LARS trust-ratio mask)
# --------------------------------------------------------------------------------------

NORM_LEAVES = ("scale", "bias")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_norm_module(name: str) -> bool:
    """'LayerNorm_0', 'RMSNorm', 'final_norm', 'ln_f', 'ln1' -> True; 'linear' -> False."""
    tokens = [t for t in re.split(r"[_\W\d]+", name.lower()) if t]
    return any("norm" in t or t == "ln" for t in tokens)


def _is_input_embedding(name: str) -> bool:
    """'token_embed', 'pos_embedding', 'wte_embed' -> True; 'unembed', 'Unembed_0' -> False."""
    name = name.lower()
    return "embed" in name and not name.startswith("unembed")


def param_kind(path: tuple, leaf: Any) -> str:
    """Classify one parameter by its path: 'norm_or_bias', 'embedding', 'matrix' or 'vector'.

    Names, not shapes, decide first, because under nn.scan every block parameter carries
    a leading layer axis (a stacked bias or LayerNorm scale has ndim 2):
      - leaf named 'bias', or anything inside a norm module  -> 'norm_or_bias'
      - a path component naming an input embedding (contains
        'embed' but is not an output head: 'unembed...')     -> 'embedding'
      - otherwise ndim >= 2                                   -> 'matrix'
      - otherwise                                             -> 'vector' (decays with
        norms and biases)
    The untied output head (`unembed/kernel` in scaling.models.transformer) is a weight matrix like
    any other projection: it is decayed by default (it is a lookup table only for the
    parameter count's Kaplan convention, see scaling.accounting.counts, not for the optimizer).
    """
    names = [_key_name(k) for k in path]
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]  # boxed (nn.Partitioned-like) leaves
    leaf_name = names[-1].lower() if names else ""
    modules = names[:-1]
    if leaf_name == "bias" or any(_is_norm_module(m) for m in modules):
        return "norm_or_bias"
    if any(_is_input_embedding(n) for n in names):
        return "embedding"
    if len(getattr(leaf, "shape", ())) >= 2:
        return "matrix"
    return "vector"


def decay_mask(params: Any, cfg: OptimConfig) -> Any:
    """Pytree of bools shaped like `params`: True where weight decay applies."""

    def decide(path, leaf):
        kind = param_kind(path, leaf)
        if kind == "matrix":
            return True
        if kind == "embedding":
            return bool(cfg.decay_embeddings)
        return bool(cfg.decay_norms_and_biases)  # 'norm_or_bias' and 'vector'

    return jax.tree_util.tree_map_with_path(decide, params)


def trust_ratio_mask(params: Any) -> Any:
    """Pytree of bools: True where LARS and LAMB apply their layer-wise trust ratio
    (matrices and embeddings; never biases, norm parameters or other vectors)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: param_kind(path, leaf) in ("matrix", "embedding"), params
    )


# scaling.models.transformer's nn.scan module: every parameter under it carries a leading layer axis.
STACKED_MODULE = "blocks"


def stacked_layers_mask(params: Any) -> Any:
    """Pytree of bools: True where the leading axis of a parameter indexes layers (the
    parameter lives under the model's nn.scan module `blocks` and has ndim >= 2), so a
    "per-layer" norm is one norm per slice along axis 0, exactly as if the layers were
    separate parameters (`scan_layers = False`)."""

    def decide(path, leaf):
        names = [_key_name(k) for k in path]
        return STACKED_MODULE in names[:-1] and len(getattr(leaf, "shape", ())) >= 2

    return jax.tree_util.tree_map_with_path(decide, params)


# --------------------------------------------------------------------------------------
# µP's per-layer learning rates (Yang et al. 2022, Tensor Programs V, Table 3)
# --------------------------------------------------------------------------------------
#
# With m = d_model / mup_base_width, the learning rate of each parameter is lr x:
#
#                         Adam family (adam, adamw)    SGD family (sgd, momentum, nesterov)
#   hidden matrices       1 / m                        1
#   embeddings, norms,    1                            m
#     biases, vectors
#   readout W_out         1                            m
#
# "hidden" = param_kind 'matrix' except the output head. The readout row is for the
# multiplier form of scaling.models.transformer (logits = (mult / m) h . W_out, W_out at SP's init):
# there W_out behaves like an input weight (one width-sized dimension), which is why
# microsoft/mup's MuAdam leaves its rate alone and MuSGD scales it by m. A tied head is
# the embedding, whose rule is the same. The multiplier scales the whole step of the
# chain, the decoupled weight decay included (w <- w - lr m_l (direction + wd w)), as a
# per-group lr does in torch's AdamW (p *= 1 - lr wd). This is a choice, and not
# microsoft/mup's: its MuAdam/MuAdamW (mup/optim.py) divide a hidden matrix group's lr by
# width_mult *and multiply its weight_decay by width_mult*, and MuSGD does the inverse pair,
# so there lr x wd, the per-step shrinkage, is the same at every width. Here a hidden
# matrix under Adam shrinks by lr wd / m per step (1/m of SP's at the same wd) and SGD's
# readout by lr wd m; tests/test_optim.py pins it. So under µP a tuned weight_decay
# transfers across widths with the update, not with the shrinkage (an optimum tuned with
# MuAdamW corresponds to wd x m here). LARS and LAMB are refused under µP
# (scaling.config.check_mup_optimizer): their trust ratios already set each layer's
# step relative to its weights. At the base width (m = 1) every multiplier is 1 and the
# update is SP's bit for bit (a multiplier of exactly 1 is not applied at all).

ADAM_FAMILY = ("adam", "adamw")
SGD_FAMILY = ("sgd", "momentum", "nesterov")


def mup_role(path: tuple, leaf: Any) -> str:
    """'readout' (the untied output head, a module named 'unembed...'), 'hidden' (other
    weight matrices) or 'vector' (embeddings, norms, biases, other vectors)."""
    names = [_key_name(k).lower() for k in path]
    if any(n.startswith("unembed") for n in names[:-1]):
        return "readout"
    return "hidden" if param_kind(path, leaf) == "matrix" else "vector"


def _mup_multiplier(role: str, optimizer: str, width_mult: float) -> float:
    if optimizer in ADAM_FAMILY:
        return 1.0 / width_mult if role == "hidden" else 1.0
    if optimizer in SGD_FAMILY:
        return 1.0 if role == "hidden" else width_mult
    raise ConfigError(f"optim.name = {optimizer!r}: µP defines no learning-rate rule for it")


def mup_lr_multipliers(params: Any, model: ModelConfig | None, optimizer: str) -> Any:
    """Pytree of python floats shaped like `params`: each parameter's learning-rate
    multiplier (all 1.0 under SP or without a model config; see the table above)."""
    if model is None or model.parametrization != "mup":
        return jax.tree.map(lambda _: 1.0, params)
    m = model.width_mult
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _mup_multiplier(mup_role(path, leaf), optimizer, m), params)
