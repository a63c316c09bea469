"""Showing a plan: time estimates, the plan table and the plan as JSON records, and with
a memory target (scaling.sweep.fit) each point's memory per device."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from scaling.accounting import peaks
from scaling.accounting.memory import format_bytes
from scaling.sweep.fit import Target, check_fit
from scaling.sweep.points import Point, SweepSpec, format_si, train_flops_per_token
from scaling.sweep.validate import guess as validate_guess


ASSUMED_MFU = {"cpu": 0.3, "gpu": 0.35, "tpu": 0.4}
# Used only where scaling.accounting.peaks knows no peak (an unknown accelerator string).
_FALLBACK_PEAK = {"cpu": 5.0e10, "gpu": 1.0e14, "tpu": 2.0e14}
RUN_OVERHEAD_S = {"cpu": 8.0, "gpu": 30.0, "tpu": 30.0}  # start, data, compile
STEP_OVERHEAD_S = {"cpu": 2e-3, "gpu": 5e-3, "tpu": 5e-3}  # dispatch, logging, per step


def _family(device: Any) -> str:
    if isinstance(device, str):
        low = device.lower()
    elif device is None:
        jax = sys.modules.get("jax")
        low = jax.default_backend() if jax is not None else "cpu"
    else:
        low = str(getattr(device, "platform", device)).lower()
    return "tpu" if "tpu" in low else "cpu" if "cpu" in low else "gpu"


def achieved_flops(device: Any = None, dtype: str = "float32") -> tuple[float, str]:
    """(FLOP/s assumed achieved, how it was obtained) for the time estimates.

    `device`: None (jax's default device), a jax Device, or a device-kind string such as
    "cpu" or "NVIDIA H100 80GB HBM3". Peak from scaling.accounting.peaks (CPUs: measured once
    and cached, or $SCALINGLAB_CPU_PEAK_FLOPS), times ASSUMED_MFU. Setting
    $SCALINGLAB_ACHIEVED_FLOPS replaces the whole estimate.
    """
    env = os.environ.get("SCALINGLAB_ACHIEVED_FLOPS")
    if env:
        return float(env), "$SCALINGLAB_ACHIEVED_FLOPS"
    if device is None:
        import jax  # noqa: PLC0415 - only for the estimate, never at module level

        device = jax.devices()[0]
    fam = _family(device)
    acc = peaks
    peak, source = None, "fallback guess"
    try:
        if fam == "cpu" and os.environ.get("SCALINGLAB_CPU_PEAK_FLOPS"):
            peak, source = float(os.environ["SCALINGLAB_CPU_PEAK_FLOPS"]), "$SCALINGLAB_CPU_PEAK_FLOPS"
        elif isinstance(device, str):
            if fam == "cpu":
                peak, source = acc.measured_cpu_peak(dtype), "measured matmul peak"
            else:
                peak, source = acc.lookup_peak(device, dtype), "accounting table"
        else:
            peak = acc.peak_flops(device, dtype)
            source = "measured matmul peak" if fam == "cpu" else "accounting table"
    except (KeyError, ValueError, TypeError, LookupError):
        peak = None
    if not peak:
        peak, source = _FALLBACK_PEAK[fam], "fallback guess"
    mfu = ASSUMED_MFU[fam]
    return peak * mfu, (f"{fam} peak {peak / 1e9:.0f} GFLOP/s ({source}) x assumed MFU {mfu}")


def estimate_seconds(point: Point, device: Any = None) -> float:
    """Rough wall time of a point: overhead + steps x per-step overhead + FLOPs / achieved.

    FLOPs are the training FLOPs per token including attention and the head
    (accounting.flops_per_token(...).exact, or the same closed form) x D, plus the
    evaluations (forward only, a third of that per token); achieved FLOP/s = peak x an
    assumed MFU (ASSUMED_MFU; peak from scaling.accounting.peaks, else a fallback table;
    SCALINGLAB_ACHIEVED_FLOPS overrides both). Small models on a CPU run far below
    peak; expect a factor 2 either way until the runner's measured throughput is used.
    A cooldown branch is charged only the steps it trains itself (`Point.spent_steps`).
    """
    cfg = point.config
    fam = _family(device)
    thr, _ = achieved_flops(device, cfg.model.compute_dtype)
    fpt = train_flops_per_token(cfg.model)
    tr = cfg.train
    steps = point.spent_steps
    n_curve = steps // tr.eval_every if tr.eval_every else 0
    eval_tokens = n_curve * (tr.curve_eval_tokens or tr.eval_tokens) + tr.eval_tokens
    flops = fpt * point.tokens * point.spent_fraction + fpt / 3.0 * eval_tokens
    return RUN_OVERHEAD_S[fam] + STEP_OVERHEAD_S[fam] * steps + flops / thr


def format_plan(spec: SweepSpec, tokens_per_s: Callable[[Point], float | None] | None = None,
                device: Any = None, memory: Target | None = None) -> str:
    """The plan as a table: id, label, group, role, N, N_tot, D, C_6ND, C_exact, steps, D/N,
    warm-up, lr, est. time, derivation; a line says which accounting the budgets and D/N
    use, lines say the cooldown and bracketing rules where the spec has them, and the
    totals are the compute actually spent (with cooldown branches: trunks once plus each
    branch's cooldown, beside what separate runs would cost).

    `tokens_per_s(point)` (e.g. the runner's measured throughput record) gives the time
    as D / tokens_per_s plus the run overhead; where it returns None, or without it,
    `estimate_seconds` is used and the column says "~".

    `memory` (a scaling.sweep.fit.Target): a second table, each point's memory per device
    against it (`format_memory`).
    """
    rows = []
    total_s = 0.0
    measured_any = False
    for p in spec.points:
        tps = tokens_per_s(p) if tokens_per_s is not None else None
        if tps:
            secs = RUN_OVERHEAD_S[_family(device)] + p.tokens * p.spent_fraction / tps
            measured_any = True
            mark = ""
        else:
            secs = estimate_seconds(p, device)
            mark = "~"
        total_s += secs
        cfg = p.config
        rows.append([p.point_id, cfg.name, p.group or "-", _role(p), format_si(p.n_params),
                     format_si(p.n_params_total), format_si(p.tokens), f"{p.flops_6nd:.3g}",
                     f"{p.flops_exact:.3g}", str(cfg.train.steps), f"{p.tokens_per_param:.1f}",
                     str(cfg.optim.warmup_steps), f"{cfg.optim.lr:.3g}", mark + _hms(secs),
                     p.requested.get("derivation", "")])
    head = ["id", "label", "group", "role", "N", "N_tot", "D", "C_6ND", "C_exact", "steps",
            "D/" + ("N_tot" if spec.accounting == "total" else "N"), "warmup", "lr",
            "est.time", "derivation"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = [f"sweep {spec.name}: {len(spec.points)} points, executor {spec.executor}"
             + (f", variant {spec.variant}" if spec.variant else "")
             + f"  ({spec.path})"]
    if spec.description:
        lines.append(spec.description.strip())
    lines.append(ACCOUNTING_LINE[spec.accounting])
    lines += rule_lines(spec)
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  " + head[-1])
    for r in rows:
        cells = [c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells) + "  " + r[-1])
    spent = compute_spent(spec.points)
    lines.append(f"total: C_exact = {spent['C_exact']:.3g} FLOPs, C_6ND = {spent['C_6ND']:.3g}, "
                 f"D = {format_si(spent['D'])} tokens trained, est. time {_hms(total_s)} run one "
                 "after another")
    branched = [p for p in spec.points if p.role in ("trunk", "branch")]
    if branched:
        mine = compute_spent(branched)
        sep = compute_spent(branched, separate=True)
        lines.append(
            f"cooldown branches ({sum(p.role == 'trunk' for p in branched)} trunks, "
            f"{sum(p.role == 'branch' for p in branched)} branches): spent (trunks once + each "
            f"branch's cooldown) C_exact = {mine['C_exact']:.3g}, C_6ND = {mine['C_6ND']:.3g}; "
            f"as separate runs (every branch from step 0, no trunks) C_exact = "
            f"{sep['C_exact']:.3g}, C_6ND = {sep['C_6ND']:.3g}: "
            f"{mine['C_exact'] / sep['C_exact']:.2f}x (C_exact), "
            f"{mine['C_6ND'] / sep['C_6ND']:.2f}x (C_6ND)")
    if not measured_any or any(r[head.index("est.time")].startswith("~") for r in rows):
        dtype = spec.points[0].config.model.compute_dtype if spec.points else "float32"
        _, how = achieved_flops(device, dtype)
        lines.append(f"~ rough estimate: training FLOPs (incl. attention and head) / ({how}) "
                     "+ overheads; small models on CPUs may be 2x off either way")
    for note in spec.notes:
        lines.append(f"note: {note}")
    if memory is not None:
        lines += ["", format_memory(spec, memory)]
    return "\n".join(lines)


def format_memory(spec: SweepSpec, target: Target) -> str:
    """Memory per device of every point against `target`: parameters, optimizer state,
    gradients, activations without and with remat (the one the config uses marked *),
    total, and whether it fits; then, per point that does not, the smallest change that
    makes it fit as a ready override (scaling.sweep.fit's order)."""
    fits = [check_fit(p.config, target) for p in spec.points]
    gather = any(f.estimate.gathered for f in fits)  # a column only where a mesh has fsdp
    head = ["id", "label", "params", "optimizer", "grads", *(["gathered"] if gather else []),
            "act", "act(remat)", "total", "fits"]
    rows, fixes = [], []
    for p, fit in zip(spec.points, fits):
        e = fit.estimate
        act = [format_bytes(e.activations_no_remat), format_bytes(e.activations_remat)]
        act[e.remat] += "*"
        rows.append([p.point_id, p.config.name, format_bytes(e.params), format_bytes(e.optimizer),
                     format_bytes(e.gradients), *([format_bytes(e.gathered)] if gather else []),
                     *act, format_bytes(e.total), "yes" if fit.fits else "NO"])
        if not fit.fits:
            fixes.append(f"  {p.config.name} ({p.point_id}): {fit.advice()}")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    e = fits[0].estimate if fits else None
    lines = [f"memory per device: {target.describe()}"]
    if e is not None:
        lines.append(
            "  closed form (scaling/accounting/memory.py): parameters, optimizer state, "
            "gradients" + (", fsdp's gathered parameters and gradients" if gather else "")
            + ", activations kept for the backward pass (per micro-batch; "
            + ("the attention's T x T scores counted" if e.scores else
               "flash-style attention, no T x T scores") + "), the batch; * = the config's "
            f"model.remat; layout of the first point: driver {e.layout.driver}, state split "
            f"{e.layout.state_shards} ways, batch {e.layout.batch_shards} ways")
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    n_bad = sum(r[-1] == "NO" for r in rows)
    lines.append(f"{len(rows) - n_bad} of {len(rows)} points fit" + (
        f"; {n_bad} {'does' if n_bad == 1 else 'do'} not (`run` refuses them): the smallest "
        "change that fits, tried in the order remat, micro-batches, fsdp, then pairs, then "
        "all three:" if n_bad else ""))
    return "\n".join(lines + fixes)


def _role(p: Point) -> str:
    if p.role == "branch":
        return f"branch@{p.branched_at_step}"
    return p.role if p.role == "trunk" else "-"


def compute_spent(points, separate: bool = False) -> dict[str, float]:
    """Totals {"C_exact", "C_6ND", "D"} the points train.

    Default: what is actually spent, a trunk once and each cooldown branch only its
    cooldown (steps - k). `separate=True`: what separate runs of the same configs would
    spend instead: every point from step 0, trunks not run at all.
    """
    out = {"C_exact": 0.0, "C_6ND": 0.0, "D": 0.0}
    for p in points:
        if separate and p.role == "trunk":
            continue
        frac = 1.0 if separate else p.spent_fraction
        out["C_exact"] += p.flops_exact * frac
        out["C_6ND"] += p.flops_6nd * frac
        out["D"] += p.tokens * frac
    return out


def rule_lines(spec: SweepSpec) -> list[str]:
    """Header lines stating the cooldown and bracketing rules a spec uses."""
    lines = []
    for cd in spec.cooldown:
        lines.append(
            f"cooldown: per size one constant-lr trunk, branched at k = S - "
            f"round({cd['fraction']:g}·S) into a wsd {cd['shape']} cooldown to each length S (warm-up: the shortest "
            "branch's; a branch's C_spent is its cooldown only)")
    bracket = spec.followup.get("bracket")
    if bracket:
        lines.append(
            f"follow-up: bracket each budget's minimum: while a budget's best size (lowest "
            f"final eval loss) is its smallest or largest, add the next size outwards (next "
            f"preset, or the ladder's step snapped by the shape rule; same budget, same "
            f"accounting) up to max_extra = {bracket['max_extra']} per budget, within the "
            "ladder and tokens_per_param_range")
    for k, p in validate_guess(spec):
        lines.append(
            f"follow-up: validate: after the sweep, one run at {k:g}x the largest budget (C = "
            f"{p.compute_budget:.3g}) at the size Approach 3, fitted on the sweep's results, calls "
            f"compute-optimal, snapped by the shape rule; its loss predicted before it trains "
            f"(a guess before the fit: {p.config.model.n_layer}x{p.config.model.d_model}, "
            f"N = {format_si(p.n_accounted)}, D = {format_si(p.tokens)}, {p.steps} steps, "
            f"~{_hms(estimate_seconds(p))})")
    return lines


ACCOUNTING_LINE = {
    "total": ("accounting: total (Chinchilla): budgets are spent in C_exact = real training "
              "FLOPs (3 x every forward matmul, head and attention included) x D; "
              "D/N_tot = D / all parameters; C_6ND = 6 N D (N non-embedding) for reference"),
    "kaplan": ("accounting: kaplan: budgets are spent in C_6ND = 6 N D (N non-embedding); "
               "D/N = D / N non-embedding; C_exact = real training FLOPs for reference"),
}


def plan_records(spec: SweepSpec, memory: Target | None = None) -> list[dict[str, Any]]:
    """The planned points as plain dicts for scripts (`plan --json`), in plan order.

    Keys: id, label, group, accounting, N (non-embedding), N_total, D, steps, budget (the
    IsoFLOP budget, None off IsoFLOP axes), C (compute under the accounting), C_6ND,
    C_exact, tokens_per_param (D over the accounting's N), lr, warmup_steps, role
    ("trunk", "branch" or "run"), trunk (a branch's or trunk's trunk id, else None),
    branched_at_step (a branch's k, else None), C_spent (the compute the point itself
    spends under the accounting: a branch only its cooldown steps).

    With `memory` (a scaling.sweep.fit.Target) each record has "memory": bytes per device
    (params, optimizer, gradients, batch, activations, activations_no_remat,
    activations_remat, gathered, total; the layout), usable, fits, and where it does not fit
    fix (the ready override, or None where nothing tried fits), fix_change (the same as
    {dotted key: value}) and fix_total.
    """
    records = [{
        "id": p.point_id, "label": p.label, "group": p.group, "accounting": p.accounting,
        "N": p.n_params, "N_total": p.n_params_total, "D": p.tokens, "steps": p.steps,
        "budget": p.compute_budget, "C": p.flops, "C_6ND": p.flops_6nd,
        "C_exact": p.flops_exact, "tokens_per_param": p.tokens_per_param,
        "lr": p.config.optim.lr, "warmup_steps": p.config.optim.warmup_steps,
        "role": p.role, "trunk": p.requested.get("trunk"),
        "branched_at_step": p.branched_at_step, "C_spent": p.flops_spent,
    } for p in spec.points]
    if memory is not None:
        for r, p in zip(records, spec.points):
            fit = check_fit(p.config, memory)
            r["memory"] = {**fit.estimate.as_dict(), "usable": fit.usable, "fits": fit.fits}
            if not fit.fits:
                r["memory"].update(fix=fit.override, fix_change=fit.change,
                                   fix_total=fit.changed.total if fit.changed else None)
    return records


def _hms(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
