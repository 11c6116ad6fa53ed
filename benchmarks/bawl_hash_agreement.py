"""Agreement of our BAWL hashes with the MP-20 hashes LeMat-GenBench published (LeMaterial's material-hasher).

Hashes --n structures of an MP-20 CSV (random rows, --seed) with ``gpsk_materials.evaluation.hashing.BAWLHasher``,
read as ``gpsk evaluate`` reads them, and reports the share whose hash is in the reference file of the same split
(``mp20_bawl_fingerprints_train.txt.gz`` for train.csv) and in the file of all of MP-20: for the cell as given
(material-hasher's rule, what LeMat-GenBench does) and with the primitive cell tried where the cell as given misses
(what ``gpsk evaluate --novelty-reference`` does). A structure whose hash is missing is printed with the reference
hashes of the same reduced formula, to tell a different graph hash from a different space-group label or cell.

    python benchmarks/bawl_hash_agreement.py --csv mp20/train.csv --n 500 --seed 0 \
        --out docs/results/bawl_hash_agreement_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

from importlib.metadata import version as _version

import numpy as np
import pandas as pd


def _lookup(cif: str, split: str) -> tuple[str | None, bool, bool, bool, bool]:
    """Hash of the cell as given, and its membership in the split and all-MP-20 references: as given, and with the
    other cells ``BAWLReference.hash_and_match`` tries (sorted sites, primitive cell) where it misses."""
    from gpsk_materials.errors import GPSKError
    from gpsk_materials.evaluation.hashing import BAWLHasher
    from gpsk_materials.evaluation.io import structure_from_cif
    from gpsk_materials.evaluation.references import BAWLReference

    split_ref, all_ref = BAWLReference.mp20(split), BAWLReference.mp20("mp20-bawl")
    try:
        structure = structure_from_cif(cif)
        given = BAWLHasher().get_hash(structure)
    except GPSKError:
        return None, False, False, False, False
    flags = []
    for ref in (split_ref, all_ref):
        hit = given in ref.hashes
        flags += [hit, hit or bool(ref.hash_and_match([structure])[1][0])]
    return given, *flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default="mp20/train.csv", help="MP-20 CSV under shared/data (cif column)")
    parser.add_argument("--n", type=int, default=200, help="rows hashed (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", help="also write the result (JSON, misses included) to this file")
    args = parser.parse_args()

    from gpsk_materials.evaluation.references import BAWLReference, formula_key
    from gpsk_materials.paths import shared_data

    df = pd.read_csv(shared_data(*args.csv.split("/")), usecols=["material_id", "cif"])
    if 0 < args.n < len(df):
        df = df.iloc[np.sort(np.random.default_rng(args.seed).choice(len(df), args.n, replace=False))]
    split = "mp20-bawl-train" if "train" in args.csv else "mp20-bawl"
    split_ref, all_ref = BAWLReference.mp20(split), BAWLReference.mp20("mp20-bawl")
    t = time.perf_counter()
    with Pool(args.workers) as pool:
        rows = pool.map(partial(_lookup, split=split), list(df["cif"]), chunksize=8)
    seconds = time.perf_counter() - t
    hashes = [r[0] for r in rows]
    in_split, in_split_prim, in_all, in_all_prim = ([r[k] for r in rows] for k in range(1, 5))
    misses = []
    for mid, h, hit, hit_prim in zip(df["material_id"], hashes, in_all, in_all_prim):
        if not hit:
            misses.append({"material_id": mid, "hash": h, "found_with_other_cells": hit_prim})
            key = None if h is None else formula_key(h.rsplit("_", 1)[1])
            same = sorted(x for x in all_ref.hashes if key and formula_key(x.rsplit("_", 1)[1]) == key)
            print(f"miss {mid}: ours {h} ({'found' if hit_prim else 'not found'} with the sorted/primitive cell); "
                  f"reference hashes of the formula: {same[:6]}")
    result = {
        "csv": args.csv, "n": len(df), "seed": args.seed, "reference": split_ref.name, "pymatgen": _version("pymatgen"), "spglib": _version("spglib"),
        "share_in_split_reference": float(np.mean(in_split)), "share_in_all_mp20": float(np.mean(in_all)),
        "share_in_split_reference_with_other_cells": float(np.mean(in_split_prim)),
        "share_in_all_mp20_with_other_cells": float(np.mean(in_all_prim)),
        "failed": sum(h is None for h in hashes), "seconds_per_structure": seconds / max(len(df), 1) * args.workers,
        "misses": misses,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
