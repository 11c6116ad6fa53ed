"""Helpers shared by the tests of gpsk_materials.checks."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials.diffraction.refine import torch_threads


def rock_salt(a: float, cation: str = "Na", anion: str = "Cl", primitive: bool = True) -> Structure:
    """Rock-salt AB with conventional lattice constant ``a`` (primitive 2-atom cell by default)."""
    if primitive:  # built directly: get_primitive_structure is slow on a loaded machine
        fcc = Lattice(0.5 * a * (1 - np.eye(3)))
        return Structure(fcc, [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def conventional_a(s: Structure) -> float:
    """Conventional cubic lattice constant of a rock-salt cell of any size (4 formula units per cubic cell)."""
    return (s.volume * 4 / (len(s) / 2)) ** (1 / 3)


@pytest.fixture(scope="module", autouse=False)
def one_torch_thread():
    """Graphs of a few atoms gain nothing from intra-op threads, and on a loaded 2-core machine the thread
    hand-off costs 10x; restored after the module (the project's ``torch_threads``)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tensornet(matgl_model_dir):
    """The shared TensorNet-MatPES potential (skips without the shared folder)."""
    from gpsk_materials.checks.potentials import load_potential

    return load_potential(matgl_model_dir)
