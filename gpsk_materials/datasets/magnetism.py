"""Magnetic-ordering labels that can honestly be derived without magnetic data.

None of the structure sources of the pool (MP-20, MPTS-52, the Materials Project / Alexandria / OQMD / JARVIS
samples, WBM) carries magnetic-ordering labels or site magnetic moments, so FM, FiM and AFM can never be derived
here. They come only from a source that gives them (an ``ordering`` / ``magnetic_ordering`` column, e.g.
``shared/data/magnetic/mp_magnetic_orderings.csv.gz``; see :mod:`gpsk_materials.datasets.sources`), and a given label
always wins over this rule. Only one label follows from the composition with good confidence:

**NM** when (1) no element of the structure has open d or f shells in common oxidation states, i.e. none is a d-block
(Sc-Zn, Y-Cd, La, Hf-Hg) or f-block (Ce-Lu, Ac-Cf) element, and (2) the structure is not an insulator with an odd
number of electrons per cell (band theory forces a spin-polarised ground state there; "insulator" means a known
band gap > 0; an odd count with an unknown gap stays unknown), and (3) every site is fully occupied.

Every other structure is ``unknown`` (-1), which the model treats as "not given". Known failure modes of the rule:
s/p-electron magnets with an even electron count per cell (solid O2, some p-orbital radical salts) would be
labelled NM; they are very rare in the sources. The model card (docs/models.md) repeats this.
"""

from __future__ import annotations

import numpy as np

from gpsk_materials.vocabulary import MAGNETIC_ORDERINGS

NM = MAGNETIC_ORDERINGS.index("NM")
UNKNOWN = -1

#: atomic numbers of d- and f-block elements (open-shell candidates)
OPEN_SHELL_Z = np.array(
    [*range(21, 31), *range(39, 49), 57, *range(58, 72), *range(72, 81), 89, *range(90, 99)], dtype=np.int64
)


def derive_magnetic_ordering(numbers: np.ndarray, occupancy: np.ndarray, band_gap: np.ndarray) -> np.ndarray:
    """Derived labels (N,) int8: 0 (NM) where the rule of the module docstring applies, -1 (unknown) elsewhere.

    Parameters
    ----------
    numbers : (N, M) int, 0 = padding
    occupancy : (N, M) float
    band_gap : (N,) float, NaN = unknown
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    occupancy = np.asarray(occupancy, dtype=float)
    band_gap = np.asarray(band_gap, dtype=float)
    real = numbers > 0
    open_shell = (np.isin(numbers, OPEN_SHELL_Z) & real).any(axis=1)
    ordered = np.where(real, np.abs(occupancy - 1.0) < 1e-6, True).all(axis=1)
    odd = (np.where(real, numbers, 0).sum(axis=1) % 2) == 1
    gapped = np.isfinite(band_gap) & (band_gap > 0)
    gap_unknown = ~np.isfinite(band_gap)
    nm = ~open_shell & ordered & ~(odd & (gapped | gap_unknown))
    return np.where(nm, NM, UNKNOWN).astype(np.int8)
