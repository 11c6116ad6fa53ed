"""Response of the generated structures to their conditions (``checks="none"``, composition given).

(a) Space group / crystal system: for each (composition, space group) pair, ``--n`` structures are requested; the
    space group of each decoded structure is detected with ``SymmetryCheck`` (spglib, the generator's symprec) and
    the share matching the requested group and its crystal system is reported, over the requested samples (a
    failed decode is a miss) and over the decoded ones.
(b) TiO2 c axis vs requested formation energy: ``--n`` TiO2 structures per value of ``--formation-energies``
    (eV/atom); the Pearson correlation between the requested value and the c lattice parameter of each decoded
    structure's conventional standard cell (SpacegroupAnalyzer). NaN, with a note, when fewer than 3 decode.

    python benchmarks/conditioning_response.py --device cuda --n 64 --out results/conditioning_response.json
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, load_generator, write_summary  # noqa: E402

PAIRS = [("NaCl", 225), ("TiO2", 136), ("ZnO", 186), ("Fe2O3", 167), ("SrTiO3", 221), ("GaAs", 216)]
FORMATION_ENERGIES = [-3.6, -3.2, -2.8, -2.4, -2.0]


def space_group_hits(gen, n: int, seed: int) -> dict:
    from gpsk_materials.checks.symmetry import SymmetryCheck, crystal_system_of
    from gpsk_materials.errors import GPSKError

    check = SymmetryCheck(symprec=gen.symprec)
    results = gen.run([{"composition": c, "space_group": sg, "n": n} for c, sg in PAIRS], seed=seed, checks="none")
    rows = {}
    for (comp, sg), res in zip(PAIRS, results):
        detected = []
        for s in res.structures:
            try:
                detected.append(check.check(s, space_group=sg).space_group_number)
            except GPSKError:
                detected.append(None)
        sg_hit = sum(d == sg for d in detected)
        cs_hit = sum(d is not None and crystal_system_of(d) == crystal_system_of(sg) for d in detected)
        dec = len(res.structures)
        rows[f"{comp} {sg}"] = {
            "requested": n, "decoded": dec, "error": res.error and str(res.error), "detected": detected,
            "space_group_rate": sg_hit / n, "crystal_system_rate": cs_hit / n,
            "space_group_rate_decoded": sg_hit / dec if dec else float("nan"),
            "crystal_system_rate_decoded": cs_hit / dec if dec else float("nan"),
        }
        print(f"{comp:7s} SG {sg:3d} ({crystal_system_of(sg)}): {dec}/{n} decoded, space group {sg_hit}/{n}, "
              f"crystal system {cs_hit}/{n}" + (f"  [error: {res.error}]" if res.error else ""))
    total = len(PAIRS) * n
    sg_all = sum(r["space_group_rate"] for r in rows.values()) * n / total
    cs_all = sum(r["crystal_system_rate"] for r in rows.values()) * n / total
    print(f"overall: space group {sg_all:.3f}, crystal system {cs_all:.3f} of {total} requested")
    return {"pairs": rows, "space_group_rate": sg_all, "crystal_system_rate": cs_all}


def c_axis_response(gen, n: int, values: list[float], seed: int) -> dict:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    results = gen.run([{"composition": "TiO2", "formation_energy": e, "n": n} for e in values], seed=seed,
                      checks="none")
    xs, cs, per_value = [], [], {}
    for e, res in zip(values, results):
        c_vals = []
        for s in res.structures:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    c_vals.append(float(SpacegroupAnalyzer(s).get_conventional_standard_structure().lattice.c))
            except Exception:  # spglib failure on a degenerate cell: no conventional cell
                continue
        xs += [e] * len(c_vals)
        cs += c_vals
        per_value[str(e)] = {"requested": n, "decoded": res.decoded, "c": c_vals,
                             "c_mean": float(np.mean(c_vals)) if c_vals else float("nan"),
                             "error": res.error and str(res.error)}
        print(f"TiO2 formation energy {e:+.2f} eV/atom: {len(c_vals)}/{n} decoded, "
              f"mean c {per_value[str(e)]['c_mean']:.3f} A")
    note = None
    if len(cs) < 3:
        r = float("nan")
        note = f"only {len(cs)} structures decoded (need >= 3): correlation undefined"
    elif np.std(cs) == 0 or np.std(xs) == 0:
        r = float("nan")
        note = "constant requested values or c lattice parameters: correlation undefined"
    else:
        r = float(np.corrcoef(xs, cs)[0, 1])
    print(f"Pearson r(requested formation energy, c) = {r:.3f} over {len(cs)} structures"
          + (f" ({note})" if note else ""))
    return {"pearson_r": r, "structures": len(cs), "note": note, "per_value": per_value}


def main(argv=None) -> int:
    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=64, help="samples per condition")
    p.add_argument("--formation-energies", type=float, nargs="+", default=FORMATION_ENERGIES)
    args = p.parse_args(argv)
    gen = load_generator(args)
    print("(a) space group conditioning")
    sg = space_group_hits(gen, args.n, args.seed)
    print("(b) TiO2 c axis vs requested formation energy")
    fe = c_axis_response(gen, args.n, args.formation_energies, args.seed)
    write_summary(args.out, {"n": args.n, "device": str(gen.device), "symprec": gen.symprec,
                             "space_group": sg, "tio2_c_vs_formation_energy": fe})
    return 0


if __name__ == "__main__":
    sys.exit(main())
