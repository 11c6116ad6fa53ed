"""Issue 14 item 6: a reduced formula lets the generator choose the formula units Z; a cell content is honoured."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from pymatgen.core import Composition

from gpsk_materials.errors import ConditioningError, DataError
from gpsk_materials.pipelines import CrystalGenerator, GenerationRequest
from gpsk_materials.pipelines.formula_units import (
    PRIOR_FILE,
    FormulaUnitPrior,
    FormulaUnitProbabilities,
    allowed_formula_units,
    draw_formula_units,
    formula_key,
    level_keys,
    prototype_key,
)
from gpsk_materials.pipelines.requests import resolve_request
from test_generator_helpers import rock_salt_decode, tiny_model_dir  # noqa: F401

STEPS = 3


def _resolve(composition, **kw):
    return resolve_request(GenerationRequest(composition, **kw), 0, 0, 20, 8)


def test_keys_of_the_prior():
    assert formula_key({"Ti": 1, "O": 2}) == "O2Ti" and formula_key({"Si": 1}) == "Si"
    assert prototype_key({"Fe": 2, "O": 3}) == "A2B3" and prototype_key({"Sr": 1, "Ti": 1, "O": 3}) == "ABC3"
    assert level_keys({"Ti": 1, "O": 2}, 136) == {"nelements": "2", "prototype": "AB2", "prototype_sg": "AB2|136",
                                                  "formula": "O2Ti", "formula_sg": "O2Ti|136"}
    assert list(level_keys({"Si": 1})) == ["nelements", "prototype", "formula"]


def test_allowed_formula_units_follow_primitive_wyckoff_multiplicities():
    # Fd-3m, primitive cell: 8a/8b -> 2, 16c/16d -> 4, 32e -> 8, ...: no one-atom Si cell
    si = allowed_formula_units({"Si": 1}, 20, 227)
    assert 1 not in si and {2, 4, 8} <= set(si)
    assert allowed_formula_units({"Si": 1}, 20) == tuple(range(1, 21))
    rutile = allowed_formula_units({"Ti": 1, "O": 2}, 20, 136)
    assert 2 in rutile and 1 not in rutile
    assert allowed_formula_units({"Ga": 1, "N": 1}, 20, 186)[0] == 2  # wurtzite
    assert allowed_formula_units({"Na": 1, "Cl": 1}, 20, 225)[0] == 1  # rock salt
    assert allowed_formula_units({"Fe": 2, "O": 3}, 20, 167)[0] == 2  # corundum
    assert allowed_formula_units({"Sr": 1, "Ti": 1, "O": 3}, 20, 230) == ()


def _reduced(formula: str) -> dict[str, int]:
    return {el.symbol: int(v) for el, v in Composition(formula).items()}


def test_packaged_prior_is_small_and_follows_the_structure_types():
    assert PRIOR_FILE.stat().st_size < 400_000
    prior = FormulaUnitPrior.from_file()
    assert prior is FormulaUnitPrior.from_file()  # read once
    assert "pool.csv.gz" in prior.source()["counted_on"] and len(prior.source()["sha256"]) == 64
    # with the known space group, the training cells of that stoichiometry and group decide: rutile, wurtzite,
    # rock salt, corundum, L1_0, CaCu5-type
    for formula, sg, z in (("TiO2", 136, 2), ("GaN", 186, 2), ("NaCl", 225, 1), ("Fe2O3", 167, 2), ("FePt", 123, 1),
                           ("SmCo5", 191, 1)):
        reduced = _reduced(formula)
        dist = prior.probabilities(reduced, allowed_formula_units(reduced, 20, sg), sg)
        p = dict(zip(dist.allowed, dist.probabilities))
        assert max(p, key=p.get) == z and abs(sum(p.values()) - 1) < 1e-9, (formula, p)
        assert "formula" in [lv for lv, _, _ in dist.levels], formula  # the formula itself is in the training pool
    # Si: the pool holds Si cells of Z = 1, 8 and 12 (no diamond); every allowed Z keeps some probability
    si = prior.probabilities({"Si": 1}, allowed_formula_units({"Si": 1}, 20))
    assert si.levels[-1] == ("formula", "Si", 3) and min(si.probabilities) > 0
    si227 = dict(zip((d := prior.probabilities({"Si": 1}, allowed_formula_units({"Si": 1}, 20, 227), 227)).allowed,
                     d.probabilities))
    assert si227[2] > 0.01 and si227[8] > 0.1 and 1 not in si227


def test_builder_counts_the_training_rows(tmp_path, shared_data_dir):
    import subprocess
    import sys

    from gpsk_materials.paths import REPO_DIR

    out = tmp_path / "fu.json.gz"
    proc = subprocess.run([sys.executable, str(REPO_DIR / "benchmarks" / "build_formula_unit_prior.py"), "--limit",
                           "60", "--workers", "1", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "GPSK_SHARED_DIR": str(shared_data_dir.parent)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    prior = FormulaUnitPrior.from_file(out)
    counted = sum(c for per_z in prior.counts["nelements"].values() for c in per_z.values())
    assert counted == sum(int(c) for c in prior.about["z_histogram"].values())
    assert counted == int(prior.about["counted_on"].split()[0])
    assert 0 < counted <= 60 and prior.about["skipped"]["mp20 test"] > 0


def test_prior_smoothing_and_the_space_group_level(tmp_path):
    table = {"counts": {"prototype": {"AB2": {"1": 8, "2": 2}}, "formula": {"O2Ti": {"2": 3}},
                        "formula_sg": {"O2Ti|136": {"2": 5}}}}
    path = tmp_path / "fu.json"
    path.write_text(json.dumps(table))
    prior = FormulaUnitPrior.from_file(path)
    d = prior.probabilities({"Ti": 1, "O": 2}, (1, 2, 3))
    # uniform (1/3 each) -> prototype (8, 2, 0) + 1 -> formula (0, 3, 0) + 1
    p0 = np.full(3, 1 / 3)
    p1 = (np.array([8, 2, 0]) + p0) / 11
    p2 = (np.array([0, 3, 0]) + p1) / 4
    np.testing.assert_allclose(d.probabilities, p2)
    assert [lv for lv, _, _ in d.levels] == ["prototype", "formula"]
    assert prior.probabilities({"Ti": 1, "O": 2}, (2, 4), 136).probabilities[0] > 0.95
    with pytest.raises(ConditioningError, match="no allowed"):
        prior.probabilities({"Ti": 1, "O": 2}, ())
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="formula-unit prior"):
        FormulaUnitPrior.from_file(tmp_path / "bad.json")
    with pytest.raises(DataError, match="unknown levels"):
        FormulaUnitPrior({"colour": {}})


def test_systematic_draw_covers_the_distribution_and_is_seeded():
    dist = FormulaUnitProbabilities((1, 2, 4), (0.55, 0.3, 0.15))
    a = draw_formula_units(dist, 20, np.random.default_rng(3))
    assert a == draw_formula_units(dist, 20, np.random.default_rng(3))
    counts = Counter(a)
    for z, p in zip(dist.allowed, dist.probabilities):
        assert np.floor(20 * p) <= counts[z] <= np.ceil(20 * p)
    singles = Counter(draw_formula_units(dist, 1, np.random.default_rng(s))[0] for s in range(400))
    assert 0.45 < singles[1] / 400 < 0.65


def test_reduced_formula_draws_allowed_z_and_cell_content_is_honoured():
    si = _resolve("Si", n=4, best_of=4, space_group=227)
    allowed = si.cell_choice["allowed"]
    assert si.cell_choice["chosen_by"] == "prior" and 1 not in allowed
    assert len(si.formula_units) == 16 and set(si.formula_units) <= set(allowed)
    assert si.formula_units == _resolve("Si", n=4, best_of=4, space_group=227).formula_units  # seeded
    assert si.cell(0) == {"Si": si.formula_units[0]}
    assert si.candidate_conditions(0).composition == {"Si": float(si.formula_units[0])}
    # TiO2: the pool's TiO2 cells have Z = 4; Z = 2 (rutile, anatase) keeps p = 0.13 through its prototype AB2,
    # so 16 systematic draws hold it at least twice; with P4_2/mnm (136) it is the rutile cell
    tio2 = Counter(_resolve("TiO2", n=16).formula_units)
    p2 = dict(zip(*[(r := _resolve("TiO2", n=16)).cell_choice["allowed"],
                    r.cell_choice["probabilities"].values()]))[2]
    assert tio2[2] >= np.floor(16 * p2) >= 2 and tio2[4] > tio2[2]
    assert Counter(_resolve("TiO2", n=16, space_group=136).formula_units).most_common(1)[0][0] == 2
    # explicit cell contents, in every accepted form, are generated as given
    for comp in ("Ti2O4", {"Ti": 2, "O": 4}, Composition("Ti2O4")):
        r = _resolve(comp, n=3)
        assert r.formula_units == (2, 2, 2) and r.cell_choice == {"chosen_by": "explicit cell content"}
        assert r.conditions.composition == {"O": 4.0, "Ti": 2.0}
    one = _resolve("Si", formula_units=1, n=2)
    assert one.formula_units == (1, 1) and one.cell_choice["chosen_by"] == "formula_units"
    assert _resolve("Ti2O4", formula_units=2).formula_units == (2,)
    assert _resolve("Li0.5CoO2").reduced == {"Li": 1, "Co": 2, "O": 4}  # fractional: a reduced formula


@pytest.mark.parametrize(
    "composition, kw, match",
    [
        ("SrTiO3", {"space_group": 230}, "space group 230 cannot hold SrTiO3 in any cell of at most 20 sites"),
        ("Si", {"space_group": 227, "formula_units": 1}, "space group 227 cannot hold the cell content Si:"),
        ("Na4Cl4", {"space_group": 225}, r"cannot hold the cell content Na4Cl4.*Z in \[1, "),
        ("Ti2O4", {"formula_units": 3}, "holds 2 formula units of TiO2, but formula_units=3"),
        ("Fe2O3", {"formula_units": 5}, "Fe10O15 holds 25 atoms"),
        ("Fe2O3", {"formula_units": 0}, "formula_units must be an integer >= 1"),
        (None, {"formula_units": 2}, "formula_units needs a composition"),
    ],
)
def test_impossible_requests_raise(composition, kw, match):
    with pytest.raises(ConditioningError, match=match):
        _resolve(composition, **kw)


def test_generation_records_the_chosen_z(tiny_model_dir, rock_salt_decode):  # noqa: F811
    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    res = gen.run([{"composition": "NaCl", "n": 2, "steps": STEPS},
                   {"composition": "NaCl", "n": 1, "steps": STEPS, "formula_units": 1}], seed=2, checks="none")
    drawn, fixed = res
    assert drawn.ok and drawn.structures and fixed.ok
    for s in drawn.structures:
        cell = s.properties["gpsk"]["request"]["cell"]
        assert cell["chosen_by"] == "prior" and cell["formula_units"] in cell["allowed"]
        assert len(s) == 2 * cell["formula_units"] and Composition(cell["composition"]) == s.composition
        assert cell["prior"]["file"] == "formula_units.json.gz" and cell["levels"][-1]["key"] == "ClNa"
        assert s.properties["gpsk"]["request"]["conditions"]["composition"] == {
            "Na": float(cell["formula_units"]), "Cl": float(cell["formula_units"])}
    for s in fixed.structures:
        assert s.properties["gpsk"]["request"]["cell"] == {"composition": "NaCl", "formula_units": 1,
                                                          "chosen_by": "formula_units"}
        assert s.properties["gpsk"]["request"]["formula_units"] == 1
    # the conditions of each candidate reach the model: same seed, Z fixed otherwise -> other grids
    a = gen.sample_grids([{"composition": "NaCl", "n": 2, "steps": 2, "formula_units": 1}], seed=0)[0]
    b = gen.sample_grids([{"composition": "NaCl", "n": 2, "steps": 2, "formula_units": 2}], seed=0)[0]
    assert not torch.equal(a, b)


def test_shipped_model_si_in_fd3m_gets_only_compatible_cells():
    torch.set_num_threads(1)
    gen = CrystalGenerator.from_pretrained()
    res = gen.run([{"composition": "Si", "n": 8, "space_group": 227, "steps": 8}], seed=0, checks="none")[0]
    assert res.ok and res.candidates == 8
    r = resolve_request(GenerationRequest("Si", n=8, space_group=227), 0, 0, 20, 8)
    assert 1 not in r.formula_units and set(r.formula_units) <= set(allowed_formula_units({"Si": 1}, 20, 227))
    for s in res.structures:
        cell = s.properties["gpsk"]["request"]["cell"]
        assert len(s) == cell["formula_units"] != 1 and cell["formula_units"] in cell["allowed"]
