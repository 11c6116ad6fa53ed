"""Second stability protocol: energies of an MP-scale potential against Materials Project DFT formation energies.

The hull is made of the DFT formation energies (MP2020-corrected, eV/atom) of the 34,424 MP-20 materials within
0.025 eV/atom of the MP hull (``reference/mp20_near_hull_dft.parquet``) plus every element at 0. A candidate's
formation energy is its potential energy per atom minus the composition-weighted energies per atom of the lowest-energy
MP entry of each element (``reference/2023-02-07-mp-elemental-reference-entries.json.gz``, matbench-discovery).

Valid only with a potential whose energies are on the Materials Project (MP2020-corrected GGA/GGA+U) scale, e.g.
CHGNet from the ``chgnet`` package, which was trained on MPtrj's corrected energies (so no correction is applied on
top; ``benchmarks/mp_scale_check.py`` measures the agreement). Never with the MatPES-scale default potential.
The hull holds only near-hull MP-20 phases (at most 20 sites), so it can lie above the full MP hull: E_hull from this
protocol is a lower bound of the E_hull against all of MP.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd
from monty.serialization import loadfn
from pymatgen.core import Composition

from gpsk_materials.checks.hull import ReferenceHull
from gpsk_materials.errors import DataError
from gpsk_materials.paths import shared_data

DFT_TABLE = "reference/mp20_near_hull_dft.parquet"
ELEMENTAL_REFS = "reference/2023-02-07-mp-elemental-reference-entries.json.gz"
#: potential backends whose energies are on the Materials Project scale
MP_SCALE_BACKENDS = ("chgnet",)


@lru_cache(maxsize=2)
def elemental_energies(path: str | None = None) -> dict[str, float]:
    """Energy per atom (eV) of the lowest-energy MP entry of each element."""
    p = Path(path) if path else shared_data(ELEMENTAL_REFS)
    if not p.exists():
        raise DataError(f"{p} not found: set $GPSK_SHARED_DIR to the folder holding data/reference")
    return {str(k): float(v.energy_per_atom) for k, v in loadfn(p).items()}


def formation_energy(composition: Composition | str, energy_per_atom: float, path: str | None = None) -> float:
    """Formation energy per atom against the MP elemental references."""
    comp = Composition(composition)
    mu = elemental_energies(path)
    missing = [el.symbol for el in comp.elements if el.symbol not in mu]
    if missing:
        raise DataError(f"{comp.reduced_formula}: no MP elemental reference for {missing}")
    return float(energy_per_atom) - sum(comp.get_atomic_fraction(el) * mu[el.symbol] for el in comp.elements)


@lru_cache(maxsize=2)
def mp_dft_hull(table: str | None = None) -> ReferenceHull:
    """A :class:`ReferenceHull` of MP DFT formation energies (elements at 0); query it with formation energies."""
    p = Path(table) if table else shared_data(DFT_TABLE)
    if not p.exists():
        raise DataError(f"{p} not found: set $GPSK_SHARED_DIR to the folder holding data/reference")
    df = pd.read_parquet(p, columns=["pretty_formula", "formation_energy_per_atom"])
    entries = [(f, e) for f, e in zip(df["pretty_formula"], df["formation_energy_per_atom"])]
    entries += [(el, 0.0) for el in elemental_energies()]
    return ReferenceHull.from_entries(entries)


def check_mp_scale(potential) -> None:
    """Refuse potentials whose energies are not on the Materials Project scale."""
    if getattr(potential, "backend", None) not in MP_SCALE_BACKENDS:
        raise DataError(
            f"the MP-DFT hull protocol needs a potential on the Materials Project energy scale "
            f"({', '.join(MP_SCALE_BACKENDS)}); {potential.name} is not"
        )
