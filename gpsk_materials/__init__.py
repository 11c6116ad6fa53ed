"""gpsk_materials: crystal generation in an invertible reciprocal-space representation (GPSK-300).

The public objects are imported lazily so that ``import gpsk_materials`` stays fast and the pure-torch
parts work where pymatgen is not installed (e.g. on a bare GPU node).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ReciprocalGridFeaturizer": "gpsk_materials.representations.reciprocal",
    "ReciprocalGridDecoder": "gpsk_materials.representations.decoding",
    "RealSpaceDensityFeaturizer": "gpsk_materials.representations.realspace",
    "RealSpacePeakDecoder": "gpsk_materials.representations.realspace",
    "CrystalGenerator": "gpsk_materials.pipelines.generator",
}

__all__ = [*list(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpsk_materials' has no attribute {name!r}")
