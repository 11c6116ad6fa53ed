"""Check that a potential's energies are on the Materials Project scale (the MP-DFT hull protocol needs it).

Computes formation energies (potential energy per atom minus MP elemental reference energies, no correction added) of
--n random MP-20 test structures at their DFT geometries and compares them with the MP formation energies
(MP2020-corrected) of shared/data/mp20/test.csv. CHGNet should agree to a few tens of meV/atom, oxides included;
a potential on another scale is off by tenths of an eV/atom.

    python benchmarks/mp_scale_check.py --potential chgnet --n 40
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", default="chgnet")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from gpsk_materials.checks.potentials import resolve_potential
    from gpsk_materials.evaluation.io import structure_from_cif
    from gpsk_materials.evaluation.mp_hull import formation_energy
    from gpsk_materials.paths import shared_data

    df = pd.read_csv(shared_data("mp20", "test.csv")).sample(args.n, random_state=args.seed)
    structures = [structure_from_cif(c) for c in df["cif"]]
    pot = resolve_potential(args.potential)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        energies = pot.energies(structures)
    e_form = np.array([formation_energy(s.composition, e) for s, e in zip(structures, energies)])
    err = e_form - df["formation_energy_per_atom"].to_numpy()
    oxide = np.array(["O" in {el.symbol for el in s.composition.elements} for s in structures])
    print(json.dumps({
        "potential": pot.name, "n": args.n,
        "mae_eV_per_atom": float(np.abs(err).mean()), "mean_error": float(err.mean()),
        "mae_oxides": float(np.abs(err[oxide]).mean()) if oxide.any() else None,
        "mae_non_oxides": float(np.abs(err[~oxide]).mean()) if (~oxide).any() else None,
    }, indent=1))


if __name__ == "__main__":
    main()
