"""Why VAE reconstructions lose element identity: which part of reciprocal space carries the error.

A decoder given no composition picks each atom's element by the size and the s-dependence (the form factor
f(s), s = sin(theta)/lambda) of its contribution to F(h), summed over all grid points. For the first ``--n`` rows
of mp20/test.csv (the structures of ``vae_reconstruction.py --n-formula``, same seed, same reconstructions) this
script reports

- the global amplitude scale: the least-squares k of F_rec ~ k F and F_rec(000) / F(000), for the posterior
  sample and the posterior mean;
- per shell of s and per structure, the amplitude ratio ||F_rec|| / ||F||, the shell's share of ||F||^2 and the
  relative error (medians over the structures: not dominated by the heavy cells as pooled sums are);
- an oracle test: the reconstruction with every point of s > ``--split-s`` taken from the true grid, decoded
  without a composition. If that restores the formulas, the error at high s is the cause.

    python benchmarks/vae_element_identity.py --n 40 --out docs/results/vae_element_identity_shipped.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_model, read_structures, vae_digest, write_summary  # noqa: E402
from vae_reconstruction import SHELL_EDGES, amplitude_scale, reconstruct, structure_factor  # noqa: E402


def splice(recon, grids, s_min: float):
    """``recon`` with its structure-factor channels replaced by those of ``grids`` where s > ``s_min``."""
    import torch

    from gpsk_materials.representations.grid import Q0

    high = ((grids[:, 2] * Q0).clamp_min(0).sqrt() / 2 > s_min)[:, None]
    out = recon.clone()
    out[:, :2] = torch.where(high, grids[:, :2], recon[:, :2])
    return out


def shell_ratios(grids, recon) -> list[dict]:
    """Per shell of :data:`SHELL_EDGES`, medians over the structures holding points in it: amplitude ratio
    ||F_rec|| / ||F||, share of the structure's ||F||^2 and relative error ||F_rec - F||^2 / ||F||^2."""
    from gpsk_materials.representations.grid import Q0

    f_true, f_rec = structure_factor(grids), structure_factor(recon)
    s = (grids[:, 2].double() * Q0).clamp_min(0).sqrt() / 2
    total = (f_true.abs() ** 2).flatten(1).sum(1)
    rows = []
    for lo, hi in zip(SHELL_EDGES[:-1], SHELL_EDGES[1:]):
        m = ((s > lo) & (s <= hi)) if lo > 0 else s <= hi  # the first shell holds F(000)
        p_true = ((f_true.abs() ** 2) * m).flatten(1).sum(1)
        p_rec = ((f_rec.abs() ** 2) * m).flatten(1).sum(1)
        err = (((f_rec - f_true).abs() ** 2) * m).flatten(1).sum(1)
        has = (m.flatten(1).sum(1) > 0).numpy()
        med = lambda x: float(np.median(x.numpy()[has])) if has.any() else None  # noqa: E731
        rows.append({"s_lo": lo, "s_hi": hi, "structures": int(has.sum()),
                     "amplitude_ratio": med((p_rec / p_true).sqrt()), "share": med(p_true / total),
                     "relative_error": med(err / p_true)})
    return rows


def quartiles(x) -> list[float]:
    """25th, 50th and 75th percentile."""
    return [float(q) for q in np.percentile(x, [25, 50, 75])]


def main(argv=None) -> int:
    import torch

    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model(), help="model folder or VAE-only folder (the trainer's OUT/vae)")
    p.add_argument("--n", type=int, default=40, help="first N rows of mp20/test.csv")
    p.add_argument("--split-s", type=float, default=1.0, help="s (1/A) above which the oracle takes the true F")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    model = load_model_folder(args.model, device=args.device)
    structures, _ = read_structures("mp20/test.csv", args.n, args.workers)
    grids = torch.as_tensor(ReciprocalGridFeaturizer(backend="torch", device=args.device).featurize_many(structures),
                            device=args.device)
    recon = reconstruct(model.vae, grids, seed=args.seed).cpu()
    with torch.no_grad():
        recon_mean = model.vae.decode(model.vae.encode(grids).mean).float().cpu()
    grids = grids.cpu()
    f000, k = amplitude_scale(grids, recon)
    f000_mean, k_mean = amplitude_scale(grids, recon_mean)
    # the decoder's guess of the formula is what is measured: keep it below min_confidence (marked)
    decoded = ReciprocalGridDecoder(device=args.device, keep_low_confidence=True).decode_many(
        splice(recon, grids, args.split_s), None, ignore_errors=True)
    formulas = [None if d is None else d.composition.reduced_formula for d in decoded]
    truth = [s.composition.reduced_formula for s in structures]
    row = {
        "n": len(structures), "model": str(args.model), "device": args.device, "seed": args.seed,
        "vae_index_sha256": vae_digest(args.model),
        "scale_quartiles": quartiles(k), "f000_ratio_quartiles": quartiles(f000),
        "scale_quartiles_posterior_mean": quartiles(k_mean), "f000_ratio_quartiles_posterior_mean": quartiles(f000_mean),
        "share_scale_within_2pct": float(np.mean(np.abs(k - 1) < 0.02)),
        "split_s": args.split_s,
        "formula_correct_spliced": int(sum(f == t for f, t in zip(formulas, truth))),
        "decoded_spliced": int(sum(f is not None for f in formulas)),
        "shells": shell_ratios(grids, recon),
        "shells_posterior_mean": shell_ratios(grids, recon_mean),
        "structures": [{"formula": t, "scale": float(a), "f000_ratio": float(b), "scale_posterior_mean": float(c),
                        "spliced_formula": f} for t, a, b, c, f in zip(truth, k, f000, k_mean, formulas)],
    }
    print({key: v for key, v in row.items() if not key.startswith(("shells", "structures"))})
    write_summary(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
