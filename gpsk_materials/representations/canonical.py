"""Conversion of pymatgen/ASE structures to validated arrays, and the canonical cell.

The canonical cell makes one crystal give one grid:

1. the Niggli-reduced primitive cell (pymatgen ``get_primitive_structure`` then
   ``get_reduced_structure('niggli')``);
2. among the proper signed axis permutations that leave the reduced metric unchanged (the cell's holohedry
   restricted to axis relabellings; they give the same lattice in another setting) and among the sites of the
   anchor species (the element with the fewest sites, ties broken by the heaviest), the setting and origin whose
   sorted, wrapped fractional coordinates (rounded to 1e-4) are lexicographically smallest.

The result is invariant to site order, origin shifts and the choice among equivalent reduced settings.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from gpsk_materials.errors import DegenerateLatticeError, DisorderError, InvalidStructureError, UnknownElementError
from gpsk_materials.representations.form_factors import MAX_Z

_SIGNED_PERMUTATIONS = [
    np.diag(signs)[list(perm)]
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((1, -1), repeat=3)
]
_PROPER_SIGNED_PERMUTATIONS = [m for m in _SIGNED_PERMUTATIONS if round(np.linalg.det(m)) == 1]


def as_structure(obj: Any):
    """Return a pymatgen ``Structure`` from a Structure, IStructure or ASE ``Atoms``; a subclass of Structure
    (pymatgen's ``Slab``, ``Interface``) becomes a plain Structure of its sites, whose cell operations (Niggli
    reduction, primitive cell) pymatgen's subclasses do not all support.

    Raises
    ------
    InvalidStructureError
        ``obj`` is none of these, or ASE ``Atoms`` not periodic in all three directions.
    DegenerateLatticeError
        ASE ``Atoms`` with a zero, singular or non-finite cell.
    """
    from pymatgen.core import IStructure, Structure

    if type(obj) is Structure:
        return obj
    if isinstance(obj, IStructure):  # Structure is an IStructure
        return Structure.from_sites(obj.sites)
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        Atoms = ()
    if Atoms and isinstance(obj, Atoms):
        from pymatgen.io.ase import AseAtomsAdaptor

        if not np.all(obj.pbc):
            raise InvalidStructureError("ASE Atoms must be periodic in all three directions (pbc=True)")
        cell = np.asarray(obj.cell[:], dtype=float)
        volume = abs(np.linalg.det(cell)) if np.all(np.isfinite(cell)) else np.nan
        if not volume > 1e-6:
            raise DegenerateLatticeError(
                f"ASE Atoms have a singular or undefined cell (volume {volume:.3g} A^3): set a periodic cell "
                "(atoms.set_cell(...)) before passing them"
            )
        return AseAtomsAdaptor.get_structure(obj)
    raise InvalidStructureError(f"expected a pymatgen Structure or ASE Atoms, got {type(obj).__name__}")


def structure_to_arrays(structure, allow_disorder: bool = True) -> dict[str, np.ndarray]:
    """Validate ``structure`` and return ``lattice`` (3, 3), ``frac_coords`` (A, 3), ``numbers`` (A,),
    ``occupancy`` (A,) and ``site_index`` (A,), the site of ``structure`` each entry comes from. A disordered site
    contributes one entry per species at the same position."""
    from pymatgen.core import Element

    structure = as_structure(structure)
    if len(structure) == 0:
        raise InvalidStructureError("structure has no sites")
    lattice = np.array(structure.lattice.matrix, dtype=float)
    frac = np.array(structure.frac_coords, dtype=float)
    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(frac))):
        raise InvalidStructureError("structure has non-finite lattice or coordinates (NaN or inf)")
    coords, numbers, occupancy, site_index = [], [], [], []
    for i, site in enumerate(structure):
        species = site.species
        total = sum(species.values())
        if not allow_disorder and (len(species) > 1 or abs(total - 1) > 1e-8):
            raise DisorderError(f"site {i} is disordered ({species.formula}); pass allow_disorder=True")
        if total > 1 + 1e-6 or total <= 0:
            raise InvalidStructureError(f"site {i} has total occupancy {total:.4f}, outside (0, 1]")
        for sp, occ in species.items():
            el = getattr(sp, "element", sp)
            if not isinstance(el, Element):
                raise UnknownElementError(f"site {i} holds {sp!s}, which is not a chemical element")
            if el.Z > MAX_Z:
                raise UnknownElementError(
                    f"site {i} holds {el.symbol} (Z={el.Z}): X-ray form factors exist only for Z = 1..{MAX_Z}"
                )
            coords.append(frac[i])
            numbers.append(el.Z)
            occupancy.append(float(occ))
            site_index.append(i)
    return {
        "lattice": lattice,
        "frac_coords": np.array(coords),
        "numbers": np.array(numbers, dtype=np.int64),
        "occupancy": np.array(occupancy),
        "site_index": np.array(site_index, dtype=np.int64),
    }


def _canonical_key(frac: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    wrapped = np.round(frac, 4) % 1.0
    order = np.lexsort((wrapped[:, 2], wrapped[:, 1], wrapped[:, 0], numbers))
    return np.column_stack([numbers[order], wrapped[order]]).ravel(), wrapped


def candidate_settings(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, anchors: np.ndarray | None = None):
    """Yield the fractional coordinates (N, 3), not wrapped, of a reduced cell in every candidate setting and origin:
    each proper signed axis permutation M that leaves the metric unchanged (x' = M^T x), with the origin moved to
    each site of ``anchors`` (default: the sites of the rarest species, ties to the heaviest). The lattice matrix is
    the same for every candidate."""
    metric = lattice @ lattice.T
    scale = np.abs(metric).max()
    ops = [m for m in _PROPER_SIGNED_PERMUTATIONS if np.allclose(m.T @ metric @ m, metric, atol=1e-5 * scale)]
    if anchors is None:
        species, counts = np.unique(numbers, return_counts=True)
        anchors = np.flatnonzero(numbers == species[counts == counts.min()].max())
    for m in ops:
        rotated = frac @ m  # x' = M^T x for row vectors
        for a in anchors:
            yield rotated - rotated[a]


def canonical_setting(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Return fractional coordinates in the canonical setting and origin of a (reduced) cell: among
    :func:`candidate_settings`, the one with the smallest key of sorted (species, wrapped coordinates). The lattice
    matrix is unchanged because every candidate setting has the same metric."""
    best_key, best = None, None
    for coords in candidate_settings(lattice, frac, numbers):
        key, wrapped = _canonical_key(coords, numbers)
        if best_key is None or tuple(key) < tuple(best_key):
            best_key, best = key, wrapped
    return best


def canonical_structure(structure, primitive: bool = True, primitive_tolerance: float = 0.02):
    """Return the canonical cell of ``structure`` (primitive, Niggli-reduced, canonical setting and origin)."""
    from pymatgen.core import Structure

    structure = as_structure(structure)
    if primitive:
        structure = structure.get_primitive_structure(tolerance=primitive_tolerance)
    reduced = structure.get_reduced_structure("niggli")
    dominant = np.array([max(site.species.items(), key=lambda kv: kv[1])[0].Z for site in reduced])
    frac = canonical_setting(reduced.lattice.matrix, reduced.frac_coords, dominant)
    return Structure(
        reduced.lattice, [site.species for site in reduced], frac, site_properties=reduced.site_properties or None
    )
