"""Batched FIRE (gpsk_materials.checks.batch_relax) against ASE's FIRE, one by one, and a compressed rock salt."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.checks.batch_relax import fire_relax

from _checks_util import one_torch_thread, rock_salt, tensornet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cases() -> list[Structure]:
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.6), ["Si"], [[0, 0, 0]])
    si.perturb(0.1, min_distance=0.05)
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.5, 3.0), ["Ti", "O"], [[0, 0, 0], [0.3, 0.3, 0]])
    return [rock_salt(5.0, primitive=False), si, rock_salt(4.6, "Mg", "O"), rutile]


def test_batched_relax_agrees_with_ase(tensornet):
    cases = _cases()
    batched = tensornet.relax(cases, fmax=0.05, steps=300, batch_size=len(cases))
    alone = tensornet.relax(cases, fmax=0.05, steps=300, batch_size=1)
    for b, one in zip(batched, alone):  # each structure keeps its own FIRE state: batching changes nothing
        assert b.steps == one.steps
        assert b.converged and one.converged
        assert b.energy_per_atom == pytest.approx(one.energy_per_atom, abs=1e-5)
    # against ASE's own FIRE (FrechetCellFilter): same minimum energy within 1 meV/atom
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    for s, b in zip(cases, batched):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = tensornet.calculator()
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=300)
        assert b.energy_per_atom == pytest.approx(atoms.get_potential_energy() / len(atoms), abs=1e-3)
        assert b.energy_per_atom < b.initial_energy_per_atom
        # the reported energy is the potential's energy of the returned structure
        assert tensornet.energies(b.structure)[0] == pytest.approx(b.energy_per_atom, abs=1e-5)


def test_compressed_rock_salt_expands_to_the_potential_minimum(tensornet):
    """NaCl at 0.75 of its lattice parameter: the cell relaxes back to the E(a) minimum (5.64-5.74 A)."""
    out = fire_relax(tensornet.model, [rock_salt(0.75 * 5.64)], fmax=0.02, steps=400)[0]
    assert out["converged"]
    a = out["structure"].lattice.a * np.sqrt(2)  # primitive cell -> conventional a
    assert 5.6 < a < 5.76


def test_fixed_cell_and_graph_rebuilds(tensornet):
    si = _cases()[1]
    fixed = fire_relax(tensornet.model, [si], relax_cell=False, steps=200)[0]
    np.testing.assert_allclose(fixed["structure"].lattice.matrix, si.lattice.matrix, atol=1e-9)
    # a small skin forces neighbour-list rebuilds along the way; the minimum must not change
    small = fire_relax(tensornet.model, [si], relax_cell=False, steps=200, skin=0.05)[0]
    assert small["energy_per_atom"] == pytest.approx(fixed["energy_per_atom"], abs=1e-4)


def test_stream_refills_the_batch(tensornet):
    """Two at a time: a stopped structure makes room for the next; every result equals the all-at-once run."""
    cases = _cases() + [rock_salt(5.9)]
    together = fire_relax(tensornet.model, cases, fmax=0.05, steps=300)
    streamed = fire_relax(tensornet.model, cases, fmax=0.05, steps=300, batch_size=2)
    for t, s, c in zip(together, streamed, cases):
        assert s["steps"] == t["steps"] and s["converged"] == t["converged"]
        assert s["energy_per_atom"] == pytest.approx(t["energy_per_atom"], abs=1e-5)
        assert s["structure"].composition == c.composition
    # a step budget too small to converge: stopped after exactly that many steps, not converged
    short = fire_relax(tensornet.model, cases[:2], steps=3, batch_size=1)
    assert [r["steps"] for r in short] == [3, 3] and not any(r["converged"] for r in short)


def test_chgnet_batched_relax_agrees_with_ase():
    from gpsk_materials.checks.potentials import load_potential

    chgnet = load_potential(backend="chgnet")
    cases = _cases()[1:]
    batched = chgnet.relax(cases, fmax=0.05, steps=300, batch_size=2)
    alone = chgnet.relax(cases, fmax=0.05, steps=300, batched=False)
    for b, a in zip(batched, alone):
        assert b.converged and a.converged
        assert b.energy_per_atom == pytest.approx(a.energy_per_atom, abs=1e-3)
        assert b.energy_per_atom < b.initial_energy_per_atom
    # an atom 10 A from any other cannot be evaluated by CHGNet: it stops unconverged, the others go on
    lonely = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])
    out = chgnet.relax([lonely, cases[0]], steps=50)
    assert not out[0].converged and out[1].converged
