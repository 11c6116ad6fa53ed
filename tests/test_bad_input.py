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
