"""Issue 16, case 10: novelty against all of MP-20 by BAWL hash, the reference named in every report, the
small-reference warning, and the thin-hull warning (a reference hull that lacks a composition's ground state)."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.cli import main
from gpsk_materials.errors import ConfigError, DataError, InvalidStructureError
from gpsk_materials.evaluation.evaluate import EvaluationOptions, evaluate, format_table
from gpsk_materials.evaluation.hashing import BAWLHasher, weisfeiler_lehman_hash
from gpsk_materials.evaluation.hull_coverage import ThinHullCheck
from gpsk_materials.evaluation.io import ReferenceSet, structure_from_cif
from gpsk_materials.evaluation.references import BAWLReference, formula_key, small_reference_warning
from gpsk_materials.evaluation.stability import sun_rates, thin_hull_flags

#: MP-20 train rows hashed in the test (small cells, several space groups and element counts)
TRAIN_IDS = ["mp-85", "mp-23241", "mp-1221227"]


def fast() -> EvaluationOptions:
    return EvaluationOptions(progress=False, coverage_reference_size=0, wdist_samples=0)


def rocksalt(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def train_rows(shared_data_dir) -> dict[str, Structure]:
    df = pd.read_csv(shared_data_dir / "mp20" / "train.csv", usecols=["material_id", "cif"])
    df = df[df["material_id"].isin(TRAIN_IDS)]
    return {m: structure_from_cif(c) for m, c in zip(df["material_id"], df["cif"])}


@pytest.fixture(scope="module")
def mp20(shared_data_dir) -> BAWLReference:
    return BAWLReference.mp20("mp20-bawl")


# --- the hash ----------------------------------------------------------------------------------------------------
def test_weisfeiler_lehman_equals_networkx_on_undirected_graphs():
    # for undirected graphs the rule is networkx's (unchanged in 3.5); directed graphs aggregate successors only
    g = nx.Graph()
    g.add_edges_from([(0, 1), (1, 2), (2, 0), (2, 3)])
    nx.set_node_attributes(g, {0: "Na", 1: "Cl", 2: "Na", 3: "O"}, "specie")
    for k in (1, 3, 5):
        assert weisfeiler_lehman_hash(g, "specie", k) == nx.weisfeiler_lehman_graph_hash(g, node_attr="specie",
                                                                                          iterations=k)
    d = nx.MultiDiGraph([(0, 1), (0, 1), (1, 2)])
    nx.set_node_attributes(d, {0: "A", 1: "A", 2: "B"}, "specie")
    reverse = nx.MultiDiGraph([(1, 0), (1, 0), (2, 1)])
    nx.set_node_attributes(reverse, {0: "A", 1: "A", 2: "B"}, "specie")
    assert weisfeiler_lehman_hash(d, "specie") != weisfeiler_lehman_hash(reverse, "specie")


def test_bawl_hash_equals_lemat_genbench_on_mp20_train(train_rows, shared_data_dir):
    import gzip

    published = set(gzip.open(shared_data_dir / "reference" / "mp20_bawl_fingerprints_train.txt.gz", "rt")
                    .read().split())
    hasher = BAWLHasher()
    for mid in TRAIN_IDS:
        h = hasher.get_hash(train_rows[mid])
        assert h in published, (mid, h)
        assert h.split("_")[2] == train_rows[mid].composition.formula.replace(" ", "")
    # YBi (mp-23241): the line of the published file, spelled out
    assert hasher.get_hash(train_rows["mp-23241"]) == "8c4fef72d8911c22fc29bad28ad7b523_225_Y1Bi1"


def test_bawl_hash_tells_structures_apart():
    hasher = BAWLHasher()
    nacl, cscl = rocksalt(), Structure(Lattice.cubic(3.4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert hasher.get_hash(nacl) == hasher.get_hash(rocksalt(a=5.8))  # same graph, group, formula
    assert hasher.get_hash(nacl).split("_")[0] != hasher.get_hash(cscl).split("_")[0]  # 6 vs 8 neighbours
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(InvalidStructureError, match="ordered"):
        hasher.get_hash(disordered)
    assert hasher.get_hashes([nacl, disordered])[1] is None  # one bad structure does not sink the rest


# --- the reference -----------------------------------------------------------------------------------------------
def test_bawl_hash_of_a_dummy_species_names_the_site():
    from pymatgen.core import DummySpecies

    from gpsk_materials.errors import UnknownElementError

    s = Structure(Lattice.cubic(4), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnknownElementError, match="site 0 holds X0\\+, which is not a chemical element"):
        BAWLHasher().get_hash(s)  # was "no bonding graph (AttributeError: )"
    assert BAWLHasher().get_hashes([s]) == [None]


def test_mp20_reference_size_and_compositions(mp20):
    assert (len(mp20), mp20.n_materials) == (44654, 45229)
    assert "44,654 distinct hashes of 45,229 materials" in mp20.label
    assert mp20.composition_known("NaCl") and mp20.composition_known("Na2Cl2")
    assert not mp20.composition_known("Na7Cl3")
    assert mp20.chemical_system_known("Cl2Na") and not mp20.chemical_system_known("NeXe")
    assert formula_key("Mn3Ge3Pd3") == formula_key("MnGePd") == (("Ge", 1), ("Mn", 1), ("Pd", 1))


def test_reference_file_errors(tmp_path):
    bad = tmp_path / "h.txt"
    bad.write_text("abc_225_Na1Cl1\nnot-a-hash\n")
    with pytest.raises(DataError, match="line 2"):
        BAWLReference.from_files(bad)
    with pytest.raises(DataError, match="cannot read"):
        BAWLReference.from_files(tmp_path / "missing.txt.gz")
    with pytest.raises(DataError, match="unknown novelty reference"):
        BAWLReference.mp20("mp30")


def test_novelty_against_all_of_mp20(train_rows, mp20):
    known = train_rows["mp-23241"]
    moved = known.copy()
    moved.perturb(0.3, seed=0)  # breaks the symmetry: another space-group label, a new hash (seeded: reproducible)
    gens = [known, moved, rocksalt(a=5.0, cation="Ra", anion="Po")]
    rep = evaluate(["known", "moved", "new"], gens, novelty_reference=mp20, options=fast())
    per, s = rep["per_structure"], rep["summary"]
    assert [r["novel"] for r in per] == [False, True, True]
    assert per[0]["matches_train"] == per[0]["bawl_hash"] and per[1]["matches_train"] is None
    assert [r["composition_in_reference"] for r in per] == [True, True, False]
    assert [r["chemical_system_in_reference"] for r in per] == [True, True, False]
    assert s["novelty"] == pytest.approx(2 / 3) and s["composition_novelty"] == pytest.approx(1 / 3)
    assert s["novelty_reference"] == "mp20-bawl" and s["novelty_reference_size"] == 44654
    assert s["novelty_reference_materials"] == 45229
    assert "warnings" not in s  # 44,654 entries: no small-reference warning
    table = format_table(s)
    assert "| novelty_reference | mp20-bawl |" in table and "| novelty_reference_size | 44654 |" in table


def test_supercell_of_a_known_structure_is_known_through_its_primitive_cell(train_rows, mp20):
    bigger = train_rows["mp-23241"].copy()
    bigger.make_supercell([2, 1, 1])
    hashes, known = mp20.hash_and_match([bigger])
    assert known == [True] and hashes[0] == "8c4fef72d8911c22fc29bad28ad7b523_225_Y1Bi1"
    assert mp20.hash_and_match([bigger], other_cells=False)[1] == [False]  # LeMat-GenBench's rule: the cell as given


def test_rock_salt_cao_is_known_to_mp20_though_missing_from_the_pool(mp20):
    # the case: CsCl-type CaO relaxes to rock salt, which the pool lacks but MP-20 holds (mp-2605)
    rock_salt = rocksalt(4.81, "Ca", "O")  # conventional cell: found through its primitive cell
    cscl_type = Structure(Lattice.cubic(2.9), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    hashes, known = mp20.hash_and_match([rock_salt, cscl_type])
    assert known == [True, False] and hashes[0].endswith("_225_Ca1O1") and hashes[1].endswith("_221_Ca1O1")


def test_relaxed_rock_salt_with_residual_distortion_is_known(mp20):
    # what TensorNet made of a sheared CsCl-type CaO (fmax 0.05): rock salt with rhombohedral angles of 59.73 deg,
    # R-3m at the hash's symprec 0.01; symmetrized at 0.1 it is mp-2605's Fm-3m hash
    relaxed = Structure(Lattice.from_parameters(3.4309, 3.4309, 3.4309, 59.7289, 59.7289, 59.7289), ["Ca", "O"],
                        [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert mp20.hash_and_match([relaxed], other_cells=False) == (["c13a117d516ac247d6870565cee30fcb_166_Ca1O1"],
                                                                 [False])
    assert mp20.hash_and_match([relaxed]) == (["c13a117d516ac247d6870565cee30fcb_225_Ca1O1"], [True])


def test_sun_rates_with_the_hash_reference(train_rows, mp20):
    known = train_rows["mp-23241"]
    summary, per = sun_rates([0.0, 0.0], [known, rocksalt(a=5.0, cation="Ra", anion="Po")], mp20, progress=False)
    assert per["novel_relaxed"] == [False, True] and per["sun_lemat"] == [False, True]
    assert summary["sun_rate_lemat"] == pytest.approx(1 / 2)


# --- naming the reference and warning when it is small -------------------------------------------------------
def test_small_training_set_is_named_and_warned():
    train = ReferenceSet.from_structures(["t0"], [rocksalt()], source="tiny_train.csv")
    rep = evaluate(["g0", "g1"], [rocksalt(a=5.7), rocksalt(a=5.0, cation="K")], train=train, options=fast())
    s = rep["summary"]
    assert s["novelty_reference"] == "tiny_train.csv" and s["novelty_reference_size"] == 1
    assert len(s["warnings"]) == 1 and "holds only 1 entries (< 10,000)" in s["warnings"][0]
    assert "- **warning**: novelty reference tiny_train.csv holds only 1 entries" in format_table(s)
    assert small_reference_warning("x", 9999) is not None and small_reference_warning("x", 10000) is None


def test_two_novelty_references_are_refused(mp20):
    train = ReferenceSet.from_structures(["t0"], [rocksalt()])
    with pytest.raises(ConfigError, match="two novelty references"):
        evaluate(["g"], [rocksalt()], train=train, novelty_reference=mp20, options=fast())


def test_csp_targets_refuse_the_hash_reference(mp20):
    with pytest.raises(ConfigError, match="--novelty-reference"):
        evaluate(["A"], [rocksalt()], csp_targets=(["A"], [rocksalt()]), novelty_reference=mp20, options=fast())


def test_cli_names_the_reference_and_warns(tmp_path, capsys, shared_data_dir):
    (tmp_path / "gen.json").write_text(json.dumps({"g0": rocksalt(a=5.0, cation="K").as_dict()}))
    small = shared_data_dir / "mp20" / "train.csv"
    assert main(["evaluate", str(tmp_path / "gen.json"), "--train-csv", str(small), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    out = capsys.readouterr()
    n_rows = len(pd.read_csv(small, usecols=["material_id"]))
    assert f"| novelty_reference_size | {n_rows} |" in out.out and "| novelty_reference | train.csv |" in out.out
    assert f"novelty reference train.csv holds only {n_rows:,} entries" in out.err
    assert main(["evaluate", str(tmp_path / "gen.json"), "--novelty-reference", "mp20-bawl", "--out",
                 str(tmp_path / "b"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "| novelty_reference | mp20-bawl |" in out.out and "warning" not in out.err
    data = json.loads((tmp_path / "b" / "report.json").read_text())
    assert data["summary"]["novelty_reference_size"] == 44654 and "bawl_hash" in data["per_structure"][0]
    assert main(["evaluate", str(tmp_path / "gen.json"), "--novelty-reference", "mp20-bawl", "--train-csv",
                 str(small), "--out", str(tmp_path / "c")]) == 1
    assert "two novelty references" in capsys.readouterr().err


# --- the thin-hull warning ---------------------------------------------------------------------------------------
def _tables(tmp_path, pool_rows):
    near = pd.DataFrame({"material_id": ["mp-2605", "mp-1265", "mp-22862"],
                         "pretty_formula": ["CaO", "MgO", "NaCl"], "e_above_hull": [0.0, 0.0, 0.0],
                         "formation_energy_per_atom": [-3.2, -3.0, -2.1]})
    near.to_parquet(tmp_path / "near.parquet")
    pool = pd.DataFrame(pool_rows, columns=["material_id", "nsites", "reduced_formula", "e_above_hull"])
    pool.to_csv(tmp_path / "pool.csv", index=False)
    return tmp_path / "pool.csv", tmp_path / "near.parquet"


def test_thin_hull_flags_a_missing_ground_state(tmp_path, shared_data_dir):
    # the pool of the CaO case: one CaO 0.21 eV/atom above the MP hull, no rock salt
    pool, near = _tables(tmp_path, [("mp-1079707", 8, "CaO", 0.2098), ("mp-1265", 2, "MgO", 0.0),
                                    ("alex-1", 2, "NaCl", np.nan)])
    check = ThinHullCheck(pool_path=pool, near_hull_table=near)
    message = check.check("CaO")
    assert message is not None and "mp-2605" in message and "mp-1079707 (DFT E_hull 0.210" in message
    assert check.ground_state("Ca3O") == ["CaO"] and check.check("Ca3O") is not None  # decomposes to CaO + Ca
    assert check.check("MgO") is None  # the MP ground state itself is in the pool
    assert check.check("NaCl") is None  # unknown DFT E_hull: benefit of the doubt
    assert ThinHullCheck(pool_path=pool, near_hull_table=near, max_sites=4).check("CaO") is not None


def test_thin_hull_not_flagged_when_the_pool_holds_a_near_hull_phase(tmp_path, shared_data_dir):
    pool, near = _tables(tmp_path, [("mp-1079707", 8, "CaO", 0.2098), ("oqmd-9", 2, "CaO", 0.01)])
    assert ThinHullCheck(pool_path=pool, near_hull_table=near).check("CaO") is None


def test_thin_hull_in_the_stability_report(tmp_path, shared_data_dir):
    pool, near = _tables(tmp_path, [("mp-1079707", 8, "CaO", 0.2098), ("mp-1265", 2, "MgO", 0.0)])
    cscl_cao = Structure(Lattice.cubic(2.9), ["Ca", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    summary, per, warn = thin_hull_flags([cscl_cao, rocksalt(4.2, "Mg", "O")], [True, True], pool,
                                         near_hull_table=near)
    assert per["thin_hull"] == [True, False] and per["thin_hull_warning"][1] is None
    assert summary == {"n_thin_hull": 1, "n_stable_thin_hull": 1}
    assert len(warn) == 1 and "1 of them 'stable'" in warn[0] and "CaO" in warn[0]


def test_rocksalt_cao_is_missing_from_the_shared_pool(shared_data_dir):
    pool = pd.read_csv(shared_data_dir / "pool.csv.gz", usecols=["material_id", "reduced_formula"])
    assert pool.loc[pool["reduced_formula"] == "CaO", "material_id"].tolist() == ["mp-1079707"]
    message = ThinHullCheck().check("CaO")
    assert message is not None and "mp-2605" in message
