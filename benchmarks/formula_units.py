"""Issue 14 item 6: the seed blog's named compounds with Z fixed at one formula unit (the old behaviour) and with Z
drawn from the training prior (the new default), with and without the known space group.

Compounds (shared/seed/gpsk-blog.txt): rock salts NaCl and MgO, rutile TiO2, diamond Si, wurtzite GaN, hematite
Fe2O3, L1_0 FePt and SmCo5. For each the reduced formula is requested with ``n=--n`` (best_of 1, ``checks="basic"``,
seed ``--seed``; request i draws its noise from ``seed + i``), once with ``formula_units=1`` (the cell content the
generator used before: the reduced formula itself) and once with Z left to the generator. The noise is the same in
both; only the cell content each candidate is conditioned on and decoded with differs. With ``--space-group`` each
request also gives the known space group; the new code then refuses Z = 1 where the group cannot hold one formula
unit (TiO2 in 136, Si in 227, GaN in 186, Fe2O3 in 167), which the old code generated anyway. ``--legacy`` runs the
"before" requests without ``formula_units`` (the reduced formula as the cell content, as the old code read it), for
the code before this change put first on the path:

    git archive 3ce8edd | tar -x -C /tmp/gpsk_old
    PYTHONPATH=/tmp/gpsk_old python benchmarks/formula_units.py --space-group --legacy --modes before \
        --out docs/results/formula_units_sg_legacy.json
    python benchmarks/formula_units.py --space-group --modes after --out docs/results/formula_units_sg.json

Reported per compound: candidates decoded, the Z of the decoded ones, the space groups found (SpacegroupAnalyzer,
symprec 0.1, the basic checks), and how many match the known structure with
pymatgen ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` (the CSP tolerances). References: the Materials
Project structures of the training pool where present (NaCl mp-22862, MgO mp-1265, GaN mp-804, Fe2O3 mp-19770,
FePt mp-2260, SmCo5 mp-1429), else the ideal prototypes built with ``Structure.from_spacegroup`` (diamond Si
a = 5.431 A; rutile TiO2 a = 4.594, c = 2.959 A, O x = 0.305; neither is in the pool at <= 20 sites).

    python benchmarks/formula_units.py --n 8 --seed 0 [--space-group] --out docs/results/formula_units.json
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, load_generator, write_summary  # noqa: E402

# formula, space group, pool material id or None, prototype (space group symbol, species, coords, lattice)
COMPOUNDS = [
    ("NaCl", 225, "mp-22862", None),
    ("MgO", 225, "mp-1265", None),
    ("TiO2", 136, None, ("P4_2/mnm", ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]], ("tetragonal", 4.594, 2.959))),
    ("Si", 227, None, ("Fd-3m", ["Si"], [[0, 0, 0]], ("cubic", 5.431))),
    ("GaN", 186, "mp-804", None),
    ("Fe2O3", 167, "mp-19770", None),
    ("FePt", 123, "mp-2260", None),
    ("SmCo5", 191, "mp-1429", None),
]


def references() -> dict[str, object]:
    """The known structure of each compound (pool CIF or ideal prototype)."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure

    from gpsk_materials.paths import shared_data

    ids = {mid for _, _, mid, _ in COMPOUNDS if mid}
    pool = pd.read_csv(shared_data("pool.csv.gz"), usecols=["material_id", "cif"])
    cifs = dict(pool[pool["material_id"].isin(ids)].itertuples(index=False, name=None))
    out = {}
    for formula, _, mid, proto in COMPOUNDS:
        if mid:
            out[formula] = Structure.from_str(cifs[mid], fmt="cif")
        else:
            symbol, species, coords, (system, *abc) = proto
            lattice = Lattice.cubic(abc[0]) if system == "cubic" else Lattice.tetragonal(*abc)
            out[formula] = Structure.from_spacegroup(symbol, lattice, species, coords)
    return out


def main(argv=None) -> int:
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition

    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=8, help="candidates per compound")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: defaults.SAMPLER_STEPS)")
    p.add_argument("--space-group", action="store_true", help="also give the known space group")
    p.add_argument("--modes", default="before,after", help="before (Z = 1), after (Z drawn), or both (default)")
    p.add_argument("--legacy", action="store_true",
                   help="the installed code predates formula_units: run 'before' without it (the old reading)")
    args = p.parse_args(argv)
    import gpsk_materials

    print(f"gpsk_materials from {Path(gpsk_materials.__file__).parent}")
    import torch

    torch.set_num_threads(1)
    refs = references()
    matcher = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    gen = load_generator(args)
    extra = {} if args.steps is None else {"steps": args.steps}
    summary: dict = {"n": args.n, "seed": args.seed, "space_group_given": args.space_group, "legacy": args.legacy,
                     "code": str(Path(gpsk_materials.__file__).parent), "rows": {}}
    modes = [m for m in (("before (Z = 1)", 1), ("after (Z drawn)", None)) if m[0].split()[0] in args.modes]
    for mode, z in modes:
        units = {} if args.legacy else {"formula_units": z}
        requests = [{"composition": f, "n": args.n, **units, **extra,
                     **({"space_group": sg} if args.space_group else {})} for f, sg, _, _ in COMPOUNDS]
        t0 = time.perf_counter()
        results = gen.run(requests, seed=args.seed, checks="basic", progress=False)
        seconds = time.perf_counter() - t0
        rows = {}
        for (formula, *_), res in zip(COMPOUNDS, results):
            if res.error is not None:
                rows[formula] = {"error": str(res.error).split(": ", 1)[-1]}
                print(f"{mode:16s} {formula:6s} refused: {rows[formula]['error'][:90]}")
                continue
            zs = [int(len(s) // sum(Composition(formula).values())) for s in res.structures]
            found = [((s.properties["gpsk"].get("checks") or {}).get("results") or {}).get("space_group")
                     for s in res.structures]
            matched = [bool(matcher.fit(s, refs[formula])) for s in res.structures]
            rows[formula] = {"candidates": res.candidates, "decoded": res.decoded, "z_decoded": dict(Counter(zs)),
                             "matched": int(sum(matched)), "space_groups_found": dict(Counter(found)),
                             "z_matched": dict(Counter(z for z, m in zip(zs, matched) if m))}
            print(f"{mode:16s} {formula:6s} decoded {res.decoded}/{res.candidates}  "
                  f"Z {dict(sorted(Counter(zs).items()))}"
                  f"  matched {sum(matched)}")
        dec = sum(r.get("decoded", 0) for r in rows.values())
        tot = len(COMPOUNDS) * args.n
        hit = sum(r.get("matched", 0) for r in rows.values())
        print(f"{mode}: decoded {dec}/{tot}, matched {hit}/{tot}, {seconds:.0f} s")
        summary["rows"][mode] = {"compounds": rows, "decoded": dec, "matched": hit, "total": tot, "seconds": seconds}
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
