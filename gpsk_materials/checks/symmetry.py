"""Symmetry post-check: detected space group and crystal system (spglib through pymatgen), agreement with a
request, symmetrization, and a site-count compatibility test from Wyckoff multiplicities.

Wyckoff multiplicities are derived here from spglib's database of symmetry operations (neither spglib nor
pymatgen lists them, and pyxtal is not a dependency): every point of a 24^3 rational grid of the conventional cell
is mapped by the group's operations; the orbit size is the multiplicity of the point's Wyckoff position, and the
dimension of the subspace fixed by its site-symmetry rotations tells whether the position has free parameters.
All special positions of the 230 groups have coordinates that are multiples of 1/24 (1/8, 1/6, 1/4, 1/3, ...), so
the grid meets every Wyckoff position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import spglib
from spglib.error import SpglibError
from monty.json import MSONable
from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gpsk_materials.checks._common import as_structure
from gpsk_materials.errors import ConditioningError, InvalidStructureError
from gpsk_materials.vocabulary import CRYSTAL_SYSTEMS, check_crystal_system, check_space_group, crystal_system_of

@dataclass
class SymmetryResult(MSONable):
    """Outcome of :meth:`SymmetryCheck.check`; the ``*_match`` flags are None where nothing was requested."""

    space_group_number: int
    space_group_symbol: str
    crystal_system: str
    symprec: float
    requested_space_group: int | None = None
    requested_crystal_system: str | None = None
    space_group_match: bool | None = None
    crystal_system_match: bool | None = None

    @property
    def matches(self) -> bool:
        """True unless a requested space group or crystal system was missed."""
        return self.space_group_match is not False and self.crystal_system_match is not False

    def as_dict(self) -> dict:
        return {"@module": type(self).__module__, "@class": type(self).__name__, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> SymmetryResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


#: what spglib (directly, or through pymatgen's SymmetryUndeterminedError, a ValueError) raises when it gives up
_SPGLIB_FAILURES = (TypeError, ValueError, SpglibError)


class SymmetryCheck(MSONable):
    """Space-group detection with spglib (via pymatgen's SpacegroupAnalyzer).

    Parameters
    ----------
    symprec
        Distance tolerance in A (0.1 is the Materials Project / MP-20 convention).
    angle_tolerance
        Angle tolerance in degrees.
    """

    def __init__(self, symprec: float = 0.1, angle_tolerance: float = 5.0) -> None:
        if symprec <= 0:
            raise ConditioningError(f"symprec must be positive, got {symprec}")
        self.symprec = float(symprec)
        self.angle_tolerance = float(angle_tolerance)

    def _analyzer(self, structure: Structure) -> SpacegroupAnalyzer:
        return SpacegroupAnalyzer(as_structure(structure), symprec=self.symprec, angle_tolerance=self.angle_tolerance)

    def check(
        self, structure: Structure, space_group: int | None = None, crystal_system: str | None = None
    ) -> SymmetryResult:
        """Detect the space group of ``structure`` and compare it with the requested group / crystal system.

        Raises
        ------
        InvalidStructureError
            spglib gives up on the structure at this ``symprec`` (the message names the formula and symprec).
        ConditioningError
            A requested space group or crystal system that does not exist.
        """
        structure = as_structure(structure)
        req_sg = None if space_group is None else check_space_group(space_group)
        req_cs = None if crystal_system is None else check_crystal_system(crystal_system)
        try:
            sga = self._analyzer(structure)
            number = int(sga.get_space_group_number())
            symbol = sga.get_space_group_symbol()
        except _SPGLIB_FAILURES as exc:  # spglib gives up on degenerate cells (after as_structure above)
            raise InvalidStructureError(
                f"spglib could not analyse {structure.formula} at symprec={self.symprec} A: {exc or type(exc).__name__}"
            ) from exc
        cs = crystal_system_of(number)
        if req_cs is None and req_sg is not None:
            req_cs = crystal_system_of(req_sg)
        return SymmetryResult(
            space_group_number=number,
            space_group_symbol=symbol,
            crystal_system=cs,
            symprec=self.symprec,
            requested_space_group=req_sg,
            requested_crystal_system=req_cs,
            space_group_match=None if req_sg is None else number == req_sg,
            crystal_system_match=None if req_cs is None else cs == req_cs,
        )

    def symmetrize(self, structure: Structure, primitive: bool = False) -> Structure:
        """Return the symmetry-refined conventional standard cell (or the primitive standard cell).

        Site positions and lattice are snapped to the exact symmetry found at ``symprec``.

        Raises
        ------
        InvalidStructureError
            spglib gives up on the structure at this ``symprec``.
        """
        structure = as_structure(structure)
        try:
            sga = self._analyzer(structure)
            out = sga.get_primitive_standard_structure() if primitive else sga.get_refined_structure()
        except _SPGLIB_FAILURES as exc:
            raise InvalidStructureError(
                f"spglib could not symmetrize {structure.formula} at symprec={self.symprec} A: {exc}"
            ) from exc
        out.properties = dict(structure.properties)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Wyckoff multiplicities


@lru_cache(maxsize=1)
def _standard_hall_numbers() -> dict[int, int]:
    """First (standard-setting) Hall number of each space group in spglib's database."""
    out: dict[int, int] = {}
    for hall in range(1, 531):
        out.setdefault(spglib.get_spacegroup_type(hall).number, hall)
    return out


@dataclass(frozen=True)
class WyckoffMultiplicities:
    """Multiplicities of a space group's Wyckoff positions in one cell.

    ``free`` lists the multiplicities of positions with free parameters (each usable any number of times);
    ``fixed`` counts the positions without free parameters by multiplicity (each usable by one orbit only).
    """

    space_group: int
    cell: str
    free: tuple[int, ...]
    fixed: tuple[tuple[int, int], ...]  # (multiplicity, number of such positions)


_GRID = 24


@lru_cache(maxsize=256)
def wyckoff_multiplicities(space_group: int, cell: str = "conventional") -> WyckoffMultiplicities:
    """Wyckoff multiplicities of ``space_group`` in its conventional or primitive cell (see module docstring)."""
    sg = check_space_group(space_group)
    if cell not in ("conventional", "primitive"):
        raise ConditioningError(f"cell must be 'conventional' or 'primitive', got {cell!r}")
    ops = spglib.get_symmetry_from_database(_standard_hall_numbers()[sg])
    rots = np.asarray(ops["rotations"], dtype=np.int64)
    trans = np.rint(np.asarray(ops["translations"]) * _GRID).astype(np.int64)
    n_centering = int(sum(np.array_equal(r, np.eye(3, dtype=np.int64)) for r in rots))
    g = np.arange(_GRID)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    images = (np.einsum("oij,pj->opi", rots, pts) + trans[:, None, :]) % _GRID  # (ops, points, 3)
    keys = (images[..., 0] * _GRID + images[..., 1]) * _GRID + images[..., 2]
    own = (pts[:, 0] * _GRID + pts[:, 1]) * _GRID + pts[:, 2]
    orbit_id = keys.min(axis=0)
    free: set[int] = set()
    fixed: dict[int, int] = {}
    eye = np.eye(3, dtype=np.int64)
    seen: set[int] = set()
    for p in np.unique(orbit_id, return_index=True)[1]:
        if orbit_id[p] in seen:
            continue
        seen.add(int(orbit_id[p]))
        mult = len(np.unique(keys[:, p]))
        stab = rots[keys[:, p] == own[p]]
        dof = 3 - np.linalg.matrix_rank((stab - eye).reshape(-1, 3).astype(float))
        if cell == "primitive":
            mult //= n_centering
        if dof > 0:
            free.add(mult)
        else:
            fixed[mult] = fixed.get(mult, 0) + 1
    return WyckoffMultiplicities(sg, cell, tuple(sorted(free)), tuple(sorted(fixed.items())))


def _representable(n: int, free: tuple[int, ...]) -> bool:
    reach = np.zeros(n + 1, dtype=bool)
    reach[0] = True
    for m in free:
        for i in range(m, n + 1):
            reach[i] |= reach[i - m]
    return bool(reach[n])


def site_count_compatible(space_group: int, composition: Composition | str, cell: str = "either") -> bool:
    """Whether each element's site count is a sum of Wyckoff multiplicities of ``space_group``.

    Positions with free parameters may be used repeatedly, positions without free parameters once in total (shared
    among elements). This is a necessary condition for a structure of that composition in that group, not a
    sufficient one (it ignores distances). ``cell`` is ``"conventional"``, ``"primitive"`` or ``"either"``
    (the counts fit one of the two cells).
    """
    comp = composition if isinstance(composition, Composition) else Composition(composition)
    counts = [round(v) for v in comp.get_el_amt_dict().values()]
    if any(abs(c - v) > 1e-6 or c <= 0 for c, v in zip(counts, comp.get_el_amt_dict().values())):
        raise ConditioningError(f"{comp.formula}: site counts must be positive integers")
    cells = ("conventional", "primitive") if cell == "either" else (cell,)
    return any(_fits(sorted(counts, reverse=True), wyckoff_multiplicities(space_group, c)) for c in cells)


def _fits(counts: list[int], wm: WyckoffMultiplicities) -> bool:
    fixed_mults = [m for m, _ in wm.fixed]

    def place(i: int, avail: tuple[int, ...]) -> bool:
        if i == len(counts):
            return True
        n = counts[i]
        # choose how many fixed positions of each multiplicity this element takes
        def choose(j: int, rest: int, used: list[int]) -> bool:
            if rest < 0:
                return False
            if j == len(fixed_mults):
                if _representable(rest, wm.free):
                    left = tuple(a - u for a, u in zip(avail, used))
                    return place(i + 1, left)
                return False
            return any(choose(j + 1, rest - k * fixed_mults[j], used + [k]) for k in range(avail[j] + 1))

        return choose(0, n, [])

    return place(0, tuple(c for _, c in wm.fixed))


__all__ = [
    "CRYSTAL_SYSTEMS",
    "SymmetryCheck",
    "SymmetryResult",
    "WyckoffMultiplicities",
    "check_space_group",
    "crystal_system_of",
    "site_count_compatible",
    "wyckoff_multiplicities",
]
