"""Post-checks usable on any pymatgen Structures: symmetry, validity, MLIP energies and relaxations, the volume
scan, energy above a reference hull, and best-of-N scoring."""

from gpsk_materials.checks.hull import ReferenceHull
from gpsk_materials.checks.potentials import (
    DEFAULT_MATGL_MODEL,
    Potential,
    RelaxResult,
    load_potential,
    resolve_potential,
)
from gpsk_materials.checks.scoring import CandidateScorer
from gpsk_materials.checks.symmetry import (
    SymmetryCheck,
    SymmetryResult,
    crystal_system_of,
    site_count_compatible,
    wyckoff_multiplicities,
)
from gpsk_materials.checks.validity import (
    ValidityCheck,
    ValidityResult,
    connectivity,
    smact_validity,
    structural_validity,
)
from gpsk_materials.checks.volume_scan import VolumeScan, VolumeScanResult

__all__ = [
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
    "resolve_potential",
    "site_count_compatible",
    "smact_validity",
    "structural_validity",
    "wyckoff_multiplicities",
]
