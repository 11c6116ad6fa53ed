"""Symmetry check, symmetrization and Wyckoff multiplicities."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.checks.symmetry import (
    SymmetryCheck,
    SymmetryResult,
    crystal_system_of,
    site_count_compatible,
    wyckoff_multiplicities,
)
from gpsk_materials.errors import ConditioningError, InvalidStructureError


def rock_salt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_rock_salt_is_fm3m():
    res = SymmetryCheck().check(rock_salt().get_primitive_structure(), space_group=225)
    assert (res.space_group_number, res.space_group_symbol, res.crystal_system) == (225, "Fm-3m", "cubic")
    assert res.space_group_match and res.crystal_system_match and res.matches
    assert SymmetryResult.from_dict(res.as_dict()) == res


def test_request_mismatch_and_crystal_system():
    s = rock_salt()
    res = SymmetryCheck().check(s, space_group=221)
    assert res.space_group_match is False and res.crystal_system_match is True and not res.matches
    res = SymmetryCheck().check(s, crystal_system="Hexagonal")
    assert res.space_group_match is None and res.crystal_system_match is False
    assert SymmetryCheck().check(s).space_group_match is None


def test_distortion_lowers_symmetry_and_symprec_matters():
    s = rock_salt()
    s.translate_sites([0], [0.01, 0, 0])  # 0.056 A shift of one Na
    assert SymmetryCheck(symprec=0.01).check(s).space_group_number == 99
    assert SymmetryCheck(symprec=0.2).check(s).space_group_number == 225


def test_symmetrize_snaps_positions():
    s = rock_salt()
    s.translate_sites([0], [0.005, 0, 0])
    sym = SymmetryCheck().symmetrize(s)
    assert SymmetryCheck(symprec=1e-4).check(sym).space_group_number == 225
    prim = SymmetryCheck().symmetrize(s, primitive=True)
    assert len(prim) == 2 and len(sym) == 8


def test_crystal_system_of():
    assert [crystal_system_of(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "orthorhombic", "tetragonal",
        "tetragonal", "trigonal", "trigonal", "hexagonal", "hexagonal", "cubic", "cubic",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", [0, 231, -5, 2.5, "225", True])
def test_space_group_out_of_range(bad):
    with pytest.raises(ConditioningError):
        SymmetryCheck().check(rock_salt(), space_group=bad)


def test_bad_input():
    with pytest.raises(InvalidStructureError):
        SymmetryCheck().check([rock_salt()])
    with pytest.raises(ConditioningError):
        SymmetryCheck().check(rock_salt(), crystal_system="rhombic")


def test_wyckoff_multiplicities_match_international_tables():
    # Fm-3m: 4a 4b 8c 24d fixed; 24e 32f 48g 48h 48i 96j 96k 192l with free parameters
    w = wyckoff_multiplicities(225)
    assert w.fixed == ((4, 2), (8, 1), (24, 1)) and w.free == (24, 32, 48, 96, 192)
    assert wyckoff_multiplicities(225, "primitive").free == (6, 8, 12, 24, 48)
    # P6_3/mmc: 2a 2b 2c 2d 6g fixed; 4e 4f 6h 12i 12j 12k 24l
    w = wyckoff_multiplicities(194)
    assert w.fixed == ((2, 4), (6, 1)) and w.free == (4, 6, 12, 24)
    # P-1: eight inversion centres and the general position
    assert wyckoff_multiplicities(2).fixed == ((1, 8),) and wyckoff_multiplicities(2).free == (2,)
    assert wyckoff_multiplicities(1).free == (1,)


def test_site_count_compatible():
    assert site_count_compatible(225, "NaCl")  # primitive rock salt
    assert site_count_compatible(225, "Na4Cl4")  # conventional
    assert site_count_compatible(225, "CaF2")
    assert not site_count_compatible(225, "Na5Cl")
    assert not site_count_compatible(225, "Na4Cl4", cell="primitive")
    assert site_count_compatible(221, "SrTiO3")
    # 8 atoms of one element in Pm-3m: 1a + 1b + 3c + 3d uses every fixed position once
    assert site_count_compatible(221, "Na8", cell="conventional")
    # P-1 has 8 one-fold positions: 9 distinct single sites cannot all sit on them, but 1 + 2x4 can
    assert site_count_compatible(2, "Na9")
    assert not site_count_compatible(2, "Na1Cl1Br1K1Li1Rb1Cs1F1I1")
    assert all(site_count_compatible(1, f) for f in ("Na7Cl3", "H"))
    with pytest.raises(ConditioningError):
        site_count_compatible(300, "NaCl")
    assert np.isfinite(len(wyckoff_multiplicities(230).free))
