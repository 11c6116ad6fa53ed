"""Potentials: the shared TensorNet-MatPES (matgl) and the chgnet package's CHGNet."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gpsk_materials.checks.potentials import RelaxResult, load_potential, resolve_potential
from gpsk_materials.errors import CheckpointError, InvalidStructureError, PotentialError
from gpsk_materials.paths import SHARED_ENV

from _checks_util import conventional_a, one_torch_thread, rock_salt, tensornet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_is_the_shared_tensornet(matgl_model_dir):
    pot = load_potential()
    assert pot.name == "matgl:TensorNet-MatPES-PBE-v2025.1-PES" and pot.backend == "matgl"
    assert str(pot.device) == "cpu" and pot.to("cpu") is pot
    assert resolve_potential(pot) is pot


def test_nacl_energy_curve_minimum(tensornet):
    a = np.arange(5.40, 6.00, 0.02)
    e = tensornet.energies([rock_salt(x) for x in a])
    a_min = a[np.argmin(e)]
    assert 5.62 <= a_min <= 5.74  # model README: minimum at 5.64-5.7 A
    # README: -3.356 eV/atom at 5.64 A (MatPES PBE scale)
    assert tensornet.energies(rock_salt(5.64))[0] == pytest.approx(-3.356, abs=0.003)
    assert np.all(np.diff(e[a > a_min + 0.05]) > 0) and np.all(np.diff(e[a < a_min - 0.05]) < 0)


def test_batched_energies_match_ase_and_cell_choice(tensornet):
    structs = [rock_salt(5.64), rock_salt(5.64, primitive=False), rock_salt(4.2, "Mg", "O")]
    batched = tensornet.energies(structs, batch_size=3)
    single = np.concatenate([tensornet.energies([s]) for s in structs])
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert batched[0] == pytest.approx(batched[1], abs=2e-5)  # per atom, primitive vs conventional
    atoms = AseAtomsAdaptor.get_atoms(structs[2])
    atoms.calc = tensornet.calculator()
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(batched[2], abs=2e-5)


@pytest.mark.slow
def test_relax_nacl(tensornet):
    (res,) = tensornet.relax(rock_salt(5.40), fmax=0.02, steps=60)
    assert isinstance(res, RelaxResult) and res.converged and 0 < res.steps <= 60
    assert 5.64 <= conventional_a(res.structure) <= 5.76
    assert res.energy_per_atom < res.initial_energy_per_atom
    assert res.energy_per_atom == pytest.approx(tensornet.energies(res.structure)[0], abs=1e-4)
    again = RelaxResult.from_dict(res.as_dict())
    assert again.structure == res.structure and again.steps == res.steps


def test_on_error_nan_and_atom_limited_batches(tensornet):
    og = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])  # not among the potential's 89 elements
    structs = [rock_salt(5.64), og, rock_salt(4.2, "Mg", "O"), rock_salt(5.64, primitive=False)]
    e = tensornet.energies(structs, on_error="nan", max_atoms=4)
    assert np.isnan(e[1]) and np.all(np.isfinite(e[[0, 2, 3]]))
    np.testing.assert_allclose(e[[0, 2, 3]], tensornet.energies([structs[i] for i in (0, 2, 3)]), atol=2e-5)
    with pytest.raises(PotentialError):
        tensornet.energies(structs, on_error="ignore")


def test_relax_fixed_cell_keeps_lattice(tensornet):
    s = rock_salt(5.5)
    s.translate_sites([0], [0.03, 0.0, 0.0])
    (res,) = tensornet.relax(s, fmax=0.05, steps=40, relax_cell=False)
    np.testing.assert_allclose(res.structure.lattice.matrix, s.lattice.matrix, atol=1e-8)
    assert res.energy_per_atom < res.initial_energy_per_atom


def test_chgnet_backend_on_nacl():
    pot = load_potential(backend="chgnet")
    assert pot.name.startswith("chgnet:") and resolve_potential("chgnet").name == pot.name
    a = np.arange(5.40, 6.00, 0.05)
    e = pot.energies([rock_salt(x) for x in a])
    assert 5.5 <= a[np.argmin(e)] <= 5.8
    # Materials Project scale (compatibility-corrected), different from TensorNet-MatPES's -3.356
    assert -3.8 < pot.energies(rock_salt(5.64))[0] < -3.5
    isolated = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])  # CHGNet refuses atoms without neighbours
    with pytest.raises(InvalidStructureError):
        pot.energies(isolated)
    e = pot.energies([isolated, rock_salt(5.64)], on_error="nan")
    assert np.isnan(e[0]) and e[1] == pytest.approx(pot.energies(rock_salt(5.64))[0], abs=1e-5)


def test_errors(tensornet, tmp_path, monkeypatch):
    with pytest.raises(PotentialError):
        load_potential(backend="vasp")
    with pytest.raises(PotentialError):
        load_potential("no-such-model-anywhere")
    with pytest.raises(PotentialError):
        load_potential(tmp_path)  # an empty folder is not a model
    with pytest.raises(InvalidStructureError):
        tensornet.energies(["NaCl"])
    with pytest.raises(InvalidStructureError):
        tensornet.energies(Structure(Lattice.cubic(4), ["Og"], [[0, 0, 0]]))
    with pytest.raises(PotentialError):
        tensornet.relax(rock_salt(5.6), optimizer="NoSuchOptimizer")
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    with pytest.raises(CheckpointError, match="not found"):
        load_potential()


def test_a_backend_whose_package_is_missing_is_a_potential_error(monkeypatch):
    """The GPU image lacks matgl: loading the default potential there must say which package is missing, not end in
    a bare ModuleNotFoundError from deep inside the import."""
    import builtins

    real_import = builtins.__import__

    def no_matgl(name, *args, **kwargs):
        if name == "matgl" or name.startswith("matgl."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matgl)
    with pytest.raises(PotentialError, match="needs the Python package 'matgl'"):
        load_potential()
