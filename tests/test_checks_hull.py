"""Reference hull: pool structures evaluated with the same potential, pymatgen PhaseDiagram."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Composition

from gpsk_materials.checks.hull import ReferenceHull
from gpsk_materials.errors import InvalidStructureError

from _checks_util import one_torch_thread, rock_salt, tensornet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fixed_entries_hull_by_hand():
    # hull: Na 0, NaCl -1 eV/atom, Cl 0 -> at Na2Cl (x_Cl = 1/3) the hull is at -2/3 eV/atom
    hull = ReferenceHull.from_entries([("Na", 0.0), ("Cl", 0.0), ("NaCl", -1.0)])
    assert hull.e_above_hull("NaCl", -0.8) == pytest.approx(0.2)
    assert hull.e_above_hull(Composition("Na2Cl"), -0.5) == pytest.approx(-0.5 + 2 / 3)
    assert hull.e_above_hull("NaCl", -1.1) == pytest.approx(-0.1)  # below the hull: negative
    assert hull.e_above_hull(rock_salt(5.6), -1.0) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def nacl_hull(tensornet, shared_data_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hull") / "energies.json"
    hull = ReferenceHull(tensornet, cache_path=cache)
    hull.phase_diagram(["Na", "Cl"])
    return hull, cache


def test_stable_rock_salt_is_on_the_hull(tensornet, nacl_hull):
    hull, _ = nacl_hull
    (relaxed,) = tensornet.relax(rock_salt(5.70), fmax=0.01, steps=30)
    e_hull = hull.e_above_hull(relaxed.structure, relaxed.energy_per_atom)
    # references are single points of DFT geometries, slightly above their own minimum: E_hull <= 0 by a few meV
    assert -0.01 < e_hull <= 0.002


def test_distorted_rock_salt_is_above_the_hull(tensornet, nacl_hull):
    hull, _ = nacl_hull
    distorted = rock_salt(5.70, primitive=False)
    distorted.translate_sites([0], [0.08, 0.0, 0.0])
    distorted.translate_sites([1], [0.0, 0.08, 0.0])
    e = tensornet.energies(distorted)[0]
    assert hull.e_above_hull(distorted, e) > 0.02
    assert hull.e_above_hull(distorted.composition, e) == pytest.approx(hull.e_above_hull(distorted, e))


def test_pool_entries_and_cache(tensornet, nacl_hull, monkeypatch):
    hull, cache = nacl_hull
    pd_ = hull.phase_diagram(["Cl", "Na"])
    names = {e.name for e in pd_.stable_entries}
    assert "mp-22862" in names  # rock-salt NaCl of the pool is stable under the potential too
    assert {e.composition.reduced_formula for e in pd_.stable_entries} >= {"Na", "Cl2", "NaCl"}
    stored = json.loads(cache.read_text())["energies"][f"{tensornet.name}|single_point"]
    assert stored["mp-22862"] == pytest.approx(tensornet.energies(rock_salt(5.64))[0], abs=0.01)
    # a second hull with the same cache evaluates nothing
    monkeypatch.setattr(type(tensornet), "energies", lambda *a, **k: pytest.fail("cache not used"))
    again = ReferenceHull(tensornet, cache_path=cache)
    assert again.e_above_hull("NaCl", stored["mp-22862"]) == pytest.approx(0.0, abs=1e-9)


def test_missing_element_gets_a_prototype(tensornet, tmp_path):
    # the pool has no elemental Co structure: the prototypes stand in (hcp or fcc for Co)
    hull = ReferenceHull(tensornet, cache_path=tmp_path / "c.json", max_sites=8)
    entries = [e for e in hull.entries(["Co"]) if e.composition.reduced_formula == "Co"]
    assert entries and all(e.name.startswith("prototype-") for e in entries)
    best = min(entries, key=lambda e: e.energy_per_atom)
    assert best.name in ("prototype-hcp-Co", "prototype-fcc-Co")
    assert np.isfinite(best.energy_per_atom)


def test_bad_input(nacl_hull):
    hull, _ = nacl_hull
    with pytest.raises(InvalidStructureError):
        hull.e_above_hull(3.0, -1.0)
    with pytest.raises(InvalidStructureError):
        hull.e_above_hull("NaCl", float("nan"))


def test_relax_mode_lowers_reference_energies(tensornet, tmp_path):
    single = ReferenceHull(tensornet, cache_path=False, max_sites=1).entries(["Na"])
    relaxed = ReferenceHull(tensornet, cache_path=False, max_sites=1, mode="relax", relax_steps=30).entries(["Na"])
    by_name = {e.name: e.energy_per_atom for e in single}
    pool = [e for e in relaxed if not e.name.startswith("prototype-")]
    assert pool and all(e.energy_per_atom <= by_name[e.name] + 1e-6 for e in pool)


def test_prepare_evaluates_every_reference_of_the_systems_in_one_pass(tensornet, shared_data_dir, tmp_path, monkeypatch):
    cache = tmp_path / "energies.json"
    hull = ReferenceHull(tensornet, cache_path=cache, max_sites=8)
    count = hull.prepare([["Na", "Cl"], ["K", "Cl"]], chunk=5)
    rows = hull._rows([frozenset({"Na", "Cl"}), frozenset({"K", "Cl"})])
    assert count == len(rows) > 5  # several chunks
    assert set(rows["material_id"].astype(str)) <= set(json.loads(cache.read_text())["energies"][hull.cache_key])
    assert hull.prepare([["Cl", "Na"]]) == 0  # all cached: nothing left to do

    def no_more(ids, structures):
        raise AssertionError(f"prepare should have evaluated every pool structure already, not {ids}")

    monkeypatch.setattr(hull, "_evaluate", no_more)  # (elements missing from the pool still get prototypes)
    assert {e.composition.reduced_formula for e in hull.phase_diagram(["K", "Cl"]).stable_entries} >= {"KCl"}


def test_a_stopped_reference_run_keeps_every_finished_batch(tensornet, shared_data_dir, tmp_path, monkeypatch):
    # issue 16, case 12: a run killed while evaluating references resumes from the cache file, not from scratch
    cache = tmp_path / "energies.json"
    hull = ReferenceHull(tensornet, cache_path=cache, max_sites=8, relax_batch=2)
    rows = hull._rows([frozenset({"Na", "Cl"})])
    assert len(rows) > 4
    calls = []
    real = tensornet.energies

    def stopped_after_two_batches(structures, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the machine goes away during the third batch
        calls.append(len(structures))
        return real(structures, **kw)

    monkeypatch.setattr(tensornet, "energies", stopped_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        hull.prepare([["Na", "Cl"]])
    kept = json.loads(cache.read_text())["energies"][hull.cache_key]
    assert calls == [2, 2] and len(kept) == 4

    monkeypatch.setattr(tensornet, "energies", real)
    resumed = ReferenceHull(tensornet, cache_path=cache, max_sites=8, relax_batch=2)
    assert resumed.prepare([["Na", "Cl"]]) == len(rows) - 4  # only what the stopped run had not finished
    assert resumed.prepare([["Na", "Cl"]]) == 0
