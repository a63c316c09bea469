"""XLA's FLOP count of a step program with every loop trip counted.

XLA's cost analysis (`HloCostAnalysis`) counts the body of a `while` loop once, whatever
its trip count, so the count of a program with a rolled `lax.scan` / `lax.map` (the
layer scan with `scan_layers`, gradient accumulation, chunked attention, an LSTM's time
loop) is short by the loop's other trips: a 4-layer scanned transformer's step comes out
at ~0.3x the closed-form count. `step_flops` counts them:

    count = XLA(lowered program) + sum over scans s of [ length_s x count(body_s) - XLA(s) ]

where XLA(s) is what the lowered program counts for that scan (whatever jax emitted for
it: a rolled loop, a loop of unrolled copies, straight-line code), measured by lowering
the scan alone, and count(body_s) is the body's own count, loops inside it included
(recursively). A fully unrolled scan (unroll = 0 or >= length) already has every trip
in the program and needs only its body's inner loops. Every term is XLA's cost analysis
of the *lowered* (unoptimised) module, the same measure throughout, so that XLA's own
loop passes (unrolling, peeling) cannot make a term count twice. XLA's per-module figure
is additive over instructions, which the formula relies on.

A `while` loop of unknown trip count with arithmetic in its body, or a scan inside a
`cond` branch, cannot be counted: `step_flops` returns None and the reason, and the
run records NaN (never a wrong number). Tested in tests/test_accounting.py against the
closed form for scanned and unrolled models, with gradient accumulation.
"""
from __future__ import annotations

from typing import Any, Callable

class Uncountable(Exception):
    """The program has a loop whose trip count is not known when it is compiled."""


def _cost_flops(ca: Any) -> float:
    if isinstance(ca, (list, tuple)):
        return sum(float((c or {}).get("flops", 0.0)) for c in ca)
    if ca is None:
        raise Uncountable("XLA's cost analysis is not available for this backend")
    return float(ca.get("flops", 0.0))


def _lowered_flops(fn: Callable, avals: list) -> float:
    import jax

    return _cost_flops(jax.jit(fn).lower(*avals).cost_analysis())


def _structs(avals) -> list:
    import jax

    return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]


def _closed_flops(closed) -> float:
    """XLA's count of a closed jaxpr's lowering (its loops' bodies once)."""
    from jax.extend import core as jcore

    return _lowered_flops(jcore.jaxpr_as_fun(closed), _structs(closed.in_avals))


def _eqn_flops(eqn) -> float:
    """XLA's count of one equation lowered alone (literal operands folded in)."""
    from jax.extend import core as jcore

    slots = [(v.val, None) if isinstance(v, jcore.Literal) else (None, v.aval)
             for v in eqn.invars]
    avals = [a for _, a in slots if a is not None]

    def fn(*args):
        it = iter(args)
        ins = [val if aval is None else next(it) for val, aval in slots]
        return eqn.primitive.bind(*ins, **eqn.params)

    return _lowered_flops(fn, _structs(avals))


def _sub_jaxprs(params: dict):
    """(closed or open) jaxprs among an equation's parameters."""
    from jax.extend import core as jcore

    for val in params.values():
        for v in (val if isinstance(val, (tuple, list)) else (val,)):
            if isinstance(v, jcore.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jcore.Jaxpr):
                yield v


def _has_rolled_loop(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "while":
            return True
        if name == "scan":
            length, unroll = eqn.params["length"], eqn.params["unroll"]
            if not (unroll == 0 or unroll >= length):
                return True
        if any(_has_rolled_loop(j) for j in _sub_jaxprs(eqn.params)):
            return True
    return False


def _missing(jaxpr) -> float:
    """FLOPs a lowering of `jaxpr` leaves out: the trips of its scans it does not contain."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            length, unroll = eqn.params["length"], eqn.params["unroll"]
            body = eqn.params["jaxpr"]  # a ClosedJaxpr
            inner = _missing(body.jaxpr)
            if unroll == 0 or unroll >= length:  # every trip is in the program already
                total += length * inner
            else:
                total += length * (_closed_flops(body) + inner) - _eqn_flops(eqn)
        elif name == "while":
            body = eqn.params["body_jaxpr"]
            if _has_rolled_loop(body.jaxpr) or _closed_flops(body) > 0:
                raise Uncountable("a while loop of unknown trip count does arithmetic")
        elif name == "cond":
            if any(_has_rolled_loop(j) for j in _sub_jaxprs(eqn.params)):
                raise Uncountable("a loop inside a lax.cond branch")
        else:  # jit, remat, custom_jvp/vjp, shard_map, pmap: their bodies run once
            for sub in _sub_jaxprs(eqn.params):
                total += _missing(sub)
    return total


def step_flops(fn: Callable, *args: Any) -> tuple[float | None, str | None]:
    """XLA's FLOP count of one call of the traceable `fn(*args)` (arrays or
    ShapeDtypeStructs), every loop trip counted: (flops, None), or (None, why not).
    Under pmap / shard_map the count is one device's program, as XLA's."""
    import jax

    try:
        # a jitted fn (possibly with compiler options, which a nested jit may not carry):
        # its body's jaxpr; otherwise (pmap) the whole call's
        closed = fn.trace(*args).jaxpr if hasattr(fn, "trace") else jax.make_jaxpr(fn)(*args)
        flops = _closed_flops(closed) + _missing(closed.jaxpr)
    except Uncountable as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - a backend or jax without a cost model
        return None, f"XLA's cost analysis failed: {type(e).__name__}: {e}"[:300]
    if not flops > 0:
        return None, "XLA's cost analysis reports no FLOPs"
    return flops, None
