"""Powder diffraction (gpsk_materials.diffraction): the differentiable pattern against pymatgen's XRDCalculator,
input validation, the Rwp refinement, sampler guidance, and solving a structure from its pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.analysis.diffraction.xrd import XRDCalculator
from pymatgen.core import Lattice, Structure

from gpsk_materials.diffraction import (PatternRefiner, PowderPattern, grid_reflections, render_profile,
                                        resolve_wavelength, simulate_measurement, simulate_pattern, structure_sticks)
from gpsk_materials.diffraction.pattern import merge_sticks
from gpsk_materials.errors import DiffractionError
from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

#: tolerances of the comparison with pymatgen (stated in docs/diffraction.md): peak positions, degrees
POSITION_TOL = 1e-6  # the structure path (float64; measured 3e-14)
GRID_POSITION_TOL = 1e-4  # the grid path (float32 metric channel; measured 1.1e-5)
#: relative intensities on pymatgen's 0-100 scale (measured at most 0.41, Si): pymatgen's own form-factor table
#: differs from Waasmaier-Kirfel
INTENSITY_TOL = 1.0


def _crystals() -> dict[str, Structure]:
    return {
        "NaCl": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Si": Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]),
        "TiO2": Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                          [[0, 0, 0], [0.3049, 0.3049, 0]]),
    }


def _pymatgen_peaks(s: Structure) -> tuple[np.ndarray, np.ndarray]:
    pat = XRDCalculator().get_pattern(s, two_theta_range=(5, 90))  # Cu Ka, 1.54184 A
    return np.asarray(pat.x), np.asarray(pat.y)


def _compare(tt, inten, ref_x, ref_y, pos_tol):
    y = 100.0 * inten / inten.max()
    strong = ref_y > 1.0
    # every pymatgen peak above 1 % has a peak of ours at the same angle, of the same relative intensity
    for x0, y0 in zip(ref_x[strong], ref_y[strong]):
        j = int(np.argmin(np.abs(tt - x0)))
        assert abs(tt[j] - x0) < pos_tol, (x0, tt[j])
        assert abs(y[j] - y0) < INTENSITY_TOL, (x0, y[j], y0)
    # and no strong peak of ours is missing from pymatgen's list
    for x1 in tt[y > 1.0]:
        assert np.min(np.abs(ref_x - x1)) < pos_tol, x1


@pytest.mark.parametrize("name", ["NaCl", "Si", "TiO2"])
def test_structure_sticks_match_pymatgen(name):
    s = _crystals()[name]
    ref_x, ref_y = _pymatgen_peaks(s)
    tt, inten = structure_sticks(s, "CuKa", (5, 90))
    _compare(tt, inten, ref_x, ref_y, POSITION_TOL)


@pytest.mark.parametrize("name", ["NaCl", "Si", "TiO2"])
def test_grid_pattern_matches_pymatgen(name):
    """The differentiable path (grid of the canonical primitive cell -> sum over the Miller block) gives the same
    peaks as pymatgen's conventional-cell calculation."""
    s = _crystals()[name]
    ref_x, ref_y = _pymatgen_peaks(s)
    grid = torch.as_tensor(ReciprocalGridFeaturizer().featurize(s))
    tt, inten = grid_reflections(grid, resolve_wavelength("CuKa"), (5, 90))
    ok = inten[0] > 0
    tt, inten = merge_sticks(tt[0][ok].double().numpy(), inten[0][ok].double().numpy(), tolerance=2e-3)
    _compare(tt, inten, ref_x, ref_y, GRID_POSITION_TOL)


def test_grid_profile_is_differentiable_and_equals_pymatgen_profile():
    s = _crystals()["TiO2"]
    ref_x, ref_y = _pymatgen_peaks(s)
    axis = torch.arange(10.0, 90.0, 0.02, dtype=torch.float64)
    grid = torch.as_tensor(ReciprocalGridFeaturizer().featurize(s)).requires_grad_(True)
    tt, inten = grid_reflections(grid, resolve_wavelength("CuKa"), (5, 90))
    prof = render_profile(axis.float(), tt, inten, 0.1)[0]
    ref = render_profile(axis, torch.as_tensor(ref_x)[None], torch.as_tensor(ref_y)[None], 0.1)[0]
    a, b = prof.double() / prof.max(), ref / ref.max()
    assert float((a - b).detach().norm() / b.norm()) < 0.03
    (prof * axis.float()).sum().backward()  # depends on the peak positions, i.e. on the metric channel
    assert grid.grad is not None and torch.isfinite(grid.grad).all()
    assert grid.grad[2].abs().sum() > 0 and grid.grad[0].abs().sum() > 0


def test_pattern_validation_errors():
    x = np.linspace(10, 80, 100)
    with pytest.raises(DiffractionError, match="same length"):
        PowderPattern(x, np.ones(99), "CuKa")
    y = np.ones(100)
    y[7] = -1.0
    with pytest.raises(DiffractionError, match="negative at index 7"):
        PowderPattern(x, y, "CuKa")
    with pytest.raises(DiffractionError, match="unknown wavelength 'CuKz'"):
        PowderPattern(x, np.ones(100), "CuKz")
    with pytest.raises(DiffractionError, match="outside the X-ray range"):
        PowderPattern(x, np.ones(100), 15.0)
    with pytest.raises(DiffractionError, match="strictly increasing"):
        PowderPattern(x[::-1], np.ones(100), "CuKa")
    with pytest.raises(DiffractionError, match="2theta must lie"):
        PowderPattern(np.linspace(10, 190, 100), np.ones(100), "CuKa")
    with pytest.raises(DiffractionError, match="not finite"):
        PowderPattern(x, np.where(x > 50, np.nan, 1.0), "CuKa")
    with pytest.raises(DiffractionError, match="must be a PowderPattern"):
        PowderPattern.coerce(42)


def test_pattern_coercion_and_file_round_trip(tmp_path):
    s = _crystals()["NaCl"]
    pat = PowderPattern.coerce(XRDCalculator().get_pattern(s))
    assert pat.wavelength == pytest.approx(1.54184)
    assert pat.two_theta[0] <= 5.0 and pat.intensity.max() > 0
    path = tmp_path / "p.xy"
    pat.write(path)
    back = PowderPattern.from_file(path, "CuKa")
    np.testing.assert_allclose(back.two_theta, pat.two_theta, atol=1e-5)
    (tmp_path / "bad.xy").write_text("10 1\n11 2\n12 x\n")
    with pytest.raises(DiffractionError, match="line 3"):
        PowderPattern.from_file(tmp_path / "bad.xy")


def test_refinement_threads_are_scoped_to_the_fit(monkeypatch):
    """The fit runs with ``threads`` torch threads; the caller's setting is back after it, also when it raises, and
    ``threads=None`` leaves it alone (a library does not change the process's torch setting)."""
    seen = []

    def fake(self, structure, pattern):
        seen.append(torch.get_num_threads())
        if structure == "fail":
            raise DiffractionError("no reflection")
        return "fit"

    monkeypatch.setattr(PatternRefiner, "_refine", fake)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert PatternRefiner().refine("s", None) == "fit"
        with pytest.raises(DiffractionError):
            PatternRefiner().refine("fail", None)
        assert torch.get_num_threads() == 2
        PatternRefiner(threads=None).refine("s", None)
        assert seen == [1, 1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert PatternRefiner.from_dict(PatternRefiner(threads=None).as_dict()).threads is None
    with pytest.raises(DiffractionError, match="threads"):
        PatternRefiner(threads=0)


def test_refinement_recovers_lattice_and_zero_shift():
    s = _crystals()["TiO2"]
    pattern, truth = simulate_measurement(s, "CuKa", seed=3)
    strained = s.copy()
    strained.scale_lattice(s.volume * 1.03 ** 3)  # a 3 % too large cell, as a generated candidate may be
    fit = PatternRefiner().refine(strained, pattern)
    assert fit.rwp < 0.15, fit.rwp
    assert fit.crystal_system == "tetragonal"
    a, c = fit.lattice_refined[0], fit.lattice_refined[2]
    assert a == pytest.approx(4.594, rel=2e-3) and c == pytest.approx(2.959, rel=2e-3)
    assert fit.zero_shift == pytest.approx(truth["zero_shift"], abs=0.03)
    # a wrong structure of the same composition agrees much worse
    wrong = Structure(Lattice.cubic(4.2), ["Ti", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]])
    assert PatternRefiner().refine(wrong, pattern).rwp > 2 * fit.rwp


def test_rank_keeps_going_past_a_bad_candidate():
    s = _crystals()["NaCl"]
    pattern = simulate_pattern(s)
    from pymatgen.core.periodic_table import DummySpecies

    dummy = Structure(Lattice.cubic(5.0), [DummySpecies("X")], [[0, 0, 0]])
    out = PatternRefiner().rank([dummy, s], pattern)
    assert out[0] is None and out[1] is not None and out[1].rwp < 0.1
