"""Stability metrics: rate definitions on hand-made cases, resumable relaxation, E_hull of known structures."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from _checks_util import tensornet  # noqa: F401  (the shared TensorNet-MatPES fixture; tests/ is on sys.path)
from gpsk_materials.errors import DataError
from gpsk_materials.evaluation.io import ReferenceSet
from gpsk_materials.evaluation.stability import relax_structures, sun_rates


def rocksalt(a: float = 5.64, cation: str = "Na") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl_type(a: float = 3.4, cation: str = "Na") -> Structure:
    return Structure(Lattice.cubic(a), [cation, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rutile() -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                     [[0, 0, 0], [0.305, 0.305, 0]])


def test_rate_definitions():
    train = ReferenceSet.from_structures(["t"], [rocksalt()])
    structs = [rocksalt(5.7), rutile(), rutile(), cscl_type(cation="Cs", a=4.1), rocksalt(6.3, "K"), None]
    e_hull = [-0.01, 0.0, 0.0, 0.05, 0.3, None]
    summary, per = sun_rates(e_hull, structs, train, progress=False)
    assert summary["stable_rate"] == pytest.approx(3 / 6)
    assert summary["metastable_rate"] == pytest.approx(4 / 6)
    # LeMat-GenBench SUN: stable set {0, 1, 2}; 2 duplicates 1; 0 is in the training set -> {1}
    assert per["sun_lemat"] == [False, True, False, False, False, False]
    assert summary["sun_rate_lemat"] == pytest.approx(1 / 6)
    # LeMat-GenBench MSUN: 0 < E_hull <= 0.1 -> {3}
    assert per["msun_lemat"] == [False, False, False, True, False, False]
    # MatterGen: E_hull <= 0.1, first of its group among all, novel -> {1, 3}
    assert per["sun_mattergen"] == [False, True, False, True, False, False]
    assert summary["sun_rate_mattergen"] == pytest.approx(2 / 6)
    assert per["novel_relaxed"][:5] == [False, True, True, True, None]


class CountingPotential:
    """Wraps a potential and counts the structures it relaxes."""

    def __init__(self, potential) -> None:
        self.inner, self.name, self.backend, self.count = potential, potential.name, potential.backend, 0

    def relax(self, structures, **kw):
        self.count += len(structures)
        return self.inner.relax(structures, **kw)


@pytest.mark.slow
def test_known_stable_structure_on_self_consistent_hull(tensornet, tmp_path, shared_data_dir):
    """Rock-salt NaCl lies on the TensorNet hull of the Na-Cl references of the pool; CsCl-type NaCl above it."""
    from gpsk_materials.checks.hull import ReferenceHull

    pot = CountingPotential(tensornet)
    cache = tmp_path / "relax.jsonl"
    relaxed = relax_structures([rocksalt(5.5), cscl_type()], pot, steps=60, cache=cache, progress=False)
    assert pot.count == 2 and all(r.converged for r in relaxed)
    again = relax_structures([rocksalt(5.5), cscl_type()], pot, steps=60, cache=cache, progress=False)
    assert pot.count == 2  # resumed from the cache
    assert again[0].energy_per_atom == pytest.approx(relaxed[0].energy_per_atom)
    # single points of the DFT geometries keep the test fast; the evaluation default relaxes them
    hull = ReferenceHull(tensornet, pool_path=shared_data_dir / "pool.csv.gz", cache_path=tmp_path / "ref.json",
                         mode="single_point")
    e_rs = hull.e_above_hull(relaxed[0].structure, relaxed[0].energy_per_atom)
    e_cs = hull.e_above_hull(relaxed[1].structure, relaxed[1].energy_per_atom)
    assert abs(e_rs) < 0.02
    assert e_cs > e_rs + 0.03


@pytest.mark.slow
def test_mp_dft_protocol_with_chgnet(shared_data_dir):
    from gpsk_materials.checks.potentials import load_potential
    from gpsk_materials.evaluation.mp_hull import check_mp_scale, formation_energy, mp_dft_hull

    chgnet = load_potential(backend="chgnet")
    check_mp_scale(chgnet)
    rel = relax_structures([rocksalt(5.6)], chgnet, steps=60, progress=False)[0]
    e_form = formation_energy(rel.structure.composition, rel.energy_per_atom)
    assert e_form == pytest.approx(-2.10, abs=0.1)  # MP (mp-22862): -2.10 eV/atom after MP2020 corrections
    assert abs(mp_dft_hull().e_above_hull(rel.structure.composition, e_form)) < 0.05


def test_mp_dft_protocol_refuses_matpes_scale(tensornet):
    from gpsk_materials.evaluation.mp_hull import check_mp_scale

    with pytest.raises(DataError, match="Materials Project energy scale"):
        check_mp_scale(tensornet)


def test_mp_formation_energy_needs_known_elements(shared_data_dir):
    from gpsk_materials.evaluation.mp_hull import elemental_energies, formation_energy

    mu = elemental_energies()
    assert formation_energy("NaCl", -3.0) == pytest.approx(-3.0 - 0.5 * mu["Na"] - 0.5 * mu["Cl"])
    with pytest.raises(DataError, match="no MP elemental reference"):
        formation_energy("Og2", -1.0)


def test_relax_failure_is_recorded():
    class Broken:
        name, backend = "broken", "none"

        def relax(self, structures, **kw):
            raise RuntimeError("exploded")

    out = relax_structures([rocksalt()], Broken(), progress=False)
    assert out[0].structure is None and np.isnan(out[0].energy_per_atom) and "exploded" in out[0].error


def test_interrupted_relaxation_keeps_what_finished(tmp_path):
    from gpsk_materials.checks.potentials import RelaxResult

    class Interrupted:
        name, backend = "fake", "none"
        calls: list[int] = []

        def relax(self, structures, callback=None, **kw):
            Interrupted.calls.append(len(structures))
            for i, s in enumerate(structures):
                if len(Interrupted.calls) == 1 and i == 1:
                    raise KeyboardInterrupt  # the user stops the run after the first structure finished
                callback(i, RelaxResult(structure=s, energy_per_atom=-1.0 - i, initial_energy_per_atom=0.0,
                                        converged=True, steps=3))

    cache = tmp_path / "relax.jsonl"
    structs = [rocksalt(5.5), rocksalt(5.7), rocksalt(5.9)]
    with pytest.raises(KeyboardInterrupt):
        relax_structures(structs, Interrupted(), cache=cache, progress=False)
    assert len(cache.read_text().splitlines()) == 1
    out = relax_structures(structs, Interrupted(), cache=cache, progress=False)
    assert Interrupted.calls == [3, 2]  # the second run only relaxes the two that had not finished
    assert [r.energy_per_atom for r in out] == [-1.0, -1.0, -2.0]
