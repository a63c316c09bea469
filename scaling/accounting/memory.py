"""Memory per device of one training step: a closed form, and what a device holds.

    est = estimate(cfg, devices=8, platform="gpu")    # MemoryEstimate, bytes per device
    est.total, est.params, est.activations_remat, ...
    cap = device_capacity("h100-80gb")               # Capacity: usable bytes per device

The closed form (N = all parameters, embeddings included; p = bytes of model.param_dtype,
c = bytes of model.compute_dtype; t = tokens of one micro-batch on one device):

    parameters      N p
    optimizer       k N p + 32 (+4)  k moments: sgd 0; momentum, nesterov, lars 1 (the
                                     trace); adam, adamw, lamb 2 (mu, nu), in the
                                     parameters' dtype (optax's default); the training
                                     state's step, lr and schedule scalars (32 bytes) and
                                     Adam's step count (4)
    gradients       N p              one gradient per parameter, in its dtype; with
                                     train.micro_batches > 1 a float32 accumulator N 4
                                     instead (each micro-batch's gradient is added into it
                                     as the backward pass makes it), + N p when p != 4 (the
                                     final cast)
    gathered        2 N' p / m       with an fsdp axis only (see "Over devices" below)
    batch           b (T + 1) 4      the device's int32 rows (b = its share of the batch)
    activations     t (L A + head)   kept from the forward pass for the backward pass,
                                     per micro-batch (t = b / micro_batches x seq_len;
                                     2 micro-batches' worth at micro_batches = 2, whose
                                     one-trip accumulation loop XLA inlines and overlaps:
                                     measured on the CPU, no saving over 1)

per layer and token, without remat (transformer and encoder blocks):

    A = c (4D + (4D + 3F) / m) + 4 (4 + H / m)  [+ (H / m) T (8 + c) where scores are kept]

    replicated over the model axis (4D): the block's input, ln_1's output, the residual
    after attention, ln_2's output; split over it (/ m): q, k, v (3D), the attention
    output (D), the MLP's hidden pre-activation, GELU's tanh and its output (3F: the tanh
    GELU's backward needs the first two, the second matmul's weight gradient the third);
    float32: each LayerNorm's mean and 1/std (4) and the attention's row log-sum-exp (H).
    The attention kernels assumed: the CPU kernel (causal_attention_packed) and cuDNN's
    fused kernel are flash-style and keep no T x T scores; where jax falls back to XLA's
    dot_product_attention (float32 compute on GPUs, every TPU run, the encoder on CPUs)
    the [b, H, T, T] scores are kept: the float32 scores and probabilities for the
    softmax's backward, the probabilities in the compute dtype for the product with v
    (`keeps_scores`).

with model.remat (each block rematerialised): t (L c D + A + head): the blocks' inputs,
and one block's A while the backward pass recomputes it. LSTM layers (the cell in
float32): A = c 2D + 4 x 6D (the layer's input and h_{t-1}; the four gates, c_{t-1} and
tanh c_t in float32). The head, per token: c 2D + 8 + 4 x 2V / m (ln_f's input and
output and its statistics; the float32 logits kept for the loss's backward and their
gradient, split over the model axis by vocabulary as scaling/models/sharding.py does).

Over devices (`layout`): without train.mesh the drivers none / shard_map / pmap replicate
the state (factor 1) and split the batch over the devices (none: one device); with a mesh
{data, fsdp, model} parameters, gradients and moments are divided by fsdp x model (the
few small tensors that do not divide evenly are taken as divided too), the batch by
data x fsdp, and the split terms of A and the logits by model (m). With fsdp > 1 one more
term, `gathered` = 2 N' p / m: XLA's partitioner gathers a parameter whole for its use and
holds its gradient whole before the reduce-scatter. What is whole at once depends on the
layer loop (measured on 8 CPU devices, fsdp = 8, 10 x d_model 256 against 8 x 256):
unrolled (the CPU's default up to 8 layers), every parameter, N' = N (temporaries 51.9 MB
per device against 53.4 on one device); rolled (every accelerator; the CPU above 8
layers), one layer's at a time, N' = the embeddings + one layer (16.4 MB against 86.6).
FSDP thus divides the peak in a rolled loop, and only the persistent state unrolled.

Against XLA's own accounting of the compiled CPU step (tests/test_memory.py): parameters
+ optimizer state + batch equal XLA's arguments exactly, on one device and per device
under meshes; XLA's temporaries are 0.72-1.43x of activations + gradients (+ gathered)
on one device and 0.91-1.34x on 8 devices' meshes. What the closed form leaves out, and
so what XLA adds: the optimizer's transient updates, XLA's copies and layouts (on CPU the
fast-matmul transposes of scaling/models/dense.py and attention.py), the attention
kernels' score blocks while they run, a rolled layer loop's stacking copies (1.6-1.7x
on the CPU). Activations and gradients are summed although XLA frees activations as
gradients appear: an upper bound for that part. Not measured on a GPU or TPU.

Device memory: DEVICE_MEMORY holds each device's memory per chip and `device_capacity`
the part a step may use (the rule is in its docstring); `parse_size` reads "80GB",
"80GiB", "7.5e10". Imports no jax (`local_capacity` does, when called).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from scaling.accounting.counts import param_counts
from scaling.config import Config, ConfigError, ModelConfig, TrainConfig

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
# Moments (parameter-shaped tensors) in each optimizer's state (scaling/train/optimizers.py).
MOMENTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "lars": 1, "adam": 2, "adamw": 2, "lamb": 2}
STATE_SCALARS = 32  # TrainState's step, peak lr and schedule values (scaling/train/step.py)


@dataclass(frozen=True)
class Layout:
    """How one run's step is spread over its devices."""

    devices: int  # devices the run uses
    state_shards: int  # parameters, gradients, moments divided by this (fsdp x model)
    batch_shards: int  # the batch divided by this (data x fsdp, or the data-parallel devices)
    model_shards: int  # the split terms of the activations divided by this (model)
    driver: str  # none, shard_map, pmap or mesh


def layout(train: TrainConfig, devices: int = 1) -> Layout:
    """The layout of `train`'s driver on `devices` devices (train.mesh's -1 axis resolved)."""
    axes = train.mesh_axes
    if axes is None:
        kind = train.parallel if train.parallel != "auto" else (
            "shard_map" if devices > 1 else "none")
        n = 1 if kind == "none" else devices
        return Layout(n, 1, n, 1, kind)
    fixed = math.prod(v for v in axes.values() if v != -1)
    rest = -1 in axes.values()
    if (rest and devices % fixed) or (not rest and fixed != devices):  # as scaling.train.mesh
        raise ConfigError(f"train.mesh = {train.mesh}: the axes need {fixed} devices"
                          f"{' (or a multiple)' if rest else ''}; planned for {devices} "
                          "(`plan --devices N` sets how many)")
    axes = {a: devices // fixed if v == -1 else v for a, v in axes.items()}
    return Layout(math.prod(axes.values()), axes["fsdp"] * axes["model"],
                  axes["data"] * axes["fsdp"], axes["model"], "mesh")


def rolled_layers(model: ModelConfig, platform: str) -> bool:
    """Whether the block stack runs as a loop of one layer per trip: nn.scan with unroll 1
    (scaling/models/transformer.py: every accelerator; on the CPU above 8 layers, which it
    unrolls up to there). LSTM layers are counted as unrolled (the larger case)."""
    return (model.arch != "lstm" and model.scan_layers
            and (platform != "cpu" or model.n_layer > 8))


def keeps_scores(model: ModelConfig, platform: str) -> bool:
    """Whether the attention's backward keeps the [b, H, T, T] probabilities on `platform`
    ("cpu", "gpu", "tpu"): not with a flash-style kernel (the CPU's causal kernel; cuDNN's,
    which takes bfloat16); yes with XLA's dot_product_attention (see the module docstring)."""
    if model.arch == "lstm":
        return False
    if platform == "cpu":
        return model.arch == "encoder"
    if platform == "gpu":
        return model.compute_dtype != "bfloat16"
    return True


def layer_activations(model: ModelConfig, model_shards: int = 1, scores: bool = False) -> float:
    """A: bytes one layer keeps for the backward pass, per token (module docstring)."""
    c, D, m = DTYPE_BYTES[model.compute_dtype], model.d_model, model_shards
    if model.arch == "lstm":
        return c * 2 * D + 4 * 6 * D
    H, F = model.n_head, model.ff
    a = c * (4 * D + (4 * D + 3 * F) / m) + 4 * (4 + H / m)
    if scores:
        a += H / m * model.seq_len * (8 + c)
    return a


def head_activations(model: ModelConfig, model_shards: int = 1) -> float:
    """Bytes the final norm and output layer keep per token: c 2D + 8 + 4 x 2V / m."""
    return (DTYPE_BYTES[model.compute_dtype] * 2 * model.d_model + 8
            + 4 * 2 * model.vocab_size / model_shards)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one training step (see the module docstring)."""

    params: int
    optimizer: int
    gradients: int
    gathered: int  # fsdp > 1: parameters gathered whole and gradients before reduce-scatter
    batch: int
    activations_no_remat: int
    activations_remat: int
    remat: bool  # the config's model.remat: which of the two `activations` is
    layout: Layout
    scores: bool  # whether the attention's T x T probabilities are counted

    @property
    def activations(self) -> int:
        return self.activations_remat if self.remat else self.activations_no_remat

    @property
    def state(self) -> int:
        """Parameters and optimizer state: what the training state holds."""
        return self.params + self.optimizer

    @property
    def total(self) -> int:
        return (self.params + self.optimizer + self.gradients + self.gathered + self.batch
                + self.activations)

    def as_dict(self) -> dict:
        return {"params": self.params, "optimizer": self.optimizer, "gradients": self.gradients,
                "gathered": self.gathered,
                "batch": self.batch, "activations": self.activations,
                "activations_no_remat": self.activations_no_remat,
                "activations_remat": self.activations_remat, "remat": self.remat,
                "total": self.total, "devices": self.layout.devices,
                "driver": self.layout.driver, "state_shards": self.layout.state_shards,
                "batch_shards": self.layout.batch_shards,
                "model_shards": self.layout.model_shards, "attention_scores": self.scores}


def estimate(cfg: Config, devices: int = 1, platform: str = "gpu") -> MemoryEstimate:
    """Memory per device of one training step of `cfg` on `devices` devices of `platform`."""
    model, train = cfg.model, cfg.train
    lay = layout(train, devices)
    p, c = DTYPE_BYTES[model.param_dtype], DTYPE_BYTES[model.compute_dtype]
    n_all = param_counts(model).total
    n = math.ceil(n_all / lay.state_shards)
    k = MOMENTS[cfg.optim.name]
    rows = math.ceil(train.batch_size / lay.batch_shards)
    micro = train.micro_batches
    if train.noise_scale and micro == 1 and lay.batch_shards == 1:
        micro = 2  # scaling.train.step: two half-batch gradients
    # micro_batches = 2: the step's accumulation loop has one trip, which XLA inlines, and
    # then both micro-batches' activations are live together (measured on the CPU)
    tokens = math.ceil(rows / micro) * model.seq_len * (2 if micro == 2 else 1)
    scores = keeps_scores(model, platform)
    layer = layer_activations(model, lay.model_shards, scores)
    head = head_activations(model, lay.model_shards)
    window = 2 * model.seq_len if cfg.data.objective == "mlm" else model.seq_len + 1
    fsdp = lay.state_shards > lay.model_shards
    non_embedding, embedding, _ = param_counts(model)
    # fsdp gathers whole what a step uses: every parameter at once where the layers are
    # unrolled, one layer (and the embeddings and head) at a time in a rolled layer loop
    gathered = n_all if not rolled_layers(model, platform) else \
        embedding + math.ceil(non_embedding / model.n_layer)
    return MemoryEstimate(
        params=n * p,
        optimizer=k * n * p + STATE_SCALARS + 4 * (k == 2),
        gradients=n * p if micro == 1 else n * 4 + (n * p if p != 4 else 0),
        gathered=2 * math.ceil(gathered / lay.model_shards) * p if fsdp else 0,
        batch=rows * window * 4,
        activations_no_remat=round(tokens * (model.n_layer * layer + head)),
        activations_remat=round(tokens * (model.n_layer * c * model.d_model + layer + head)),
        remat=model.remat, layout=lay, scores=scores)


# --------------------------------------------------------------------------------------
# What a device holds
# --------------------------------------------------------------------------------------

# name -> (memory per chip in bytes, platform). GPUs: the data sheet's size, which is GiB
# for these boards (nvidia-smi shows a little less: 81,559 MiB on an H100 80GB, the rest
# reserved by the driver); L4: 24 GB. TPUs: HBM per chip (v4 32 GiB, v5e 16 GiB, v5p 95 GiB).
DEVICE_MEMORY: dict[str, tuple[int, str]] = {
    "h100-80gb": (80 * GiB, "gpu"),
    "h200-141gb": (141 * GiB, "gpu"),
    "a100-40gb": (40 * GiB, "gpu"),
    "a100-80gb": (80 * GiB, "gpu"),
    "v100-32gb": (32 * GiB, "gpu"),
    "l4-24gb": (24 * 10**9, "gpu"),
    "tpu-v4": (32 * GiB, "tpu"),
    "tpu-v5e": (16 * GiB, "tpu"),
    "tpu-v5p": (95 * GiB, "tpu"),
}
GPU_DEFAULT_FRACTION = 0.75  # XLA's GPU allocator: 75 % of the memory unless told otherwise
TPU_FRACTION = 0.95  # an assumed 5 % reserve for the runtime and the program (not measured)
FRACTION_ENV = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


@dataclass(frozen=True)
class Capacity:
    """The bytes one step may use per device, and where the number comes from."""

    usable: int
    platform: str  # "cpu", "gpu" or "tpu": which attention kernel the estimate assumes
    source: str  # one line, e.g. "h100-80gb: 80 GiB x 0.75 (XLA's default GPU fraction)"


def device_capacity(name: str) -> Capacity:
    """Usable memory of a DEVICE_MEMORY device. The rule: GPUs, the chip's memory x the
    fraction XLA's allocator may take: $XLA_CLIENT_MEM_FRACTION (or the older
    $XLA_PYTHON_CLIENT_MEM_FRACTION) when set in this environment, else XLA's default
    0.75 (conservative where a newer jax lets its pool grow past it); TPUs, the HBM x
    0.95. ConfigError naming --device and the allowed names for an unknown one."""
    key = name.strip().lower()
    if key not in DEVICE_MEMORY:
        raise ConfigError(f"--device {name!r}: unknown device; allowed: "
                          f"{', '.join(DEVICE_MEMORY)} (or --device-memory SIZE)")
    physical, platform = DEVICE_MEMORY[key]
    if platform == "tpu":
        return Capacity(int(physical * TPU_FRACTION), platform,
                        f"{key}: {format_bytes(physical)} x {TPU_FRACTION} (a 5 % reserve)")
    fraction, why = GPU_DEFAULT_FRACTION, "XLA's default GPU fraction"
    for env in FRACTION_ENV:
        if os.environ.get(env):
            try:
                fraction, why = float(os.environ[env]), f"${env}"
            except ValueError:
                raise ConfigError(f"${env} = {os.environ[env]!r}: expected a fraction such "
                                  "as 0.9") from None
            break
    if not 0 < fraction <= 1:
        raise ConfigError(f"{why} = {fraction}: expected a fraction in (0, 1]")
    return Capacity(int(physical * fraction), platform,
                    f"{key}: {format_bytes(physical)} x {fraction:g} ({why})")


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str, option: str = "--device-memory") -> int:
    """Bytes from "80GB" (10^9), "80GiB" (2^30), "7.5e10" (bytes), "512 MiB"; ConfigError
    naming `option` otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS or not float(m.group(1)) > 0:
        raise ConfigError(f"{option} {text!r}: expected a size such as 80GB, 80GiB, 512MiB "
                          "or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def local_capacity() -> Capacity | None:
    """The local accelerator's allocator limit (`memory_stats()["bytes_limit"]` of the first
    local device), or None on a CPU or where jax reports none."""
    import jax

    dev = jax.local_devices()[0]
    if dev.platform == "cpu":
        return None
    try:
        limit = (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        limit = None
    if not limit:
        return None
    platform = "tpu" if dev.platform == "tpu" else "gpu"
    return Capacity(int(limit), platform,
                    f"{dev.device_kind}: bytes_limit {format_bytes(limit)} (jax's allocator)")


def format_bytes(n: float) -> str:
    """1536 -> '1.50 KiB', 8.6e10 -> '80.1 GiB' (three significant figures)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"
