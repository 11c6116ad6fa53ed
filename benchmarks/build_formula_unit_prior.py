"""Count formula units Z per chemistry in the training pool and write the generator's prior to the package data.

The shipped model was trained on ``shared/data/pool.csv.gz`` and ``magnetic/mp_magnetic_orderings.csv.gz`` with
the rows of ``mp20/test.csv`` left out (``gpsk_materials/weights/default/config.json``, ``trained_on``). This reads
the same rows (first occurrence of each ``material_id``, test ids excluded), takes each structure's canonical
primitive cell as the featurizer does (pymatgen ``get_primitive_structure(tolerance=0.02)``, see
``gpsk_materials/representations/canonical.py``), keeps cells of at most ``--max-sites`` sites, and counts
Z = gcd of the element counts at the levels of :mod:`gpsk_materials.pipelines.formula_units` (number of elements,
prototype, reduced formula, prototype + space group, reduced formula + space group). The space group is the pool's
``spacegroup_number_pmg`` (SpacegroupAnalyzer, symprec 0.1), computed the same way for the magnetic rows.

Formulas of more than ``max_sites / 2`` atoms allow only Z = 1 and are not stored at the formula levels.

    python benchmarks/build_formula_unit_prior.py [--workers 2] [--out gpsk_materials/data/formula_units.json.gz]

Writes the JSON (gzipped when the name ends in ``.gz``; 1.2 MB plain, 0.25 MB gzipped for the shipped table)
atomically; prints the row counts. 15 minutes on two shared CPU cores (2026-12-01).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import math
import os
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from functools import reduce
from pathlib import Path

from tqdm.auto import tqdm

from gpsk_materials.datasets.sources import iter_csv
from gpsk_materials.paths import shared_data
from gpsk_materials.pipelines.formula_units import PRIOR_FILE, level_keys

#: the featurizer's tolerance of the primitive-cell search (representations.canonical.canonical_structure)
PRIMITIVE_TOLERANCE = 0.02


def _cell(item: tuple[str, int | None, int]) -> tuple[dict[str, int], int] | str:
    """Worker: (CIF, space group or None, max sites) -> (element counts of the primitive cell, space group) or why
    the row is skipped."""
    cif, sg, max_sites = item
    warnings.filterwarnings("ignore")
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        s = Structure.from_str(cif, fmt="cif")
        counts = {el.symbol: int(round(v)) for el, v in s.composition.element_composition.items()}
        if reduce(math.gcd, counts.values(), 0) > 1:  # only then can a smaller primitive cell exist
            s = s.get_primitive_structure(tolerance=PRIMITIVE_TOLERANCE)
            counts = {el.symbol: int(round(v)) for el, v in s.composition.element_composition.items()}
        if sum(counts.values()) > max_sites:
            return f"more than {max_sites} sites"
        if sg is None:
            sg = int(SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number())
        return counts, int(sg)
    except Exception as exc:  # noqa: BLE001 - a row that does not parse is counted and skipped
        return f"unreadable: {type(exc).__name__}"


def _rows(max_sites: int) -> tuple[list[tuple[str, int | None, int]], Counter]:
    test_ids = {r["material_id"] for r in iter_csv(shared_data("mp20", "test.csv"))}
    seen: set[str] = set()
    items, skipped = [], Counter()
    for name in ("pool.csv.gz", "magnetic/mp_magnetic_orderings.csv.gz"):
        for r in iter_csv(shared_data(*name.split("/"))):
            mid = r["material_id"]
            if mid in test_ids:
                skipped["mp20 test"] += 1
                continue
            if mid in seen:
                skipped["duplicate id"] += 1
                continue
            seen.add(mid)
            sg = r.get("spacegroup_number_pmg") or ""
            items.append((r["cif"], int(float(sg)) if sg else None, max_sites))
    return items, skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=PRIOR_FILE)
    p.add_argument("--max-sites", type=int, default=20)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--limit", type=int, default=None, help="first N rows only (a quick check)")
    args = p.parse_args(argv)
    items, skipped = _rows(args.max_sites)
    items = items[: args.limit]
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    z_hist = Counter()
    with ProcessPoolExecutor(args.workers) as pool:
        for out in tqdm(pool.map(_cell, items, chunksize=64), total=len(items), desc="primitive cells"):
            if isinstance(out, str):
                skipped[out] += 1
                continue
            cell, sg = out
            z = reduce(math.gcd, cell.values(), 0)
            reduced = {el: v // z for el, v in cell.items()}
            formula_ok = 2 * sum(reduced.values()) <= args.max_sites  # else only Z = 1 is possible
            z_hist[z] += 1
            for level, key in level_keys(reduced, sg).items():
                if level.startswith("formula") and not formula_ok:
                    continue
                counts[level][key][z] += 1
    kept = sum(z_hist.values())
    table = {
        "about": {
            "counted_on": f"{kept} canonical primitive cells of <= {args.max_sites} sites: shared/data pool.csv.gz + "
                          "magnetic/mp_magnetic_orderings.csv.gz, mp20/test.csv ids excluded (the shipped model's "
                          "training rows)",
            "made_by": "benchmarks/build_formula_unit_prior.py",
            "date": datetime.date.today().isoformat(),
            "skipped": dict(skipped),
            "z_histogram": {str(z): c for z, c in sorted(z_hist.items())},
        },
        "max_sites": args.max_sites,
        "counts": {lv: {k: {str(z): c for z, c in sorted(v.items())} for k, v in sorted(t.items())}
                   for lv, t in counts.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(table, separators=(",", ":")) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(gzip.compress(text, 9, mtime=0) if args.out.suffix == ".gz" else text)
    os.replace(tmp, args.out)
    print(f"{kept} cells counted, skipped {dict(skipped)}; Z histogram {dict(sorted(z_hist.items()))}")
    print(f"levels: {({lv: len(t) for lv, t in counts.items()})}; wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
