"""Validity checks against hand-checked structures (CDVAE definitions and our stricter checks)."""

from __future__ import annotations

import pytest
from pymatgen.core import Composition, Lattice, Structure

from gpsk_materials.checks.validity import (
    ValidityCheck,
    ValidityResult,
    connectivity,
    smact_validity,
    structural_validity,
)
from gpsk_materials.errors import InvalidStructureError


def rock_salt(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_rock_salt_is_valid():
    res = ValidityCheck().check(rock_salt())
    assert res.structural_valid and res.compositional_valid and res.valid and res.strict_valid
    assert res.min_distance == pytest.approx(2.82, abs=1e-6)
    assert res.volume_per_atom == pytest.approx(5.64**3 / 8)
    assert res.reasons == []
    again = ValidityResult.from_dict(res.as_dict())
    assert again == res and res.as_dict()["valid"] is True


def test_atoms_too_close_are_invalid():
    broken = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])  # 0.3 A apart
    assert not structural_validity(broken)
    res = ValidityCheck().check(broken)
    assert not res.structural_valid and not res.valid and not res.distance_ratio_ok
    assert res.min_distance == pytest.approx(0.3)
    assert any("structural" in r for r in res.reasons)
    # the 0.5 A threshold is inclusive
    at_limit = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.1, 0, 0]])
    assert structural_validity(at_limit) and not structural_validity(at_limit, min_distance=0.51)


def test_tiny_volume_is_invalid():
    tiny = Structure(Lattice.cubic(0.4), ["Na"], [[0, 0, 0]])  # 0.064 A^3
    assert not structural_validity(tiny)
    assert structural_validity(Structure(Lattice.cubic(3.0), ["Na"], [[0, 0, 0]]))


@pytest.mark.parametrize(
    "formula, expected",
    [
        ("NaCl", True),
        ("NaCl2", False),  # Na has no +2 state: not charge neutral
        ("MgO", True),
        ("Fe2O3", True),
        ("LiFePO4", True),
        ("Fe3O4", False),  # mixed valence is not in CDVAE's test
        ("Si", True),  # single element
        ("Na8", True),
        ("CuAu", True),  # all metals: alloy rule
        ("Al3Ni", True),
        ("NaF2", False),
        ("CsPbI3", True),
    ],
)
def test_smact_validity(formula, expected):
    assert smact_validity(Composition(formula)) is expected
    assert smact_validity(formula) is expected


def test_smact_validity_uses_reduced_counts():
    assert smact_validity(Composition("Na4Cl4")) and not smact_validity(Composition("Na2Cl4"))


def test_smact_validity_needs_integer_counts():
    with pytest.raises(InvalidStructureError):
        smact_validity(Composition("Na0.5Cl0.5"))


def test_nacl2_structure_fails_composition_only():
    s = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.5), ["Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    assert s.composition.reduced_formula == "NaCl2"
    res = ValidityCheck().check(s)
    assert res.structural_valid and not res.compositional_valid and not res.valid


def test_strict_checks():
    compressed = rock_salt(5.64 * 0.55)  # d/(r_Na + r_Cl) ~ 0.58 < 0.6, volume per atom 3.7
    res = ValidityCheck().check(compressed)
    assert res.valid and not res.strict_valid
    assert not res.distance_ratio_ok and not res.volume_per_atom_ok
    assert ValidityCheck(volume_per_atom_range=(1, 100), min_distance_ratio=0.5).check(compressed).strict_valid


def test_self_image_distance_counts_in_strict_check():
    # one atom per cell with a 0.8 A lattice vector: CDVAE's check sees no pair, ours sees the image
    s = Structure(Lattice.orthorhombic(0.8, 6, 6), ["Na"], [[0, 0, 0]])
    res = ValidityCheck().check(s)
    assert res.structural_valid and not res.distance_ratio_ok


def test_connectivity():
    assert connectivity(rock_salt()) == 1.0
    isolated = Structure(Lattice.cubic(12.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.68]])
    assert connectivity(isolated) == pytest.approx(2 / 3)


def test_bad_input():
    with pytest.raises(InvalidStructureError):
        ValidityCheck().check("NaCl")
    with pytest.raises(InvalidStructureError):
        structural_validity(None)
    with pytest.raises(InvalidStructureError):
        ValidityCheck(volume_per_atom_range=(10, 5))
