"""X-ray atomic form factors f0(s) of neutral atoms, s = sin(theta)/lambda in 1/Angstrom.

Coefficients are the Waasmaier & Kirfel (1995) fits, f0(s) = c + sum_{i=1..5} a_i exp(-b_i s^2), valid over
0 <= s <= 6 1/Angstrom for H through Cf (Z = 1..98), as distributed with the ``periodictable`` package (DABAX
table ``f0_WaasKirf.dat``). They are the modern successor of the 4-Gaussian Cromer-Mann fits of the
International Tables, which are only valid to s = 2 1/Angstrom: a 32^3 Miller grid reaches s of 4-6 1/Angstrom for
small cells, where Cromer-Mann (and pymatgen's Mott-Bethe XRD table) turn unphysical.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gpsk_materials.errors import UnknownElementError
from gpsk_materials.vocabulary import MAX_Z  # noqa: F401 -- the largest atomic number with coefficients (Cf)

CITATION = (
    "@article{waasmaier1995,\n"
    "  author = {Waasmaier, D. and Kirfel, A.},\n"
    "  title = {New analytical scattering-factor functions for free atoms and ions},\n"
    "  journal = {Acta Crystallographica Section A}, volume = {51}, pages = {416--431}, year = {1995},\n"
    "  doi = {10.1107/S0108767394013292}}"
)


@lru_cache(maxsize=1)
def coefficient_table() -> np.ndarray:
    """Return the (MAX_Z + 1, 11) table [a1..a5, b1..b5, c] indexed by atomic number; row 0 is NaN."""
    from periodictable import elements
    from periodictable.cromermann import getCMformula

    table = np.full((MAX_Z + 1, 11), np.nan)
    for z in range(1, MAX_Z + 1):
        formula = getCMformula(elements[z].symbol)
        table[z, :5] = formula.a
        table[z, 5:10] = formula.b
        table[z, 10] = formula.c
    return table


def check_numbers(numbers: np.ndarray) -> None:
    """Raise :class:`UnknownElementError` if any atomic number lacks form-factor coefficients (0 is padding)."""
    numbers = np.asarray(numbers)
    bad = numbers[(numbers < 0) | (numbers > MAX_Z)]
    if bad.size:
        raise UnknownElementError(
            f"atomic number(s) {sorted(set(bad.tolist()))} have no X-ray form factor: "
            f"supported elements are Z = 1..{MAX_Z} (H..Cf)"
        )


def form_factor(numbers: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Evaluate f0 for atomic numbers ``numbers`` (shape A) at squared s values ``s2`` (shape M) -> (A, M)."""
    numbers = np.asarray(numbers, dtype=int)
    check_numbers(numbers)
    coef = coefficient_table()[numbers]  # (A, 11)
    a, b, c = coef[:, :5], coef[:, 5:10], coef[:, 10]
    s2 = np.asarray(s2, dtype=float)
    return c[:, None] + np.einsum("ag,agm->am", a, np.exp(-b[:, :, None] * s2[None, None, :]))


def form_factor_at_zero(numbers: np.ndarray) -> np.ndarray:
    """f0(0) = c + sum(a): close to Z for neutral atoms."""
    coef = coefficient_table()[np.asarray(numbers, dtype=int)]
    return coef[..., :5].sum(-1) + coef[..., 10]


def torch_coefficient_table(device=None, dtype=None):
    """The coefficient table as a torch tensor on ``device`` (row 0, the padding row, is zeros)."""
    import torch

    table = np.nan_to_num(coefficient_table(), nan=0.0)
    return torch.as_tensor(table, device=device, dtype=dtype or torch.float64)
