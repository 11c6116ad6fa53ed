"""Where in the Miller grid a VAE's reconstruction loses F: the relative error per band of max |h_i|, per model.

For the first ``--n`` rows of mp20/test.csv (file order; a PARTIAL split, shared/data/SOURCES.md) each model's VAE
encodes the grid, decodes the posterior mean and the expanded structure factor F (electrons) of the
reconstruction is compared with the true one, band by band of the largest Miller index component max(|h|, |k|,
|l|) (the real-space density's frequency along its most resolved axis: max |h_i| = 16 is the Nyquist frequency of
the 32^3 grid) and of |h|:

- ``rel_error``: median over structures of sum_band |F_rec - F|^2 / sum_band |F|^2;
- ``power_share``: median share of sum |F|^2 in the band; ``error_share``: median share of the structure's error.

The first ``--models`` entry is the baseline: every other model's band errors are also given as ratios to it
(measured in the same run). Why it exists: the c7 VAE reproduces F to 1-3 % below max |h_i| = 12 and to 13-30 %
at the grid's edge, 61 % of its error (docs/benchmarks.md "VAE error by Miller band").

    python benchmarks/vae_frequency_error.py --n 24 --floors --models gpsk_materials/weights/default EXPORT \\
        --out docs/results/vae_frequency_error.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_model, mp20_test_grids, vae_digest, write_summary  # noqa: E402

#: band edges of max |h_i| and of |h| (Miller index units); a band holds edges[i] <= x < edges[i + 1]
MAX_EDGES = (0, 2, 4, 6, 8, 10, 12, 14, 15.5, 16.5)
RADIUS_EDGES = (0, 4, 8, 12, 14, 16, 20, 28)


def band_errors(vae, grids, rec=None) -> dict:
    """Per band of max |h_i| and of |h|: median relative error, power share and error share (see module doc) of
    ``rec`` (default: the VAE's reconstruction of ``grids`` from the posterior mean)."""
    import torch

    from gpsk_materials.representations.grid import expand_structure_factor

    if rec is None:
        with torch.no_grad():
            rec = vae.decode(vae.encode(grids).mean).float()
    re, im = expand_structure_factor(grids[:, 0].double(), grids[:, 1].double())
    rr, ri = expand_structure_factor(rec[:, 0].double(), rec[:, 1].double())
    power = (re**2 + im**2).flatten(1)
    err = ((rr - re) ** 2 + (ri - im) ** 2).flatten(1)
    h = (vae.coords[:3].double() * (vae.config.grid_size // 2)).flatten(1)
    out = {"relative_residual_median": float((err.sum(1) / power.sum(1)).median())}
    for name, x, edges in (("max_abs_h", h.abs().amax(0), MAX_EDGES), ("radius", h.pow(2).sum(0).sqrt(), RADIUS_EDGES)):
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (x >= lo) & (x < hi)
            p, e = power[:, m].sum(1), err[:, m].sum(1)
            rows.append({"band": [lo, hi], "points": int(m.sum()), "rel_error": float((e / p).median()),
                         "power_share": float((p / power.sum(1)).median()),
                         "error_share": float((e / err.sum(1)).median())})
        out[name] = rows
    return out


def main(argv=None) -> int:
    from gpsk_materials.models.io import load_model_folder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=24, help="first N test rows")
    p.add_argument("--models", nargs="+", default=None,
                   help="model folders (or the trainer's exports); the first is the baseline (default: shipped)")
    p.add_argument("--floors", action="store_true",
                   help="also the errors of the true grids' own density (the real-space VAE's output domain) rounded "
                        "to bf16 and with Gaussian noise of 0.03 added to its asinh: what numerical precision costs")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    models = args.models or [default_model()]
    print("NOTE: mp20/test.csv is a partial MP-20 test split (shared/data/SOURCES.md).")
    grids = mp20_test_grids(args.n)[3].float()
    results = []
    for folder in models:
        r = band_errors(load_model_folder(folder).vae.eval(), grids)
        results.append({"model": str(folder), "vae_sha256": vae_digest(folder), **r})
    if args.floors:
        import torch

        vae = load_model_folder(models[0]).vae.eval()
        y = vae.to_density(grids)
        gen = torch.Generator().manual_seed(0)
        for name, yy in (("true density rounded to bf16", y.bfloat16().float()),
                         ("true density, asinh + N(0, 0.03)", y + 0.03 * torch.randn(y.shape, generator=gen))):
            rec = torch.cat([vae.from_density(yy), grids[:, 2:3]], 1)
            results.append({"model": name, "vae_sha256": None, **band_errors(vae, grids, rec)})
    base = results[0]
    for r in results:
        for name in ("max_abs_h", "radius"):
            for row, ref in zip(r[name], base[name]):
                row["rel_error_ratio_to_first"] = row["rel_error"] / ref["rel_error"] if ref["rel_error"] else None
    for r in results:
        print(f"{r['model']}: median relative residual {r['relative_residual_median']:.4f}")
        for row in r["max_abs_h"]:
            print(f"  max|h_i| {row['band'][0]:>4}-{row['band'][1]:<4} rel. error {row['rel_error']:.4f} "
                  f"(x{row['rel_error_ratio_to_first']:.2f}), power {row['power_share']:.3f}, "
                  f"error {row['error_share']:.3f}")
    write_summary(args.out, {"split": "mp20/test.csv (partial)", "n": args.n, "models": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
