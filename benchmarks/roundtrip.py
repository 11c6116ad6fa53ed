"""Round trip Structure -> grid -> Structure on the shared evaluation sets.

Prints, per data set, the share of structures that pymatgen's StructureMatcher (default tolerances, species
identical) matches after decoding with the default reciprocal decoder and with the blog's peak decoder, the
worst relative error of the lattice parameters, and the time spent.

    python benchmarks/roundtrip.py --device cuda --workers 16 --out docs/results/roundtrip.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import read_structures  # noqa: E402

DATASETS = ["mp20/test.csv", "perov_5/val.csv", "carbon_24/val.csv"]


def _canonical(s):
    from gpsk_materials.errors import GPSKError
    from gpsk_materials.representations.canonical import canonical_structure

    try:
        return canonical_structure(s)
    except GPSKError as exc:
        return str(exc)


def _match(pair):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    ref, dec = pair
    return dec is not None and StructureMatcher().fit(ref, dec)


def _lattice_error(ref, dec) -> float:
    a = np.array(ref.lattice.parameters)
    b = np.array(dec.lattice.parameters)
    return float(np.max(np.abs(a - b) / np.abs(a)))


def run(name: str, args) -> dict:
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    structures, _ = read_structures(name, args.limit, args.workers)
    with Pool(args.workers) as pool:
        canon = pool.map(_canonical, structures, chunksize=32)
    feat = ReciprocalGridFeaturizer(canonicalize=False, backend="torch", device=args.device, batch_size=1024)
    ok_idx, grids, failures = [], [], []
    t0 = time.perf_counter()
    for i, c in enumerate(canon):
        if isinstance(c, str):
            failures.append((i, c))
            continue
        ok_idx.append(i)
    good = [canon[i] for i in ok_idx]
    grids = feat.featurize_many(good, pbar=args.progress)
    t_feat = time.perf_counter() - t0
    comps = [structures[i].composition for i in ok_idx]
    row = {"dataset": name, "n": len(structures), "featurize_s": t_feat}
    for method in ("reciprocal", "peaks"):
        dec = ReciprocalGridDecoder(method=method, device=args.device, batch_size=args.batch_size)
        t0 = time.perf_counter()
        out, reasons = dec.decode_many(grids, comps, return_errors=True, pbar=args.progress)
        t_dec = time.perf_counter() - t0
        with Pool(args.workers) as pool:
            matched = pool.map(_match, [(structures[i], o) for i, o in zip(ok_idx, out)], chunksize=16)
        rate = sum(matched) / len(structures)
        row[method] = {"match_rate": rate, "matched": int(sum(matched)), "decode_s": t_dec,
                       "decode_per_s": len(good) / t_dec}
        if method == "reciprocal":
            errs = [_lattice_error(c, o) for c, o in zip(good, out) if o is not None]
            row[method]["max_lattice_rel_error"] = float(max(errs)) if errs else None
            row[method]["failures"] = failures + [
                (ok_idx[k], structures[ok_idx[k]].composition.reduced_formula, reasons[k])
                for k in range(len(out)) if not matched[k]]
        print(f"{name:20s} {method:10s} match {rate:.4f} ({sum(matched)}/{len(structures)})  "
              f"decode {len(good) / t_dec:8.1f} structures/s", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=DATASETS)
    p.add_argument("--limit", type=int, default=None, help="first N structures of each set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16, help="grids decoded together")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    import torch

    rows = [run(name, args) for name in args.datasets]
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if
              args.device.startswith("cuda") else "cpu", "command": " ".join(sys.argv), "results": rows}
    for r in rows:
        print(f"{r['dataset']}: reciprocal {r['reciprocal']['match_rate']:.4f}, peaks baseline "
              f"{r['peaks']['match_rate']:.4f}, max lattice rel. error {r['reciprocal']['max_lattice_rel_error']:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
