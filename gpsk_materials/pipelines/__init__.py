"""Generation pipelines: :class:`CrystalGenerator` (conditions -> checked crystals) and ``gpsk generate``."""

from gpsk_materials.checks.post import CHECKS, parse_checks
from gpsk_materials.pipelines.generator import CrystalGenerator, GenerationResult, default_model_dir
from gpsk_materials.pipelines.requests import GenerationRequest

__all__ = ["CHECKS", "CrystalGenerator", "GenerationRequest", "GenerationResult", "default_model_dir", "parse_checks"]
