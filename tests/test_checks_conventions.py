"""Conventions users bring from pymatgen and ASE: every check takes ASE Atoms as well as a Structure; ReferenceHull
and Potential round-trip through as_dict / from_dict (and JSON); the hull takes pymatgen entries; JSON output goes
through monty's jsanitize."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.entries.computed_entries import ComputedStructureEntry
from pymatgen.io.ase import AseAtomsAdaptor

from gpsk_materials import provenance
from gpsk_materials.checks.hull import ReferenceHull
from gpsk_materials.checks.post import post_checks
from gpsk_materials.checks.potentials import Potential
from gpsk_materials.checks.scoring import CandidateScorer
from gpsk_materials.checks.symmetry import SymmetryCheck
from gpsk_materials.checks.validity import ValidityCheck, connectivity, distance_ratios, structural_validity
from gpsk_materials.checks.volume_scan import VolumeScan
from gpsk_materials.errors import DegenerateLatticeError, InvalidStructureError
from gpsk_materials.models.conditioning import Conditions

from _checks_util import one_torch_thread, rock_salt, tensornet  # noqa: F401


def _atoms(a: float = 5.64):
    return AseAtomsAdaptor.get_atoms(rock_salt(a))


def test_checks_without_a_potential_take_atoms():
    s, atoms = rock_salt(5.64), _atoms()
    sym = SymmetryCheck(symprec=0.1)
    assert sym.check(atoms, space_group=225).as_dict() == sym.check(s, space_group=225).as_dict()
    assert sym.symmetrize(atoms).lattice.abc == pytest.approx(sym.symmetrize(s).lattice.abc)
    assert ValidityCheck().check(atoms).as_dict() == ValidityCheck().check(s).as_dict()
    assert structural_validity(atoms) and connectivity(atoms) == connectivity(s) == 1.0
    np.testing.assert_allclose(distance_ratios(atoms), distance_ratios(s))
    scorer = CandidateScorer(potential=False)
    assert scorer.breakdowns([atoms], {"space_group": 225}) == scorer.breakdowns([s], {"space_group": 225})
    assert scorer.score(atoms) == scorer.score([s])
    rec = post_checks([atoms, s], Conditions("NaCl", space_group=225))
    assert rec[0].checks == rec[1].checks and rec[0].checks["space_group_match"] is True
    hull = ReferenceHull.from_entries([("Na", 0.0), ("Cl", 0.0), ("NaCl", -1.0)])
    assert hull.e_above_hull(atoms, -0.9) == pytest.approx(0.1)
    # what ASE Atoms cannot be for a check: not periodic, or no cell
    molecule = _atoms()
    molecule.pbc = False
    with pytest.raises(InvalidStructureError, match="periodic"):
        ValidityCheck().check(molecule)
    no_cell = _atoms()
    no_cell.cell[:] = 0
    with pytest.raises(DegenerateLatticeError):
        sym.check(no_cell)


def test_checks_with_a_potential_take_atoms(tensornet, one_torch_thread):
    s, atoms = rock_salt(5.9), _atoms(5.9)
    assert tensornet.energies(atoms)[0] == pytest.approx(tensornet.energies([s])[0], abs=1e-6)
    relaxed = tensornet.relax([atoms], steps=3)[0]
    assert relaxed.structure is not None and relaxed.structure.composition.reduced_formula == "NaCl"
    scan = VolumeScan(tensornet, n_points=5, refine=False).scan(atoms)[0]
    assert scan.structure.composition == s.composition


def test_reference_hull_and_entries_round_trip():
    hull = ReferenceHull.from_entries([("Na", 0.0), PDEntry("Cl2", -0.4, name="chlorine"), ("NaCl", -1.0)])
    again = ReferenceHull.from_dict(json.loads(json.dumps(hull.as_dict())))
    assert again.as_dict() == hull.as_dict()
    assert [e.name for e in again.entries(["Na", "Cl"])] == ["fixed-0", "chlorine", "fixed-2"]
    via_monty = json.loads(json.dumps(hull, cls=MontyEncoder), cls=MontyDecoder)
    assert isinstance(via_monty, ReferenceHull)
    for h in (again, via_monty):
        assert h.e_above_hull("NaCl", -0.8) == pytest.approx(hull.e_above_hull("NaCl", -0.8)) == pytest.approx(0.2)
    # a pymatgen entry carries its own energy (the total energy of its cell: here 2 atoms at -0.7 eV/atom)
    entry = ComputedStructureEntry(rock_salt(5.64), -1.4)
    assert hull.e_above_hull(entry) == pytest.approx(0.3)
    assert hull.e_above_hull(PDEntry("Na2Cl2", -2.8)) == pytest.approx(0.3)
    assert hull.e_above_hull(entry, -1.0) == pytest.approx(0.0, abs=1e-9)  # an energy given wins
    # a pool-based hull keeps its potential by name, loaded only when needed
    lazy = ReferenceHull("chgnet", cache_path=False, max_sites=8, mode="relax", relax_steps=7)
    back = ReferenceHull.from_dict(lazy.as_dict())
    assert back.as_dict() == lazy.as_dict() and back._potential is None
    with pytest.raises(InvalidStructureError, match="no energy"):
        hull.e_above_hull("NaCl")


def test_potential_round_trips(tensornet, one_torch_thread):
    d = json.loads(json.dumps(tensornet.as_dict()))
    assert d["@class"] == "Potential" and d["backend"] == "matgl"
    back = Potential.from_dict(d)
    assert back.name == tensornet.name and back.as_dict() == tensornet.as_dict()
    s = rock_salt(5.64)
    assert back.energies(s)[0] == pytest.approx(tensornet.energies(s)[0], abs=1e-6)
    # the free-atom cache is a plain attribute of the instance, outside the dictionary form
    assert back._free_atoms == {}
    free = back.free_atom_energies(["Na"])
    assert back._free_atoms == free and back.as_dict() == tensornet.as_dict()
    hull = ReferenceHull(tensornet, cache_path=False)
    assert ReferenceHull.from_dict(hull.as_dict()).potential.name == tensornet.name
    scan = VolumeScan(tensornet, n_points=5)
    assert VolumeScan.from_dict(scan.as_dict()).potential.name == tensornet.name


def test_plain_json_goes_through_jsanitize():
    out = provenance.plain({"a": np.float32(1.5), "b": np.arange(3), (1, 2): float("nan"), "c": (np.bool_(True),),
                            "d": [float("inf"), -math.inf], "s": SymmetryCheck(symprec=0.2)})
    assert out == {"a": 1.5, "b": [0, 1, 2], "(1, 2)": None, "c": [True], "d": [None, None],
                   "s": SymmetryCheck(symprec=0.2).as_dict()}
    assert json.loads(json.dumps(out)) == out
