"""Compute and cache the reference energies of the self-consistent hull (the default stability protocol).

For every chemical system of ``shared/data/pool.csv.gz`` (optionally only structures with at most --max-sites sites),
``gpsk_materials.checks.hull.ReferenceHull.entries`` evaluates each reference structure with the potential
(relaxed, --mode relax, the evaluation default; or single points of the DFT geometries) plus elemental prototypes
for elements absent from the pool, and stores the energies per atom in a JSON file keyed by potential, mode and
material_id. ``gpsk evaluate --stability --reference-energies FILE`` then reads them instead of recomputing.

All structures of the selected systems are evaluated together (``ReferenceHull.prepare``: batched relaxations,
the cache written every --chunk structures, so a stopped run resumes). Systems can be split over processes or GPUs
with --shard i/n (one output file each); --merge joins shard files.

    python benchmarks/build_reference_energies.py --out ref_energies.json --device cuda --shard 0/4
    python benchmarks/build_reference_energies.py --merge ref_0.json ref_1.json ... --out ref_energies.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from gpsk_materials.defaults import RELAX_BATCH


def merge(files: list[Path], out: Path) -> None:
    """Join cache files of checks.hull's format ({"version": 1, "energies": {key: {id: energy}}})."""
    energies: dict[str, dict[str, float]] = {}
    for f in files:
        for key, values in json.loads(f.read_text())["energies"].items():
            energies.setdefault(key, {}).update(values)
    out.write_text(json.dumps({"version": 1, "energies": energies}))
    print(f"wrote {out}: " + ", ".join(f"{k}: {len(v)} energies" for k, v in energies.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON cache file to create or extend")
    parser.add_argument("--potential", help="default: the shared TensorNet-MatPES model; 'chgnet' etc.")
    parser.add_argument("--mode", choices=["relax", "single_point"], default="relax")
    parser.add_argument("--max-sites", type=int, help="ignore pool structures with more sites")
    parser.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--shard", default="0/1", help="i/n: process systems i, i+n, i+2n, ...")
    parser.add_argument("--limit", type=int, help="process at most this many chemical systems (timing runs)")
    parser.add_argument("--chunk", type=int, default=4096, help="structures per cache write")
    parser.add_argument("--relax-batch", type=int, default=RELAX_BATCH, help="structures per forward pass (relax mode)")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these shard files into --out and stop")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    from gpsk_materials.checks.hull import ReferenceHull
    from gpsk_materials.checks.potentials import load_potential, resolve_potential
    from gpsk_materials.paths import shared_data

    pot = resolve_potential(args.potential) if args.potential else load_potential()
    if args.device:
        pot.to(args.device)
    pool = shared_data("pool.csv.gz")
    hull = ReferenceHull(pot, pool_path=pool, cache_path=args.out, mode=args.mode, max_sites=args.max_sites,
                         relax_batch=args.relax_batch)
    table = hull.pool_table()
    if args.max_sites is not None:
        table = table[table["nsites"] <= args.max_sites]
    i, n = (int(x) for x in args.shard.split("/"))
    systems = sorted(set(table["elements"]), key=lambda s: (-len(s), sorted(s)))[i::n][: args.limit]
    t = time.perf_counter()
    # one batched pass over every structure of these systems (and their subsystems), then the elements
    count = hull.prepare(systems, chunk=args.chunk)
    for element in tqdm(sorted(set().union(*systems)), desc="elements"):
        hull.entries([element])
    seconds = time.perf_counter() - t
    print(f"{len(systems)} systems, {count} structures evaluated in {seconds:.0f} s "
          f"({count / max(seconds, 1e-9):.1f} structures/s), cache {args.out}")

if __name__ == "__main__":
    main()
