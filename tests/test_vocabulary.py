"""One vocabulary: elements, space groups, crystal systems, magnetic orderings, formulas, cell contents."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pymatgen.core import Composition

from gpsk_materials import vocabulary as V
from gpsk_materials.errors import ConditioningError


def test_vocabulary_imports_neither_pymatgen_nor_torch():
    code = ("import sys, gpsk_materials.vocabulary, gpsk_materials.defaults, gpsk_materials.provenance; "
            "print(sorted(m for m in ('torch', 'pymatgen') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_one_home_for_each_name():
    from gpsk_materials.checks import symmetry
    from gpsk_materials.models import conditioning
    from gpsk_materials.pipelines import requests
    from gpsk_materials.representations import form_factors

    assert symmetry.check_space_group is V.check_space_group and symmetry.crystal_system_of is V.crystal_system_of
    assert symmetry.CRYSTAL_SYSTEMS is conditioning.CRYSTAL_SYSTEMS is V.CRYSTAL_SYSTEMS
    assert conditioning.parse_formula is V.parse_formula and requests.integer_cell is V.integer_cell
    assert form_factors.MAX_Z == V.MAX_Z == 98


def test_space_groups_and_crystal_systems():
    assert [V.crystal_system_of(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        "triclinic", "triclinic", "monoclinic", "monoclinic", "orthorhombic", "orthorhombic", "tetragonal",
        "tetragonal", "trigonal", "trigonal", "hexagonal", "hexagonal", "cubic", "cubic"]
    for bad in (0, 231, 1.5, True, "225"):
        with pytest.raises(ConditioningError, match="space group"):
            V.check_space_group(bad)
    assert V.check_crystal_system(" Cubic ") == "cubic"
    assert V.check_magnetic_ordering("afm") == "AFM" and V.check_magnetic_ordering("unknown") is None


def test_compositions_and_cells():
    assert V.parse_formula("Ca(OH)2") == {"Ca": 1.0, "O": 2.0, "H": 2.0}
    assert V.composition_amounts(Composition("Fe2O3")) == {"Fe": 2.0, "O": 3.0}
    assert V.check_composition({"O": 3, "Fe": 2}) == {"Fe": 2.0, "O": 3.0}
    with pytest.raises(ConditioningError, match="unknown element 'Xx'"):
        V.check_composition("Xx2")
    assert V.integer_cell({"Li": 0.5, "Co": 1, "O": 2}, 20) == {"Li": 1, "Co": 2, "O": 4}
    assert V.reduced_formula({"Fe": 4, "O": 6}) == {"Fe": 2, "O": 3}
    assert V.formula_string({"Fe": 2.0, "O": 3, "H": 0.5}) == "Fe2O3H0.5"
