"""De novo generation from training-distribution compositions: validity, uniqueness and novelty.

``--n`` compositions are drawn (with replacement, ``--seed``) from the reduced formulas of the rows of
``shared/data/pool.csv.gz`` with nsites <= 20 whose material_id is not in ``mp20/test.csv``; one structure is generated
per draw (``checks="none"``; the generator picks the number of formula units). Reported over the n requested
(a failed decode counts as invalid, not unique and not novel): structural validity (every distance >= 0.5 A,
volume >= 0.1 A^3), compositional validity (SMACT), both, uniqueness (``evaluation.uniqueness``) and novelty against
the same training pool (``evaluation.novelty``; StructureMatcher ltol=0.2, stol=0.3, angle_tol=5).

    python benchmarks/de_novo.py --device cuda --n 1000 --out results/de_novo.json
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, is_valid, load_generator, write_summary  # noqa: E402

MAX_SITES = 20


def training_pool():
    """(ReferenceSet of the pool rows with nsites <= 20 not in mp20/test.csv, their reduced formulas)."""
    import pandas as pd

    from gpsk_materials.evaluation import ReferenceSet
    from gpsk_materials.paths import shared_data

    test_ids = set(pd.read_csv(shared_data("mp20", "test.csv"), usecols=["material_id"])["material_id"].astype(str))
    pool = ReferenceSet.from_csv(shared_data("pool.csv.gz"), max_sites=MAX_SITES)
    keep = [i for i, m in enumerate(pool.ids) if str(m) not in test_ids]
    pool = pool.subset(keep)
    return pool, list(pool.formulas)


def main(argv=None) -> int:
    from gpsk_materials.evaluation import novelty, uniqueness

    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=1000, help="structures requested")
    p.add_argument("--workers", type=int, default=2, help="processes for the structure matching")
    p.add_argument("--save", type=Path, default=None, help="write the generated structures here (JSON, for gpsk evaluate)")
    args = p.parse_args(argv)
    pool, formulas = training_pool()
    rng = np.random.default_rng(args.seed)
    drawn = [formulas[i] for i in rng.integers(0, len(formulas), args.n)]
    counts = Counter(drawn)
    print(f"training pool: {len(pool)} rows (nsites <= {MAX_SITES}, not in mp20/test.csv); "
          f"{args.n} draws over {len(counts)} reduced formulas")
    gen = load_generator(args)
    t0 = time.perf_counter()
    results = gen.run([{"composition": f, "n": k} for f, k in counts.items()], seed=args.seed, checks="none")
    seconds = time.perf_counter() - t0
    structures = [s for r in results for s in r.structures]
    if args.save:
        args.save.write_text(json.dumps([s.as_dict() for s in structures]))
    refused = sum(r.error is not None for r in results)
    validity = [is_valid(s) for s in structures]
    struct_ok = sum(v[0] for v in validity)
    comp_ok = sum(v[1] for v in validity)
    both = sum(v[0] and v[1] for v in validity)
    uniq = uniqueness(structures, workers=args.workers) if structures else None
    unique_flags = uniq.is_unique if uniq is not None else []
    matched = novelty(structures, pool, workers=args.workers) if structures else []
    novel_flags = [m < 0 for m in matched]
    n_unique = sum(unique_flags)
    n_novel = sum(novel_flags)
    n_un = sum(u and nv for u, nv in zip(unique_flags, novel_flags))
    n_vun = sum(u and nv and v[0] and v[1] for u, nv, v in zip(unique_flags, novel_flags, validity))
    n = args.n
    summary = {
        "requested": n, "decoded": len(structures), "requests_refused": refused, "seconds_generation": seconds,
        "structural_valid": struct_ok, "compositional_valid": comp_ok, "valid": both, "unique": n_unique,
        "novel": n_novel, "unique_novel": n_un, "valid_unique_novel": n_vun,
        "rates_over_requested": {k: v / n for k, v in [("decoded", len(structures)), ("structural_valid", struct_ok),
                                                        ("compositional_valid", comp_ok), ("valid", both),
                                                        ("unique", n_unique), ("novel", n_novel),
                                                        ("unique_novel", n_un), ("valid_unique_novel", n_vun)]},
        "training_pool_rows": len(pool), "device": str(gen.device),
    }
    print(f"decoded {len(structures)}/{n} in {seconds:.1f} s ({refused} requests refused)")
    for k, v in summary["rates_over_requested"].items():
        print(f"{k:20s} {summary.get(k, len(structures)):6d}/{n}  {v:.3f}")
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
