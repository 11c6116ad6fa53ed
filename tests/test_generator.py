"""CrystalGenerator: seeds, batch invariance, MSONable round trip, bad input, provenance, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.core import Composition, Structure

from gpsk_materials import defaults
from gpsk_materials.errors import CheckpointError, ConditioningError
from gpsk_materials.models import load_model_folder, save_model_folder
from gpsk_materials.pipelines import CrystalGenerator, GenerationRequest, parse_checks
from gpsk_materials.pipelines import generator as generator_module
from gpsk_materials.pipelines.requests import integer_cell
from test_generator_helpers import make_tiny_model, rock_salt_decode, tiny_model_dir  # noqa: F401

STEPS = 3


@pytest.fixture(scope="module")
def gen(tiny_model_dir) -> CrystalGenerator:  # noqa: F811
    return CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)


MIXED = [
    {"composition": "Fe2O3", "n": 2, "space_group": 167, "steps": STEPS},
    {"composition": "NaCl", "n": 1, "band_gap": 4.0, "magnetic_ordering": "NM", "steps": STEPS},
    {"composition": {"Ti": 1, "O": 2}, "n": 3, "guidance": 1.0, "steps": STEPS},
    {"composition": "LiFePO4", "n": 1, "formation_energy": -2.0, "guidance": 3.0, "steps": 2},
]


def test_seeded_sampling_is_reproducible_and_seed_dependent(gen):
    a = gen.sample_grids(MIXED[:2], seed=11)
    b = gen.sample_grids(MIXED[:2], seed=11)
    c = gen.sample_grids(MIXED[:2], seed=12)
    assert [g.shape[0] for g in a] == [2, 1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    # the conditions reach the grids: same seed, other space group
    d = gen.sample_grids([{**MIXED[0], "space_group": 12}], seed=11)
    assert not torch.equal(a[0], d[0])


def test_batched_grids_equal_one_by_one_bit_for_bit(gen):
    batched = gen.sample_grids(MIXED, seed=5)
    for i, req in enumerate(MIXED):
        alone = gen.sample_grids([req], seed=5 + i)[0]
        assert torch.equal(batched[i], alone), f"request {i} differs"
    # a request's own seed overrides seed + index, wherever it stands in the batch
    own = gen.sample_grids([MIXED[1], {**MIXED[0], "seed": 5}], seed=99)
    assert torch.equal(own[1], batched[0])


def _equal_to_rounding(a, b) -> bool:
    """Nested provenance equal, floats to 1e-12 relative (batched pair distances round differently)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal_to_rounding(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_equal_to_rounding, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))
    return a == b


def test_batched_structures_equal_one_by_one(gen, rock_salt_decode):  # noqa: F811
    reqs = [{"composition": "NaCl", "n": 3, "steps": STEPS}, {"composition": "NaCl", "n": 2, "best_of": 2,
                                                               "space_group": 225, "steps": STEPS}]
    batched = gen.run(reqs, seed=21)
    single = [gen.run([r], seed=21 + i)[0] for i, r in enumerate(reqs)]
    for b, s in zip(batched, single):
        assert b.ok and s.ok and b.seed == s.seed
        assert (b.candidates, b.decoded, b.failures) == (s.candidates, s.decoded, s.failures)
        assert len(b.structures) == len(s.structures) > 0
        for x, y in zip(b.structures, s.structures):
            # the decoder batches grids across requests: the same numbers up to float rounding of batched algebra
            np.testing.assert_allclose(x.lattice.matrix, y.lattice.matrix, rtol=0, atol=1e-9)
            np.testing.assert_allclose(x.frac_coords, y.frac_coords, rtol=0, atol=1e-9)
            assert [e.symbol for e in x.species] == [e.symbol for e in y.species]
            px, py = dict(x.properties["gpsk"]), dict(y.properties["gpsk"])
            qx, qy = dict(px.pop("request")), dict(py.pop("request"))
            assert qx.pop("index") == b.index and qy.pop("index") == 0
            assert qx == qy
            rx, ry = px.pop("decode"), py.pop("decode")
            assert rx.keys() == ry.keys() and np.isclose(rx["relative_residual"], ry["relative_residual"], atol=1e-9)
            # distances come from batched pair-distance algebra too: equal to float rounding, everything else exactly
            assert _equal_to_rounding(px, py), (px, py)
    # the rock-salt decode gives sample-dependent cells: the samples are not all alike
    lat = [s.lattice.a for r in batched for s in r.structures]
    assert len(set(lat)) > 1


def test_generate_returns_structures_with_provenance(gen, rock_salt_decode):  # noqa: F811
    # one formula unit, the cell of the rock-salt fixture (the choice of Z is tested in test_formula_units.py)
    out = gen.generate("NaCl", n=2, space_group=225, best_of=3, steps=STEPS, seed=4, formula_units=1)
    assert 1 <= len(out) <= 2 and all(isinstance(s, Structure) for s in out)
    totals = [s.properties["gpsk"]["scores"]["total"] for s in out]
    assert totals == sorted(totals, reverse=True)
    p = out[0].properties["gpsk"]
    q = p["request"]
    assert q["seed"] == 4 and q["steps"] == STEPS and q["best_of"] == 3 and q["guidance"] == defaults.GUIDANCE
    assert q["composition"] == "NaCl" and q["space_group"] == 225
    assert q["conditions"]["composition"] == {"Na": 1.0, "Cl": 1.0} and q["formula_units"] == 1
    assert q["cell"] == {"composition": "NaCl", "formula_units": 1, "chosen_by": "formula_units"}
    assert q["candidates"]["drawn"] == 6 and q["candidates"]["decoded"] + q["candidates"]["failed"] == 6
    assert p["decode"]["method"] == "reciprocal" and p["decode"]["relative_residual"] < 0.3
    assert p["checks"]["results"]["space_group"] == 225 and p["checks"]["results"]["valid"] is True
    assert p["model"]["name"] == "tiny" and p["model"]["hash"] == gen.model_hash
    assert 0 <= q["sample_index"] < 6
    json.dumps(out[0].as_dict())  # provenance is plain JSON
    atoms = gen.generate("NaCl", n=1, best_of=4, steps=STEPS, seed=4, output="ase", formula_units=1)
    assert atoms and atoms[0].info["gpsk"]["request"]["seed"] == 4


def test_failed_candidates_are_counted_never_returned(gen, rock_salt_decode):  # noqa: F811
    # KBr asked of rock-salt grids, and NaCl: whatever does not decode is counted, never returned
    res = gen.run([{"composition": "KBr", "n": 4, "steps": STEPS, "formula_units": 1},
                   {"composition": "NaCl", "n": 4, "steps": STEPS, "formula_units": 1}], seed=1)
    for r in res:
        assert r.ok and r.candidates == 4
        assert len(r.structures) == r.decoded == 4 - len(r.failures)
        assert all(f.startswith("sample ") for f in r.failures)
        for s in r.structures:
            assert s.properties["gpsk"]["request"]["candidates"]["failed"] == r.failed
    assert res[1].failed > 0 and res[1].decoded > 0  # the fixture makes about half the latents fail


def test_untrained_model_failures_are_recorded_cleanly(gen):
    res = gen.run([{"composition": "Fe2O3", "n": 2, "steps": 2}], seed=0)[0]
    assert res.ok and res.candidates == 2
    assert res.decoded == len(res.structures)
    assert len(res.failures) == res.failed
    with pytest.raises(ValueError):
        gen.generate("Fe2O3", n=1, steps=2, output="cif")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"composition": "Xx2O3"}, "unknown element 'Xx'"),
        ({"composition": {"Fe": 2, "Q": 3}}, "unknown element 'Q'"),
        ({"composition": "Ca10P6O25H2"}, "smallest formula unit has 43 atoms; .* at most 20"),
        ({"composition": "Fe10O15"}, "holds 25 atoms; .* at most 20 .* Fe2O3"),
        ({"composition": "NaCl", "space_group": 0}, "space group"),
        ({"composition": "NaCl", "space_group": 231}, "space group"),
        ({"composition": "SiO2", "space_group": 230}, "space group 230 cannot hold SiO2"),
        ({"composition": "NaCl", "space_group": 225, "crystal_system": "hexagonal"}, "cubic, not hexagonal"),
        ({"composition": "NaCl", "band_gap": -0.5}, "band_gap must be >= 0"),
        ({"composition": "NaCl", "magnetic_ordering": "ferro"}, "magnetic ordering"),
        ({"composition": "NaCl", "n": 0}, "n must be an integer >= 1"),
        ({"composition": "NaCl", "best_of": 1.5}, "best_of must be an integer"),
        ({"composition": "NaCl", "guidance": float("nan")}, "guidance must be a finite number"),
        ({"composition": "fe2o3"}, "cannot parse formula"),
        ({"composition": "NaCl", "projection": 1.0}, "projection must be a flow time in \\[0, 1\\)"),
        ({"composition": "NaCl", "projection": -0.2}, "projection must be a flow time"),
    ],
)
def test_bad_requests_raise_clear_errors(gen, kwargs, match):
    comp = kwargs.pop("composition")
    with pytest.raises(ConditioningError, match=match):
        gen.generate(comp, steps=1, **kwargs)


def test_batch_with_a_bad_request_reports_it_and_returns_the_rest(gen):
    reqs = ["NaCl", {"composition": "NaCl", "band_gap": -1.0}, "Xx", {"composition": "KCl", "colour": "red"}, "KBr"]
    res = gen.generate_many(reqs, n=1, steps=1, seed=3)
    assert [r.ok for r in res] == [True, False, False, False, True]
    assert "request 1 (NaCl)" in str(res[1].error) and "band_gap" in str(res[1].error)
    assert "request 2 (Xx)" in str(res[2].error)
    assert "colour" in str(res[3].error)
    assert res[4].candidates == 1 and res[4].seed == 7  # seeds keep their places: seed + index
    with pytest.raises(ConditioningError):
        res[1].raise_for_error()
    lone = gen.run({"composition": "NaCl", "steps": 1}, seed=3)  # a lone request is a list of one
    assert len(lone) == 1 and lone[0].ok and lone[0].candidates == 1
    # the good requests are the same as without the bad ones in between
    alone = gen.sample_grids([{"composition": "KBr", "steps": 1}], seed=7)[0]
    again = gen.sample_grids([{"composition": "NaCl", "steps": 1}, {"composition": "KBr", "steps": 1, "seed": 7}], seed=3)
    assert torch.equal(alone, again[1])


def test_missing_weights_raise_checkpoint_errors(tmp_path, monkeypatch, tiny_model_dir):  # noqa: F811
    monkeypatch.setattr(generator_module, "default_model_dir", lambda: tmp_path / "weights" / "default")
    with pytest.raises(CheckpointError, match="default GPSK model is not installed"):
        CrystalGenerator.from_pretrained()
    with pytest.raises(CheckpointError, match="does not exist"):
        CrystalGenerator.from_pretrained(tmp_path / "nowhere")
    model = load_model_folder(tiny_model_dir)
    save_model_folder(tmp_path / "vae_only", model.config, model.vae, None, model.stats.to_dict(), None, None)
    with pytest.raises(CheckpointError, match="no MMDiT"):
        CrystalGenerator.from_pretrained(tmp_path / "vae_only")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(CheckpointError):
        CrystalGenerator.from_pretrained(tmp_path / "broken")


def test_from_pretrained_default_loads_the_packaged_folder(tmp_path, monkeypatch, tiny_model_dir):  # noqa: F811
    import shutil

    folder = tmp_path / "weights" / "default"
    shutil.copytree(tiny_model_dir, folder)
    monkeypatch.setattr(generator_module, "default_model_dir", lambda: folder)
    g = CrystalGenerator.from_pretrained()
    assert g.model_path is None and g.as_dict()["model_path"] is None
    assert CrystalGenerator.from_dict(g.as_dict()).model_hash == g.model_hash


def test_msonable_round_trip(tmp_path, gen):
    d = gen.as_dict()
    text = json.dumps(gen, cls=MontyEncoder)
    back = json.loads(text, cls=MontyDecoder)
    assert isinstance(back, CrystalGenerator)
    assert back.as_dict() == d
    assert d["model_path"] == str(gen.model_path) and d["batch_size"] == 4 and d["max_sites"] == 20
    req = [{"composition": "NaCl", "n": 2, "steps": 2}]
    assert torch.equal(back.sample_grids(req, seed=1)[0], gen.sample_grids(req, seed=1)[0])
    # other weights at the same path: refused
    make_tiny_model(tmp_path / "m", seed=1)
    d2 = CrystalGenerator.from_pretrained(tmp_path / "m").as_dict()
    make_tiny_model(tmp_path / "m", seed=2)
    with pytest.raises(CheckpointError, match="changed"):
        CrystalGenerator.from_dict(d2)
    # an in-memory model cannot be pointed at
    with pytest.raises(CheckpointError, match="in-memory"):
        CrystalGenerator(gen.model).as_dict()


def test_request_coercion_and_compositions():
    assert GenerationRequest.coerce("Fe2O3").composition == "Fe2O3"
    assert GenerationRequest.coerce({"Fe": 2, "O": 3}).composition == {"Fe": 2, "O": 3}
    assert GenerationRequest.coerce(Composition("Fe2O3"), n=3).n == 3
    assert GenerationRequest.coerce({"composition": "NaCl", "n": 2}, n=5, space_group=225) == GenerationRequest(
        "NaCl", n=2, space_group=225)
    with pytest.raises(ConditioningError, match="unknown request fields"):
        GenerationRequest.coerce("NaCl", colour="red")
    assert integer_cell({"Li": 0.5, "Co": 1, "O": 2}, 20) == {"Li": 1, "Co": 2, "O": 4}
    assert integer_cell({"Fe": 4, "O": 6}, 20) == {"Fe": 4, "O": 6}
    with pytest.raises(ConditioningError, match="ratio of integers"):
        integer_cell({"Fe": 1, "O": 0.123457}, 20)


def test_composition_forms_give_the_same_conditions(gen):
    from gpsk_materials.pipelines.requests import resolve_request

    forms = ["Fe2O3", Composition("Fe2O3"), {"Fe": 2, "O": 3}, {"O": 3.0, "Fe": 2.0}, "Fe1O1.5"]
    resolved = [resolve_request(GenerationRequest(f), 0, 0, 20, 8) for f in forms]
    assert all(r.conditions == resolved[0].conditions for r in resolved)
    assert resolved[0].reduced == {"Fe": 2, "O": 3} and resolved[0].formula == "Fe2O3"
    free = resolve_request(GenerationRequest(None, space_group=225), 0, 0, 20, 8)
    assert free.cell(0) is None and free.formula_units is None and free.formula == "free"


def test_parse_checks():
    assert parse_checks(None) == {"validity_symmetry"}
    assert parse_checks("none") == frozenset()
    assert parse_checks("volume-scan") == {"validity_symmetry", "energy", "volume_scan"}
    assert parse_checks("relax,hull") == {"validity_symmetry", "energy", "relax", "hull"}
    assert parse_checks(["energy"]) == {"validity_symmetry", "energy"}
    for bad in ("fast", "none,energy", ""):
        with pytest.raises(ConditioningError):
            parse_checks(bad)


def test_checks_none_keeps_sample_order(gen, rock_salt_decode):  # noqa: F811
    out = gen.run([{"composition": "NaCl", "n": 4, "steps": STEPS, "formula_units": 1}], seed=21, checks="none")[0]
    idx = [s.properties["gpsk"]["request"]["sample_index"] for s in out.structures]
    assert idx == sorted(idx) and all(s.properties["gpsk"]["scores"] is None for s in out.structures)


@pytest.mark.slow
def test_energy_and_volume_scan_checks(tiny_model_dir, matgl_model_dir, rock_salt_decode):  # noqa: F811
    g = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4, potential=str(matgl_model_dir))
    out = g.generate("NaCl", n=1, best_of=2, steps=STEPS, seed=21, checks="volume_scan")
    assert out
    rec = out[0].properties["gpsk"]["checks"]["results"]
    assert rec["energy_per_atom"] < -2.5
    # the decoded primitive cell of a = 5.64 A rock salt is already near the potential's minimum
    assert 0.9 < rec["volume_scale_factor"] < 1.1
    assert g._potential is not None and g.potential is g._potential  # loaded once, kept


def test_missing_potential_fails_before_sampling(tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    from gpsk_materials.errors import PotentialError
    from gpsk_materials.paths import SHARED_ENV

    monkeypatch.setenv(SHARED_ENV, str(tmp_path))  # a machine without the shared potential
    g = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the potential was checked")

    monkeypatch.setattr(g, "_sample_grids", no_sampling)
    with pytest.raises(PotentialError, match="GPSK_SHARED_DIR"):
        g.generate("NaCl", n=1, steps=STEPS, seed=0, checks="volume_scan")


@pytest.mark.slow
def test_relax_and_hull_checks(tiny_model_dir, matgl_model_dir, rock_salt_decode):  # noqa: F811
    from gpsk_materials.checks.hull import ReferenceHull

    # fixed references on the potential's scale: NaCl at -3.0 eV/atom, so a relaxed rock salt lies below it
    hull = ReferenceHull.from_entries([("Na", -1.3), ("Cl", -1.8), ("NaCl", -3.0)])
    g = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4, potential=str(matgl_model_dir),
                                         reference_hull=hull, relax_steps=30)
    res = g.run([{"composition": "NaCl", "n": 1, "best_of": 2, "space_group": 225, "steps": STEPS}],
                seed=21, checks="relax,hull")[0]
    assert res.structures
    rec = res.structures[0].properties["gpsk"]["checks"]["results"]
    assert rec["relaxed"] is True and rec["relax_steps"] <= 30
    assert rec["space_group"] == 225 and rec["valid"] is True
    assert rec["e_above_hull"] == pytest.approx(rec["energy_per_atom"] - (-3.0), abs=1e-6)
    assert sorted(res.structures[0].properties["gpsk"]["checks"]["run"]) == ["energy", "hull", "relax", "validity_symmetry"]


def test_generate_equals_run_with_the_same_seed(gen, rock_salt_decode):  # noqa: F811
    # one default per knob (gpsk_materials.defaults): the convenience verb and the batched one sample alike
    c = "NaCl"
    a = gen.generate(c, n=2, seed=2)  # seed 2: both candidates decode under the rock-salt fixture (seed 0: none)
    b = gen.run([{"composition": c, "n": 2}], seed=2)[0].structures
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x == y and x.properties == y.properties
    assert a[0].properties["gpsk"]["request"]["guidance"] == defaults.GUIDANCE
    assert a[0].properties["gpsk"]["request"]["steps"] == defaults.SAMPLER_STEPS


def test_request_holds_conditions():
    from gpsk_materials.models.conditioning import Conditions

    req = GenerationRequest("Fe2O3", n=2, space_group=167, guidance=3.0)
    assert req.conditions == Conditions("Fe2O3", space_group=167) and req.composition == "Fe2O3"
    assert req == GenerationRequest(n=2, conditions=Conditions("Fe2O3", space_group=167), guidance=3.0)
    assert GenerationRequest(conditions=Conditions("Fe2O3"), space_group=12).conditions.space_group == 12
    assert GenerationRequest.coerce({"conditions": Conditions("NaCl"), "n": 3}).n == 3
    d = req.to_dict()
    assert d["composition"] == "Fe2O3" and d["space_group"] == 167 and d["n"] == 2 and d["guidance"] == 3.0
    with pytest.raises(ConditioningError, match="unknown request fields"):
        GenerationRequest("NaCl", colour="red")


def test_post_checks_plain_interface(rock_salt_decode):  # noqa: F811
    from pymatgen.core import Lattice

    from gpsk_materials.checks.post import post_checks
    from gpsk_materials.models.conditioning import Conditions

    good = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    broken = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.075, 0, 0]])
    recs = post_checks([broken, good], Conditions("NaCl", space_group=225), "basic", keep=1)
    assert [r.index for r in recs] == [1]
    assert recs[0].scores["space_group_match"] is True and recs[0].checks["valid"] is True
    assert "gpsk" not in good.properties and "gpsk" not in recs[0].structure.properties  # records, not properties
    none = post_checks([broken, good], None, "none", keep=None)
    assert [r.index for r in none] == [0, 1] and all(r.scores is None and r.checks == {} for r in none)


def test_projection_re_enters_projected_samples_into_the_flow(gen, rock_salt_decode, monkeypatch):  # noqa: F811
    """request.projection = t: every candidate the decoder can place is re-encoded and integrated again from time t
    in round(steps * t) steps, reproducibly; projection 0 leaves the pipeline as it was."""
    req = {"composition": "NaCl", "n": 4, "steps": 10, "formula_units": 1}
    plain = gen.run([req], seed=2, checks="none")[0]
    assert plain.projected == [] and plain.structures
    assert all(s.properties["gpsk"]["request"]["projected"] is False for s in plain.structures)
    calls = []
    original = type(gen.model).sample_grids

    def spy(self, cond, steps, guidance, *args, t_start=1.0, **kwargs):
        calls.append((steps, t_start))
        return original(self, cond, steps, guidance, *args, t_start=t_start, **kwargs)

    monkeypatch.setattr(type(gen.model), "sample_grids", spy)
    res = gen.run([{**req, "projection": 0.3}], seed=2, checks="none")[0]
    assert calls[0] == (10, 1.0) and calls[1:] and all(c == (3, 0.3) for c in calls[1:])
    assert sorted(res.projected) == res.projected and 0 < len(res.projected) <= 4
    p = res.structures[0].properties["gpsk"]["request"]
    assert p["projection"] == 0.3 and p["candidates"]["projected"] == len(res.projected)
    assert p["projected"] == (p["sample_index"] in res.projected)
    from gpsk_materials.pipelines.output import summary_record

    assert summary_record(res.structures[0])["projected"] == p["projected"]
    again = gen.run([{**req, "projection": 0.3}], seed=2, checks="none")[0]
    assert again.projected == res.projected
    assert [s.lattice.abc for s in again.structures] == [s.lattice.abc for s in res.structures]


def test_pipelined_run_equals_sampling_then_decoding(tiny_model_dir, rock_salt_decode):  # noqa: F811
    # pipeline=True (issue 15): sampler batch i decoded on a worker thread while batch i + 1 is sampled; the same
    # candidates decode, the same structures up to the float rounding of the decoder's chunking
    reqs = [{"composition": "NaCl", "n": 3, "steps": STEPS}, {"composition": "NaCl", "n": 2, "best_of": 2,
                                                               "steps": STEPS}, {"composition": "NaCl", "n": 2, "steps": 2}]
    plain = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=2)
    piped = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=2, pipeline=True)
    assert piped.as_dict()["pipeline"] and not plain.as_dict()["pipeline"]
    a, b = plain.run(reqs, seed=21, checks="none"), piped.run(reqs, seed=21, checks="none")
    assert sum(r.decoded for r in a) > 0 and sum(r.failed for r in a) > 0  # both outcomes occur
    for x, y in zip(a, b):
        assert (x.candidates, x.decoded, x.failures) == (y.candidates, y.decoded, y.failures)
        assert len(x.structures) == len(y.structures)
        for s, t in zip(x.structures, y.structures):
            np.testing.assert_allclose(s.lattice.matrix, t.lattice.matrix, rtol=0, atol=1e-9)
            np.testing.assert_allclose(s.frac_coords, t.frac_coords, rtol=0, atol=1e-9)
            assert [e.symbol for e in s.species] == [e.symbol for e in t.species]
    assert CrystalGenerator.from_dict(piped.as_dict()).pipeline


def test_own_decoder_chunk_follows_the_device_and_a_given_decoder_keeps_its_own(tiny_model_dir):  # noqa: F811
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    assert generator_module._decode_chunk("cuda") == generator_module.GPU_DECODE_BATCH_SIZE == 256
    assert generator_module._decode_chunk(torch.device("cpu")) == generator_module.CPU_DECODE_BATCH_SIZE
    own = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    assert own.decoder.batch_size == generator_module.CPU_DECODE_BATCH_SIZE
    own.decoder.batch_size = 3
    assert own.to("cpu").decoder.batch_size == generator_module.CPU_DECODE_BATCH_SIZE
    given = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4, decoder=ReciprocalGridDecoder(batch_size=5))
    assert given.to("cpu").decoder.batch_size == 5
