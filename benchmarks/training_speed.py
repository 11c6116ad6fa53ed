"""Training throughput of the VAE and flow stages: samples/s of full optimizer steps on real cached structures.

Each stage is timed at several batch sizes with bf16 autocast and, as the baseline measured in the same run, in
float32; the ratio is bf16 over fp32. The grids are featurised on the device from the array cache, as in training;
the flow step runs on standard-normal latents of the latent shape with the batch's real conditions (the cost of a
step does not depend on the latent values).

    python benchmarks/training_speed.py --data .carry/pool/data.npz --device cuda --out docs/results/training_speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_summary  # noqa: E402


def _time_steps(step, steps: int, device) -> float:
    import torch

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> int:
    import torch

    from gpsk_materials.datasets import ArrayCache
    from gpsk_materials.models import rectified_flow as rf
    from gpsk_materials.models.mmdit import MMDiT
    from gpsk_materials.models.vae import GridVAE
    from gpsk_materials.training.trainer import TrainConfig, Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="array cache (.npz) made by gpsk train --cache-only")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vae-batches", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--flow-batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    cache = ArrayCache.load(args.data)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        from gpsk_materials.training.distributed import DistInfo

        trainer = Trainer(cache, tmp, TrainConfig(model=args.model, batch_size=8), DistInfo(device=device),
                          progress=False)
        cfg = trainer.model_config
        rows = []
        for stage, batches in (("vae", args.vae_batches), ("flow", args.flow_batches)):
            model = (GridVAE(cfg.vae) if stage == "vae" else MMDiT(cfg.mmdit)).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            for b in batches:
                idx = torch.as_tensor(trainer.train_idx[:b], device=device)
                grids = trainer.grids(idx)
                latents = torch.randn(b, cfg.vae.latent_channels, *(3 * [cfg.vae.grid_size // 4]), device=device)
                cond = trainer.conditions(idx)
                gen = torch.Generator(device=device).manual_seed(0)
                row = {"stage": stage, "batch": b, "params_M": round(sum(q.numel() for q in model.parameters()) / 1e6, 3)}
                for precision in ("fp32", "bf16"):
                    if precision == "bf16" and device.type != "cuda":
                        continue
                    ac = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

                    def step():
                        with torch.autocast(**ac):
                            if stage == "vae":
                                loss = model.loss(trainer.grids(idx), gen)[0]
                            else:
                                loss = rf.flow_loss(model, latents, cond, gen, "logit_normal")
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()

                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    try:
                        sec = _time_steps(step, args.steps, device)
                    except torch.OutOfMemoryError:
                        row[f"{precision}_samples_per_s"] = None
                        continue
                    row[f"{precision}_samples_per_s"] = round(b / sec, 1)
                    row[f"{precision}_steps_per_s"] = round(1 / sec, 2)
                    if device.type == "cuda":
                        row[f"{precision}_peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if row.get("bf16_samples_per_s") and row.get("fp32_samples_per_s"):
                    row["bf16_over_fp32"] = round(row["bf16_samples_per_s"] / row["fp32_samples_per_s"], 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
            del model, opt
    summary = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "model": args.model,
               "rows": rows}
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
