"""Run a tiny training under a given driver and device count; print its losses as JSON.

Started by tests/test_parallel.py in a fresh process, so that XLA_FLAGS (the number of
emulated CPU devices) and the jax.distributed coordinator take effect before JAX starts:

    python tests/multidevice/worker.py RUN_DIR parallel=shard_map [stop=10] [key=value ...]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scaling.config import load_config  # noqa: E402
from scaling.train.loop import train  # noqa: E402
from scaling.runs.runfiles import read_metrics  # noqa: E402

BASE = [
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "data.max_corpus_bytes=1000000", "train.batch_size=16", "train.steps=20",
    "train.log_every=1", "train.eval_every=10", "train.eval_tokens=1024",
    "train.checkpoint_every=0", "train.progress=false", "optim.warmup_steps=2",
]


def main(argv):
    run_dir, *rest = argv
    stop = None
    overrides = list(BASE)
    for item in rest:
        key, value = item.split("=", 1)
        if key == "stop":
            stop = int(value)
        elif key == "parallel":
            overrides.append(f"train.parallel={value}")
        else:
            overrides.append(item)
    import jax

    result = train(load_config(None, overrides), run_dir, stop_after_steps=stop)
    if jax.process_index() == 0:
        losses = [r["loss"] for r in read_metrics(run_dir) if "loss" in r]
        evals = [r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r]
        print("RESULT " + json.dumps({
            "status": result["status"], "losses": losses, "evals": evals,
            "devices": jax.device_count(), "processes": jax.process_count(),
            "parallel": result.get("parallel"), "device_count": result.get("device_count"),
            "D": result.get("D"), "mfu": result.get("mfu"),
            "C_xla_ratio": (result["C_xla"] / result["C_exact"]) if "C_xla" in result else None,
            "eval_loss": result.get("final_eval_loss"),
            "by_position": result.get("eval_loss_by_position"),
            "grad_norms": [r["grad_norm"] for r in read_metrics(run_dir) if "grad_norm" in r],
            "noise_rows": [[r["noise_scale/grad_sq"], r["noise_scale/trace_sigma"]]
                           for r in read_metrics(run_dir) if "noise_scale/grad_sq" in r],
            "b_simple": result.get("noise_scale_b_simple"),
        }))


if __name__ == "__main__":
    main(sys.argv[1:])
