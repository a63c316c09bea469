"""Lower the training step for accelerator platforms on this CPU machine; print a summary.

Started by tests/test_lowering.py with 8 emulated CPU devices, so that the meshes exist:

    python tests/multidevice/lower_worker.py '{"overrides": [...],
                                               "cases": [["none", "cuda"], [[2, 2, 2], "tpu"]]}'

Each case traces the step as the platform would build it (scaling.models.platform:
bfloat16 compute as configured, the XLA attention in place of cuDNN's) and lowers it with
`lowering_platforms`; nothing is compiled or run.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scaling.config import load_config  # noqa: E402
from scaling.models.platform import building_for  # noqa: E402
from scaling.models.sharding import activation_sharding  # noqa: E402
from scaling.train.mesh import MeshDriver  # noqa: E402
from scaling.train.parallel import Driver  # noqa: E402
from scaling.train.step import Trainer, runtime_values  # noqa: E402


def lower(base: list[str], mesh, platform: str) -> dict:
    if mesh == "none":
        cfg = load_config(None, base + ["train.parallel=none"])
        driver = Driver("none")
    else:
        data, fsdp, model = mesh
        cfg = load_config(None, base + [f"train.mesh={{data={data},fsdp={fsdp},model={model}}}"])
        driver = MeshDriver(cfg.train.mesh_axes)
    trainer = Trainer(cfg)
    lr, sched = runtime_values(cfg)
    state = jax.eval_shape(trainer.init_fn(), jax.random.key(0), lr, sched)
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.model.seq_len + 1), np.int32)
    try:
        with building_for(platform), activation_sharding(getattr(driver, "mesh", None)):
            step = (driver.wrap(trainer.train_step_body, state, donate=True) if mesh != "none"
                    else driver.wrap(trainer.train_step_body, donate=True))
            text = step.trace(state, batch).lower(lowering_platforms=(platform,)).as_text()
    except Exception as e:  # reported, not raised: the test names the failing case
        return {"mesh": mesh, "platform": platform, "ok": False,
                "error": f"{type(e).__name__}: {str(e)[:400]}"}
    return {"mesh": mesh, "platform": platform, "ok": True, "chars": len(text),
            "bf16_dots": text.count("bf16") > 0 and "dot_general" in text,
            "sharded": "mhlo.sharding" in text or "sdy.sharding" in text,
            # the CPU kernels (chunked attention, row-major weight gradients) use barriers
            "cpu_paths": "optimization_barrier" in text,
            "custom_calls": sorted(set(
                line.split('call_target_name = "')[1].split('"')[0]
                for line in text.splitlines() if 'call_target_name = "' in line))}


def main(spec: dict) -> None:
    out = [lower(spec["overrides"], m, p) for m, p in spec["cases"]]
    print("RESULT " + json.dumps({"devices": jax.device_count(), "cases": out}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
