"""How many of the VAE's 64 latent channels carry what the decoder needs? (issue 14, item 1; issue 13)

The flow is trained on the VAE latent normalised per channel, so every one of the 64 channels weighs the same in
its loss, whether or not the decoder uses it. This script measures how the information is spread over channel
directions. For the first ``--n`` rows of mp20/test.csv (a partial split, shared/data/SOURCES.md):

1. the VAE posterior means z (n, 64, 8, 8, 8) of the true grids, and the posterior standard deviation relative to
   the spread of the means (how much noise the KL weight leaves in the code);
2. the principal directions of the 64 channels (``gpsk_materials.models.growth.channel_pca``: eigenvectors of the
   64 x 64 channel covariance over every voxel of every structure) and the share of the variance the top k hold;
3. for each k in ``--keep``, the latents projected onto the top k directions (the rest set to their mean), decoded
   by the VAE and then by the closed-form decoder with the cell content given: how many decode and match their
   structure (StructureMatcher stol 0.5, angle_tol 10, ltol 0.3), beside the unprojected latents (k = 64).

A code whose top 16 directions decode as well as all 64 tells the flow to learn 48 channels of detail the decoder
does not need, at full weight in its loss.

    python benchmarks/latent_channels.py --n 40 --out docs/results/latent_channels_c6_n40.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, mp20_test_grids, vae_digest, write_summary  # noqa: E402


def project_channels(z, mean, vecs, k: int):
    """z (B, C, n, n, n) with its channel vectors projected onto the first k columns of ``vecs`` around ``mean``."""
    import torch

    p = vecs[:, :k].to(z.dtype)
    m = mean.to(z.dtype).view(1, -1, 1, 1, 1)
    coeff = torch.einsum("bcxyz,ck->bkxyz", z - m, p)
    return m + torch.einsum("bkxyz,ck->bcxyz", coeff, p)


def main(argv=None) -> int:
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from gpsk_materials.models.growth import channel_pca
    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=40, help="first N rows of mp20/test.csv")
    p.add_argument("--keep", type=int, nargs="*", default=[4, 8, 16, 32, 64],
                   help="numbers of principal channel directions to keep")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    model = load_model_folder(args.model, device=args.device)
    structures, _, cells, grids = mp20_test_grids(args.n, args.device, args.workers)
    with torch.no_grad():
        posts = [model.vae.encode(grids[i : i + 32]) for i in range(0, len(grids), 32)]
        z = torch.cat([q.mean for q in posts]).float()
        post_std = torch.cat([torch.exp(0.5 * q.logvar) for q in posts]).float()
    mean, vals, vecs = channel_pca(z.cpu())
    share = (vals / vals.sum()).clamp_min(0)
    cumulative = share.cumsum(0)
    spread = z.transpose(0, 1).flatten(1).std(1)
    row = {"n": len(structures), "model": str(args.model), "vae_index_sha256": vae_digest(args.model),
           "device": args.device, "channels": int(z.shape[1]),
           "posterior_std_over_channel_std_median": float((post_std.transpose(0, 1).flatten(1).median(1).values
                                                           / spread).median()),
           "variance_share": share.tolist(), "cumulative_variance_share": cumulative.tolist(),
           "directions_for_variance": {f"{q:g}": int((cumulative < q).sum()) + 1 for q in (0.5, 0.9, 0.99, 0.999)}}
    dec = ReciprocalGridDecoder(device=args.device)
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    comps = [c.composition for c in cells]
    rows = []
    for k in args.keep:
        zk = z if k >= z.shape[1] else project_channels(z.cpu(), mean, vecs, k).to(z.device)
        with torch.no_grad():
            g = torch.cat([model.vae.decode(zk[i : i + 32]).float() for i in range(0, len(zk), 32)])
        decoded = dec.decode_many(g, comps, ignore_errors=True, exact_counts=True)
        rel = ((g - grids).pow(2).sum((1, 2, 3, 4)) / grids.pow(2).sum((1, 2, 3, 4))).sqrt()
        r = {"keep": k, "latent_rms_change": float((zk - z).pow(2).mean().sqrt() / spread.mean()),
             "grid_relative_rms_error_median": float(rel.median()),
             "decoded": int(sum(d is not None for d in decoded)),
             "matched": int(sum(d is not None and sm.fit(s, d) for s, d in zip(structures, decoded)))}
        rows.append(r)
        print(f"keep {k:3d} of {z.shape[1]} channel directions: variance {float(cumulative[min(k, len(vals)) - 1]):.4f}, "
              f"grid error {r['grid_relative_rms_error_median']:.3f}, decoded {r['decoded']}, matched {r['matched']}")
    row["projections"] = rows
    row["seconds"] = time.perf_counter() - t0
    print("directions holding 50 / 90 / 99 / 99.9 % of the variance:", row["directions_for_variance"])
    print(f"posterior std / channel spread (median): {row['posterior_std_over_channel_std_median']:.4f}")
    write_summary(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
