"""Device peak FLOP/s and MFU: a table of dense peaks for accelerators, a measured peak for CPUs.

MFU is measured against the peak of the arithmetic the matmuls really run in
(`peak_precision`: TF32 for float32 on GPUs at jax's default matmul precision), which the
run records beside the MFU. On a CPU the peak is measured once per machine (a float32 or
bfloat16 matmul, cached on disk) unless SCALINGLAB_CPU_PEAK_FLOPS sets it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

TERA = 1e12
# Dense (no sparsity) peaks per chip, from the vendors' data sheets. "float32" is the
# IEEE FP32 rate (CUDA cores on GPUs); "tfloat32" the tensor-core TF32 rate, which is what
# XLA uses on Ampere+ for float32 matmuls at jax's default matmul precision. On TPUs a
# float32 matmul at default precision is a single bf16 MXU pass, so float32 = bfloat16.
# Patterns are tried in order against the lower-cased `device.device_kind`.
PEAK_TABLE: list[tuple[str, dict[str, float]]] = [
    (r"h100.*pcie", {"float32": 51.2 * TERA, "tfloat32": 378 * TERA, "bfloat16": 756 * TERA}),
    (r"h100.*nvl", {"float32": 60.0 * TERA, "tfloat32": 418 * TERA, "bfloat16": 835 * TERA}),
    (r"h100|gh200", {"float32": 66.9 * TERA, "tfloat32": 494.7 * TERA, "bfloat16": 989.4 * TERA}),
    (r"h200", {"float32": 66.9 * TERA, "tfloat32": 494.7 * TERA, "bfloat16": 989.4 * TERA}),
    (r"a100", {"float32": 19.5 * TERA, "tfloat32": 156 * TERA, "bfloat16": 312 * TERA}),
    (r"tpu\s*v4", {"float32": 275 * TERA, "tfloat32": 275 * TERA, "bfloat16": 275 * TERA}),
    (r"tpu\s*v5\s*(lite|e)|tpu\s*v5e", {"float32": 197 * TERA, "tfloat32": 197 * TERA,
                                         "bfloat16": 197 * TERA}),
    (r"tpu\s*v5p|tpu\s*v5$", {"float32": 459 * TERA, "tfloat32": 459 * TERA, "bfloat16": 459 * TERA}),
]

CPU_PEAK_ENV = "SCALINGLAB_CPU_PEAK_FLOPS"
_cpu_peak_memo: dict[str, float] = {}


def _dtype_name(dtype: Any) -> str:
    name = str(getattr(dtype, "__name__", None) or getattr(dtype, "name", None) or dtype)
    name = name.lower().replace("jnp.", "").replace("numpy.", "")
    if name in ("bf16", "bfloat16"):
        return "bfloat16"
    if name in ("tf32", "tfloat32"):
        return "tfloat32"
    if name in ("fp32", "f32", "float32", "float"):
        return "float32"
    raise ValueError(f"peak_flops: unsupported dtype {dtype!r}; use float32, tfloat32 or bfloat16")


def lookup_peak(device_kind: str, dtype: Any = "bfloat16") -> float | None:
    """Table peak for a device kind string, or None if the kind is not in the table."""
    kind = device_kind.lower().strip()
    dt = _dtype_name(dtype)
    for pattern, peaks in PEAK_TABLE:
        if re.search(pattern, kind):
            return peaks[dt]
    return None


# What a matmul of 32-bit inputs actually runs as, by jax's `jax_default_matmul_precision`
# (None = not set). GPUs (Ampere and newer, every GPU in PEAK_TABLE): DEFAULT and HIGH both
# run float32 matmuls on the tensor cores as TF32, HIGHEST as true FP32 on the CUDA cores.
# TPUs: DEFAULT is one bfloat16 pass, HIGH three, HIGHEST six. Dot-algorithm presets
# ('TF32_TF32_F32', 'BF16_BF16_F32_X3', ...) name the operand type and pass count
# themselves. A k-pass algorithm's peak is the single-pass peak / k.
_GPU_F32 = {None: "tf32", "default": "tf32", "fastest": "tf32", "bfloat16": "tf32",
            "high": "tf32", "tensorfloat32": "tf32", "bfloat16_3x": "tf32",
            "highest": "fp32", "float32": "fp32"}
_TPU_F32 = {None: "bf16", "default": "bf16", "fastest": "bf16", "bfloat16": "bf16",
            "high": "bf16_x3", "tensorfloat32": "bf16_x3", "bfloat16_3x": "bf16_x3",
            "highest": "bf16_x6", "float32": "bf16_x6"}
# precision label -> (PEAK_TABLE column, passes)
_PRECISION_RATE = {
    "bf16": ("bfloat16", 1), "bf16_x3": ("bfloat16", 3), "bf16_x6": ("bfloat16", 6),
    "bf16_x9": ("bfloat16", 9), "fp16": ("bfloat16", 1), "tf32": ("tfloat32", 1),
    "tf32_x3": ("tfloat32", 3), "fp32": ("float32", 1),
}
_PRESET_OPERANDS = {"BF16": "bf16", "F16": "fp16", "TF32": "tf32", "F32": "fp32"}


def _preset_precision(preset: str) -> str:
    """'TF32_TF32_F32' -> 'tf32', 'BF16_BF16_F32_X3' -> 'bf16_x3', 'F32_F32_F32' -> 'fp32'."""
    parts = preset.upper().split("_")
    label = _PRESET_OPERANDS.get(parts[0])
    if label is None:
        raise ValueError(
            f"jax_default_matmul_precision = {preset!r}: no peak FLOP/s for that algorithm; "
            f"supported operand types: {', '.join(_PRESET_OPERANDS)}"
        )
    passes = parts[-1] if parts[-1].startswith("X") else ""
    return f"{label}_{passes.lower()}" if passes else label


def _float32_matmul_precision(platform: str, setting: str | None) -> str:
    """The arithmetic a float32 matmul runs in on `platform` under `setting`."""
    if setting is not None and setting.lower() not in _GPU_F32:
        return _preset_precision(setting)
    table = _TPU_F32 if platform == "tpu" else _GPU_F32
    return table[None if setting is None else setting.lower()]


def peak_precision(device: Any = None, dtype: Any = "float32") -> str:
    """Which arithmetic `peak_flops(device, dtype)` is the peak of.

    'bf16' for bfloat16 compute; for float32 compute the precision XLA really uses for
    the matmuls, following `jax_default_matmul_precision` (read at call time, so a
    `jax.default_matmul_precision(...)` context counts): on GPUs 'tf32' unless it is
    'highest'/'float32' ('fp32'); on TPUs 'bf16' (one pass) / 'bf16_x3' / 'bf16_x6';
    'tf32' when `dtype` is tfloat32 explicitly. CPUs: 'cpu-measured' (a measured matmul
    peak) or 'cpu-configured' ($SCALINGLAB_CPU_PEAK_FLOPS).
    """
    import jax

    if device is None:
        device = jax.devices()[0]
    dt = _dtype_name(dtype)
    if device.platform == "cpu":
        return "cpu-configured" if os.environ.get(CPU_PEAK_ENV) else "cpu-measured"
    if dt == "bfloat16":
        return "bf16"
    if dt == "tfloat32":
        return "tf32"
    return _float32_matmul_precision(device.platform, jax.config.jax_default_matmul_precision)


def peak_flops(device: Any = None, dtype: Any = "float32") -> float:
    """Dense peak FLOP/s of one device for matmuls of `dtype` inputs, at the precision
    they actually run in (`peak_precision`): a float32 run on an A100/H100 is measured
    against the TF32 tensor-core peak, not the 8-16x lower FP32 CUDA-core peak, since
    that is what XLA executes at jax's default matmul precision.

    Accelerators come from PEAK_TABLE (an unknown accelerator raises). CPUs use
    $SCALINGLAB_CPU_PEAK_FLOPS when set, else a measured matmul peak (cached).
    """
    import jax

    if device is None:
        device = jax.devices()[0]
    dt = _dtype_name(dtype)
    if device.platform == "cpu":
        if os.environ.get(CPU_PEAK_ENV):
            return float(os.environ[CPU_PEAK_ENV])
        return measured_cpu_peak("bfloat16" if dt == "bfloat16" else "float32")
    column, passes = _PRECISION_RATE[peak_precision(device, dt)]
    peak = lookup_peak(device.device_kind, column)
    if peak is None:
        raise KeyError(
            f"no peak FLOP/s known for device kind {device.device_kind!r}; add it to "
            "scaling.accounting.peaks.PEAK_TABLE"
        )
    return peak / passes


def _cpu_signature() -> str:
    model = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}|{os.cpu_count()}"


def measured_cpu_peak(dtype: str = "float32", size: int = 1024, seconds: float = 0.3) -> float:
    """Best observed FLOP/s of a square jitted matmul on the default CPU device.

    Each repetition is rated by wall time and by process CPU time spread over the
    usable cores, whichever is faster, so that a machine shared with other jobs
    (which stretches wall time, not CPU time) does not understate the peak.
    Measured once (a few hundred ms), then cached in-process and in
    `cache_dir()/cpu_peak.json`, keyed by CPU model, core count and dtype.
    """
    key = f"{_cpu_signature()}|{dtype}"
    if key in _cpu_peak_memo:
        return _cpu_peak_memo[key]
    from scaling.runtime import cache_dir

    path = cache_dir() / "cpu_peak.json"
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        _cpu_peak_memo[key] = float(table[key])
        return _cpu_peak_memo[key]

    import jax
    import jax.numpy as jnp

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    a = jnp.ones((size, size), dt)
    b = jnp.ones((size, size), dt)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    best = float("inf")
    end = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < end:
        t, c = time.perf_counter(), time.process_time()
        mm(a, b).block_until_ready()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        best = min(best, wall, max(cpu / cores, 1e-9))
        reps += 1
    peak = 2.0 * size**3 / best
    _cpu_peak_memo[key] = peak
    table[key] = peak
    try:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(path)
    except OSError:
        pass
    return peak


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over peak FLOP/s."""
    return tokens_per_s * flops_per_token / peak
