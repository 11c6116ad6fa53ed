"""GPSK-01 baseline: real-space density on the fractional grid, and peak decoding that needs the lattice."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from gpsk_materials import RealSpaceDensityFeaturizer, RealSpacePeakDecoder
from gpsk_materials.errors import (
    DecodingError,
    DegenerateLatticeError,
    DisorderError,
    GridError,
    ResolutionError,
    UnknownElementError,
)
from gpsk_materials.representations.realspace import density_arrays, periodic_gaussian_1d


@pytest.fixture(scope="module")
def structure() -> Structure:
    return Structure(
        Lattice.from_parameters(4.1, 5.3, 6.2, 81, 95, 103),
        ["Ti", "O", "O", "Sr", "Ba"],
        [[0, 0, 0], [0.31, 0.12, 0.2], [0.62, 0.5, 0.41], [0.2, 0.7, 0.83], [0.8, 0.33, 0.6]],
    )


def test_density_matches_direct_gaussian_sum():
    n, sigma = 16, 1.3
    frac = np.array([[0.02, 0.5, 0.97], [0.4, 0.1, 0.7]])
    numbers = np.array([8, 26])
    rho = density_arrays(frac, numbers, n=n, sigma=sigma)[0]
    idx = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)
    direct = np.zeros((n, n, n))
    for x, z in zip(frac, numbers):
        d = idx - n * x
        d -= n * np.round(d / n)  # nearest image; sigma << n, so farther images are negligible
        g = np.exp(-0.5 * (d**2).sum(-1) / sigma**2)
        direct += z * g / g.sum()
    np.testing.assert_allclose(rho, direct, atol=1e-5)
    assert rho.sum() == pytest.approx(34, rel=1e-6)
    np.testing.assert_allclose(periodic_gaussian_1d(np.array([0.999]), n, sigma).sum(), 1)


def test_featurizer_shape_total_and_invariances(structure):
    fz = RealSpaceDensityFeaturizer()
    rho = fz.featurize(structure)
    assert rho.shape == (1, 32, 32, 32) and rho.dtype == np.float32
    assert rho.sum() == pytest.approx(sum(site.specie.Z for site in structure), rel=1e-5)
    shuffled = Structure.from_sites([structure[i] for i in (3, 0, 4, 1, 2)])
    np.testing.assert_allclose(fz.featurize(shuffled), rho, atol=1e-5)
    many = fz.featurize_many([structure, shuffled])
    assert many.shape == (2, 1, 32, 32, 32)


def test_lattice_is_not_in_the_density(structure):
    """What the reciprocal metric channel adds: a scaled cell gives the same density."""
    fz = RealSpaceDensityFeaturizer(canonicalize=False)
    scaled = structure.copy()
    scaled.scale_lattice(structure.volume * 1.7)
    np.testing.assert_array_equal(fz.featurize(scaled), fz.featurize(structure))


def test_round_trip_with_lattice_and_composition(structure):
    fz, dec = RealSpaceDensityFeaturizer(), RealSpacePeakDecoder()
    canon = fz.canonical_structure(structure)
    out = dec.decode(fz.featurize(structure), canon.lattice, structure.composition)
    assert StructureMatcher().fit(canon, out)
    # the log-parabola refinement is exact for isolated Gaussians: positions to far below a voxel
    for site in out:
        assert min(site.distance(other) for other in canon if other.specie == site.specie) < 1e-3
    # the brightest peak is given to the heaviest element
    heights = out.site_properties["decode_peak_height"]
    assert out[int(np.argmax(heights))].specie.symbol == "Ba"
    # lattice as 6 parameters or a matrix, and a supercell count from the density total
    again = dec.decode(fz.featurize(structure), canon.lattice.parameters, "SrBaTiO2")
    assert StructureMatcher().fit(canon, again)


def test_decoder_needs_lattice_and_composition(structure):
    fz, dec = RealSpaceDensityFeaturizer(), RealSpacePeakDecoder()
    rho = fz.featurize(structure)
    with pytest.raises(DecodingError, match="needs the lattice"):
        dec.decode(rho, composition=structure.composition)
    with pytest.raises(DecodingError, match="composition"):
        dec.decode(rho, structure.lattice)
    with pytest.raises(DecodingError, match="3x3"):
        dec.decode(rho, np.eye(2), "SrBaTiO2")


def test_merged_peaks_are_reported():
    # two atoms 0.4 voxel apart along a become one peak: the baseline cannot resolve them
    s = Structure(Lattice.cubic(20.0), ["O", "O"], [[0.5, 0.5, 0.5], [0.5125, 0.5, 0.5]])
    with pytest.raises(ResolutionError, match="sites 0 \\(O\\) and 1 \\(O\\) are 0.2500 A apart"):
        RealSpaceDensityFeaturizer(canonicalize=False).featurize(s)  # the featurizer refuses them by default
    rho = RealSpaceDensityFeaturizer(canonicalize=False, min_distance=0).featurize(s)
    with pytest.raises(DecodingError, match="peaks"):
        RealSpacePeakDecoder().decode(rho, s.lattice, "O2")


def test_bad_inputs(structure):
    fz, dec = RealSpaceDensityFeaturizer(), RealSpacePeakDecoder()
    with pytest.raises(UnknownElementError):
        fz.featurize(Structure(Lattice.cubic(4), ["Es"], [[0, 0, 0]]))
    with pytest.raises(DegenerateLatticeError):
        fz.featurize(Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["Na"], [[0, 0, 0]]))
    disordered = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    assert fz.featurize(disordered).sum() == pytest.approx(0.5 * 26 + 0.5 * 27, rel=1e-5)
    with pytest.raises(DisorderError):
        RealSpaceDensityFeaturizer(allow_disorder=False).featurize(disordered)
    rho = fz.featurize(structure)
    for bad in (rho.astype(int), np.zeros((2, 32, 32, 32)), np.zeros((1, 16, 32, 32))):
        with pytest.raises(GridError):
            dec.decode(bad, structure.lattice, "SrBaTiO2")
    nan = rho.copy()
    nan[0, 1, 2, 3] = np.nan
    with pytest.raises(DecodingError):
        dec.decode(nan, structure.lattice, "SrBaTiO2")
    with pytest.raises(DecodingError, match="formula unit"):
        dec.decode(np.zeros_like(rho), structure.lattice, "SrBaTiO2")
    with pytest.raises(ValueError):
        RealSpaceDensityFeaturizer(sigma=0)


def test_decode_many_errors_none(structure):
    fz, dec = RealSpaceDensityFeaturizer(), RealSpacePeakDecoder()
    canon = fz.canonical_structure(structure)
    rho = fz.featurize(structure)
    out, reasons = dec.decode_many([rho, rho], [canon.lattice, None], ["SrBaTiO2", "SrBaTiO2"], return_errors=True)
    assert out[0] is not None and out[1] is None
    assert reasons[0] is None and "lattice" in reasons[1]
    assert dec.decode_many([rho, rho], [canon.lattice, None], ["SrBaTiO2"] * 2, ignore_errors=True)[1] is None
    with pytest.raises(DecodingError):
        dec.decode_many([rho], [None], ["SrBaTiO2"])


def test_msonable_and_matminer_api(structure):
    fz = RealSpaceDensityFeaturizer(grid_size=16, sigma=0.8, canonicalize=False)
    back = RealSpaceDensityFeaturizer.from_dict(fz.as_dict())
    assert back.as_dict() == fz.as_dict()
    np.testing.assert_array_equal(back.featurize(structure), fz.featurize(structure))
    labels = fz.feature_labels()
    assert len(labels) == 16**3 == len(set(labels)) and labels[1] == "density[0,0,1]"
    assert fz.citations() and fz.implementors()
    dec = RealSpacePeakDecoder(min_distance=0.8)
    assert RealSpacePeakDecoder.from_dict(dec.as_dict()).min_distance == 0.8
