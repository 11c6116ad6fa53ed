"""Write the prototype library the package ships (``gpsk_materials/data/prototypes.npz``) from a training cache.

The library is the shipped model's own training crystals: the cache ``gpsk train --cache-only`` builds from
``shared/data/pool.csv.gz`` and ``magnetic/mp_magnetic_orderings.csv.gz`` with every ``mp20/test.csv`` material left
out, by material id and by StructureMatcher (``--exclude-csv ... --match-structures``; see docs/models.md), in the
canonical cells the featurizer uses. So :class:`gpsk_materials.prototypes.PrototypeSubstitutor` knows exactly the
crystals the flow was trained on, and CSP on the test split is measured for both on the same footing.

    gpsk train --data ../shared/data/pool.csv.gz ../shared/data/magnetic/mp_magnetic_orderings.csv.gz \\
        --exclude-csv ../shared/data/mp20/test.csv --match-structures --out runs/pool --cache-only
    python benchmarks/build_prototype_library.py --cache runs/pool/data.npz

Data: Materials Project (CC BY 4.0) by way of the shared pool, see shared/data/SOURCES.md.
"""

from __future__ import annotations

import argparse
import sys

from gpsk_materials.prototypes import LIBRARY_FILE, PrototypeLibrary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="training cache (.npz) of gpsk train --cache-only")
    p.add_argument("--out", default=str(LIBRARY_FILE))
    args = p.parse_args(argv)
    lib = PrototypeLibrary.from_training_cache(args.cache)
    path = lib.save(args.out)
    print(f"wrote {path}: {len(lib)} crystals, {len(lib.numbers)} sites, {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
