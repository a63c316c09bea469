"""Coordinate check (Yang et al. 2022, Tensor Programs V, as microsoft/mup's test does it).

    python -m scaling.coordcheck CONFIG [--widths 64,128,256] [section.key=value ...]
                                        [--steps 4] [--out DIR]

Trains the config's model at several widths d_model -- fixed depth, heads scaled with
width (the config's head size kept), the same data batches, the config's optimizer at its
peak learning rate held constant (no warm-up, no decay) -- and records, at each of the
first `--steps` steps t = 1, 2, ..., the mean absolute value of every module's output on
that step's batch, measured before the step's update (t = 1 is the initialisation):

    embedding   the token embedding's output
    attn_i      block i's attention output (before the residual add)
    mlp_i       block i's MLP output (before the residual add)
    ln_f        the final norm's output
    logits      the output logits (after µP's output multiplier)

The statistic is microsoft/mup's `l1` (mean |x| over every coordinate of the batch), the
activations themselves, not their change from initialisation: that is what their numeric
test compares (mup/test: for each module and t = 1, 2, 3, l1(widest) / l1(narrowest)
within [1/1.2, 1.2]). In µP every coordinate stays Theta(1) as width grows, so the ratio
stays near 1; under SP the updates of hidden weights grow with width (a step of ~lr per
entry summed over fan_in coordinates), so activations blow up with width after a step or
two. The one exception is a module whose output is exactly zero at every width (µP's
zero-initialised readout at t = 1): it passes, as in microsoft/mup's test. With a random
(not zero) readout, µP's logits at initialisation shrink like width^-1/2 by design (they
vanish in the infinite-width limit), so the t = 1 logits fail the ratio test; check µP
configs with model.mup_zero_readout = true, as microsoft/mup's test does.

Output: a table of per-module ratios widest/narrowest at each step, `coordcheck.png` (one
panel per step, mean |activation| against width per module, log-log, like microsoft/mup's
figures) and `coordcheck.json` in --out (default runs/coordcheck/<config name>-<sp|mup>).
Exit status: 0; 1 when the config is µP and a ratio is outside [1/1.2, 1.2]; 2 for a bad
config or argument (nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scaling.config import Config, ConfigError, from_dict, read_config_file

DEFAULT_WIDTHS = (64, 128, 256)  # 4x; width 32 (2 heads of 16) is too narrow: its
#                                  finite-width deviations alone reach ~1.4 by t = 3
TOLERANCE = 1.2  # microsoft/mup's test: ratio within [1/1.2, 1.2]
RUN_SECTIONS = ("name", "model", "data", "optim", "train")


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


def load_check_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """A run config from `path`; a sweep spec's run sections ([model] [data] [optim]
    [train]) are used as the config, its sweep tables ignored. `base`/`extends` are not
    followed: give a self-contained file."""
    path = Path(path)
    raw = read_config_file(path)
    if "base" in raw or "extends" in raw:
        raise ConfigError(f"{path}: 'base'/'extends' are not followed by the coordinate "
                          "check; give a self-contained config")
    raw = {k: v for k, v in raw.items() if k in RUN_SECTIONS}
    raw.setdefault("name", path.stem)
    return from_dict(raw, list(overrides))


def width_config(cfg: Config, width: int) -> Config:
    """`cfg` at d_model = width: same depth and head size (heads scaled with width), the
    layers unscanned (so every block's modules are named), d_ff scaled with width."""
    head_dim = cfg.model.head_dim
    if width % head_dim:
        raise ConfigError(f"--widths: {width} is not a multiple of the head size "
                          f"{head_dim} (model.d_model / model.n_head)")
    d_ff = 0 if cfg.model.d_ff == 0 else cfg.model.d_ff * width // cfg.model.d_model
    model = dataclasses.replace(cfg.model, preset="", d_model=width, n_head=width // head_dim,
                                d_ff=d_ff, scan_layers=False, remat=False)
    return dataclasses.replace(cfg, model=model).validate()


# --------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------


def module_l1(intermediates: dict, n_layer: int) -> dict[str, float]:
    """Mean |output| of the modules the check follows, from flax's captured intermediates."""

    def out(tree):
        value = tree["__call__"][0]
        return float(np.mean(np.abs(np.asarray(value, np.float64))))

    stats = {"embedding": out(intermediates["token_embed"])}
    for i in range(n_layer):
        block = intermediates[f"block_{i}"]
        stats[f"attn_{i}"] = out(block["attn"])
        stats[f"mlp_{i}"] = out(block["mlp"])
    stats["ln_f"] = out(intermediates["ln_f"])
    stats["logits"] = out(intermediates)
    return stats


def measure_width(cfg: Config, batches: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Per step t = 1..len(batches): mean |output| per module on batch t, before update t."""
    import jax
    import jax.numpy as jnp
    import optax

    from scaling.models import build, init_params
    from scaling.train.optimizers import make_runtime_optimizer
    from scaling.train.step import next_token_loss

    model = build(cfg.model)
    optimizer = make_runtime_optimizer(cfg.optim, cfg.model)
    lr = jnp.float32(cfg.optim.lr)

    def loss_fn(params, batch):
        logits = model.apply({"params": params}, batch[:, :-1])
        return next_token_loss(logits, batch[:, 1:])

    @jax.jit
    def probe(params, batch):
        _, state = model.apply({"params": params}, batch[:, :-1],
                               capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]

    @jax.jit
    def step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params, lr=lr)
        return optax.apply_updates(params, updates), opt_state

    params = init_params(cfg.model, jax.random.key(cfg.train.seed))
    opt_state = optimizer.init(params)
    rows = []
    for batch in batches:
        batch = jnp.asarray(batch, jnp.int32)
        rows.append(module_l1(jax.device_get(probe(params, batch)), cfg.model.n_layer))
        params, opt_state = step(params, opt_state, batch)
    return rows


def data_batches(cfg: Config, steps: int) -> list[np.ndarray]:
    """The first `steps` training batches of the config's corpus (same for every width)."""
    from scaling.data.dataset import load_corpus

    data = load_corpus(cfg.data, cfg.model.seq_len)
    return [np.asarray(data.train_batch(t, cfg.train.batch_size, cfg.train.batch_seed))
            for t in range(steps)]


def coord_check(cfg: Config, widths: Sequence[int], steps: int = 4,
                batches: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """Mean |activation| per (width, step, module) and the widest/narrowest ratios.

    Returns {"widths", "steps", "parametrization", "l1": {width: [{module: value}]},
    "ratio": [{module: ratio}] per step, "passed": bool}."""
    widths = sorted(int(w) for w in widths)
    if len(widths) < 2 or widths[0] <= 0:
        raise ConfigError(f"--widths = {widths}: need at least two positive widths")
    if steps < 1:
        raise ConfigError(f"--steps = {steps}: must be >= 1")
    configs = {w: width_config(cfg, w) for w in widths}  # all checked before any training
    if batches is None:
        batches = data_batches(cfg, steps)
    batches = list(batches)[:steps]
    l1 = {w: measure_width(configs[w], batches) for w in widths}
    ratios = [ratio_row(l1[widths[0]][t], l1[widths[-1]][t]) for t in range(len(batches))]
    return {"widths": widths, "steps": len(batches),
            "parametrization": cfg.model.parametrization, "l1": l1, "ratio": ratios,
            "passed": all(within(r) for row in ratios for r in row.values())}


def ratio_row(narrow: dict[str, float], wide: dict[str, float]) -> dict[str, float]:
    """l1(widest) / l1(narrowest) per module; 1.0 where both are exactly zero (a
    zero-initialised readout at t = 1), inf where only the narrow one is."""
    out = {}
    for name, a in narrow.items():
        b = wide[name]
        out[name] = 1.0 if a == 0 and b == 0 else (b / a if a else float("inf"))
    return out


def within(ratio: float, tol: float = TOLERANCE) -> bool:
    return 1.0 / tol <= ratio <= tol


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def format_table(result: dict[str, Any]) -> str:
    """Modules as rows, steps as columns: l1(widest)/l1(narrowest), '*' outside the band."""
    widths = result["widths"]
    modules = list(result["ratio"][0])
    head = f"{'module':<10}" + "".join(f"{'t=' + str(t + 1):>10}" for t in range(result['steps']))
    lines = [f"{result['parametrization']}: mean |activation| ratio, width {widths[-1]} / "
             f"{widths[0]} ({widths[-1] // widths[0]}x); * outside [1/{TOLERANCE}, {TOLERANCE}]",
             head]
    for m in modules:
        cells = []
        for row in result["ratio"]:
            r = row[m]
            cells.append(f"{r:9.3f}{' ' if within(r) else '*'}")
        lines.append(f"{m:<10}" + "".join(cells))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per step: mean |activation| against width, one line per module, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths, steps = result["widths"], result["steps"]
    modules = list(result["ratio"][0])
    fig, axes = plt.subplots(1, steps, figsize=(3.2 * steps, 3.4), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for t, ax in enumerate(axes[0]):
        for k, m in enumerate(modules):
            ys = [result["l1"][w][t][m] or np.nan for w in widths]  # exact 0: not drawn
            ax.plot(widths, ys, marker="o", ms=3, color=cmap(k / max(1, len(modules) - 1)),
                    label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"t = {t + 1}")
        ax.set_xlabel("width (d_model)")
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"coordinate check: {result['parametrization']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = dict(result, l1={str(w): v for w, v in result["l1"].items()})
    (out / "coordcheck.json").write_text(json.dumps(data, indent=1))
    plot(result, out / "coordcheck.png")


def _parse_widths(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(f"--widths = {text!r}: comma-separated integers, e.g. 64,128,256")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scaling.coordcheck",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="a run config (TOML), or a self-contained sweep spec")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--widths", default=",".join(map(str, DEFAULT_WIDTHS)))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", help="output folder (default runs/coordcheck/<name>-<sp|mup>)")
    args = p.parse_args(argv)
    try:
        cfg = load_check_config(args.config, args.overrides)
        widths = _parse_widths(args.widths)
        result = coord_check(cfg, widths, args.steps)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/coordcheck/{cfg.name}-{cfg.model.parametrization}")
    write(result, out)
    print(format_table(result))
    print(f"wrote {out / 'coordcheck.png'} and {out / 'coordcheck.json'}")
    if cfg.model.parametrization == "mup" and not result["passed"]:
        print("µP coordinate check FAILED: a module's activations change with width",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
