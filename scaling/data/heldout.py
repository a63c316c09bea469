"""Which document groups are held out for validation: a hash of the group's name.

Every document belongs to a *group*, the unit of the validation split (the readers of
`scaling.data.corpora` and `scaling.data.shards` set it). A group is held out when the
first 8 bytes of sha256("scalinglab-val:" + group name) fall below `val_fraction` *
2**64: membership depends on nothing but the group's name, and near copies inside one
package (the 120 `encodings/cp*.py` codec tables) are held out or trained on together.
If that selects no group of the corpus, the group with the smallest hash is held out
(and if it selected all, the one with the largest hash trains). Near-duplicates across
the split are removed afterwards (`scaling.data.dedup`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from scaling.data.order import VAL_SALT, name_hash


def held_out(group: str, val_fraction: float) -> bool:
    """Whether `group` is held out: a pure function of its name (module docstring)."""
    return name_hash(VAL_SALT, group) < int(val_fraction * 2.0**64)


def split_groups(groups: Sequence[str], val_fraction: float) -> set[str]:
    """The held-out groups among `groups`, with the fallback of the module docstring."""
    groups = sorted(set(groups))
    val = {g for g in groups if held_out(g, val_fraction)}
    if len(groups) >= 2:
        if not val:
            val = {min(groups, key=lambda g: name_hash(VAL_SALT, g))}
        elif len(val) == len(groups):
            val.discard(max(groups, key=lambda g: name_hash(VAL_SALT, g)))
    return val


def split_documents(groups: Sequence[str], val_fraction: float) -> np.ndarray:
    """Bool mask of held-out documents given each document's group (module docstring)."""
    val = split_groups(groups, val_fraction)
    return np.array([g in val for g in groups], dtype=bool)


def with_fallback(groups: list[str], is_val: np.ndarray) -> np.ndarray:
    """`is_val` as read, with the no-group/all-groups fallback applied to what was read."""
    if is_val.any() and not is_val.all():
        return is_val
    val = split_groups(groups, 1.0 if is_val.all() else 0.0)
    return np.array([g in val for g in groups], dtype=bool)
