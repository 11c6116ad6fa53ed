"""Input checks shared by the post-checks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pymatgen.core import Element, Structure

from gpsk_materials.errors import DisorderError, InvalidStructureError, UnknownElementError


def as_structure(structure: object, *, ordered: bool = False) -> Structure:
    """Return ``structure`` as a usable pymatgen Structure, else raise.

    Parameters
    ----------
    structure
        The object to check: a pymatgen ``Structure`` (returned as it is), ``IStructure`` or ASE ``Atoms``
        (converted by pymatgen's ``AseAtomsAdaptor``; see
        :func:`gpsk_materials.representations.canonical.as_structure`).
    ordered
        Also reject partial occupancies (potentials need one species per site).

    Raises
    ------
    InvalidStructureError
        Not a Structure or Atoms, Atoms not periodic in all three directions (``DegenerateLatticeError`` for a
        singular cell), no sites, or non-finite lattice or coordinates.
    UnknownElementError
        A site holds a species that is not a chemical element (``DummySpecies("X")``, a vacancy).
    DisorderError
        ``ordered`` and a site is partially occupied.
    """
    if type(structure) is not Structure:  # IStructure, ASE Atoms, a Slab (canonical.as_structure)
        structure = _convert(structure)
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


def _convert(obj: object) -> Structure:
    from gpsk_materials.representations.canonical import as_structure as to_structure

    return to_structure(obj)


def _is_one(obj: object) -> bool:
    """One structure (a Structure, IStructure or ASE Atoms, which is iterable over its atoms) or many."""
    from pymatgen.core import IStructure

    if isinstance(obj, IStructure):  # Structure derives from IStructure
        return True
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        return False
    return isinstance(obj, Atoms)


def as_structures(structures: Structure | Iterable[Structure], *, ordered: bool = False) -> list[Structure]:
    """Accept one Structure or ASE Atoms, or an iterable of them; return a checked list of Structures."""
    if _is_one(structures):
        return [as_structure(structures, ordered=ordered)]
    if isinstance(structures, (str, bytes)) or not isinstance(structures, Iterable):
        raise InvalidStructureError(f"expected a Structure or a sequence of Structures, got {type(structures).__name__}")
    return [as_structure(s, ordered=ordered) for s in structures]
