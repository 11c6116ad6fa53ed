"""Issue 16: bad input gets a specific project error (or a verdict that says why), never a wrong answer.

One section per case of the issue; each instance of a kind is a test with the expected error type and the key words
of its message, or the right value.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.errors import ResolutionError
from gpsk_materials.representations.realspace import RealSpaceDensityFeaturizer
from gpsk_materials.representations.reciprocal import (
    ReciprocalGridFeaturizer,
    check_overlap,
    structures_to_arrays,
)
from test_generator_helpers import tiny_model_dir  # noqa: F401


# --- case 1: overlapping atoms are refused with the two sites and their distance -------------------------------

def _fcc_al_plus_duplicate() -> Structure:
    s = Structure(Lattice.cubic(4.05), ["Al"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.append("Al", [0, 0, 0])
    return s


def _nacl_1e6_apart() -> Structure:
    return Structure(Lattice.cubic(4), ["Na", "Cl"], [[0.3, 0.3, 0.3], [0.3 + 1e-6 / 4, 0.3, 0.3]])


@pytest.mark.parametrize("canonicalize", [True, False])
@pytest.mark.parametrize("featurizer_cls", [ReciprocalGridFeaturizer, RealSpaceDensityFeaturizer])
@pytest.mark.parametrize(
    "make,words",
    [
        (_fcc_al_plus_duplicate, ["sites 0 (Al) and 4 (Al)", "0.0000 A apart"]),
        (_nacl_1e6_apart, ["sites 0 (Na) and 1 (Cl)", "0.0000 A apart"]),
        # across the periodic boundary: 0.3 A between x = 0.98 and x = 0.055 of a 4 A cube
        (lambda: Structure(Lattice.cubic(4), ["Na", "Cl"], [[0.98, 0.5, 0.5], [0.055, 0.5, 0.5]]),
         ["sites 0 (Na) and 1 (Cl)", "0.3000 A apart"]),
    ],
)
def test_overlapping_sites_raise_resolution_error(make, words, featurizer_cls, canonicalize):
    with pytest.raises(ResolutionError, match="overlap") as info:
        featurizer_cls(canonicalize=canonicalize).featurize(make())
    for w in words:
        assert w in str(info.value)


def test_site_overlapping_its_own_image_raises():
    # a = 0.4 A: the site meets its own periodic image; the volume per site (40 A^3) alone does not catch it
    s = Structure(Lattice.orthorhombic(0.4, 10, 10), ["Na"], [[0, 0, 0]])
    with pytest.raises(ResolutionError, match=r"site 0 \(Na\) and its own periodic image .* 0.4000 A apart"):
        ReciprocalGridFeaturizer(canonicalize=False).featurize(s)


def test_overlap_check_covers_the_batch_arrays_and_min_distance_is_a_knob():
    with pytest.raises(ResolutionError, match="sites 0 .* and 4"):
        structures_to_arrays([_fcc_al_plus_duplicate()])
    # 0.3 A apart is refused at the default 0.5 A and accepted when the user lowers the bound
    s = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0.98, 0.5, 0.5], [0.055, 0.5, 0.5]])
    assert ReciprocalGridFeaturizer(canonicalize=False, min_distance=0.2).featurize(s).shape == (3, 32, 32, 32)


def test_disordered_sites_are_not_overlaps():
    # one site holding two species, and two half-occupied sites at one position (a split-site CIF), are disorder
    cuau = Structure(Lattice.cubic(3.9), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    assert ReciprocalGridFeaturizer().featurize(cuau).shape == (3, 32, 32, 32)
    split = Structure(Lattice.cubic(3.9), [{"Cu": 0.5}, {"Au": 0.5}], [[0, 0, 0], [0, 0, 0]])
    assert ReciprocalGridFeaturizer(canonicalize=False).featurize(split).shape == (3, 32, 32, 32)
    # but two fully occupied entries at one position are an overlap
    with pytest.raises(ResolutionError, match="sites 0 and 1 are 0.0000 A apart"):
        check_overlap(np.eye(3) * 4, np.zeros((2, 3)))


# --- case 7: the project's own errors, not numpy's, torch's or Python's --------------------------------------------

def test_ase_atoms_with_zero_cell_raise_degenerate_lattice_error():
    from ase import Atoms

    from gpsk_materials.errors import DegenerateLatticeError

    for cell in (np.zeros((3, 3)), [[4, 0, 0], [0, 4, 0], [4, 4, 0]], [[np.nan, 0, 0], [0, 4, 0], [0, 0, 4]]):
        atoms = Atoms("NaCl", positions=[[0, 0, 0], [2, 2, 2]], cell=cell, pbc=True)
        with pytest.raises(DegenerateLatticeError, match="singular or undefined cell"):
            ReciprocalGridFeaturizer().featurize(atoms)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5])
def test_decoder_grid_sizes_too_small_or_odd_raise_grid_error(size):
    from gpsk_materials.errors import GridError
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    grid = np.zeros((3, size, size, size), dtype=np.float32)
    with pytest.raises(GridError, match="even integer >= 4"):
        ReciprocalGridDecoder().decode(grid)
    with pytest.raises(GridError, match="even integer >= 4"):
        ReciprocalGridDecoder().decode_many(grid[None], ignore_errors=True)
    with pytest.raises(GridError, match="even integer >= 4"):
        ReciprocalGridFeaturizer(grid_size=size)


@pytest.fixture(scope="module")
def generator():
    from gpsk_materials.pipelines.generator import CrystalGenerator

    return CrystalGenerator.from_pretrained()


@pytest.mark.parametrize("amount", [float("nan"), float("inf"), -1.0])
def test_generate_with_invalid_amount_raises_conditioning_error(generator, amount):
    from gpsk_materials.errors import ConditioningError

    with pytest.raises(ConditioningError, match="amount of Na must be a positive finite number"):
        generator.generate({"Na": amount, "Cl": 1}, checks=None)


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("formation_energy", 1e9, ["formation_energy = 1e+09 eV/atom", "standard deviations", "[-9"]),
        ("formation_energy", -50.0, ["formation_energy = -50 eV/atom", "outside the accepted range"]),
        ("band_gap", 1e4, ["band_gap = 10000 eV", "outside the accepted range"]),
        ("e_above_hull", 30.0, ["e_above_hull = 30 eV/atom", "outside the accepted range"]),
    ],
)
def test_physically_impossible_conditions_are_bounded_by_training_statistics(generator, field, value, words):
    from gpsk_materials.errors import ConditioningError

    with pytest.raises(ConditioningError) as info:
        generator.generate("NaCl", checks=None, **{field: value})
    for w in words:
        assert w in str(info.value)


def test_conditions_within_the_training_range_are_accepted():
    from gpsk_materials.models.conditioning import ConditionStats

    stats = ConditionStats({"formation_energy": -1.0}, {"formation_energy": 1.0})
    for v in (-4.5, 0.0, 3.0, -9.0, 7.0):
        stats.check_range("formation_energy", v)


def test_gpsk_train_unknown_model_is_a_one_line_error(tmp_path, capsys):
    from gpsk_materials.cli import main

    rc = main(["train", "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "run"), "--model", "nosuch"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "unknown model config 'nosuch'" in err and "tiny" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "section,field,value,words",
    [
        ("mmdit", "hidden", "64", "MMDiTConfig.hidden must be an integer, got '64'"),
        ("mmdit", "mlp_ratio", "four", "MMDiTConfig.mlp_ratio must be a finite number"),
        ("vae", "channels", [8, "16", 32], "VAEConfig.channels must be a tuple"),
        ("vae", "groups", None, "VAEConfig.groups must be an integer, got None"),
    ],
)
def test_model_config_with_a_non_numeric_field_names_the_field(section, field, value, words):
    from gpsk_materials.errors import ConfigError
    from gpsk_materials.models.configs import CONFIGS, ModelConfig

    data = CONFIGS["tiny"].to_dict()
    data[section][field] = value
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert words in str(info.value)


def test_train_config_with_a_non_numeric_field_names_the_field():
    from gpsk_materials.errors import ConfigError, UnknownConfigError
    from gpsk_materials.training.trainer import TrainConfig

    with pytest.raises(ConfigError, match="TrainConfig.vae_lr must be a finite number, got 'fast'"):
        TrainConfig(vae_lr="fast").check()
    with pytest.raises(ConfigError, match="TrainConfig.batch_size must be an integer"):
        TrainConfig(batch_size=64.5).check()
    with pytest.raises(UnknownConfigError, match="named configs"):
        TrainConfig(model="nosuch").check()
    with pytest.raises(KeyError):  # get_config's error stays a KeyError for existing handlers
        TrainConfig(model="nosuch").check()


def test_byte_flipped_shard_says_hash_mismatch(tmp_path):
    import torch

    from gpsk_materials.errors import CheckpointError
    from gpsk_materials.models.io import load_tensors, save_tensors

    save_tensors(tmp_path, "set", {"a": torch.randn(1000)})
    shard = tmp_path / "set-00001.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[-7] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt: SHA-256 hash mismatch"):
        load_tensors(tmp_path, "set")
    shard.write_bytes(bytes(blob[:-3]))
    with pytest.raises(CheckpointError, match=r"truncated .*\(\d+ bytes, expected \d+\)"):
        load_tensors(tmp_path, "set")


# --- case 6: what cannot fit is refused before the expensive primitive-cell search ---------------------------------

def _thousand_sites() -> Structure:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(10)] * 3, indexing="ij"), -1).reshape(-1, 3) / 10
    return Structure(Lattice.cubic(30), ["Si"] * 500 + ["O"] * 500, grid + rng.normal(0, 0.003, grid.shape))


@pytest.mark.parametrize("featurize", [
    lambda s: ReciprocalGridFeaturizer().featurize(s),
    lambda s: RealSpaceDensityFeaturizer().featurize(s),
    lambda s: structures_to_arrays([s], max_sites=256, max_resolution=1.6),
])
@pytest.mark.parametrize(
    "make,error,words",
    [
        (_thousand_sites, ResolutionError, "1000 sites; the primitive cell holds 1000, more than the 256"),
        (lambda: Structure(Lattice.cubic(1e6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), None,
         "cell too large for a 32^3 grid"),
        (lambda: Structure(Lattice.cubic(1e6), ["Na"], [[0, 0, 0]]), None, "cell too large for a 32^3 grid"),
    ],
)
def test_what_cannot_fit_is_refused_in_seconds(make, error, words, featurize):
    import time

    from gpsk_materials.errors import DegenerateLatticeError

    s = make()
    start = time.perf_counter()
    with pytest.raises(error or DegenerateLatticeError, match=words.replace("^", r"\^")):
        featurize(s)
    assert time.perf_counter() - start < 5.0  # 150 s (1,000 sites) and 10-17 s (10^6 A) before


@pytest.mark.parametrize("lattice,ratio", [
    (Lattice.cubic(1e6), np.inf),  # a sparse cell: the cell list asked for 8e15 bytes (MemoryError)
    (Lattice.cubic(0.042), 0.042 / (2 * 1.66)),  # a 0.04 A cell: billions of images (the fuzz's OOM kill)
    (Lattice.cubic(4.2e-5), 4.2e-5 / (2 * 1.66)),
    (Lattice.orthorhombic(0.01, 50, 50), 0.01 / (2 * 1.66)),  # a needle: Na meets its own image 0.01 A away
])
def test_validity_of_extreme_cells_is_judged_in_bounded_work(lattice, ratio):
    """The checks' neighbour search (ValidityCheck, the decoder's plausibility check) on cells the featurizer would
    refuse: the same minima as an exhaustive search, in milliseconds and without exhausting memory."""
    import time

    from gpsk_materials.checks.validity import ValidityCheck, closest_contact

    s = Structure(lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    start = time.perf_counter()
    res = ValidityCheck().check(s)
    contact = closest_contact(s)
    assert time.perf_counter() - start < 2.0
    assert res.min_distance_ratio == pytest.approx(ratio, rel=1e-6)
    assert not res.strict_valid
    if np.isfinite(ratio):
        assert contact[:2] == (0, 0) and contact[3] == pytest.approx(ratio, rel=1e-6)  # Na and its own image


def test_bounded_neighbour_search_finds_the_minima_of_the_exhaustive_one():
    from gpsk_materials.checks.validity import _contacts, _site_radius, nearest_neighbours

    rng = np.random.default_rng(3)
    structures = [
        Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]),  # cell shorter than the reach
        Structure(Lattice.from_parameters(2.5, 3.1, 7.0, 70, 100, 115), ["H", "Cs", "O", "H"], rng.random((4, 3))),
        Structure(Lattice.hexagonal(2.46, 30), ["C", "C"], [[0, 0, 0.5], [1 / 3, 2 / 3, 0.5]]),
        Structure(Lattice.cubic(9.0), ["U", "H", "H"], rng.random((3, 3))),
        # H's smallest ratio is to Cs 2 A away, beyond the 1 A lattice vector: the cut reach must keep it
        Structure(Lattice.orthorhombic(1.0, 8, 8), ["H", "Cs"], [[0, 0, 0], [0, 0.25, 0]]),
    ]
    for s in structures:
        ratios, nearest = nearest_neighbours(s, 1.5, cutoff=5.0)
        radii = np.array([_site_radius(site.species) for site in s])
        reach = max(1.5 * 2 * radii.max(), 5.0)
        centers, points, _, d = s.get_neighbor_list(reach)  # every pair within the reach
        want_r, want_d = np.full(len(s), np.inf), np.full(len(s), np.inf)
        np.minimum.at(want_r, centers, d / (radii[centers] + radii[points]))
        np.minimum.at(want_d, centers, d)
        np.testing.assert_allclose(ratios, want_r, rtol=1e-9)
        np.testing.assert_allclose(nearest, want_d, rtol=1e-9)
        assert len(_contacts(s, 1.5)[0]) > 0


def test_a_supercell_of_a_small_crystal_still_fits():
    # 8 x 8 = 64 sites in a 2 x 2 x 2 NaCl supercell with max_sites=8: its primitive cell (2 sites) fits
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    grid = ReciprocalGridFeaturizer(max_sites=8).featurize(nacl * (2, 2, 2))
    np.testing.assert_allclose(grid, ReciprocalGridFeaturizer().featurize(nacl), atol=1e-5)


# --- case 2: disordered and unusual sites in the validity check ----------------------------------------------------

def _cuau() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.9), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])


def test_validity_of_a_disordered_alloy_is_judged_by_its_integer_ratio():
    from gpsk_materials.checks.validity import ValidityCheck

    res = ValidityCheck().check(_cuau())
    assert res.valid and res.strict_valid and res.reasons == []
    # disordered Li0.5CoO2 -> LiCo2O4 needs mixed-valence Co: invalid, and the reason says how it was judged
    lco = Structure(Lattice.hexagonal(2.8, 14), [{"Li": 0.5}, "Co", "O", "O"],
                    [[0, 0, 0], [0, 0, 0.5], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    res = ValidityCheck().check(lco)
    assert not res.compositional_valid
    assert any("disordered; judged as its integer ratio Li(CoO2)2" in r for r in res.reasons)


def test_validity_with_an_element_smact_does_not_know_is_unknown_with_reason():
    from gpsk_materials.checks.validity import ValidityCheck, smact_validity
    from gpsk_materials.errors import UnknownElementError

    nh = Structure(Lattice.cubic(4), ["Nh", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    res = ValidityCheck().check(nh)
    assert res.structural_valid and not res.compositional_valid and not res.valid
    assert res.reasons == ["SMACT: compositional validity unknown: SMACT has no oxidation states or "
                           "electronegativity for Nh"]
    with pytest.raises(UnknownElementError, match="SMACT has no .* for Nh"):
        smact_validity("NhCl")


def test_validity_of_a_dummy_species_raises_unknown_element_error():
    from pymatgen.core import DummySpecies

    from gpsk_materials.checks.symmetry import SymmetryCheck
    from gpsk_materials.checks.validity import ValidityCheck
    from gpsk_materials.errors import UnknownElementError

    s = Structure(Lattice.cubic(4), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    for check in (ValidityCheck(), SymmetryCheck()):
        with pytest.raises(UnknownElementError, match="site 0 holds X0\\+, which is not a chemical element"):
            check.check(s)


def test_gpsk_check_no_energy_reports_disordered_and_unknown_elements(tmp_path, capsys):
    import json

    from gpsk_materials.cli import main

    _cuau().to(filename=str(tmp_path / "cuau.cif"))
    Structure(Lattice.cubic(4), ["Nh", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(tmp_path / "nh.cif"))
    out = tmp_path / "r.json"
    assert main(["check", str(tmp_path / "cuau.cif"), str(tmp_path / "nh.cif"), "--no-energy", "--json", str(out)]) == 0
    records = {r["formula"]: r for r in json.loads(out.read_text())}
    assert records["CuAu"]["valid"] is True and records["CuAu"]["space_group"] == 225
    assert records["ClNh"]["valid"] is False
    assert "compositional validity unknown" in records["ClNh"]["validity_reasons"][0]


# --- case 4: one bad item never sinks a batch ------------------------------------------------------------------------

def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_decode_many_with_an_unparseable_composition_loses_only_that_grid():
    from gpsk_materials.errors import UnknownElementError
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    g = ReciprocalGridFeaturizer().featurize(_nacl())
    dec = ReciprocalGridDecoder(batch_size=2)
    grids = np.stack([g] * 5)
    out, reasons = dec.decode_many(grids, ["NaCl", "NaCl", "NaCl", "Xx2O", "NaCl"], return_errors=True)
    assert [s is None for s in out] == [False, False, False, True, False]
    assert reasons[3] == "grid 3: composition 'Xx2O' holds Xx, outside the supported Z = 1..98"
    assert all(s.composition.reduced_formula == "NaCl" for s in out if s is not None)
    with pytest.raises(UnknownElementError, match="grid 3: .*Xx2O"):  # fail fast keeps the error's own type
        dec.decode_many(grids, ["NaCl", "NaCl", "NaCl", "Xx2O", "NaCl"])


@pytest.mark.parametrize("comp,words", [
    ({"Na": float("inf"), "Cl": 1}, "the amount of Na must be a finite number, got inf"),  # was an OverflowError
    ({"Na": float("nan"), "Cl": 1}, "the amount of Na must be a finite number, got nan"),  # was decoded as Cl alone
    ({"Na": "1", "Cl": 1}, "the amount of Na must be a finite number, got '1'"),  # was a TypeError
    ({"Na": None, "Cl": 1}, "the amount of Na must be a finite number, got None"),
])
def test_decode_many_with_a_non_finite_amount_loses_only_that_grid(comp, words):
    from gpsk_materials.errors import UnknownElementError
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    nacl = Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    grid = ReciprocalGridFeaturizer().featurize(nacl)
    out, reasons = ReciprocalGridDecoder().decode_many(np.stack([grid, grid]), [comp, "NaCl"], return_errors=True,
                                                       pbar=False)
    assert out[0] is None
    assert reasons[0].startswith("grid 0: ") and words in reasons[0], reasons[0]
    assert out[1].composition.reduced_formula == "NaCl" and reasons[1] is None
    with pytest.raises(UnknownElementError, match="must be a finite number"):
        ReciprocalGridDecoder().decode(grid, comp)


@pytest.mark.parametrize("implementation, solver", [("batched", "_peel_batched"), ("reference", "_peel")])
def test_decode_many_survives_a_numerical_failure_of_one_grid(monkeypatch, implementation, solver):
    import torch

    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    g = ReciprocalGridFeaturizer().featurize(_nacl())
    # the solver "fails" on any chunk holding the grid of NaCl at a = 6.2 A (recognised by its metric)
    bad = ReciprocalGridFeaturizer().featurize(
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(6.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    dec = ReciprocalGridDecoder(batch_size=4, implementation=implementation)
    peel = getattr(dec, solver)

    def failing_peel(eng, F, gstar, *args):
        lengths = np.linalg.inv(gstar.double().cpu().numpy())[:, 0, 0] ** 0.5  # |a| of each (primitive) cell
        if (lengths > 0.5 * 6.0 * 2 ** 0.5).any():
            raise torch.linalg.LinAlgError("linalg.solve: The solver failed because the input matrix is singular.")
        return peel(eng, F, gstar, *args)

    monkeypatch.setattr(dec, solver, failing_peel)
    out, reasons = dec.decode_many(np.stack([g, bad, g]), ["NaCl"] * 3, return_errors=True)
    assert out[0] is not None and out[2] is not None and out[1] is None
    assert reasons[1].startswith("grid 1: the solver failed numerically")


def test_gpsk_check_reports_each_bad_file_and_checks_the_rest(tmp_path, capsys):
    import json

    from pymatgen.core import DummySpecies

    from gpsk_materials.cli import main

    _nacl().to(filename=str(tmp_path / "good.cif"))
    (tmp_path / "junk.cif").write_text("not a cif")
    Structure(Lattice.cubic(4), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5] * 3]).to(filename=str(tmp_path / "x.cif"))
    files = [str(tmp_path / n) for n in ("good.cif", "junk.cif", "x.cif")]
    assert main(["check", *files, "--no-energy", "--json", str(tmp_path / "r.json")]) == 1
    captured = capsys.readouterr()
    assert "Fm-3m" in captured.out and "error" in captured.out  # the table, with an error column
    assert f"{tmp_path / 'junk.cif'}: DataError" in captured.err
    records = json.loads((tmp_path / "r.json").read_text())
    assert [r["file"].rsplit("/", 1)[-1] for r in records] == ["good.cif", "junk.cif", "x.cif"]
    assert records[0]["valid"] is True and "error" not in records[0]
    assert "cannot read a structure" in records[1]["error"] and "not a chemical element" in records[2]["error"]
    # fail fast: the first bad file stops the run, named
    assert main(["check", *files, "--no-energy", "--fail-fast"]) == 1
    assert "junk.cif" in capsys.readouterr().err


def test_gpsk_check_reports_a_file_spglib_gives_up_on_and_checks_the_rest(tmp_path, capsys):
    """The issue's instance: spglib gives up on one Mg/O 2-site cell at --symprec 0.01 (a nearly collinear cell)."""
    import json

    from gpsk_materials.cli import main

    _nacl().to(filename=str(tmp_path / "good.cif"))
    Structure(Lattice([[3, 0, 0], [2.999, 0.001, 0], [0, 0, 3]]), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(
        filename=str(tmp_path / "mgo.json"))
    files = [str(tmp_path / "good.cif"), str(tmp_path / "mgo.json")]
    assert main(["check", *files, "--no-energy", "--symprec", "0.01", "--json", str(tmp_path / "r.json")]) == 1
    captured = capsys.readouterr()
    assert "Fm-3m" in captured.out  # the table, with the good file's row
    assert f"{tmp_path / 'mgo.json'}: InvalidStructureError" in captured.err and "symprec=0.01" in captured.err
    good, bad = json.loads((tmp_path / "r.json").read_text())
    assert good["space_group"] == 225 and "error" not in good
    assert bad["file"].endswith("mgo.json") and "spglib could not analyse" in bad["error"]


def test_gpsk_evaluate_skips_an_unreadable_cif_and_reports_the_rest(tmp_path, capsys):
    import json

    from gpsk_materials.cli import main

    folder = tmp_path / "gen"
    folder.mkdir()
    _nacl().to(filename=str(folder / "a.cif"))
    Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]).to(
        filename=str(folder / "b.cif"))
    (folder / "broken.cif").write_text("data_x\n_cell_length_a 4\nloop_\n_atom_site_label\nNa1\n")
    assert main(["evaluate", str(folder), "--out", str(tmp_path / "rep"), "--no-progress"]) == 0
    assert "skipped broken" in capsys.readouterr().err
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["summary"]["n_structures"] == 2 and data["summary"]["n_skipped"] == 1
    assert data["skipped"][0]["id"] == "broken" and "DataError" in data["skipped"][0]["error"]
    assert main(["evaluate", str(folder), "--out", str(tmp_path / "rep2"), "--no-progress", "--fail-fast"]) == 1
    assert "broken.cif" in capsys.readouterr().err


# --- case 12: resume falls back to the older kept checkpoint when the newest is corrupt ---------------------------

# toy_cache: the session fixture of conftest.py


def _tiny_cfg(**kw):
    from gpsk_materials.training import TrainConfig

    base = dict(model="tiny", vae_steps=6, flow_steps=2, batch_size=4, vae_lr=2e-3, flow_lr=1e-3, warmup_steps=2,
                log_every=1, eval_every=100, ckpt_every=2, val_fraction=0.2, val_size=4, ema_decay=0.9,
                keep_checkpoints=2)
    base.update(kw)
    return TrainConfig(**base)


def _run_chunks(cache, out, cfg, n: int) -> None:
    from gpsk_materials.training import Trainer

    for k in range(n):  # max_minutes=0: each chunk does one step, checkpoints and stops
        assert Trainer(cache, out, cfg, max_minutes=0, progress=False).run(resume=k > 0) == "time_limit"


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_resume_falls_back_to_the_older_checkpoint_when_the_newest_is_corrupt(toy_cache, tmp_path, damage):
    import json
    import shutil

    from gpsk_materials.training import Trainer
    from gpsk_materials.training.checkpoint import latest_checkpoint

    cfg = _tiny_cfg()
    _run_chunks(toy_cache, tmp_path, cfg, 3)  # checkpoints after steps 1, 2, 3; the newest two kept
    newest = latest_checkpoint(tmp_path)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))
    assert len(kept) == 2 and newest.name == kept[-1]
    older_step = json.loads((tmp_path / "checkpoints" / kept[0] / "state.json").read_text())["step"]
    if damage == "flip":
        shard = newest / "optimizer-00001.safetensors"
        blob = bytearray(shard.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        shard.write_bytes(bytes(blob))
    else:
        shutil.rmtree(newest)
    resumed = Trainer(toy_cache, tmp_path, cfg, progress=False)
    with pytest.warns(RuntimeWarning, match=f"resuming from the older checkpoint {kept[0]}"):
        state = resumed.resume()
    assert state["step"] == older_step and resumed.step == older_step
    assert not newest.exists()  # moved aside, so it is neither resumed nor kept in place of a good one
    assert latest_checkpoint(tmp_path).name == kept[0]  # and latest.json points at the one resumed
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Trainer(toy_cache, tmp_path, cfg, progress=False).run(resume=True) == "done"
    assert not [w for w in caught if "older checkpoint" in str(w.message)]  # no second fallback


def test_resume_with_no_readable_checkpoint_names_each_reason(toy_cache, tmp_path):
    from gpsk_materials.errors import CheckpointError
    from gpsk_materials.training import Trainer

    cfg = _tiny_cfg()
    _run_chunks(toy_cache, tmp_path, cfg, 3)
    for folder in (tmp_path / "checkpoints").iterdir():
        shard = folder / "model-00001.safetensors"
        shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="no readable checkpoint .*truncated.*truncated"):
        Trainer(toy_cache, tmp_path, cfg, progress=False).run(resume=True)


# --- case 11: small output gaps -----------------------------------------------------------------------------------

def test_gpsk_check_space_group_prints_a_match_column(tmp_path, capsys):
    from gpsk_materials.cli import main

    _nacl().to(filename=str(tmp_path / "a.cif"))
    assert main(["check", str(tmp_path / "a.cif"), "--no-energy", "--space-group", "221"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "SG match" in header and row.split()[header.split().index("SG") + 2] == "no"  # file formula SG symbol match
    assert main(["check", str(tmp_path / "a.cif"), "--no-energy", "--space-group", "225"]) == 0
    assert " yes " in capsys.readouterr().out.splitlines()[1] + " "


def test_generator_to_a_missing_cuda_device_is_a_config_error(generator, monkeypatch):
    import torch

    from gpsk_materials.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        generator.to("cuda")
    with pytest.raises(ConfigError, match="not a torch device: 'gpu0'"):
        generator.to("gpu0")
    assert generator.to("cpu").device.type == "cpu"


def test_generator_to_an_accelerator_this_torch_lacks_is_a_config_error(generator, monkeypatch):
    import torch

    from gpsk_materials.errors import ConfigError

    def no_such_backend(*args, device=None, **kw):
        raise RuntimeError("PyTorch is not linked with support for mps devices")  # torch's words on a CPU build

    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, device=None, **kw: (
        no_such_backend() if device is not None and torch.device(device).type == "mps" else real_empty(*a, **kw)))
    with pytest.raises(ConfigError, match="device 'mps' requested, but this torch .* cannot use it .*use device='cpu'"):
        generator.to("mps")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="device 'meta' holds shapes, not values"):
        generator.to("meta")  # was accepted, and sampling failed later
    assert generator.to("cpu").device.type == "cpu"


# --- case 5: no silent skips ---------------------------------------------------------------------------------------

def test_gpsk_evaluate_refuses_train_csv_with_csp_targets(tmp_path, capsys):
    import json

    from gpsk_materials.cli import main

    (tmp_path / "gen.json").write_text(json.dumps({"A__0": _nacl().as_dict()}))
    (tmp_path / "t.json").write_text(json.dumps({"A": _nacl().as_dict()}))
    (tmp_path / "train.csv").write_text("material_id,cif\nm1,\"" + _nacl().to(fmt="cif").replace('"', "'") + "\"\n")
    code = main(["evaluate", str(tmp_path / "gen.json"), "--csp-targets", str(tmp_path / "t.json"),
                 "--train-csv", str(tmp_path / "train.csv"), "--out", str(tmp_path / "rep"), "--no-progress"])
    assert code == 1
    assert "uniqueness and novelty are not computed for crystal structure prediction" in capsys.readouterr().err
    assert not (tmp_path / "rep" / "report.json").exists()


# --- case 3b: species given are species returned -----------------------------------------------------------------

def test_decoding_with_oxidation_states_returns_those_species():
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Species

    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), [Species("Mg", 2), Species("O", -2)],
                                    [[0, 0, 0], [0.5, 0.5, 0.5]])
    grid = ReciprocalGridFeaturizer().featurize(mgo)
    decoded = ReciprocalGridDecoder().decode(grid, mgo.composition)
    assert {str(sp) for sp in decoded.composition} == {"Mg2+", "O2-"}
    assert StructureMatcher().fit(mgo, decoded)
    assert {str(sp) for sp in ReciprocalGridDecoder().decode(grid, "MgO").composition} == {"Mg", "O"}
    # an element in two oxidation states cannot be assigned per site from the grid: it stays the element
    fe3o4 = {Species("Fe", 2): 1, Species("Fe", 3): 2, Species("O", -2): 4}
    from gpsk_materials.representations.decoding import _given_species

    out = _given_species(Structure(Lattice.cubic(4), ["Fe", "O"], [[0, 0, 0], [0.5] * 3]), fe3o4)
    assert {str(sp) for sp in out.composition} == {"Fe", "O2-"}


# --- case 8: answers from outside the potential's reach are flagged, not applied --------------------------------

def test_volume_scan_minimum_at_the_boundary_is_flagged_and_not_applied(matgl_model_dir):
    from gpsk_materials.checks.potentials import load_potential
    from gpsk_materials.checks.volume_scan import VolumeScan

    potential = load_potential(str(matgl_model_dir))
    nacl = _nacl()  # its minimum lies near 23 A^3/atom: a scan over [30, 40] ends at its lower edge
    edge = VolumeScan(potential, v_min=30, v_max=40, n_points=5, refine=False).scan(nacl)[0]
    assert edge.at_boundary and not edge.applied and edge.success
    assert edge.scale_factor == 1.0 and edge.structure.lattice.a == pytest.approx(5.64)
    assert edge.volume_per_atom == pytest.approx(30.0)  # the boundary point found is still reported
    forced = VolumeScan(potential, v_min=30, v_max=40, n_points=5, refine=False, apply_at_boundary=True).scan(nacl)[0]
    assert forced.applied and forced.structure.volume / len(nacl) == pytest.approx(30.0)
    inside = VolumeScan(potential, v_min=15, v_max=35, n_points=9, refine=False).scan(nacl)[0]
    assert not inside.at_boundary and inside.applied and inside.scale_factor != 1.0


def test_gpsk_check_table_flags_a_boundary_scan(matgl_model_dir, tmp_path, capsys, monkeypatch):
    import json

    from gpsk_materials.checks import volume_scan as vs
    from gpsk_materials.cli import main

    original = vs.VolumeScan.__init__

    def narrow(self, potential=None, **kw):  # the default range holds NaCl's minimum: narrow it for the test
        original(self, potential, v_min=30, v_max=40, n_points=5, refine=False,
                 apply_at_boundary=kw.get("apply_at_boundary", False))

    monkeypatch.setattr(vs.VolumeScan, "__init__", narrow)
    _nacl().to(filename=str(tmp_path / "a.cif"))
    assert main(["check", str(tmp_path / "a.cif"), "--volume-scan", "--potential", str(matgl_model_dir),
                 "--json", str(tmp_path / "r.json")]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "scan@edge" in header  # "E (eV/atom)" is two words of the header, one of the row
    assert row.split()[header.split().index("scan@edge") - 1] == "yes"
    rec = json.loads((tmp_path / "r.json").read_text())[0]
    assert rec["volume_scan_at_boundary"] is True and rec["volume_scan_applied"] is False
    assert rec["volume_scale_factor"] == 1.0


def test_an_atom_without_neighbours_is_flagged_in_every_output(matgl_model_dir, tmp_path, capsys):
    """A Ne atom alone in a 10 A cube: the potential's energy is its free-atom term. gpsk check names the site in
    its table and JSON, the scorer penalises it and writes it to properties["gpsk"], the summary row flags it."""
    import json

    from gpsk_materials import provenance
    from gpsk_materials.checks.potentials import load_potential
    from gpsk_materials.checks.scoring import CandidateScorer
    from gpsk_materials.cli import main
    from gpsk_materials.checks.post import result_flags

    potential = load_potential(str(matgl_model_dir))
    lone = Structure(Lattice.cubic(10.0), ["Ne"], [[0, 0, 0]])
    assert potential.cutoff == pytest.approx(5.0)
    assert potential.isolated_sites([lone, _nacl()]) == [[0], []]
    lone.to(filename=str(tmp_path / "ne.cif"))
    _nacl().to(filename=str(tmp_path / "nacl.cif"))
    assert main(["check", str(tmp_path / "ne.cif"), str(tmp_path / "nacl.cif"), "--potential", str(matgl_model_dir),
                 "--json", str(tmp_path / "r.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "isolated" in lines[0] and "[0]" in lines[1] and "[0]" not in lines[2]
    recs = json.loads((tmp_path / "r.json").read_text())
    assert recs[0]["isolated_sites"] == [0] and recs[1]["isolated_sites"] == []
    scorer = CandidateScorer(potential)
    lone_rec, = scorer.breakdowns([lone], energies=[-1.0])
    unweighted, = CandidateScorer(potential, weights={"isolated": 0.0}).breakdowns([lone], energies=[-1.0])
    assert unweighted["total"] - lone_rec["total"] == pytest.approx(scorer.weights["isolated"]) == 5.0
    scorer.evaluate([lone])
    assert provenance.read(lone, "scores")["isolated_sites"] == [0]
    assert "isolated atoms [0]" in result_flags({"isolated_sites": [0]}) and result_flags({}) is None


# --- case 9: physically broken candidates do not pass as the best -------------------------------------------------

def _squashed_nacl() -> Structure:
    """Rock salt at a = 1.1 A: Na and Cl 0.55 A apart, CDVAE-valid (>= 0.5 A), strictly invalid."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(1.1), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])


def test_best_of_prefers_a_strictly_valid_candidate_and_the_score_separates_them():
    from gpsk_materials import provenance
    from gpsk_materials.checks.scoring import CandidateScorer

    good = _nacl()
    squashed = _squashed_nacl()
    assert min(squashed.distance_matrix[0][1:]) == pytest.approx(0.55)  # passes the CDVAE 0.5 A rule
    scorer = CandidateScorer(potential=False)
    bad_rec, good_rec = scorer.breakdowns([squashed, good])
    assert bad_rec["valid"] and not bad_rec["strict_valid"] and good_rec["strict_valid"]
    assert good_rec["sound"] and not bad_rec["sound"]
    assert good_rec["total"] - bad_rec["total"] >= 5.0
    best = scorer.select_best([[squashed, good]])[0]
    assert provenance.read(best, "scores")["strict_valid"] is True


def test_best_of_takes_the_sound_candidate_first_whatever_the_weights_say():
    """With the strict weight off the two totals tie and the tie-break favours the squashed candidate: the gate
    (sound first, then the score) still keeps the strictly valid one first."""
    from gpsk_materials.checks.post import post_checks
    from gpsk_materials.checks.scoring import CandidateScorer

    scorer = CandidateScorer(potential=False, weights={"strict": 0.0})
    recs = post_checks([_squashed_nacl(), _nacl()], keep=2, tie_break=[0.0, 1.0], scorer=scorer)
    assert recs[0].scores["total"] == recs[1].scores["total"]
    assert [r.index for r in recs] == [1, 0]
    assert recs[0].checks["sound"] is True and recs[1].checks["sound"] is False
    assert recs[1].checks["min_distance"] == pytest.approx(0.55)
    best = scorer.select_best([[_squashed_nacl(), _nacl()]])[0]
    assert best.lattice.a == pytest.approx(5.64)


def test_an_energy_above_the_free_atoms_is_not_sane(matgl_model_dir):
    """The potential's own free atoms are the reference: rock-salt NaCl is bound (cohesive energy 2.5 eV/atom with
    TensorNet-MatPES, 3.28 measured), the same cell at an energy above its free atoms is not, and loses."""
    from gpsk_materials.checks.post import result_flags
    from gpsk_materials.checks.potentials import load_potential
    from gpsk_materials.checks.scoring import CandidateScorer

    potential = load_potential(str(matgl_model_dir))
    free = potential.free_atom_energies(["Na", "Cl"])
    nacl = _nacl()
    e = float(potential.energies(nacl)[0])
    cohesive = float(potential.cohesive_energies(nacl, [e])[0])
    assert cohesive == pytest.approx((free["Na"] + free["Cl"]) / 2 - e)
    assert 1.5 < cohesive < 4.0
    scorer = CandidateScorer(potential)
    sane, unbound = scorer.breakdowns([nacl, nacl], energies=[e, (free["Na"] + free["Cl"]) / 2 + 1.0])
    assert sane["energy_sane"] is True and sane["sound"] is True
    assert unbound["energy_sane"] is False and unbound["sound"] is False
    assert unbound["cohesive_energy"] == pytest.approx(-1.0)
    assert unbound["strict_valid"] is True  # the strict check alone would not have caught it
    no_penalty, = CandidateScorer(potential, weights={"energy_sanity": 0.0}).breakdowns(
        [nacl], energies=[unbound["energy_per_atom"]])
    assert no_penalty["total"] - unbound["total"] == pytest.approx(5.0)
    assert "energy not sane: cohesive energy -1.00 eV/atom" in result_flags(unbound)
    # without a potential there is no energy to judge: soundness is the strict check alone
    plain, = CandidateScorer(potential=False).breakdowns([nacl])
    assert plain["energy_sane"] is None and plain["cohesive_energy"] is None and plain["sound"] is True


def test_a_returned_strictly_invalid_structure_is_flagged_in_table_properties_and_log(tiny_model_dir, tmp_path,
                                                                                      caplog, monkeypatch):
    """Four candidates decode, one of them sound; two are wanted: the sound one comes first, the second kept is
    strictly invalid and says so in properties["gpsk"], the table's flags column and a logged warning."""
    import logging

    from gpsk_materials.pipelines import CrystalGenerator, GenerationRequest
    from gpsk_materials.pipelines.output import format_table, write_results

    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)

    def decode_many(grids, compositions=None, return_errors=False, **kw):  # the candidates, not the model's luck
        out = [_squashed_nacl() for _ in range(len(grids))]
        out[-1] = _nacl()
        return out, [None] * len(grids)

    monkeypatch.setattr(gen.decoder, "decode_many", decode_many)
    with caplog.at_level(logging.WARNING, logger="gpsk_materials.pipelines.generator"):
        res, = gen.run([GenerationRequest("NaCl", 2, best_of=2, steps=2, formula_units=4)], seed=0, progress=False)
    first, second = res.structures
    assert first.lattice.a == pytest.approx(5.64)
    assert first.properties["gpsk"]["checks"]["flags"] is None
    assert first.properties["gpsk"]["scores"]["total"] - second.properties["gpsk"]["scores"]["total"] >= 5.0
    flags = second.properties["gpsk"]["checks"]["flags"]
    assert flags.startswith("fails the strict check: closest atoms 0.55 A")
    assert second.properties["gpsk"]["checks"]["results"]["sound"] is False
    header, row0, row1 = format_table(write_results([res], tmp_path)).splitlines()
    assert header.split()[-1] == "flags" and "strict check" not in row0 and "fails the strict check" in row1
    warned = [r.getMessage() for r in caplog.records if "returned structure 1" in r.getMessage()]
    assert len(warned) == 1 and "fails the strict check" in warned[0] and "4 decoded candidates" in warned[0]
    assert not [r for r in caplog.records if "returned structure 0" in r.getMessage()]


# --- case 10: a stated numerical tolerance on the hull ------------------------------------------------------------

def test_a_structure_a_fraction_of_a_mev_above_the_hull_is_stable():
    from gpsk_materials.defaults import HULL_TOLERANCE
    from gpsk_materials.evaluation.stability import sun_rates

    summary, per = sun_rates([0.00036, 0.0, -0.01, HULL_TOLERANCE, 0.0015, 0.05, float("nan")], [None] * 7, None)
    assert per["stable"] == [True, True, True, True, False, False, False]
    assert per["metastable"] == [True, True, True, True, True, True, False]
    assert summary["stable_rate"] == pytest.approx(4 / 7)


# --- case 3: a decode the decoder cannot vouch for is refused (or kept, marked and warned about) -------------------

def _mos2_monolayer() -> Structure:
    """An MoS2 monolayer in a cell with c = 45 A (S-S 3.18 A across the layer)."""
    z = 1.59 / 45
    return Structure(Lattice.hexagonal(3.19, 45.0), ["Mo", "S", "S"],
                     [[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5 + z], [2 / 3, 1 / 3, 0.5 - z]])


def _with_noise(grid: np.ndarray, level: float, seed: int) -> np.ndarray:
    """``grid`` plus Gaussian noise of ``level`` times each channel's standard deviation (as
    benchmarks/decode_confidence.py adds it)."""
    rng = np.random.default_rng(seed)
    return (grid + level * grid.std(axis=(1, 2, 3), keepdims=True) * rng.normal(size=grid.shape)).astype(grid.dtype)


@pytest.fixture(scope="module")
def inferred_decodes(shared_data_dir):
    """One batch without compositions: Cu0.5Au0.5, the MoS2 monolayer, Ca(GaP)2 with 1 % noise and GaTe with
    0.1 % noise (rows 25 and 0 of MP-20's test.csv); returns (canonical cells, structures, reasons)."""
    import pandas as pd

    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    df = pd.read_csv(shared_data_dir / "mp20" / "test.csv", nrows=26)
    gate, cagap = (Structure.from_str(df["cif"][i], fmt="cif") for i in (0, 25))
    feat = ReciprocalGridFeaturizer()
    structures = [_cuau(), _mos2_monolayer(), cagap, gate]
    grids = np.stack([feat.featurize(s) for s in structures])
    grids[2], grids[3] = _with_noise(grids[2], 0.01, 0), _with_noise(grids[3], 0.001, 1)
    out, reasons = ReciprocalGridDecoder().decode_many(grids, return_errors=True, pbar=False)
    return [feat.canonical_structure(s) for s in structures], out, reasons


@pytest.mark.parametrize("index,name", [(0, "CuAu disordered"), (1, "MoS2 monolayer, c = 45 A")])
def test_inferred_decode_below_min_confidence_is_a_decoding_error(inferred_decodes, index, name):
    from gpsk_materials.representations.decoding import MIN_CONFIDENCE

    _, out, reasons = inferred_decodes
    assert out[index] is None, name
    for words in (f"grid {index}: decode confidence", f"below min_confidence={MIN_CONFIDENCE}",
                  "inferred composition", "best guess", "keep_low_confidence=True"):
        assert words in reasons[index], (name, reasons[index])


def _disordered(kind: str) -> Structure:
    """Disordered crystals whose mixed site averages two elements far apart in Z (no single element scatters so)."""
    if kind == "NaKCl":
        return Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    if kind == "SrLaTiO3":
        return Structure(Lattice.cubic(4.0), [{"Sr": 0.5, "La": 0.5}, "Ti", "O", "O", "O"],
                         [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Structure(Lattice.cubic(4.1), [{"Pb": 0.3, "Mg": 0.7}, "S"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.mark.parametrize("kind", ["NaKCl", "SrLaTiO3", "PbMgS"])
def test_a_mixed_site_decoded_without_composition_is_refused(kind):
    """The kind of the Cu0.5Au0.5 case: a site no single element's form factor explains (its misfit varies with |q|
    alone) is read as some element with a margin like a right decode's; the radial misfit takes the confidence."""
    from gpsk_materials.errors import DecodingError
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    grid = ReciprocalGridFeaturizer().featurize(_disordered(kind))
    with pytest.raises(DecodingError) as info:
        ReciprocalGridDecoder().decode(grid)
    assert "decode confidence 0 below min_confidence" in str(info.value), str(info.value)
    kept = ReciprocalGridDecoder(keep_low_confidence=True).decode(grid)
    misfit = np.array(kept.site_properties["decode_radial_misfit"])
    margin = np.array(kept.site_properties["decode_element_margin"])
    assert (margin > 0).all()  # the margins alone would have kept it
    assert (misfit > margin).any()  # the mixed site's misfit exceeds its margin


def test_a_constant_grid_without_composition_is_refused():
    """Found by the 10,000-grid fuzz: a constant grid decoded without a composition to one Be atom (residual 0.267,
    confidence 5.8e-3: Be's margin over Li and B, 0.056, outweighed the site's radial misfit, 0.049). A site with
    more than MAX_RADIAL_MISFIT of its scattering unexplained by any element is no single atom: refused, and kept
    only when asked, marked with the misfit and a confidence of 0."""
    from gpsk_materials.errors import DecodingError
    from gpsk_materials.representations.decoding import MAX_RADIAL_MISFIT, ReciprocalGridDecoder

    grid = np.full((3, 32, 32, 32), 0.12, np.float32)
    with pytest.raises(DecodingError, match="confidence 0 below min_confidence"):
        ReciprocalGridDecoder().decode(grid)
    kept = ReciprocalGridDecoder(keep_low_confidence=True).decode(grid)
    assert max(kept.site_properties["decode_radial_misfit"]) > MAX_RADIAL_MISFIT
    assert max(kept.site_properties["decode_confidence"]) == 0


def test_radial_misfit_measures_what_varies_with_q_alone():
    import torch

    from gpsk_materials.representations.batched import radial_misfit

    rng = np.random.default_rng(0)
    M = 4000
    s2 = torch.as_tensor(rng.uniform(0, 1.5, size=(1, M)))
    f = 20 * torch.exp(-3 * s2)[:, None, :]  # an atom's form factor: a function of |q|
    w = torch.ones(M, dtype=torch.float64)
    shape = (torch.exp(-8 * s2) - 0.5 * torch.exp(-3 * s2))[:, None, :]  # another radial shape
    noise = torch.as_tensor(rng.normal(size=(1, 1, M)))
    y = torch.cat([0.3 * f, 2 * noise, 2 * shape, 2 * shape + 0.5 * noise], 1)
    m = radial_misfit(y, f.expand(1, 4, M), w, s2)[0].numpy()
    assert m[0] == pytest.approx(0, abs=1e-12)  # a multiple of f is an occupancy, not a misfit
    assert m[1] < 1e-4  # noise spread over the reflections: next to nothing
    assert m[2] > 1e-4 and m[3] == pytest.approx(m[2], rel=0.2)  # the radial part, with or without the noise
    assert radial_misfit(y, torch.zeros(1, 4, M, dtype=torch.float64), w, s2).abs().max() == 0  # padding


@pytest.mark.parametrize("index", [2, 3])
def test_noisy_grid_without_composition_is_right_or_refused(inferred_decodes, index):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    cells, out, reasons = inferred_decodes
    if out[index] is None:
        assert "decode confidence" in reasons[index] or "residual" in reasons[index], reasons[index]
    else:  # accepted: then it is the structure
        assert StructureMatcher().fit(cells[index], out[index]), out[index].composition


def test_keep_low_confidence_marks_the_result_and_logs_a_warning(caplog):
    import logging

    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    grid = ReciprocalGridFeaturizer().featurize(_mos2_monolayer())
    with caplog.at_level(logging.WARNING, logger="gpsk_materials.representations.decoding"):
        s = ReciprocalGridDecoder(keep_low_confidence=True).decode(grid)
    d = s.properties["gpsk"]["decode"]
    assert d["low_confidence"] is True and d["composition"] == "inferred"
    assert "decode confidence" in d["low_confidence_reasons"][0]
    assert "1 of 1 decoded structures kept below the decoder's acceptance" in caplog.text
    assert "grid 0: decode confidence" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpsk_materials.representations.decoding"):
        quiet = ReciprocalGridDecoder(keep_low_confidence=True).decode_many(grid[None], pbar=False, warn_kept=False)
    assert quiet[0].properties["gpsk"]["decode"]["low_confidence"] is True and "kept below" not in caplog.text


def test_low_confidence_is_named_in_the_flags_column():
    from gpsk_materials.checks.post import result_flags

    decode = {"confidence": 0.0, "composition": "inferred", "low_confidence": True,
              "low_confidence_reasons": ["decode confidence 0 below min_confidence=0.0001 ...",
                                         "Ni-Ni distance 1.72 A (sites 3, 4) is 0.69 of the sum of covalent radii"]}
    assert result_flags({}, decode) == ("low decode confidence 0.00 (composition inferred); decoded atoms closer "
                                        "than their radii allow")
    assert result_flags({}, {"confidence": 0.0, "low_confidence": False, "low_confidence_reasons": []}) is None
    # with the strict check failed, its own flag names the closest atoms: the decode's doubt is not said twice
    strict = {"strict_valid": False, "min_distance": 1.72, "strict_reasons": ["distance / covalent-radii sum 0.69"]}
    flags = result_flags(strict, decode)
    assert "closer than their radii" not in flags and flags.count("closest atoms 1.72 A") == 1


@pytest.mark.parametrize("kwargs,words", [({"min_confidence": 1.5}, "min_confidence must be a number in [0, 1]"),
                                          ({"min_distance_ratio": -0.1}, "min_distance_ratio must be a number"),
                                          ({"min_confidence": True}, "got True")])
def test_acceptance_options_are_checked(kwargs, words):
    from gpsk_materials.errors import ConfigError
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    with pytest.raises(ConfigError) as info:
        ReciprocalGridDecoder(**kwargs)
    assert words in str(info.value)


def _ni110_missing_row() -> Structure:
    """The 38-site Ni(110) (1x2) missing-row slab of issue 16 (c = 49.6 A): pymatgen's ReconstructionGenerator on
    fcc Ni with a = 3.507 A, 20 A of slab and 20 A of vacuum."""
    from pymatgen.core.surface import ReconstructionGenerator

    ni = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.507), ["Ni"], [[0, 0, 0]])
    slab = ReconstructionGenerator(ni, 20, 20, "fcc_110_missing_row_1x2").build_slabs()[0]
    return Structure.from_sites(slab)


@pytest.mark.slow
def test_ni_slab_decoding_to_implausible_distances_is_a_decoding_error():
    from gpsk_materials.errors import DecodingError
    from gpsk_materials.representations.decoding import MIN_DISTANCE_RATIO, ReciprocalGridDecoder

    slab = _ni110_missing_row()
    assert len(slab) == 38 and slab.lattice.c == pytest.approx(49.6, abs=0.01)
    grid = ReciprocalGridFeaturizer().featurize(slab)
    # right composition, residual under max_residual, yet two Ni atoms far closer than Ni-Ni bonds (2.48 A)
    with pytest.raises(DecodingError) as info:
        ReciprocalGridDecoder().decode(grid, slab.composition)
    for words in ("Ni-Ni distance", "of the sum of covalent radii", f"below min_distance_ratio={MIN_DISTANCE_RATIO}",
                  "not physically plausible", "keep_low_confidence=True"):
        assert words in str(info.value), str(info.value)


def test_a_pymatgen_slab_is_featurized_and_checked_as_a_plain_structure():
    """pymatgen's Slab cannot be Niggli-reduced by pymatgen itself (its __init__ refuses ``labels``): the featurizer
    and the checks take its sites as a plain Structure instead of ending in a TypeError."""
    from pymatgen.core.surface import SlabGenerator

    from gpsk_materials.checks.validity import ValidityCheck
    from gpsk_materials.representations.canonical import as_structure

    ni = Structure.from_spacegroup(225, Lattice.cubic(3.52), ["Ni"], [[0, 0, 0]])
    slab = SlabGenerator(ni, (1, 1, 0), 6, 10).get_slab()
    plain = as_structure(slab)
    assert type(plain) is Structure and len(plain) == len(slab)
    grid = ReciprocalGridFeaturizer().featurize(slab)
    assert grid.shape[0] == 3 and np.isfinite(grid).all()
    assert ValidityCheck().check(slab).structural_valid
