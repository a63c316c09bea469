"""Training throughput of the project's real step, against a PyTorch eager baseline.

    python benchmarks/throughput.py              # CPU table (JAX vs PyTorch), GPU section on GPUs
    python benchmarks/throughput.py --quick      # fewer shapes, shorter timings
    python benchmarks/throughput.py --no-torch   # JAX only
    python benchmarks/throughput.py --torch-python /path/to/venv/bin/python
                                                 # PyTorch from another environment

For every shape the table gives N (non-embedding parameters), tokens/s, achieved FLOP/s
(tokens/s x the exact training FLOPs per token of scaling.accounting.counts), MFU against the
device's dense peak (on CPU: $SCALINGLAB_CPU_PEAK_FLOPS or a measured matmul peak),
and compile time: cold (an empty persistent cache) / warm (loaded from the cache).
The JAX step is `scaling.train.step.Trainer(cfg).compile_step()`, the jitted, donated
`(state, batch_Bx(T+1)) -> (state, metrics)` that training runs.

The machine may be shared, so JAX and PyTorch steps are measured in alternating
rounds within one process and each side's median step time is used; the ratio is
JAX tokens/s over PyTorch tokens/s.

The GPU section (only where jax.default_backend() == "gpu") times GPT-2 small
(12 layers, d 768, 12 heads, T 1024, vocab 50304, bf16 compute, fp32 params) and
prints MFU against the dense bf16 peak of the device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scaling.runtime import tune_host_runtime  # noqa: E402  (before jax starts)

tune_host_runtime()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from scaling.accounting import counts as accounting  # noqa: E402
from scaling.accounting import peaks  # noqa: E402
from scaling.config import Config, ModelConfig, OptimConfig, TrainConfig  # noqa: E402
from scaling.config.presets import PRESETS  # noqa: E402

# (name, n_layer, d_model, n_head, seq_len, batch, vocab): issue 15's three shapes, the
# ones it measured against nanoGPT's model.py (c1, c2, c3)
CPU_SHAPES = [
    ("c1 L2 d128 T128 B32", 2, 128, 4, 128, 32, 256),
    ("c2 L4 d256 H4 T256", 4, 256, 4, 256, 16, 256),
    ("c3 L6 d384 V512 B8", 6, 384, 6, 256, 8, 512),
]
LADDER = ["n100k", "n800k", "n3m", "n6m"]  # presets, at T128 B32, vocab 256


def make_config(n_layer, d_model, n_head, seq_len, batch, vocab=256, **model_kw) -> Config:
    model = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len,
                        vocab_size=vocab, **model_kw)
    optim = OptimConfig(name="adamw", lr=1e-3, schedule="constant", weight_decay=0.1,
                        b1=0.9, b2=0.95, clip_norm=1.0)
    return Config(name="bench", model=model, optim=optim,
                  train=TrainConfig(steps=1000, batch_size=batch, progress=False)).validate()


def make_jax_step(cfg: Config):
    """(compiled step, state, batch, cold compile s, warm compile s)."""
    try:
        from scaling.train.step import Trainer
    except ImportError:  # pragma: no cover - only before train.py existed
        Trainer = None
    rng = np.random.default_rng(0)
    m = cfg.model
    batch = jnp.asarray(rng.integers(0, m.vocab_size, (cfg.train.batch_size, m.seq_len + 1)),
                        jnp.int32)
    if Trainer is not None:
        trainer = Trainer(cfg)
        state = trainer.init_state(0)
        step = trainer.compile_step()
    else:  # equivalent stand-in: value_and_grad of the loss + optax.adamw
        import optax
        from scaling.models import init_params
        from scaling.models.transformer import loss_fn

        opt = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(1e-3, b1=0.9, b2=0.95, weight_decay=0.1))
        params = init_params(m, jax.random.key(0))
        state = (params, opt.init(params))

        def body(state, batch):
            p, o = state
            loss, g = jax.value_and_grad(loss_fn)(p, batch, m)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), {"loss": loss}

        step = jax.jit(body, donate_argnums=0)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    cold = time.perf_counter() - t0
    jax.clear_caches()  # so the next compile is served by the persistent cache, not memory
    t0 = time.perf_counter()
    step.lower(state, batch).compile()
    warm = time.perf_counter() - t0
    return compiled, state, batch, cold, warm


class JaxRunner:
    def __init__(self, cfg: Config):
        self.compiled, self.state, self.batch, self.cold, self.warm = make_jax_step(cfg)
        self.run(2)  # warm-up

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            self.state, metrics = self.compiled(self.state, self.batch)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t)
        return times


class TorchRunner:
    """benchmarks/torch_baseline.py in a worker process, driven over a pipe."""

    def __init__(self, n_layer, d_model, n_head, seq_len, batch, vocab=256, python=None,
                 gelu="tanh"):
        import subprocess

        script = Path(__file__).with_name("torch_baseline.py")
        self.proc = subprocess.Popen(
            [python or sys.executable, str(script), "--serve", *map(str, (n_layer, d_model, n_head,
                                                                  seq_len, batch, vocab, 0)),
             gelu],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError("torch baseline worker failed to start (is torch installed?)")
        self.version, self.threads = ready[2], int(ready[3])

    def run(self, n: int) -> list[float]:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        return [float(x) for x in self.proc.stdout.readline().split()]

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except OSError:
            pass
        self.proc.wait(timeout=30)


def alternate(runners, seconds: float, rounds_min: int = 3, per_round: int = 3):
    """Alternate rounds of `per_round` steps on each runner; step times per runner.

    The first step of each round is dropped: it can overlap with the other side's
    worker threads still spinning down.
    """
    times = [[] for _ in runners]
    end = time.perf_counter() + seconds
    r = 0
    while r < rounds_min or time.perf_counter() < end:
        for i, runner in enumerate(runners):
            times[i] += runner.run(per_round)[1:]
        r += 1
        if r >= 40:
            break
    return times


def fmt_si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def cpu_table(shapes, seconds: float, with_torch: bool, torch_python: str | None = None,
              torch_gelu: str = "tanh") -> None:
    peak = peaks.peak_flops(jax.devices()[0], "float32")
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} "
          f"({os.cpu_count()} cores), peak {fmt_si(peak)}FLOP/s fp32 "
          f"({'env' if os.environ.get(peaks.CPU_PEAK_ENV) else 'measured matmul'})")
    print("tok/s: median step (best step in brackets); FLOP/s and MFU from the median and the "
          "exact FLOPs/token;\ncompile: cold / from the persistent cache; load: 1-min load "
          "average when the row was measured")
    head = (f"{'shape':19s} {'N':>6s} | {'JAX tok/s':>15s} {'FLOP/s':>6s} {'MFU':>5s} "
            f"{'compile s':>9s} | {'torch tok/s':>15s} {'FLOP/s':>6s} {'MFU':>5s} | "
            f"{'JAX/torch':>11s} {'load':>4s}")
    print(head)
    print("-" * len(head))
    printed_torch = False
    for name, L, d, H, T, B, V in shapes:
        cfg = make_config(L, d, H, T, B, vocab=V)
        n = accounting.param_counts(cfg.model).non_embedding
        fpt = accounting.flops_per_token(cfg.model).exact
        jr = JaxRunner(cfg)
        runners = [jr]
        if with_torch:
            runners.append(TorchRunner(L, d, H, T, B, vocab=V, python=torch_python,
                                       gelu=torch_gelu))
            if not printed_torch:
                print(f"(PyTorch {runners[1].version} eager, {runners[1].threads} threads, "
                      f"{'tanh' if torch_gelu == 'tanh' else 'exact (nanoGPT)'} GELU, "
                      "in its own process, alternating rounds with JAX)")
                printed_torch = True
        times = alternate(runners, seconds)
        tps = [B * T / statistics.median(t) for t in times]
        best = [B * T / min(t) for t in times]
        row = (f"{name:19s} {fmt_si(n):>6s} | {tps[0]:7.0f} ({best[0]:5.0f}) "
               f"{fmt_si(tps[0] * fpt):>6s} {peaks.mfu(tps[0], fpt, peak):5.1%} "
               f"{jr.cold:4.1f}/{jr.warm:<4.2f} | ")
        if with_torch:
            row += (f"{tps[1]:7.0f} ({best[1]:5.0f}) {fmt_si(tps[1] * fpt):>6s} "
                    f"{peaks.mfu(tps[1], fpt, peak):5.1%} | "
                    f"{tps[0] / tps[1]:4.2f} ({best[0] / best[1]:4.2f})")
        else:
            row += f"{'-':>15s} {'-':>6s} {'-':>5s} | {'-':>11s}"
        row += f" {os.getloadavg()[0]:4.1f}"
        print(row, flush=True)
        if with_torch:
            runners[1].close()
        del jr, runners


def gpu_section(batches=(32, 16), steps: int = 20) -> None:
    """GPT-2 small on one GPU, bf16 compute; MFU against the dense bf16 peak (goal >= 45%).

    Tries the larger batch first and falls back to the smaller one if it does not fit.
    """
    dev = jax.devices()[0]
    peak = peaks.peak_flops(dev, "bfloat16")
    for batch in batches:
        cfg = make_config(12, 768, 12, 1024, batch, vocab=50304, compute_dtype="bfloat16")
        try:
            jr = JaxRunner(cfg)
            times = jr.run(steps)
            break
        except Exception as e:  # noqa: BLE001 - out of memory: try the next batch
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            print(f"batch {batch} does not fit ({type(e).__name__}); trying a smaller one")
    else:
        raise RuntimeError("no batch size fits")
    m = cfg.model
    fpt = accounting.flops_per_token(m)
    step_s = statistics.median(times)
    tps = batch * m.seq_len / step_s
    print(f"\nGPU: {dev.device_kind}, GPT-2 small (L12 d768 H12 T1024 V50304, bf16 compute, "
          f"fp32 params, cuDNN attention via jax.nn.dot_product_attention), batch {batch}")
    print(f"  N = {fmt_si(accounting.param_counts(m).non_embedding)}, "
          f"{fmt_si(fpt.exact)}FLOP/token exact ({fmt_si(fpt.kaplan)} Kaplan), "
          f"compile {jr.cold:.1f} s")
    print(f"  step {step_s * 1e3:.1f} ms, {tps:,.0f} tokens/s, {fmt_si(tps * fpt.exact)}FLOP/s, "
          f"MFU {peaks.mfu(tps, fpt.exact, peak):.1%} of {fmt_si(peak)}FLOP/s bf16 dense "
          f"(Kaplan-count MFU {peaks.mfu(tps, fpt.kaplan, peak):.1%}; target >= 45%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three shapes, shorter timing")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    ap.add_argument("--seconds", type=float, default=None, help="timing per shape")
    ap.add_argument("--torch-python", default=None, metavar="PYTHON",
                    help="the interpreter that runs the PyTorch baseline (one with torch "
                         "installed; default: this one)")
    ap.add_argument("--torch-gelu", choices=("tanh", "none"), default="tanh",
                    help="the baseline's GELU: tanh (the project's, the same math) or none "
                         "(exact erf GELU, nanoGPT's default)")
    args = ap.parse_args()
    # A fresh persistent cache: 'cold' is a real compile, 'warm' a load from the cache.
    cache = tempfile.mkdtemp(prefix="scalinglab-bench-cache-")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    if jax.default_backend() == "gpu":
        gpu_section()
        return
    shapes = list(CPU_SHAPES)
    if not args.quick:
        for p in LADDER:
            v = PRESETS[p]
            shapes.append((f"{p} T128 B32", v["n_layer"], v["d_model"], v["n_head"], 128, 32,
                           256))
    seconds = args.seconds if args.seconds is not None else (6.0 if args.quick else 10.0)
    cpu_table(shapes, seconds, with_torch=not args.no_torch, torch_python=args.torch_python,
              torch_gelu=args.torch_gelu)


if __name__ == "__main__":
    main()
