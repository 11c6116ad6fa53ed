"""Training throughput of the VAE and flow stages: samples/s of the trainer's own optimizer step.

Each row times :meth:`gpsk_materials.training.trainer.Trainer.train_step` (featurisation of the batch on the device,
forward, loss, backward, gradient clipping, fused AdamW, learning-rate schedule, EMA) on real cached structures, for
one stage, batch size and set of speed options (precision, ``channels_last_3d``, ``torch.compile``). The flow step
runs on standard-normal latents of the latent shape with the batch's real conditions (its cost does not depend on
the latent values). The first row of each stage, bf16 autocast with no other option, is the baseline of the ratios
(``speedup``) measured in the same run; the implementation before the step work is measured by running the previous
commit's own ``benchmarks/training_speed.py`` in the same call (docs/benchmarks.md gives the command).
``featurize_ms`` is the time of the on-device featurizer alone for the batch.

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

#: (name, TrainConfig options) of the variants timed per stage, baseline first
VARIANTS = {
    "vae": [("bf16", {}), ("bf16+channels_last", {"channels_last": True}),
            ("bf16+channels_last+compile", {"channels_last": True, "compile": True}),
            ("fp32", {"precision": "fp32"})],
    "flow": [("bf16", {}), ("bf16+compile", {"compile": True}), ("fp32", {"precision": "fp32"})],
}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, steps: int, warmup: int, device) -> float:
    """Mean seconds per call after ``warmup`` calls (compilation and cuDNN autotuning happen in those)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / steps


def measure(cache, device, model: str, stage: str, batch: int, options: dict, steps: int, warmup: int) -> dict:
    """Samples/s of ``Trainer.train_step`` for one stage, batch and option set."""
    import torch

    from gpsk_materials.training.distributed import DistInfo
    from gpsk_materials.training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(model=model, batch_size=batch, flow_batch_size=batch, vae_steps=10**6, flow_steps=10**6,
                      **options)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cache, tmp, cfg, DistInfo(device=device), progress=False)
        trainer.stage = stage
        model_, opt, sched, ema = trainer.stage_objects(stage)
        wrapped = trainer._wrap(model_)
        ctx = None
        if stage == "flow":
            vc = trainer.model_config.vae
            n = min(len(cache), 4096)
            ctx = {"latents": torch.randn(n, vc.latent_channels, *(3 * [vc.grid_size // 4]), device=device),
                   "lookup": torch.arange(len(cache), device=device) % n}
        row = {"stage": stage, "batch": batch, "params_M": round(sum(p.numel() for p in model_.parameters()) / 1e6, 3)}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t_compile = time.perf_counter()
        step = lambda: trainer.train_step(stage, model_, wrapped, opt, sched, ema, trainer.next_batch(), ctx)  # noqa: E731
        try:
            step()
            _sync(device)
            row["first_step_s"] = round(time.perf_counter() - t_compile, 1)
            sec = _time(step, steps, warmup, device)
        except torch.OutOfMemoryError:
            row["samples_per_s"] = None
            return row
        row["samples_per_s"] = round(batch / sec, 1)
        row["steps_per_s"] = round(1 / sec, 2)
        if device.type == "cuda":
            row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if stage == "vae":
            idx = trainer.next_batch()
            row["featurize_ms"] = round(1e3 * _time(lambda: trainer.grids(idx), steps, 2, device), 2)
        del model_, opt, wrapped, ema
        torch._dynamo.reset()
        return row


def main(argv=None) -> int:
    import torch

    from gpsk_materials.datasets import ArrayCache

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="array cache (.npz) made by gpsk train --cache-only")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--vae-batches", type=int, nargs="*", default=[128, 256, 512])
    p.add_argument("--flow-batches", type=int, nargs="*", default=[1024, 4096])
    p.add_argument("--variants", nargs="+", default=None, help="names from VARIANTS to run (default: all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    cache = ArrayCache.load(args.data)
    device = torch.device(args.device)
    rows = []
    for stage, batches in (("vae", args.vae_batches), ("flow", args.flow_batches)):
        for batch in batches:
            base = None
            for name, options in VARIANTS[stage]:
                if args.variants and name not in args.variants:
                    continue
                if device.type != "cuda" and (name.startswith("bf16") or "compile" in name) and name != "bf16":
                    continue  # bf16 autocast and compilation are GPU options; "bf16" is fp32 on the CPU (auto)
                try:
                    row = {"variant": name, **measure(cache, device, args.model, stage, batch, options, args.steps,
                                                      args.warmup)}
                except Exception as exc:  # a variant the installed torch cannot run is reported, not fatal
                    row = {"variant": name, "stage": stage, "batch": batch, "samples_per_s": None,
                           "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                if base is None:
                    base = row["samples_per_s"]
                if base and row["samples_per_s"]:
                    row["speedup"] = round(row["samples_per_s"] / base, 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "model": args.model,
               "torch": torch.__version__, "rows": rows}
    write_summary(args.out, summary)
    print("\nstage batch variant                      samples/s  speedup")
    for r in rows:
        print(f"{r['stage']:5} {r['batch']:5} {r['variant']:28} {r.get('samples_per_s')!s:>10} {r.get('speedup', '')!s:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
