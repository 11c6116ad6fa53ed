"""Throughput of featurization and decoding: NumPy and torch on CPU, torch on a GPU, in structures/s.

Each engine is timed on MP-20 structures (test, val and train files of shared/data/mp20, canonical cells
prepared beforehand); ratios are against baselines measured in the same run: the NumPy reference featurizer and a
naive batched torch featurizer (one complex exponential and one form factor per atom and Miller index).

    python benchmarks/throughput.py --device cuda --n 10000 --out docs/results/throughput_cuda.json
    python benchmarks/throughput.py --device cpu --n 256 --out docs/results/throughput_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from _common import read_structures, timed, write_summary  # noqa: E402


def featurize_naive_torch(lattice, frac, numbers, occupancy, n: int = 32):
    """Baseline: per-atom form factors and phases over the whole grid, summed (B, N, n^3) at once."""
    import torch

    from gpsk_materials.representations import grid as G
    from gpsk_materials.representations.form_factors import torch_coefficient_table

    table = torch_coefficient_table(lattice.device, lattice.dtype)
    hkl = torch.as_tensor(G.miller_grid(n).reshape(-1, 3), device=lattice.device, dtype=lattice.dtype)
    gs = torch.linalg.inv(lattice @ lattice.transpose(1, 2))
    q = torch.einsum("mi,bij,mj->bm", hkl, gs, hkl)
    coef = table[numbers]  # (B, N, 11)
    f = coef[..., 10, None] + (coef[..., :5, None] * torch.exp(-coef[..., 5:10, None] * q[:, None, None] / 4)).sum(2)
    ang = 2 * torch.pi * frac @ hkl.T
    F = ((f * occupancy[..., None]) * torch.polar(torch.ones_like(ang), ang)).sum(1)
    re, im = G.compress_structure_factor(F.real, F.imag)
    return torch.stack([re, im, q / G.Q0], 1).reshape(-1, 3, n, n, n)


def main(argv=None) -> int:
    import torch

    from gpsk_materials.representations.decoding import ReciprocalGridDecoder
    from gpsk_materials.representations.reciprocal import featurize_arrays, featurize_batch, structures_to_arrays

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=256, help="structures featurized by the batched torch engines")
    p.add_argument("--n-numpy", type=int, default=100, help="structures featurized by the NumPy reference")
    p.add_argument("--n-decode", type=int, default=64, help="grids decoded")
    p.add_argument("--decode-batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = args.device

    structures = []
    for name in ("mp20/test.csv", "mp20/val.csv", "mp20/train.csv"):
        s, _ = read_structures(name, args.n - len(structures), args.workers)
        structures += s
        if len(structures) >= args.n:
            break
    structures = structures[: args.n]
    t0 = time.perf_counter()
    arr = structures_to_arrays(structures)
    t_prep = time.perf_counter() - t0
    rows = {"n": len(structures), "max_atoms": int(arr["numbers"].shape[1]), "canonicalize_per_s": len(structures) / t_prep}

    k = min(args.n_numpy, len(structures))
    t_np, _ = timed(lambda: [featurize_arrays(arr["lattice"][i], arr["frac_coords"][i], arr["numbers"][i],
                                              arr["occupancy"][i]) for i in range(k)], repeat=1)
    rows["featurize_numpy_per_s"] = k / t_np

    tens = {key: torch.as_tensor(v, device=dev) for key, v in arr.items()}
    tens["lattice"] = tens["lattice"].float()
    tens["frac_coords"] = tens["frac_coords"].float()
    tens["occupancy"] = tens["occupancy"].float()
    t_fast, grids = timed(featurize_batch, tens["lattice"], tens["frac_coords"], tens["numbers"], tens["occupancy"],
                          device=dev)
    rows[f"featurize_torch_{dev}_s"] = t_fast
    rows[f"featurize_torch_{dev}_per_s"] = len(structures) / t_fast
    naive_chunk = 512 if dev.startswith("cuda") else 32

    def naive():
        return torch.cat([featurize_naive_torch(tens["lattice"][i:i + naive_chunk], tens["frac_coords"][i:i + naive_chunk],
                                                tens["numbers"][i:i + naive_chunk], tens["occupancy"][i:i + naive_chunk])
                          for i in range(0, len(structures), naive_chunk)])

    t_naive, grids_naive = timed(naive, device=dev)
    rows[f"featurize_naive_torch_{dev}_s"] = t_naive
    rows["speedup_vs_naive"] = t_naive / t_fast
    rows["speedup_vs_numpy"] = (len(structures) / t_fast) / rows["featurize_numpy_per_s"]
    rows["max_abs_diff_vs_naive"] = float((grids - grids_naive.float()).abs().max())
    if dev.startswith("cuda"):
        rows["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9

    m = min(args.n_decode, len(structures))
    comps = [s.composition for s in structures[:m]]
    for dtype in ("float64", "float32"):
        dec = ReciprocalGridDecoder(device=dev, dtype=dtype, batch_size=args.decode_batch)
        t_dec, out = timed(dec.decode_many, grids[:m], comps, ignore_errors=True, pbar=False, device=dev, repeat=1)
        rows[f"decode_{dtype}_{dev}_per_s"] = m / t_dec
        rows[f"decode_{dtype}_{dev}_failures"] = sum(o is None for o in out)

    rows["device"] = (torch.cuda.get_device_name() if dev.startswith("cuda")
                      else f"cpu ({torch.get_num_threads()} threads)")
    for key, val in rows.items():
        print(f"{key:40s} {val:.4g}" if isinstance(val, float) else f"{key:40s} {val}")
    write_summary(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
