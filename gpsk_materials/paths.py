"""Locations of the shared data and models used by tests, benchmarks and training."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that points at the shared data folder (``data/``, ``models/``).
SHARED_ENV = "GPSK_SHARED_DIR"

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def shared_dir() -> Path:
    """Return the shared folder: ``$GPSK_SHARED_DIR`` if set, else ``../shared`` beside the repository."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_DIR.parent / "shared").resolve()


def shared_data(*parts: str) -> Path:
    """Path inside ``shared/data``; where it is missing but a gzipped copy (``name.gz``) exists, that copy (pandas
    and the project's readers take either). Existence is not checked."""
    path = shared_dir().joinpath("data", *parts)
    packed = path.with_name(path.name + ".gz")
    return packed if not path.exists() and packed.exists() else path


def shared_model(*parts: str) -> Path:
    """Path inside ``shared/models``; existence is not checked."""
    return shared_dir().joinpath("models", *parts)
