"""Decoding with the cell content given (``exact_counts=True``): one refinement with a free overall scale against
an earlier decoder (e.g. the one that decoded each grid twice, as it is and rescaled to F(000), keeping the better).

Three kinds of grid of the first ``--n`` rows of ``mp20/test.csv``: the true grids; noisy grids (F times a random
overall scale in [0.5, 1.5], plus Gaussian noise of ``--noise`` times each grid's RMS |F| on Re and Im F); and the
shipped VAE's reconstructions (one seeded posterior sample). Prints, per kind and decoder, the grids decoded, the
matches to the input structure (StructureMatcher stol 0.5, angle_tol 10, ltol 0.3, as benchmarks/vae_reconstruction.py)
and the decoding time (median of ``--repeat`` runs on the same grids, the decoders taking turns).

    git show 3ce8edd:gpsk_materials/representations/decoding.py > /tmp/decoding_two_pass.py
    python benchmarks/decode_scale.py --n 40 --baseline /tmp/decoding_two_pass.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_model, read_structures, write_summary  # noqa: E402
from vae_reconstruction import reconstruct  # noqa: E402


def noisy(grids: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Grids with F scaled by a random factor in [0.5, 1.5] and Gaussian noise on Re and Im F (metric kept)."""
    from gpsk_materials.representations import grid as G

    rng = np.random.default_rng(seed)
    out = grids.copy()
    for i, g in enumerate(grids):
        re, im = G.expand_structure_factor(g[0].astype(np.float64), g[1].astype(np.float64))
        k = rng.uniform(0.5, 1.5)
        sigma = noise * np.sqrt(np.mean(re**2 + im**2))
        re = k * re + sigma * rng.standard_normal(re.shape)
        im = k * im + sigma * rng.standard_normal(im.shape)
        out[i, 0], out[i, 1] = G.compress_structure_factor(re, im)
    return out


def load_decoder_class(path: Path | None):
    """ReciprocalGridDecoder of the package, or of a decoder module file (an older version)."""
    if path is None:
        from gpsk_materials.representations.decoding import ReciprocalGridDecoder

        return ReciprocalGridDecoder
    spec = importlib.util.spec_from_file_location("baseline_decoding", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ReciprocalGridDecoder


def decode(cls, grids, comps):
    """(structures, seconds) of decoding ``grids`` with the cell contents ``comps`` once."""
    import warnings

    dec = cls()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            out = dec.decode_many(grids, comps, ignore_errors=True, pbar=False, exact_counts=True)
        except TypeError:  # an older decoder: errors="none"
            out = dec.decode_many(grids, comps, errors="none", exact_counts=True)
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40, help="first N rows of mp20/test.csv")
    p.add_argument("--noise", type=float, default=0.1, help="noise on Re/Im F, times each grid's RMS |F|")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="decoding runs timed (median)")
    p.add_argument("--model", default=default_model(), help="model folder whose VAE reconstructs the grids")
    p.add_argument("--baseline", type=Path, default=None, help="decoder module file to compare against")
    p.add_argument("--kinds", nargs="+", choices=["true", "noisy", "vae"], default=["true", "noisy", "vae"],
                   help="kinds of grid to decode")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = p.parse_args(argv)

    structures, _ = read_structures("mp20/test.csv", args.n, args.workers)
    feat = ReciprocalGridFeaturizer()
    cells = [feat.canonical_structure(s) for s in structures]
    true = feat.featurize_many(structures, pbar=False)
    make = {"true": lambda: true, "noisy": lambda: noisy(true, args.noise, args.seed),
            "vae": lambda: reconstruct(load_model_folder(args.model).vae, torch.as_tensor(true),
                                       seed=args.seed).numpy()}
    kinds = {k: make[k]() for k in args.kinds}
    comps = [c.composition for c in cells]
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    decoders = {"one_refinement": load_decoder_class(None)}
    if args.baseline is not None:
        decoders["baseline"] = load_decoder_class(args.baseline)
    rows = []
    for kind, grids in kinds.items():
        # the decoders take turns, so that a change in the machine's load falls on both
        runs = {name: [] for name in decoders}
        for _ in range(args.repeat):
            for name, cls in decoders.items():
                runs[name].append(decode(cls, grids, comps))
        for name, done in runs.items():
            out = done[-1][0]
            row = {"grids": kind, "decoder": name, "n": len(grids),
                   "decoded": int(sum(s is not None for s in out)),
                   "matched": int(sum(s is not None and sm.fit(r, s) for r, s in zip(structures, out))),
                   "decode_s": round(float(np.median([t for _, t in done])), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_summary(args.out, {"rows": rows, "noise": args.noise, "seed": args.seed, "repeat": args.repeat,
                             "baseline": str(args.baseline)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
