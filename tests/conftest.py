"""Shared fixtures: the shared data folder (skipped clearly where a machine lacks it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpsk_materials.paths import SHARED_ENV, shared_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
