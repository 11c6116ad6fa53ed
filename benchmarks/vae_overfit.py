"""Can the VAE fit a few crystals at all? Capacity against data for issue 13.

The shipped VAE (or ``--model``) is fine-tuned on the first ``--n`` rows of a training cache only, for ``--seconds``
of wall time (AdamW, ``--lr``, batch ``--batch``, the training loss with the shell term, bf16 autocast on CUDA), and
its reconstruction error on those same crystals is compared band by band of max |h_i| before and after
(``vae_frequency_error.band_errors``: posterior mean, relative error of F per band). If a few hundred crystals seen
hundreds of times still keep the error at the Miller grid's edge, the architecture (or the latent's size) is the
limit, not the amount of training or data; if it falls, the VAE can represent those crystals and needs training or
data (docs/benchmarks.md, "Sub-voxel hold").

    python benchmarks/vae_overfit.py --cache .carry/pool/data.npz --device cuda --seconds 90 \\
        --out docs/results/vae_overfit.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_model, write_summary  # noqa: E402
from vae_frequency_error import band_errors  # noqa: E402


def main(argv=None) -> int:
    import numpy as np
    import torch

    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.representations.reciprocal import featurize_batch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="training cache (.npz) of gpsk train --cache-only")
    p.add_argument("--model", default=None, help="model or VAE folder (default: shipped)")
    p.add_argument("--n", type=int, default=256, help="first N cache rows: the crystals to fit")
    p.add_argument("--seconds", type=float, default=90.0, help="wall time of the fine-tuning")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps (a fresh optimizer's "
                                                            "first full steps undo much of a trained VAE)")
    p.add_argument("--shell-weight", type=float, default=1.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    model = args.model or default_model()
    with np.load(args.cache, allow_pickle=False) as d:
        rows = slice(0, args.n)
        lattice = torch.as_tensor(d["lattice"][rows], dtype=torch.float64, device=dev)
        frac = torch.as_tensor(d["frac_coords"][rows], dtype=torch.float64, device=dev)
        numbers = torch.as_tensor(d["numbers"][rows].astype(np.int64), device=dev)
        occ = torch.as_tensor(d["occupancy"][rows], dtype=torch.float64, device=dev) if "occupancy" in d.files else None
    grids = featurize_batch(lattice, frac, numbers, occ).float()
    vae = load_model_folder(model).vae.to(dev)

    def errors() -> dict:
        vae.eval()
        out = []
        for i in range(0, len(grids), args.batch):  # band medians over all n need the per-structure errors: chunk
            out.append(grids[i : i + args.batch])
        with torch.no_grad():
            rec = torch.cat([vae.decode(vae.encode(g).mean).float() for g in out])
        return band_errors(vae, grids, rec)

    before = errors()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / max(1, args.warmup)))
    gen = torch.Generator(device=dev).manual_seed(0)
    vae.train()
    t0, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - t0 < args.seconds:
        idx = torch.randint(len(grids), (args.batch,), generator=gen, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss, _ = vae.loss_from(grids[idx], *vae(grids[idx]), shell_weight=args.shell_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        steps += 1
        if steps % 50 == 0:
            losses.append((steps, float(loss.detach())))
    seconds = time.perf_counter() - t0
    after = errors()
    print(f"{steps} steps in {seconds:.0f} s ({steps * args.batch / len(grids):.0f} passes over {len(grids)} crystals)")
    print(f"median relative residual {before['relative_residual_median']:.4f} -> {after['relative_residual_median']:.4f}")
    for b, a in zip(before["max_abs_h"], after["max_abs_h"]):
        print(f"  max|h_i| {b['band'][0]:>4}-{b['band'][1]:<4} {b['rel_error']:.4f} -> {a['rel_error']:.4f}")
    write_summary(args.out, {"model": str(model), "cache": str(args.cache), "n": len(grids), "steps": steps,
                             "seconds": seconds, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "device": str(dev),
                             "passes": steps * args.batch / len(grids), "loss_every_50": losses,
                             "before": before, "after": after})
    return 0


if __name__ == "__main__":
    sys.exit(main())
