"""Write the prototype library the package ships (``gpsk_materials/data/prototypes.npz``) from array caches.

The library is every crystal of ``shared/data/pool.csv.gz`` and ``magnetic/mp_magnetic_orderings.csv.gz`` (the
cache ``gpsk train --cache-only`` builds from them, canonical cells as the featurizer uses), with the crystals the
shipped model was NOT trained on flagged ``holdout``: those of the full cache missing from the training cache, which
left out every ``mp20/test.csv`` material by material id and by StructureMatcher (``--exclude-csv ...
--match-structures``; docs/models.md). A user's request then finds the known answer (diamond Si, rutile TiO2);
``PrototypeLibrary.without_holdout()`` is exactly the training set, which every benchmark on the test split uses
(``benchmarks/_common.py``: ``benchmark_library``), so the model and the prototypes are measured on the same footing.

    gpsk train --data ../shared/data/pool.csv.gz ../shared/data/magnetic/mp_magnetic_orderings.csv.gz \\
        --exclude-csv ../shared/data/mp20/test.csv --match-structures --out runs/pool --cache-only
    gpsk train --data ../shared/data/pool.csv.gz ../shared/data/magnetic/mp_magnetic_orderings.csv.gz \\
        --out runs/full --cache-only
    python benchmarks/build_prototype_library.py --cache runs/full/data.npz --training-cache runs/pool/data.npz

Without ``--training-cache`` the library is ``--cache`` with nothing flagged.

Data: Materials Project (CC BY 4.0) by way of the shared pool, see shared/data/SOURCES.md.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from gpsk_materials.errors import DataError
from gpsk_materials.prototypes import LIBRARY_FILE, PrototypeLibrary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="array cache (.npz) of gpsk train --cache-only: every crystal")
    p.add_argument("--training-cache", default=None,
                   help="the model's training cache: crystals of --cache missing from it are flagged holdout")
    p.add_argument("--out", default=str(LIBRARY_FILE))
    args = p.parse_args(argv)
    lib = PrototypeLibrary.from_training_cache(args.cache)
    if args.training_cache:
        with np.load(args.training_cache, allow_pickle=False) as d:
            trained = set(d["material_id"].astype(str))
        missing = trained - set(lib.material_id)
        if missing:
            raise DataError(f"{len(missing)} training crystals are not in {args.cache} (e.g. {sorted(missing)[:3]}): "
                            "build both caches from the same sources")
        holdout = ~np.isin(lib.material_id, list(trained))
        lib = PrototypeLibrary(lib.lattice, lib.frac_coords, lib.numbers, lib.offsets, lib.material_id,
                               lib.e_above_hull, holdout)
    path = lib.save(args.out)
    print(f"wrote {path}: {len(lib)} crystals ({int(lib.holdout.sum())} held out), {len(lib.numbers)} sites, "
          f"{path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
