"""Is the latent a smooth function of the crystal? (issue 14, item 1)

A flow learns a conditional distribution well when crystals that are physically close have close latents: then
the latents of one composition's plausible structures form a compact region the flow can find. This script
measures how far the latent (and the grid) moves under small physical changes of a crystal, against the distance
between two different crystals. For the first ``--n`` rows of mp20/test.csv (a partial split,
shared/data/SOURCES.md), each structure is

- displaced: every site moved by a random vector of length ``d`` Å (``--displacements``; seeded), and
- strained: the lattice scaled isotropically by ``1 + e`` (``--strains``),

then featurized (canonical cell, as in training), encoded by the VAE (posterior mean, normalised latent as the
flow sees it) and compared with the unperturbed crystal's latent. Distances are root-mean-square over all
entries; every row is also divided by the median distance between the latents of *different* test crystals (1 =
as far as another crystal). The same ratios are reported for the grids' Re/Im channels (the representation before
the VAE) and, for the grids, per quartile of 1/d^2 (the metric channel; pooled over all crystals, so crystals whose
canonical setting jumped dominate it), which shows where a displacement moves the structure factor: the phase of
F(hkl) turns by 2 pi h.u for a displacement u, so high-|s| reflections move first. ``--fixed-setting`` perturbs the
canonical cell and featurizes without re-canonicalizing, so only the physical change moves the grid.

A displacement of 0.05 Å is well inside what StructureMatcher (stol 0.5) calls the same crystal, so a ratio near 1
there means the flow must treat one crystal's neighbourhood as spread over the whole latent space.

    python benchmarks/latent_smoothness.py --n 40 --out docs/results/latent_smoothness_c7_n40.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, read_structures, vae_digest, write_summary  # noqa: E402


def perturbed(structure, displacement: float, strain: float, seed: int):
    """A copy of ``structure`` with every site moved by ``displacement`` Å in a random direction and the lattice
    scaled by ``1 + strain``."""
    import numpy as np

    s = structure.copy()
    if strain:
        s.scale_lattice(s.volume * (1.0 + strain) ** 3)
    if displacement:
        rng = np.random.default_rng(seed)
        v = rng.normal(size=(len(s), 3))
        v *= displacement / np.linalg.norm(v, axis=1, keepdims=True)
        for i, d in enumerate(v):
            s.translate_sites([i], d, frac_coords=False, to_unit_cell=True)
    return s


def rms(a, b):
    import torch

    return torch.sqrt(((a - b) ** 2).flatten(1).mean(1))


def main(argv=None) -> int:
    import numpy as np
    import torch

    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=40, help="first N rows of mp20/test.csv")
    p.add_argument("--displacements", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1, 0.2],
                   help="site displacements in Å")
    p.add_argument("--strains", type=float, nargs="*", default=[0.01, 0.03], help="isotropic lattice strains")
    p.add_argument("--fixed-setting", action="store_true",
                   help="perturb each crystal's canonical cell and featurize both without canonicalization, so that "
                        "only the physical change moves the grid (no re-choice of setting and origin)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    model = load_model_folder(args.model, device=args.device)
    structures = read_structures("mp20/test.csv", args.n, args.workers)[0]
    feat = ReciprocalGridFeaturizer(backend="torch", device=args.device)
    if args.fixed_setting:
        structures = [feat.canonical_structure(s) for s in structures]
        feat = ReciprocalGridFeaturizer(backend="torch", device=args.device, canonicalize=False)

    def encode(batch):
        grids, errors = feat.featurize_many(batch, return_errors=True, pbar=False)
        g = torch.as_tensor(np.stack([x for x in grids if x is not None]), device=args.device)
        with torch.no_grad():
            z = model.normalize_latents(model.vae.encode(g).mean)
        return g, z, [e is None for e in errors]

    base_g, base_z, ok = encode(structures)
    structures = [s for s, o in zip(structures, ok) if o]  # the grids of the others were left out of base_g
    n = len(structures)
    # distance between different crystals: each to the next one (a fixed pairing)
    other = torch.roll(torch.arange(n), 1)
    ref_z = float(rms(base_z, base_z[other]).median())
    ref_g = float(rms(base_g[:, :2], base_g[other, :2]).median())
    rows = []
    cases = [(d, 0.0) for d in args.displacements] + [(0.0, e) for e in args.strains]
    for d, e in cases:
        batch = [perturbed(s, d, e, seed=args.seed + i) for i, s in enumerate(structures)]
        g, z, okp = encode(batch)
        if not all(okp):
            raise SystemExit(f"a perturbed structure failed to featurize (displacement {d}, strain {e})")
        dz = rms(z, base_z)
        dg = rms(g[:, :2], base_g[:, :2])
        # per shell of 1/d^2 (the metric channel of the unperturbed grid), the RMS change of Re/Im
        metric = base_g[:, 2]
        q = torch.quantile(metric.flatten(), torch.tensor([0.25, 0.5, 0.75], dtype=metric.dtype, device=metric.device))
        edges = [float("-inf"), *q.tolist(), float("inf")]
        shells = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = ((metric >= lo) & (metric < hi)).unsqueeze(1).expand_as(g[:, :2])
            num = ((g[:, :2] - base_g[:, :2]) ** 2 * m).sum() / m.sum()
            den = ((base_g[:, :2] - base_g[other, :2]) ** 2 * m).sum() / m.sum()
            shells.append(float(torch.sqrt(num / den)))
        jumped = float((dz > 0.5 * ref_z).float().mean())
        rows.append({"displacement_A": d, "strain": e, "share_moved_over_half_the_distance": jumped,
                     "latent_rms_median": float(dz.median()), "latent_ratio_median": float(dz.median()) / ref_z,
                     "latent_ratio_q10_q90": [float(x) / ref_z for x in torch.quantile(dz, torch.tensor([0.1, 0.9], device=dz.device))],
                     "grid_ratio_median": float(dg.median()) / ref_g,
                     "grid_ratio_by_metric_quartile": shells})
        print(f"displacement {d:5.3f} A, strain {e:5.3f}: latent moves {rows[-1]['latent_ratio_median']:.3f} of the "
              f"distance to another crystal (grid {rows[-1]['grid_ratio_median']:.3f}; by 1/d^2 quartile "
              f"{', '.join(f'{x:.2f}' for x in shells)}); {jumped:.0%} of crystals move more than half of it")
    write_summary(args.out, {
        "n": n, "model": str(args.model), "vae_index_sha256": vae_digest(args.model), "seed": args.seed,
        "device": args.device, "fixed_setting": args.fixed_setting, "latent_distance_between_crystals_median": ref_z,
        "grid_distance_between_crystals_median": ref_g, "rows": rows,
        "seconds": time.perf_counter() - t0,
        "command": "python benchmarks/latent_smoothness.py " + " ".join(sys.argv[1:]),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
