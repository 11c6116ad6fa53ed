"""Prototype substitution: Pettifor mapping, the library's arrays, the substitutor, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Element, Lattice, Structure

from gpsk_materials.errors import ConditioningError, DataError
from gpsk_materials.prototypes import PrototypeLibrary, PrototypeSubstitutor, pettifor_mapping
from test_generator_helpers import tiny_model_dir  # noqa: F401


def rock_salt(a: str = "Na", b: str = "Cl", lat: float = 5.64) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def rutile() -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                     [[0, 0, 0], [0.305, 0.305, 0]])


@pytest.fixture()
def library() -> PrototypeLibrary:
    return PrototypeLibrary.from_structures([rock_salt(), rutile()], ["mp-22862", "mp-2657"], [0.0, 0.0])


def test_pettifor_mapping_keeps_counts_and_takes_the_nearest_elements():
    m = {s: Element(s).mendeleev_no for s in ("Na", "Cl", "K", "Br", "Ti", "O", "Sn", "F")}
    dist, mapping = pettifor_mapping({"K": 1, "Br": 1}, {"Na": 1, "Cl": 1})
    assert mapping == {"Na": "K", "Cl": "Br"}
    assert dist == abs(m["K"] - m["Na"]) + abs(m["Br"] - m["Cl"])
    dist, mapping = pettifor_mapping({"Sn": 2, "F": 4}, {"Ti": 1, "O": 2})  # one common factor apart
    assert mapping == {"Ti": "Sn", "O": "F"} and dist == abs(m["Sn"] - m["Ti"]) + abs(m["F"] - m["O"])
    assert pettifor_mapping({"Ti": 1, "O": 2}, {"Na": 1, "Cl": 1}) is None
    assert pettifor_mapping({"Ti": 1, "O": 2}, {"Ti": 1, "O": 1, "N": 1}) is None


def test_library_round_trips_through_its_file(library, tmp_path):
    path = library.save(tmp_path / "lib.npz")
    back = PrototypeLibrary.load(path)
    assert len(back) == 2 and list(back.material_id) == ["mp-22862", "mp-2657"]
    for i in range(2):
        a, b = library.structure(i), back.structure(i)
        assert a.composition == b.composition
        assert np.allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-5)
        assert np.allclose(a.frac_coords, b.frac_coords, atol=1e-6)


def test_holdout_crystals_round_trip_and_a_benchmark_drops_them(library, tmp_path):
    """Held-out evaluation crystals stay in the file (users want the known answer) and ``without_holdout`` gives
    the training set a benchmark must use; a file written before the flag existed loads with none held out."""
    flagged = PrototypeLibrary(library.lattice, library.frac_coords, library.numbers, library.offsets,
                               library.material_id, library.e_above_hull, holdout=[False, True])
    back = PrototypeLibrary.load(flagged.save(tmp_path / "lib.npz"))
    assert back.holdout.tolist() == [False, True]
    train = back.without_holdout()
    assert list(train.material_id) == ["mp-22862"] and train.structure(0).composition == rock_salt().composition
    assert PrototypeSubstitutor(train).rank("SnF2") == [] and PrototypeSubstitutor(back).rank("SnF2")
    assert library.without_holdout() is library  # nothing held out: the library itself
    np.savez(tmp_path / "old.npz", **{k: getattr(library, k) for k in
                                      ("lattice", "frac_coords", "numbers", "offsets", "material_id", "e_above_hull")})
    assert PrototypeLibrary.load(tmp_path / "old.npz").holdout.tolist() == [False, False]
    with pytest.raises(DataError, match="holdout flags"):
        PrototypeLibrary(library.lattice, library.frac_coords, library.numbers, library.offsets,
                         library.material_id, library.e_above_hull, holdout=[True])
    with pytest.raises(DataError, match="at least one"):
        flagged.subset([])


def test_substitutor_puts_the_new_elements_on_the_nearest_prototype(library):
    sub = PrototypeSubstitutor(library)
    (kbr,) = sub.get_structures("KBr", n=3)  # one AB crystal in the library
    info = kbr.properties["gpsk"]["prototype"]
    assert kbr.composition.reduced_formula == "KBr" and info["formula"] == "NaCl" and info["material_id"] == "mp-22862"
    assert kbr.get_space_group_info()[1] == 225
    assert info["volume"] == "RLS" and kbr.volume > rock_salt().volume  # K-Br bonds are longer than Na-Cl
    (snf2,) = sub.get_structures("SnF2")
    assert snf2.properties["gpsk"]["prototype"]["formula"] == "TiO2" and len(snf2) == 6
    # the cell content must match the template's when it is given
    assert sub.get_structures("KBr", formula_units=2) == []
    assert len(sub.get_structures("Sn2F4")) == 1 and sub.get_structures("Sn4F8") == []
    assert PrototypeSubstitutor(library, exclude_formulas=["NaCl"]).get_structures("KBr") == []
    assert PrototypeSubstitutor(library, exclude_formulas="NaCl").get_structures("KBr") == []  # one formula, not letters
    assert PrototypeSubstitutor(library, scale_volume=False).get_structures("KBr")[0].volume == pytest.approx(
        rock_salt().volume)


def test_bad_requests_and_files_raise_project_errors(library, tmp_path):
    sub = PrototypeSubstitutor(library)
    for bad in ("Xx2", "", "Na0.5Cl"):
        with pytest.raises(ConditioningError, match="prototype request"):
            sub.get_structures(bad)
    for bad_n in (0, None, float("nan"), "2", 2.0, [2]):
        with pytest.raises(ConditioningError, match="n must be"):
            sub.get_structures("KBr", n=bad_n)
    for bad_z in (0, float("inf"), "abc"):
        with pytest.raises(ConditioningError, match="formula_units"):
            sub.get_structures("KBr", formula_units=bad_z)
    with pytest.raises(ConditioningError, match="formula_units=3"):
        sub.get_structures("Ti2O4", formula_units=3)
    with pytest.raises(ConditioningError, match="Pettifor"):
        sub.get_structures("Og2F")
    with pytest.raises(ConditioningError, match="max_e_above_hull"):
        PrototypeSubstitutor(library, max_e_above_hull=-1)
    with pytest.raises(DataError, match="PrototypeLibrary or the path"):
        PrototypeSubstitutor(42)
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(DataError, match="not a prototype library"):
        PrototypeLibrary.load(tmp_path / "arr.npy")
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a prototype library"):
        PrototypeLibrary.load(tmp_path / "trunc.npz")
    with pytest.raises(DataError, match="cannot write"):
        library.save(tmp_path)  # a folder
    for structures, ids, match in (([], [], "at least one"), (["NaCl"], ["x"], "not a pymatgen Structure"),
                                   ([rock_salt()], "x", "material ids")):
        with pytest.raises(DataError, match=match):
            PrototypeLibrary.from_structures(structures, ids)
    with pytest.raises(DataError, match="does not exist"):
        PrototypeLibrary.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="not a prototype library"):
        PrototypeLibrary.load(tmp_path / "other.npz")
    with pytest.raises(DataError, match="disagree"):
        PrototypeLibrary(np.eye(3)[None], np.zeros((2, 3)), [11, 17], [0, 3], ["x"], [0.0])
    with pytest.raises(DataError, match="disordered"):
        s = rock_salt()
        s.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
        PrototypeLibrary.from_structures([s], ["x"])


def test_shipped_library_is_the_pool_with_its_test_materials_flagged_and_answers_a_request():
    lib = PrototypeLibrary.load()
    # benchmarks/build_prototype_library.py: the pool's 40,847 crystals, of which the 6,981 the shipped model was not
    # trained on (the MP-20 test materials and their StructureMatcher twins) are flagged holdout
    assert len(lib) == 40847 and int(lib.holdout.sum()) == 6981 and len(lib.without_holdout()) == 33866
    assert lib.holdout[list(lib.material_id).index("mp-390")]  # anatase, an MP-20 test material
    got = PrototypeSubstitutor(lib).get_structures("KBr", n=2)
    assert len(got) == 2 and all(s.composition.reduced_formula == "KBr" for s in got)
    anatase = PrototypeSubstitutor(lib).get_structures("Ti2O4", n=5)
    assert "mp-390" in [s.properties["gpsk"]["prototype"]["material_id"] for s in anatase]
    held_out = PrototypeSubstitutor(lib.without_holdout()).get_structures("Ti2O4", n=50)
    assert "mp-390" not in [s.properties["gpsk"]["prototype"]["material_id"] for s in held_out]


def test_generator_ranks_prototype_candidates_with_the_models_and_says_where_they_came_from(library, tiny_model_dir):  # noqa: F811
    from gpsk_materials import CrystalGenerator
    from gpsk_materials.pipelines.output import summary_record

    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    gen.prototype_substitutor = PrototypeSubstitutor(library)
    res = gen.run([{"composition": "KBr", "n": 1, "prototypes": 1, "steps": 2},
                   {"composition": "Sn2F4", "n": 1, "prototypes": 3, "steps": 2},
                   {"composition": "KBr", "prototypes": -1, "steps": 2},
                   {"prototypes": 1, "steps": 2}], seed=0, checks="validity_symmetry")
    assert res[0].ok and res[0].candidates == 1 and res[0].decoded <= 1
    best = res[0].structures[0]
    info = best.properties["gpsk"]
    # the substituted rock salt is sound, so it ranks above whatever the tiny model decoded
    assert info["prototype"]["formula"] == "NaCl" and "decode" not in info
    assert info["request"]["sample_index"] is None and info["request"]["prototype_index"] == 0
    assert info["request"]["cell"] == {"composition": "KBr", "formula_units": 1, "chosen_by": "prototype"}
    assert summary_record(best)["source"] == "prototype mp-22862 (NaCl)"
    # an explicit cell content keeps its size: Sn2F4 takes the rutile cell (6 atoms), the only template of it
    assert res[1].ok and len(res[1].structures) == 1
    kept = res[1].structures[0]
    if "prototype" in kept.properties["gpsk"]:
        assert kept.properties["gpsk"]["prototype"]["formula"] == "TiO2" and len(kept) == 6
    assert len(gen.prototype_substitutor.get_structures({"Sn": 1, "F": 2}, n=3, formula_units=2)) == 1
    assert "prototypes must be an integer >= 0" in str(res[2].error)
    assert "prototypes needs a composition" in str(res[3].error)
    # the same through generate()
    assert gen.generate("KBr", prototypes=1, steps=2, seed=0)[0].properties["gpsk"]["prototype"]["formula"] == "NaCl"
    with pytest.raises(ConditioningError, match="must be a PrototypeSubstitutor"):
        gen.prototype_substitutor = library


def test_prototypes_join_the_candidates_of_a_powder_solution(library, tiny_model_dir, tmp_path, capsys,  # noqa: F811
                                                             monkeypatch):
    """diffraction= with prototypes=K: the substituted templates are refined against the pattern beside the model's
    candidates; the rock-salt KBr template explains a KBr rock-salt pattern, so it ranks first, with its
    provenance, in generate() and in gpsk solve's files."""
    import csv

    from gpsk_materials import CrystalGenerator, provenance
    from gpsk_materials.cli import main
    from gpsk_materials.diffraction import simulate_measurement
    from gpsk_materials.diffraction.solve import solve_pattern

    kbr = rock_salt("K", "Br", 6.60)
    pattern = simulate_measurement(kbr, "CuKa", seed=3)[0]
    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    gen.prototype_substitutor = PrototypeSubstitutor(library)
    sol = solve_pattern(gen, "KBr", pattern, 2, steps=2, seed=0, checks="none", prototypes=1)
    assert sol.result.candidates == 2 and sol.refined >= 1
    best = sol.structures[0]
    assert provenance.read(best, "prototype")["formula"] == "NaCl"
    req = provenance.read(best, "request")
    assert req["sample_index"] is None and req["prototype_index"] == 0 and req["prototypes"] == 1
    assert req["composition"] == "KBr" and req["rank"] == 0
    d = provenance.read(best, "diffraction")
    assert d["rwp"] < 0.2 and d["rank"] == 0
    assert max(best.lattice.abc) == pytest.approx(6.60, rel=0.01)  # refined from the RLS volume to the pattern's
    assert gen.generate("KBr", steps=2, seed=0, checks="none", diffraction=pattern, prototypes=1)[0] \
        .properties["gpsk"]["prototype"]["formula"] == "NaCl"

    pattern_file = tmp_path / "kbr.xy"
    np.savetxt(pattern_file, np.column_stack([pattern.two_theta, pattern.intensity]))
    real = CrystalGenerator.from_pretrained

    def with_library(*args, **kwargs):  # the CLI builds its own generator: give it the test's library
        g = real(tiny_model_dir, batch_size=4)
        g.prototype_substitutor = PrototypeSubstitutor(library)
        return g

    monkeypatch.setattr(CrystalGenerator, "from_pretrained", staticmethod(with_library))
    assert main(["solve", str(pattern_file), "--composition", "KBr", "-n", "1", "--best-of", "1", "--steps", "2",
                 "--checks", "none", "--prototypes", "1", "--no-progress", "--out", str(tmp_path / "solved")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "solved" / "solve_summary.csv")))
    assert rows[0]["source"].startswith("prototype") and "NaCl" in rows[0]["source"]
    assert "prototype" in capsys.readouterr().out


def test_a_stable_analogue_ranks_before_an_unstable_polymorph_of_the_very_formula():
    unstable_kbr = rock_salt("K", "Br", 7.5)  # stands in for a high-energy KBr entry
    lib = PrototypeLibrary.from_structures([unstable_kbr, rock_salt("K", "I", 7.07)], ["kbr-hi", "ki"], [0.3, 0.0])
    assert [lib.material_id[i] for _, i, _ in PrototypeSubstitutor(lib).rank("KBr")] == ["ki", "kbr-hi"]
    by_distance = PrototypeSubstitutor(lib, max_e_above_hull=float("inf")).rank("KBr")
    assert [lib.material_id[i] for _, i, _ in by_distance] == ["kbr-hi", "ki"]
    got = PrototypeSubstitutor(lib).get_structures("KBr")[0].properties["gpsk"]["prototype"]
    assert got["e_above_hull"] == 0.0 and got["volume"] == "RLS"


def test_a_requested_space_group_puts_its_templates_first():
    cscl = Structure(Lattice.cubic(4.11), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    lib = PrototypeLibrary.from_structures([rock_salt(), cscl], ["rs", "b2"], [0.0, 0.0])
    sub = PrototypeSubstitutor(lib)
    assert [lib.material_id[i] for _, i, _ in sub.rank("KBr")] == ["rs", "b2"]  # Na-Cl is nearer K-Br than Cs-Cl
    (kbr,) = sub.get_structures("KBr", space_group=221)
    assert kbr.properties["gpsk"]["prototype"]["space_group"] == 221 and kbr.get_space_group_info()[1] == 221
    assert [lib.material_id[i] for _, i, _ in sub.rank("KBr", space_group=225)] == ["rs", "b2"]
    with pytest.raises(ConditioningError, match="space_group"):
        sub.rank("KBr", space_group=231)
