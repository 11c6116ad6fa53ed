"""Hand-checked cases of the evaluation metrics (validity, uniqueness, novelty, CSP, distribution) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.cli import main
from gpsk_materials.errors import DataError, InvalidStructureError
from gpsk_materials.evaluation.csp import csp_metrics, group_predictions, rms_distance
from gpsk_materials.evaluation.distribution import coverage, fingerprints, property_wasserstein
from gpsk_materials.evaluation.evaluate import EvaluationOptions, evaluate, write_report
from gpsk_materials.evaluation.fingerprints import (
    composition_fingerprint,
    scale_composition_fingerprints,
    site_fingerprint,
    structure_fingerprint,
)
from gpsk_materials.evaluation.io import ReferenceSet, read_structures
from gpsk_materials.evaluation.matching import novelty, uniqueness

DATA = Path(__file__).parent / "data"


def rocksalt(a: float = 5.64, cation: str = "Na", anion: str = "Cl") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl(a: float = 4.12) -> Structure:
    return Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rutile() -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"],
                                     [[0, 0, 0], [0.305, 0.305, 0]])


def fast() -> EvaluationOptions:
    return EvaluationOptions(progress=False, coverage_reference_size=0, wdist_samples=0)


# --- uniqueness and novelty ------------------------------------------------------------------------------------
def test_duplicate_is_not_unique():
    nacl = rocksalt()
    same = nacl.copy()
    same.make_supercell([2, 1, 1])  # same crystal, another cell
    same.translate_sites(list(range(len(same))), [0.1, 0.2, 0.3])
    res = uniqueness([nacl, cscl(), same, rocksalt(a=5.0, cation="K")], progress=False)
    assert res.duplicate_of == [-1, -1, 0, -1]
    assert res.is_unique == [True, True, False, True]
    assert res.rate == pytest.approx(3 / 4)


def test_polymorphs_are_both_unique():
    # rock salt and CsCl-type NaCl: same formula, different crystals
    res = uniqueness([rocksalt(), cscl().copy().replace_species({"Cs": "Na"})], progress=False)
    assert res.is_unique == [True, True]


def test_training_structure_is_not_novel():
    train = ReferenceSet.from_structures(["mp-22862", "mp-2657"], [rocksalt(), rutile()])
    shifted = rutile()
    shifted.perturb(0.02, min_distance=0.0)  # far inside stol = 0.3
    queries = [rocksalt(a=5.8), shifted, cscl(), rocksalt(cation="K", a=6.3)]
    assert novelty(queries, train, progress=False) == [0, 1, -1, -1]


def test_novelty_parses_only_references_sharing_a_formula(tmp_path):
    table = tmp_path / "train.csv"
    rows = [("a", rocksalt()), ("b", rutile()), ("c", cscl())]
    import pandas as pd

    pd.DataFrame({"material_id": [r[0] for r in rows], "cif": [r[1].to(fmt="cif") for r in rows],
                  "nsites": [len(r[1]) for r in rows]}).to_csv(table, index=False)
    ref = ReferenceSet.from_csv(table)
    assert ref.formulas == ["NaCl", "TiO2", "CsCl"]
    assert novelty([rocksalt()], ref, progress=False) == [0]
    assert set(ref._cache) == {0}  # TiO2 and CsCl never parsed
    assert len(ReferenceSet.from_csv(table, max_sites=2)) == 1  # CsCl only (rock salt cell has 8 sites)


# --- validity through evaluate ------------------------------------------------------------------------------
def test_validity_cases():
    close = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])  # 0.3 A apart
    nacl2 = Structure(Lattice.cubic(5.0), ["Na", "Cl", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    rep = evaluate(["close", "nacl", "nacl2"], [close, rocksalt(), nacl2], options=fast())
    per = {r["id"]: r for r in rep["per_structure"]}
    assert not per["close"]["structural_valid"]
    assert per["nacl"]["structural_valid"] and per["nacl"]["compositional_valid"]
    assert per["nacl2"]["structural_valid"] and not per["nacl2"]["compositional_valid"]
    assert rep["summary"]["validity"] == pytest.approx(1 / 3)
    assert rep["summary"]["structural_validity"] == pytest.approx(2 / 3)


# --- CSP ----------------------------------------------------------------------------------------------------
def test_csp_match_rate_and_rmse():
    target_a, target_b = rocksalt(), rutile()
    near = rocksalt(a=5.9)  # rescaled: StructureMatcher scales volume, RMS 0
    moved = rutile()
    moved.translate_sites([1], [0.03, 0.0, 0.0])
    wrong = cscl().copy().replace_species({"Cs": "Na"})
    assert rms_distance(near, target_a) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(rms_distance(wrong, target_a))
    preds = [wrong, near, moved, moved]
    pids = ["A__0", "A__1", "B__0", "B__1"]
    res = csp_metrics(preds, pids, [True] * 4, [target_a, target_b], ["A", "B"], [True, True], progress=False)
    s = res.summary()
    assert s["k"] == 2
    assert s["match_rate_1"] == pytest.approx(0.5)  # A's first sample is the wrong polymorph
    assert s["match_rate_k"] == pytest.approx(1.0)
    rms_b = rms_distance(moved, target_b)
    assert 0 < rms_b < 0.5
    assert s["rmse_1"] == pytest.approx(rms_b)
    assert s["rmse_k"] == pytest.approx(rms_b / 2)


def test_csp_invalid_prediction_does_not_count():
    res = csp_metrics([rocksalt()], ["A"], [False], [rocksalt()], ["A"], [True], progress=False)
    assert res.summary()["match_rate_1"] == 0.0


def test_csp_prediction_ids_must_name_a_target():
    assert group_predictions(["A", "A__1", "B__x__2"], ["A", "B__x"]) == {"A": [0, 1], "B__x": [2]}
    with pytest.raises(DataError, match="name no target"):
        group_predictions(["C__0"], ["A"])


# --- fingerprints and distribution metrics ---------------------------------------------------------------------
def test_fingerprints_equal_matminer():
    ref = json.loads((DATA / "evaluation_matminer_fingerprints.json").read_text())
    for case in ref["structures"]:
        s = Structure.from_dict(case["structure"])
        for i, expected in enumerate(case["site_fingerprints"]):
            np.testing.assert_allclose(site_fingerprint(s, i), expected, atol=1e-10, err_msg=case["name"])
    for case in ref["compositions"]:
        expected = np.array([np.nan if v is None else v for v in case["magpie"]])
        np.testing.assert_allclose(composition_fingerprint(case["formula"]), expected, atol=1e-10, equal_nan=True)


def test_rocksalt_fingerprint_is_octahedral():
    fp = structure_fingerprint(rocksalt())
    assert fp.shape == (61,)
    # CN=6 weight is 1 and the octahedral order parameter is ~1 for an ideal rock salt
    assert fp[22] == pytest.approx(1.0) and fp[24] == pytest.approx(1.0, abs=1e-6)


def test_coverage_and_wasserstein_hand_cases():
    a, b = rocksalt(), rutile()
    (sa, sb), (ca, cb) = fingerprints([a, b], progress=False)
    same = coverage([sa, sb], [ca, cb], [sa, sb], [ca, cb])
    assert same["cov_recall"] == 1.0 and same["cov_precision"] == 1.0
    half = coverage([sa, None], [ca, None], [sa, sb], [ca, cb])  # one generated has no fingerprint
    assert half["cov_recall"] == 0.5 and half["cov_precision"] == 0.5
    assert half["precision_hit"] == [True, None]
    far = coverage([sb], [cb], [sa], [ca])
    assert far["cov_recall"] == 0.0 and far["cov_precision"] == 0.0
    # composition distance alone decides when structures share a motif: rock salts NaCl vs KCl
    k = rocksalt(a=6.3, cation="K")
    (sk,), (ck,) = fingerprints([k], progress=False)
    d_comp = np.linalg.norm(scale_composition_fingerprints(np.array([ca]))
                            - scale_composition_fingerprints(np.array([ck])))
    assert coverage([sk], [ck], [sa], [ca], comp_cutoff=d_comp + 1e-9)["cov_recall"] == 1.0
    assert coverage([sk], [ck], [sa], [ca], comp_cutoff=d_comp - 1e-9)["cov_recall"] == 0.0
    w = property_wasserstein([a, a], [a, a], n_samples=0)
    assert w["wdist_density"] == pytest.approx(0.0) and w["wdist_num_elems"] == 0.0
    w = property_wasserstein([a], [b], n_samples=0)
    assert w["wdist_density"] == pytest.approx(abs(a.density - b.density))


def test_fingerprint_cache_resumes(tmp_path):
    cache = tmp_path / "fp.jsonl"
    first = fingerprints([rocksalt()], cache=cache, progress=False)
    assert len(cache.read_text().splitlines()) == 1
    cache.write_text(cache.read_text() + '{"key": "cut sh')  # an interrupted write
    again = fingerprints([rocksalt(), cscl()], cache=cache, progress=False)
    np.testing.assert_allclose(again[0][0], first[0][0])
    assert len(cache.read_text().splitlines()) == 2


# --- readers and the command ------------------------------------------------------------------------------
def test_readers(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    rocksalt().to(filename=str(folder / "nacl.cif"))
    rutile().to(filename=str(folder / "tio2.cif"))
    ids, structs = read_structures(folder)
    assert ids == ["nacl", "tio2"] and structs[1].reduced_formula == "TiO2"

    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = [AseAtomsAdaptor.get_atoms(s) for s in (rocksalt(), cscl())]
    frames[0].info["id"] = "first"
    write(tmp_path / "g.extxyz", frames, format="extxyz")
    ids, structs = read_structures(tmp_path / "g.extxyz")
    assert ids == ["first", "g-1"] and structs[1].reduced_formula == "CsCl"

    (tmp_path / "g.json").write_text(json.dumps({"x": rocksalt().as_dict(), "y": cscl().as_dict()}))
    assert read_structures(tmp_path / "g.json")[0] == ["x", "y"]
    (tmp_path / "l.json").write_text(json.dumps([{"id": "p", "structure": rutile().as_dict()}]))
    assert read_structures(tmp_path / "l.json")[0] == ["p"]


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="no such"):
        read_structures(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="JSON"):
        read_structures(tmp_path / "bad.json")
    (tmp_path / "bad.cif").write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(DataError, match="CIF"):
        read_structures(tmp_path / "bad.cif")
    (tmp_path / "dup.json").write_text(json.dumps([{"id": "a", "structure": rocksalt().as_dict()}] * 2))
    with pytest.raises(DataError, match="duplicate structure id"):
        read_structures(tmp_path / "dup.json")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match="unknown input format"):
        read_structures(tmp_path / "x.txt")
    empty = {"lattice": Lattice.cubic(3).as_dict(), "sites": [], "@module": "pymatgen.core.structure",
             "@class": "Structure"}
    (tmp_path / "empty.json").write_text(json.dumps([empty]))
    with pytest.raises(DataError, match="at least 1 site"):
        read_structures(tmp_path / "empty.json")
    nan = rocksalt().as_dict()
    nan["sites"][0]["abc"] = [float("nan"), 0.0, 0.0]
    (tmp_path / "nan.json").write_text(json.dumps([nan]))
    with pytest.raises(InvalidStructureError, match="non-finite"):
        read_structures(tmp_path / "nan.json")


def test_report_files(tmp_path):
    train = ReferenceSet.from_structures(["t0"], [rocksalt()])
    gens = [rocksalt(a=5.7), rutile(), rutile()]
    rep = evaluate(["g0", "g1", "g2"], gens, train=train, reference=train, options=fast())
    s = rep["summary"]
    assert s["novelty"] == pytest.approx(2 / 3) and s["uniqueness"] == pytest.approx(2 / 3)
    assert s["unique_novel_rate"] == pytest.approx(1 / 3)
    files = write_report(rep, tmp_path / "out", gens)
    data = json.loads(files["json"].read_text())
    assert [r["id"] for r in data["per_structure"]] == ["g0", "g1", "g2"]
    assert data["per_structure"][0]["matches_train"] == "t0" and data["per_structure"][2]["duplicate_of"] == "g1"
    assert "| novelty | 0.6667 |" in files["table"].read_text()
    assert files["property_plot"].stat().st_size > 1000


def test_cli_evaluate(tmp_path, capsys):
    (tmp_path / "gen.json").write_text(json.dumps({"A__0": rocksalt(a=5.8).as_dict(), "A__1": cscl().as_dict()}))
    (tmp_path / "t.json").write_text(json.dumps({"A": rocksalt().as_dict()}))
    code = main(["evaluate", str(tmp_path / "gen.json"), "--csp-targets", str(tmp_path / "t.json"),
                 "--out", str(tmp_path / "rep"), "--no-progress"])
    assert code == 0
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["summary"]["csp_match_rate_1"] == 1.0 and data["summary"]["csp_k"] == 2
    assert data["csp_per_target"][0]["target"] == "A"
    assert main(["evaluate", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "r2")]) == 1
    assert "no such file" in capsys.readouterr().err
