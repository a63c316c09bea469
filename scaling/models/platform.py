"""The backend the models are built for: the one JAX runs on, or one a lowering targets.

The models pick kernels by backend: on CPU the chunked attention kernel and the row-major
weight gradient of scaling.models.dense, elsewhere `jax.nn.dot_product_attention` (cuDNN's
fused kernel on GPUs) and plain einsums. `building_for("cuda")` makes them trace as they
would on a GPU, so that a step can be lowered for an accelerator on a CPU-only machine
(tests/test_lowering.py). cuDNN's attention checks for the cuDNN library when traced and
cannot be traced here, so `building_for` takes the attention implementation to use in
its place ("xla": dot_product_attention's XLA form, what a GPU without cuDNN runs).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

_TARGET: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "target_backend", default=None)

PLATFORM_BACKENDS = {"cuda": "gpu", "rocm": "gpu", "gpu": "gpu", "tpu": "tpu", "cpu": "cpu"}


def backend() -> str:
    """"cpu", "gpu" or "tpu": what the models are being built for."""
    target = _TARGET.get()
    return target[0] if target else jax.default_backend()


def attention_impl() -> str | None:
    """The attention implementation `building_for` imposes on "auto", or None."""
    target = _TARGET.get()
    return target[1] if target else None


@contextlib.contextmanager
def building_for(platform: str, attention: str | None = "xla") -> Iterator[None]:
    """While tracing under it, the models choose their kernels for `platform` ("cuda",
    "rocm", "tpu", "cpu"), with attention "auto" meaning `attention` (None: the platform's
    own choice, e.g. cuDNN's kernel on GPUs)."""
    token = _TARGET.set((PLATFORM_BACKENDS[platform], attention))
    try:
        yield
    finally:
        _TARGET.reset(token)
