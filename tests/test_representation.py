"""Physics of the reciprocal-space grid: F(000), absences, Friedel, invariances, metric, NumPy/torch, bad inputs,
decoder robustness."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import DummySpecies, Lattice, Structure

from gpsk_materials.errors import (
    ConfigError,
    DecodingError,
    DegenerateLatticeError,
    DisorderError,
    GridError,
    InvalidStructureError,
    ResolutionError,
    UnknownElementError,
)
from gpsk_materials.representations import grid as G
from gpsk_materials.representations.decoding import ReciprocalGridDecoder
from gpsk_materials.representations.form_factors import form_factor, form_factor_at_zero
from gpsk_materials.representations.reciprocal import (
    ReciprocalGridFeaturizer,
    featurize_arrays,
    featurize_batch,
    shift_origin,
    structures_to_arrays,
)

N = G.GRID_SIZE
H0 = N // 2  # grid index of Miller index 0


def complex_F(grid: np.ndarray) -> np.ndarray:
    """Structure factor in electrons, complex (n, n, n), from a stored grid."""
    re, im = G.expand_structure_factor(grid[0].astype(float), grid[1].astype(float))
    return re + 1j * im


def miller(n: int = N) -> np.ndarray:
    return G.miller_grid(n)


@pytest.fixture(scope="module")
def raw() -> ReciprocalGridFeaturizer:
    return ReciprocalGridFeaturizer(canonicalize=False)


@pytest.fixture(scope="module")
def featurizer() -> ReciprocalGridFeaturizer:
    return ReciprocalGridFeaturizer()


@pytest.fixture(scope="module")
def decoder() -> ReciprocalGridDecoder:
    # the solver is what these tests exercise: the synthetic ``triclinic`` cell has O and Ba 1.60 A apart (0.57 of
    # the sum of covalent radii), below the plausibility check (tested in test_bad_input.py, case 3)
    return ReciprocalGridDecoder(min_distance_ratio=0.0)


@pytest.fixture(scope="module")
def triclinic() -> Structure:
    return Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 81, 95, 103),
        ["Ti", "O", "O", "Sr", "Ba"],
        [[0, 0, 0], [0.31, 0.12, 0.2], [0.62, 0.5, 0.41], [0.2, 0.7, 0.83], [0.8, 0.33, 0.6]],
    )


def cu_fcc() -> Structure:
    return Structure(Lattice.cubic(3.615), ["Cu"] * 4, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def fe_bcc() -> Structure:
    return Structure(Lattice.cubic(2.8665), ["Fe"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# ------------------------------------------------------------------ structure factor physics


def test_f000_is_sum_of_forward_form_factors(raw, triclinic):
    F = complex_F(raw.featurize(triclinic))
    expected = form_factor_at_zero(np.array([site.specie.Z for site in triclinic])).sum()
    assert F[H0, H0, H0].real == pytest.approx(expected, rel=1e-5)
    assert abs(F[H0, H0, H0].imag) < 1e-4
    # f(0) of neutral atoms is close to Z
    assert expected == pytest.approx(sum(site.specie.Z for site in triclinic), abs=0.1)


def test_fcc_systematic_absences(raw):
    s = cu_fcc()
    F = complex_F(raw.featurize(s))
    h = miller()
    parity = h % 2
    allowed = np.all(parity == parity[..., :1], axis=-1)
    assert np.abs(F[~allowed]).max() < 1e-3
    q = np.einsum("...i,ij,...j->...", h, np.linalg.inv(s.lattice.matrix @ s.lattice.matrix.T), h)
    expected = 4 * form_factor(np.array([29]), q[allowed] / 4.0)[0]
    np.testing.assert_allclose(F[allowed].real, expected, rtol=1e-5, atol=1e-4)
    assert np.abs(F[allowed].imag).max() < 1e-3


def test_bcc_systematic_absences(raw):
    s = fe_bcc()
    F = complex_F(raw.featurize(s))
    odd = miller().sum(-1) % 2 == 1
    assert np.abs(F[odd]).max() < 1e-3
    assert np.abs(F[~odd]).min() > 2.0  # 2 f_Fe(s) stays well above zero on the grid
    assert F[H0, H0, H0].real == pytest.approx(2 * form_factor_at_zero(np.array([26]))[0], rel=1e-5)


def test_friedel_law(raw, triclinic):
    F = complex_F(raw.featurize(triclinic))
    inner = F[1:, 1:, 1:]  # h in [-15, 15], where -h is on the grid too
    mirrored = inner[::-1, ::-1, ::-1]
    np.testing.assert_allclose(mirrored, inner.conj(), rtol=1e-5, atol=1e-3)
    assert np.abs(inner.imag).max() > 1.0  # non-centrosymmetric: the test compares non-trivial phases


@pytest.mark.parametrize("canonicalize", [True, False])
def test_permutation_invariance(triclinic, canonicalize):
    fz = ReciprocalGridFeaturizer(canonicalize=canonicalize)
    order = np.random.default_rng(3).permutation(len(triclinic))
    shuffled = Structure.from_sites([triclinic[i] for i in order])
    np.testing.assert_allclose(fz.featurize(shuffled), fz.featurize(triclinic), atol=1e-5)


def test_canonical_grid_invariant_to_origin_and_setting(featurizer, triclinic):
    moved = triclinic.copy()
    moved.translate_sites(range(len(moved)), [0.37, -0.21, 0.6])
    # the same crystal in another setting: cyclic relabelling of the axes
    perm = Structure(Lattice(triclinic.lattice.matrix[[1, 2, 0]]), triclinic.species, triclinic.frac_coords[:, [1, 2, 0]])
    ref = featurizer.featurize(triclinic)
    np.testing.assert_allclose(featurizer.featurize(moved), ref, atol=1e-5)
    np.testing.assert_allclose(featurizer.featurize(perm), ref, atol=1e-5)


def test_origin_shift_is_a_phase(raw, triclinic):
    t = np.array([0.137, -0.29, 0.41])
    moved = triclinic.copy()
    moved.translate_sites(range(len(moved)), t, frac_coords=True, to_unit_cell=True)
    grid, grid_moved = raw.featurize(triclinic), raw.featurize(moved)
    np.testing.assert_allclose(shift_origin(grid, t), grid_moved, atol=2e-5)
    expected = complex_F(grid) * np.exp(2j * np.pi * miller() @ t)
    np.testing.assert_allclose(complex_F(grid_moved), expected, rtol=1e-4, atol=1e-3)
    # torch version, batched with a per-grid shift
    batch = torch.as_tensor(np.stack([grid, grid]))
    out = shift_origin(batch, torch.as_tensor(np.stack([t, np.zeros(3)])))
    np.testing.assert_allclose(out[0].numpy(), grid_moved, atol=2e-5)
    np.testing.assert_allclose(out[1].numpy(), grid, atol=1e-6)


def test_metric_channel_is_pymatgen_inverse_d_squared(raw, triclinic):
    grid = raw.featurize(triclinic)
    recip = triclinic.lattice.reciprocal_lattice_crystallographic
    for hkl in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (2, -3, 1), (-16, 15, 7), (5, 5, -16)]:
        value = grid[2, hkl[0] + H0, hkl[1] + H0, hkl[2] + H0] * G.Q0
        g = np.asarray(hkl) @ recip.matrix
        assert value == pytest.approx(g @ g, rel=1e-6)
        assert value == pytest.approx(1 / triclinic.lattice.d_hkl(hkl) ** 2, rel=1e-6)


def test_partial_occupancy_enters_f000(raw):
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.3}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    F = complex_F(raw.featurize(s))
    f0 = form_factor_at_zero(np.array([26, 27, 8]))
    assert F[H0, H0, H0].real == pytest.approx(0.5 * f0[0] + 0.3 * f0[1] + f0[2], rel=1e-5)
    with pytest.raises(DisorderError):
        ReciprocalGridFeaturizer(allow_disorder=False).featurize(s)


# ------------------------------------------------------------------ NumPy vs torch


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_numpy_and_torch_featurizers_agree(triclinic, dtype, tol):
    rng = np.random.default_rng(0)
    random = Structure(
        Lattice.from_parameters(*rng.uniform(3.5, 7, 3), *rng.uniform(75, 105, 3)),
        rng.choice(["H", "C", "Fe", "Pb"], 3).tolist(), rng.random((3, 3)))
    structures = [triclinic, nacl(), cu_fcc(), random]
    a = structures_to_arrays(structures, canonicalize=True)
    assert a["numbers"].shape == (4, 5) and (a["numbers"][1:] == 0).any()  # padded
    grids = featurize_batch(torch.as_tensor(a["lattice"], dtype=dtype), torch.as_tensor(a["frac_coords"]),
                            torch.as_tensor(a["numbers"]), torch.as_tensor(a["occupancy"]), chunk_size=3).numpy()
    assert grids.dtype == np.float32 and grids.shape == (4, 3, N, N, N)
    for i in range(4):
        ref = featurize_arrays(a["lattice"][i], a["frac_coords"][i], a["numbers"][i], a["occupancy"][i])
        np.testing.assert_allclose(grids[i], ref, atol=tol, rtol=0)
    # the featurizer's torch backend gives the NumPy backend's grids
    np.testing.assert_allclose(
        ReciprocalGridFeaturizer(backend="torch", batch_size=3).featurize_many(structures),
        ReciprocalGridFeaturizer().featurize_many(structures), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ bad inputs


def test_ase_atoms_input(featurizer, triclinic):
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(triclinic)
    np.testing.assert_allclose(featurizer.featurize(atoms), featurizer.featurize(triclinic), atol=1e-6)
    atoms.pbc = [True, True, False]
    with pytest.raises(InvalidStructureError):
        featurizer.featurize(atoms)


@pytest.mark.parametrize("canonicalize", [True, False])
@pytest.mark.parametrize(
    "make,error",
    [
        (lambda: Structure(Lattice.cubic(4), [DummySpecies("X"), "Cl"], [[0, 0, 0], [0.5] * 3]), UnknownElementError),
        (lambda: Structure(Lattice.cubic(4), ["Es", "Cl"], [[0, 0, 0], [0.5] * 3]), UnknownElementError),
        (lambda: Structure(Lattice.cubic(4), ["Og", "Cl"], [[0, 0, 0], [0.5] * 3]), UnknownElementError),
        (lambda: Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["Na"], [[0, 0, 0]]), DegenerateLatticeError),
        (lambda: Structure(Lattice.cubic(60), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]), DegenerateLatticeError),
        (lambda: Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [np.nan, 0.5, 0.5]]), InvalidStructureError),
        (lambda: Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [np.inf, 0.5, 0.5]]), InvalidStructureError),
        (lambda: "NaCl", InvalidStructureError),
        (lambda: {"lattice": np.eye(3)}, InvalidStructureError),
    ],
)
def test_bad_structures_raise(make, error, canonicalize):
    with pytest.raises(error):
        ReciprocalGridFeaturizer(canonicalize=canonicalize).featurize(make())


def test_too_many_sites_raise(triclinic):
    with pytest.raises(ResolutionError):
        ReciprocalGridFeaturizer(max_sites=4).featurize(triclinic)
    with pytest.raises(ResolutionError):
        structures_to_arrays([triclinic], max_sites=4)


def test_bad_grids_raise(featurizer, decoder, triclinic):
    grid = featurizer.featurize(triclinic)
    for bad in (grid.astype(np.int64), grid[:2], grid[:, :16], grid[None, :, :16], np.zeros(5)):
        with pytest.raises(GridError):
            decoder.decode(bad, "SrBaTiO2")
    nan = grid.copy()
    nan[0, 3, 4, 5] = np.nan
    with pytest.raises(DecodingError, match="NaN"):
        decoder.decode(nan, "SrBaTiO2")
    not_pd = grid.copy()
    not_pd[2] *= -1
    with pytest.raises(DecodingError, match="positive-definite"):
        decoder.decode(not_pd, "SrBaTiO2")


def test_grid_errors_hint_at_a_featurized_grid(featurizer, decoder, triclinic):
    """A grid that is not a featurized crystal (a lattice that is no metric, a structure factor with no atom) says
    what the decoder expects."""
    hint = r"is this a featurized crystal grid \(3, n, n, n\), e\.g\. \(3, 32, 32, 32\), from gpsk_materials\.representations\?"
    grid = featurizer.featurize(triclinic)
    not_pd = grid.copy()
    not_pd[2] *= -1
    with pytest.raises(DecodingError, match="positive-definite quadratic form; " + hint):
        decoder.decode(not_pd, "SrBaTiO2")
    with pytest.raises(DecodingError, match="positive-definite quadratic form; " + hint):
        decoder.fit_lattice(not_pd)
    empty = grid.copy()
    empty[:2] = 0.0  # the metric of a crystal, the structure factor of nothing (the composition left to the decoder)
    out, reasons = decoder.decode_many(empty[None], None, return_errors=True, pbar=False)
    assert out == [None] and re.search("no atoms found; " + hint, reasons[0]), reasons


# ------------------------------------------------------------------ decoder robustness


def test_noisy_grid_still_decodes(featurizer, decoder, triclinic):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    grid = featurizer.featurize(triclinic)
    rng = np.random.default_rng(7)
    noisy = grid + (0.03 * grid.std(axis=(1, 2, 3), keepdims=True) * rng.normal(size=grid.shape)).astype(np.float32)
    out = decoder.decode(noisy, triclinic.composition)
    assert StructureMatcher().fit(out, featurizer.canonical_structure(triclinic))
    assert out.properties["gpsk"]["decode"]["relative_residual"] < decoder.max_residual
    np.testing.assert_allclose(out.site_properties["decode_occupancy"], 1, atol=0.05)


def test_pure_noise_is_rejected(featurizer, decoder, triclinic):
    grid = featurizer.featurize(triclinic)
    rng = np.random.default_rng(11)
    with pytest.raises(DecodingError):
        decoder.decode(rng.normal(size=grid.shape).astype(np.float32), "SrBaTiO2")
    # a valid lattice with a noise structure factor must not decode either, with or without a composition
    fake = grid.copy()
    fake[:2] = grid[:2].std() * rng.normal(size=grid[:2].shape)
    with pytest.raises(DecodingError):
        decoder.decode(fake, "SrBaTiO2")
    with pytest.raises(DecodingError):
        decoder.decode(fake)


def test_decoder_site_diagnostics(featurizer, decoder, triclinic):
    out = decoder.decode(featurizer.featurize(triclinic), triclinic.composition)
    props = out.site_properties
    for key in ("decode_confidence", "decode_occupancy", "decode_element_margin"):
        assert len(props[key]) == len(out)
    np.testing.assert_allclose(props["decode_occupancy"], 1, atol=1e-3)
    assert all(0 < m <= 1 for m in props["decode_element_margin"])
    assert all(0 < c <= 1 for c in props["decode_confidence"])
    assert out.properties["gpsk"]["decode"]["confidence"] == pytest.approx(min(props["decode_confidence"]))
    assert out.properties["gpsk"]["decode"]["relative_residual"] < 1e-4


def test_fit_lattice_is_exact(featurizer, decoder, triclinic):
    canon = featurizer.canonical_structure(triclinic)
    fitted = decoder.fit_lattice(featurizer.featurize(triclinic))
    np.testing.assert_allclose(fitted.parameters, canon.lattice.parameters, rtol=1e-6)


# ------------------------------------------------------------------ serialisation and matminer API


def test_featurizer_msonable_and_labels(triclinic):
    fz = ReciprocalGridFeaturizer(canonicalize=False, max_sites=64, max_resolution=1.0)
    back = ReciprocalGridFeaturizer.from_dict(fz.as_dict())
    assert back.as_dict() == fz.as_dict()
    np.testing.assert_array_equal(back.featurize(triclinic), fz.featurize(triclinic))
    labels = fz.feature_labels()
    assert len(labels) == 3 * N**3 == len(set(labels))
    assert labels[0] == "re_F[-16,-16,-16]" and labels[-1] == "inv_d2[15,15,15]"
    assert fz.citations() and all("@" in c for c in fz.citations())
    assert fz.implementors()


def test_decoder_msonable():
    dec = ReciprocalGridDecoder(method="peaks", max_residual=0.2, polish_steps=3, dtype="float32")
    back = ReciprocalGridDecoder.from_dict(dec.as_dict())
    assert back.as_dict() == dec.as_dict()
    with pytest.raises(ValueError):
        ReciprocalGridDecoder(method="nonsense")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_featurize_many_follows_matminer(triclinic, backend):
    """featurize_many(entries, ignore_errors, return_errors, pbar) as matminer's BaseFeaturizer: the first bad
    structure raises by default; ignored, it gets NaN and its reason while the others are featurized."""
    fz = ReciprocalGridFeaturizer(backend=backend, batch_size=2)
    bad = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]])  # sites 0.04 A apart
    entries = [triclinic, bad, triclinic]
    with pytest.raises(ResolutionError):
        fz.featurize_many(entries, pbar=False)
    grids = fz.featurize_many(entries, ignore_errors=True, pbar=False)
    assert np.isnan(grids[1]).all() and np.isfinite(grids[[0, 2]]).all()
    np.testing.assert_allclose(grids[0], fz(triclinic), atol=1e-4)
    grids, reasons = fz.featurize_many(entries, return_errors=True, pbar=False)
    assert reasons[0] is None and reasons[2] is None and reasons[1].startswith("structure 1: ResolutionError")
    with pytest.warns(DeprecationWarning, match="pbar"):
        assert fz.featurize_many(entries[:1], progress=False).shape == (1, 3, N, N, N)


def test_decode_many_returns_its_reasons(featurizer, decoder, triclinic):
    """return_errors gives (structures, reasons); ignore_errors None in place; the old errors= / last_errors still
    work, with a DeprecationWarning."""
    grid = featurizer.featurize(triclinic)
    grids = np.stack([grid, np.full_like(grid, np.nan), grid])
    comps = [triclinic.composition] * 3
    with pytest.raises(DecodingError, match="grid 1 holds NaN"):
        decoder.decode_many(grids, comps, pbar=False)
    out = decoder.decode_many(grids, comps, ignore_errors=True, pbar=False)
    assert [s is None for s in out] == [False, True, False]
    out, reasons = decoder.decode_many(grids, comps, return_errors=True, pbar=False)
    assert [s is None for s in out] == [False, True, False]
    assert reasons[0] is None and reasons[2] is None and reasons[1] == "grid 1 holds NaN or inf values"
    with pytest.warns(DeprecationWarning, match="errors="):
        old = decoder.decode_many(grids, comps, errors="none", pbar=False)
    assert [s is None for s in old] == [False, True, False]
    with pytest.warns(DeprecationWarning, match="last_errors"):
        assert decoder.last_errors == reasons
    with pytest.raises(ConfigError, match="errors must be"):
        decoder.decode_many(grids, comps, errors="ignore")


def test_no_ghost_atom_beside_heavy_atom_without_composition():
    """A weak candidate that refines onto a placed heavy atom is skipped, not stacked on it (CsYbBr3)."""
    from pymatgen.core import Lattice, Structure

    from gpsk_materials import ReciprocalGridDecoder, ReciprocalGridFeaturizer

    s = Structure(Lattice.cubic(5.737), ["Cs", "Yb", "Br", "Br", "Br"],
                  [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    # Yb comes back as its neighbour Tm, at confidence 0: refused by default, so kept (marked) to look at the sites
    with pytest.raises(DecodingError, match="decode confidence 0 below min_confidence"):
        ReciprocalGridDecoder().decode(ReciprocalGridFeaturizer().featurize(s))
    out = ReciprocalGridDecoder(keep_low_confidence=True).decode(ReciprocalGridFeaturizer().featurize(s))
    assert out.properties["gpsk"]["decode"]["low_confidence"] is True
    assert len(out) == 5
    assert out.distance_matrix[np.triu_indices(5, 1)].min() > 2.0
    assert out.properties["gpsk"]["decode"]["relative_residual"] < 0.05


def test_exact_counts_decode_a_rescaled_grid(featurizer, decoder, triclinic):
    """A grid whose F is off by an overall scale (as a generated one may be) decodes with the cell content given:
    F(000) alone would ask for the wrong number of formula units, the rescaled fit finds the structure."""
    grid = featurizer.featurize(triclinic)
    re, im = G.expand_structure_factor(grid[0].astype(np.float64), grid[1].astype(np.float64))
    scaled = grid.copy()
    scaled[0], scaled[1] = G.compress_structure_factor(0.45 * re, 0.45 * im)
    cell = {"Ti": 1, "O": 2, "Sr": 1, "Ba": 1}
    with pytest.raises(DecodingError, match="cannot hold one formula unit"):
        decoder.decode(scaled, cell)
    out = decoder.decode_many(scaled[None], [cell], exact_counts=True)[0]
    assert out.composition == triclinic.composition
    assert out.properties["gpsk"]["decode"]["scale"] == pytest.approx(1 / 0.45, rel=1e-3)
    assert StructureMatcher().fit(out, triclinic)
    # the cell content is taken as given: twice the formula means twice the sites
    with pytest.raises(DecodingError):
        decoder.decode_many(grid[None], [{k: 2 * v for k, v in cell.items()}], exact_counts=True)


def test_exact_counts_fit_the_overall_scale_in_the_refinement(featurizer, decoder, triclinic):
    """With the cell content given, the overall scale is a parameter of the one refinement, read from the whole
    pattern: F scaled by 0.6 while F(000) keeps the cell's electron count (so that F(000) alone says scale 1)
    still decodes, with the fitted scale 1 / 0.6 recorded (the old F(000)-rescaled second decoding could not)."""
    grid = featurizer.featurize(triclinic)
    re, im = G.expand_structure_factor(grid[0].astype(np.float64), grid[1].astype(np.float64))
    f000 = re[H0, H0, H0]
    re, im = 0.6 * re, 0.6 * im
    re[H0, H0, H0] = f000
    scaled = grid.copy()
    scaled[0], scaled[1] = G.compress_structure_factor(re, im)
    cell = dict(triclinic.composition.get_el_amt_dict())
    out = decoder.decode_many(scaled[None], [cell], exact_counts=True, pbar=False)[0]
    assert StructureMatcher().fit(out, triclinic)
    meta = out.properties["gpsk"]["decode"]
    assert meta["scale"] == pytest.approx(1 / 0.6, rel=0.02)
    assert meta["relative_residual"] < 0.05  # F(000), left at the cell's count, is the one reflection off
