"""VAE reconstruction of the shipped (or any) model on MP-20 test structures.

Reports the per-channel MSE of the reconstructed grids (scaled channels, as trained), the decoder's relative
residual ||F_rec - F|| / ||F|| and the share of structures whose reconstructed grid decodes to a
StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) match of the input, twice: given the reduced formula (the number
of formula units read from the reconstructed F(000): ``match_rate``) and given the cell content
(``match_rate_cell``, as in generation and structure prediction). The MP-20 test split here is partial (shared/data/SOURCES.md).

    python benchmarks/vae_reconstruction.py --n 200 --out docs/results/vae_reconstruction.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import read_structures, write_summary  # noqa: E402


def main(argv=None) -> int:
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.paths import PACKAGE_DIR
    from gpsk_materials.representations.canonical import canonical_structure
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(PACKAGE_DIR / "weights" / "default"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    model = load_model_folder(args.model, device=args.device)
    structures, _ = read_structures("mp20/test.csv", args.n, args.workers)
    feat = ReciprocalGridFeaturizer(backend="torch", device=args.device)
    grids = torch.as_tensor(feat.featurize_many(structures), device=args.device)
    recon = []
    with torch.no_grad():
        for i in range(0, len(grids), 32):
            out = model.vae(grids[i : i + 32])
            recon.append((out[0] if isinstance(out, (tuple, list)) else out).float())
    recon = torch.cat(recon)
    mse = ((recon - grids) ** 2).mean(dim=(0, 2, 3, 4)).cpu().numpy()
    residual = model.vae.relative_residual(grids, recon).sqrt().cpu().numpy()
    dec = ReciprocalGridDecoder(device=args.device)
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    row = {
        "n": len(structures), "mse_re": float(mse[0]), "mse_im": float(mse[1]), "mse_metric": float(mse[2]),
        "median_relative_residual": float(np.median(residual)), "model": args.model,
    }
    cells = [canonical_structure(s).composition for s in structures]
    for key, comps, exact in (("", [s.composition.reduced_composition for s in structures], False),
                              ("_cell", cells, True)):
        decoded = dec.decode_many(recon, comps, errors="none", exact_counts=exact)
        matched = [d is not None and sm.fit(s, d) for s, d in zip(structures, decoded)]
        row[f"decoded{key}"] = int(sum(d is not None for d in decoded))
        row[f"match_rate{key}"] = float(np.mean(matched))
    print(json.dumps(row, indent=1))
    write_summary(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
