"""Post-checks usable on any pymatgen Structures: symmetry, validity, MLIP energies and relaxations, the volume
scan, energy above a reference hull, best-of-N scoring, and :func:`~gpsk_materials.checks.post.post_checks`, the
checks of generated candidates.

The public objects are imported lazily: ``gpsk_materials.checks.post`` (what the generation pipeline needs to parse
``checks=``) loads without pymatgen, ASE or the potentials.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ReferenceHull": "hull",
    "DEFAULT_MATGL_MODEL": "potentials",
    "Potential": "potentials",
    "RelaxResult": "potentials",
    "load_potential": "potentials",
    "resolve_potential": "potentials",
    "CandidateScorer": "scoring",
    "SymmetryCheck": "symmetry",
    "SymmetryResult": "symmetry",
    "site_count_compatible": "symmetry",
    "wyckoff_multiplicities": "symmetry",
    "crystal_system_of": "symmetry",
    "ValidityCheck": "validity",
    "ValidityResult": "validity",
    "connectivity": "validity",
    "smact_validity": "validity",
    "structural_validity": "validity",
    "VolumeScan": "volume_scan",
    "VolumeScanResult": "volume_scan",
    "CHECKS": "post",
    "CheckRecord": "post",
    "parse_checks": "post",
    "post_checks": "post",
}

_SUBMODULES = {*_LAZY.values(), "batch_relax", "cli"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKS",
    "CheckRecord",
    "DEFAULT_MATGL_MODEL",
    "CandidateScorer",
    "Potential",
    "ReferenceHull",
    "RelaxResult",
    "SymmetryCheck",
    "SymmetryResult",
    "ValidityCheck",
    "ValidityResult",
    "VolumeScan",
    "VolumeScanResult",
    "connectivity",
    "crystal_system_of",
    "load_potential",
    "parse_checks",
    "post_checks",
    "resolve_potential",
    "site_count_compatible",
    "smact_validity",
    "structural_validity",
    "wyckoff_multiplicities",
]
