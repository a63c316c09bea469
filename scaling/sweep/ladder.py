"""Size ladders: the model shape whose exact non-embedding N is closest to a target."""

from __future__ import annotations

import dataclasses
import math

from scaling.config import ModelConfig
from scaling.sweep.points import param_counts
from scaling.sweep.spec import SpecError


def ladder_shape(target_n: float, base_model: ModelConfig | None = None, *,
                 aspect_ratio: float | None = 32.0, n_layer: int | None = None,
                 head_dim: int | None = None, n_head: int | None = None,
                 d_multiple: int | None = None) -> dict[str, int]:
    """The (n_layer, d_model, n_head) whose exact non-embedding N is closest to `target_n`.

    The family is `base_model.arch`. For the LSTM (N ~ 8 L d^2) the rule is the same with
    8 in place of 12, no heads (head_dim / n_head are not needed and ignored), d_model a
    multiple of `d_multiple` (default 8), and the shape is (n_layer, d_model) only.

    Shape rule: d_model / n_layer near `aspect_ratio` (or `n_layer` fixed); d_model a
    multiple of `head_dim` (n_head = d_model / head_dim) or, with `n_head` fixed, of
    lcm(n_head, d_multiple); d_ff = 4 d_model. Depth is the integer nearest
    (N / (12 a^2))^(1/3) or a neighbour, width the best multiple for that depth; among
    these the score |ln(N / target)| + 0.5 |ln(aspect / a)| is minimised, so N lands
    within a few per cent of the target once d_model spans several multiples.
    """
    base_model = base_model or ModelConfig()
    lstm = base_model.arch == "lstm"
    if (head_dim is None) == (n_head is None) and not lstm:
        raise SpecError("sweep.model: give exactly one of head_dim or n_head")
    if (aspect_ratio is None) == (n_layer is None):
        raise SpecError("sweep.model: give exactly one of aspect_ratio or n_layer")
    coef = 8.0 if lstm else 12.0  # N per layer ~ coef * d^2
    if lstm:
        mult = d_multiple or 8
    elif head_dim is not None:
        mult = math.lcm(head_dim, d_multiple or head_dim)
    else:
        mult = math.lcm(n_head, d_multiple or 8)

    def count(L: int, d: int) -> int:
        heads = {} if lstm else {"n_head": d // head_dim if head_dim else n_head}
        m = dataclasses.replace(base_model, preset="", n_layer=L, d_model=d, d_ff=0, **heads)
        return param_counts(m)[0]

    if n_layer is not None:
        depths = [n_layer]
    else:
        l_star = (target_n / (coef * aspect_ratio**2)) ** (1.0 / 3.0)
        depths = sorted({max(1, math.floor(l_star) + k) for k in (-1, 0, 1, 2)})
    best = None
    for L in depths:
        d_star = math.sqrt(target_n / (coef * L))
        k0 = max(1, math.floor(d_star / mult))
        for k in range(max(1, k0 - 1), k0 + 3):
            d = k * mult
            n = count(L, d)
            score = abs(math.log(n / target_n))
            if aspect_ratio is not None:
                score += 0.5 * abs(math.log((d / L) / aspect_ratio))
            key = (round(score, 12), L, d)
            if best is None or key < best[0]:
                best = (key, L, d)
    _, L, d = best
    if lstm:
        return {"n_layer": L, "d_model": d}
    return {"n_layer": L, "d_model": d, "n_head": d // head_dim if head_dim else n_head,
            "d_ff": 0}
