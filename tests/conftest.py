"""Shared fixtures: the shared data folder (skipped clearly where a machine lacks it), and the toy array cache."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from gpsk_materials.paths import SHARED_ENV, shared_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _hold_space_groups() -> None:
    """Keep every pymatgen ``SpaceGroup`` built during the session alive.

    pymatgen caches ``SpaceGroup`` instances by symbol in a ``WeakValueDictionary`` (monty's ``cached_class``), so a
    ``Structure.from_spacegroup`` whose group nobody holds any longer builds the group again; building it puts its
    symmetry operations in a set while ``SymmOp.__hash__`` is a constant, i.e. O(n^2) ``SymmOp.__eq__`` (``np.allclose``):
    ~0.4 s for Fm-3m's 192 operations. The tests build the same few groups hundreds of times (a third of
    test_evaluation.py's time went there); holding them changes no result, as the cache hands out the same instance.
    """
    from pymatgen.symmetry.groups import SpaceGroup

    new = SpaceGroup.__new__
    held: dict[int, SpaceGroup] = {}

    @functools.wraps(new)
    def held_new(cls, *args, **kwargs):
        group = new(cls, *args, **kwargs)
        held[id(group)] = group
        return group

    SpaceGroup.__new__ = held_new


_hold_space_groups()


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}: set ${SHARED_ENV} to the folder holding data/ and models/")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared folder (``$GPSK_SHARED_DIR`` or ``../shared``); skips the test if it is missing."""
    return _require(shared_dir())


@pytest.fixture(scope="session")
def shared_data_dir(shared: Path) -> Path:
    """``shared/data``; skips the test if it is missing."""
    return _require(shared / "data")


@pytest.fixture(scope="session")
def matgl_model_dir(shared: Path) -> Path:
    """The offline TensorNet-MatPES potential folder; skips the test if it is missing."""
    return _require(shared / "models" / "matgl" / "TensorNet-MatPES-PBE-v2025.1-PES")


@pytest.fixture(scope="session")
def toy_cache():
    """The array cache of the toy prototypes (``test_datasets.toy_structures``, ids ``toy-<i>``), built once per
    session for the dataset and training tests (none of them changes it)."""
    from gpsk_materials.datasets import cache_from_structures
    from test_datasets import toy_structures

    structures, labels = toy_structures()
    return cache_from_structures(structures, labels, [f"toy-{i}" for i in range(len(structures))], progress=False)
