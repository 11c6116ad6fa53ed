"""Volume scan (GPSK-05): compressed rock salts are pulled back to the potential's minimum."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.checks.volume_scan import VolumeScan, VolumeScanResult
from gpsk_materials.errors import ConditioningError, InvalidStructureError

from _checks_util import conventional_a, one_torch_thread, rock_salt, tensornet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def own_minimum(potential, cation: str, anion: str, a0: float) -> float:
    """The potential's rock-salt lattice constant from a dense E(a) grid with a parabola through its minimum."""
    a = np.linspace(0.93 * a0, 1.07 * a0, 57)
    e = potential.energies([rock_salt(x, cation, anion) for x in a])
    i = int(np.argmin(e))
    c2, c1, _ = np.polyfit(a[i - 3 : i + 4], e[i - 3 : i + 4], 2)
    return -c1 / (2 * c2)


@pytest.mark.parametrize("cation, anion, a_exp", [("Na", "Cl", 5.64), ("Mg", "O", 4.21)])
def test_compressed_rock_salt_is_restored(tensornet, cation, anion, a_exp):
    compressed = rock_salt(0.75 * a_exp, cation, anion)
    (res,) = VolumeScan(tensornet).scan(compressed)
    a_new = conventional_a(res.structure)
    assert res.success and not res.at_boundary
    assert abs(a_new / own_minimum(tensornet, cation, anion, a_exp) - 1) < 0.01
    assert abs(a_new / a_exp - 1) < 0.03
    assert res.scale_factor == pytest.approx(a_new / (0.75 * a_exp), rel=1e-9)
    assert res.energy_per_atom == pytest.approx(min(res.energies), abs=2e-3)
    assert res.volume_per_atom == pytest.approx(res.structure.volume / len(res.structure))
    assert compressed.lattice.a == pytest.approx(0.75 * a_exp / np.sqrt(2))  # input untouched


def test_shape_is_held_and_batch_is_consistent(tensornet):
    # a sheared, non-cubic cell: only its size may change
    s = Structure(Lattice.from_parameters(3.1, 3.6, 4.2, 80, 95, 105), ["Na", "Cl"], [[0, 0, 0], [0.45, 0.52, 0.48]])
    nacl = rock_salt(4.3)
    both = VolumeScan(tensornet).scan([s, nacl])
    alone = VolumeScan(tensornet).scan(s)[0]
    out = both[0].structure
    assert out.lattice.angles == pytest.approx(s.lattice.angles)
    ratios = np.array(out.lattice.abc) / np.array(s.lattice.abc)
    assert ratios == pytest.approx(np.full(3, both[0].scale_factor))
    np.testing.assert_allclose(out.frac_coords, s.frac_coords)
    assert both[0].volume_per_atom == pytest.approx(alone.volume_per_atom, rel=1e-4)  # float32 batches differ in the last digits
    assert both[1].scale_factor > 1.25


def test_refine_improves_on_the_grid(tensornet):
    coarse = VolumeScan(tensornet, n_points=9, refine=False).scan(rock_salt(4.5))[0]
    fine = VolumeScan(tensornet, n_points=9, refine=True).scan(rock_salt(4.5))[0]
    assert coarse.volume_per_atom in coarse.volumes  # a grid point
    assert fine.energy_per_atom <= coarse.energy_per_atom + 1e-5


def test_overlapping_atoms_are_not_scanned(tensornet):
    broken = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])
    (res,) = VolumeScan(tensornet).scan(broken)
    assert not res.success and res.scale_factor == 1.0 and res.structure == broken


def test_boundary_is_flagged(tensornet):
    (res,) = VolumeScan(tensornet, v_min=30, v_max=40, n_points=5).scan(rock_salt(5.0))
    assert res.at_boundary and res.volume_per_atom == pytest.approx(30.0)


def test_serialization(tensornet):
    scan = VolumeScan(tensornet, v_min=9, v_max=30, n_points=11)
    d = scan.as_dict()
    assert d["potential"]["backend"] == "matgl" and d["n_points"] == 11
    (res,) = scan.scan(rock_salt(5.0))
    again = VolumeScanResult.from_dict(res.as_dict())
    assert again.structure == res.structure and again.scale_factor == res.scale_factor


@pytest.mark.parametrize(
    "kwargs", [dict(v_min=40, v_max=8), dict(v_min=0, v_max=8), dict(v_min=-1, v_max=8), dict(n_points=2),
               dict(v_max=float("nan")), dict(min_distance_ratio=-0.1)],
)  # fmt: skip
def test_invalid_range(tensornet, kwargs):
    with pytest.raises(ConditioningError):
        VolumeScan(tensornet, **kwargs)


def test_bad_input(tensornet):
    with pytest.raises(InvalidStructureError):
        VolumeScan(tensornet).scan("NaCl")
