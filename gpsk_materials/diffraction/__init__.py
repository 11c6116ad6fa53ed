"""Powder X-ray diffraction: differentiable profiles from grids and structures, Rwp refinement of candidates,
sampler guidance toward a measured pattern, and structure solution from a pattern (docs/diffraction.md)."""

from gpsk_materials.diffraction.pattern import (PowderPattern, Reflections, grid_reflections, render_profile,
                                                resolve_wavelength, simulate_pattern, structure_sticks)
from gpsk_materials.diffraction.refine import POOR_RWP, PatternRefiner, Refinement
from gpsk_materials.diffraction.simulate import MeasurementModel, simulate_measurement

__all__ = [
    "POOR_RWP", "MeasurementModel", "PatternRefiner", "PowderPattern", "Reflections", "Refinement",
    "grid_reflections", "render_profile", "resolve_wavelength", "simulate_measurement", "simulate_pattern",
    "structure_sticks",
]
