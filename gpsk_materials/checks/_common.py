"""Input checks shared by the post-checks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pymatgen.core import Element, Structure

from gpsk_materials.errors import DisorderError, InvalidStructureError, UnknownElementError


def as_structure(structure: object, *, ordered: bool = False) -> Structure:
    """Return ``structure`` if it is a usable pymatgen Structure, else raise.

    Parameters
    ----------
    structure
        The object to check.
    ordered
        Also reject partial occupancies (potentials need one species per site).

    Raises
    ------
    InvalidStructureError
        Not a Structure, no sites, or non-finite lattice or coordinates.
    UnknownElementError
        A site holds a species that is not a chemical element (``DummySpecies("X")``, a vacancy).
    DisorderError
        ``ordered`` and a site is partially occupied.
    """
    if not isinstance(structure, Structure):
        raise InvalidStructureError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise InvalidStructureError("the structure has no sites")
    if not np.all(np.isfinite(structure.lattice.matrix)) or not np.all(np.isfinite(structure.frac_coords)):
        raise InvalidStructureError(f"{structure.formula}: non-finite lattice or coordinates")
    for i, site in enumerate(structure):
        for sp in site.species:
            if not isinstance(getattr(sp, "element", sp), Element):
                raise UnknownElementError(f"{structure.formula}: site {i} holds {sp}, which is not a chemical element")
    if ordered and not structure.is_ordered:
        raise DisorderError(f"{structure.formula}: partial occupancies are not supported here")
    return structure


def as_structures(structures: Structure | Iterable[Structure], *, ordered: bool = False) -> list[Structure]:
    """Accept one Structure or an iterable of them; return a checked list."""
    if isinstance(structures, Structure):
        return [as_structure(structures, ordered=ordered)]
    if isinstance(structures, (str, bytes)) or not isinstance(structures, Iterable):
        raise InvalidStructureError(f"expected a Structure or a sequence of Structures, got {type(structures).__name__}")
    return [as_structure(s, ordered=ordered) for s in structures]
