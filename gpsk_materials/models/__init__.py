"""Pure-torch generative core of GPSK-300: GridVAE, MMDiT, conditioning, rectified flow, checkpoints.

Nothing here imports pymatgen, so training and sampling run on machines that only have torch, numpy and
safetensors.
"""

from gpsk_materials.models.conditioning import (
    CRYSTAL_SYSTEMS,
    MAGNETIC_ORDERINGS,
    MODALITIES,
    ConditionBatch,
    ConditionEncoder,
    Conditions,
    ConditionStats,
)
from gpsk_materials.models.configs import CONFIGS, MMDiTConfig, ModelConfig, VAEConfig, get_config
from gpsk_materials.models.generative import GPSKModel
from gpsk_materials.models.io import load_model_folder, save_model_folder
from gpsk_materials.models.mmdit import MMDiT
from gpsk_materials.models.vae import GridVAE

__all__ = [
    "CONFIGS",
    "CRYSTAL_SYSTEMS",
    "MAGNETIC_ORDERINGS",
    "MODALITIES",
    "ConditionBatch",
    "ConditionEncoder",
    "ConditionStats",
    "Conditions",
    "GPSKModel",
    "GridVAE",
    "MMDiT",
    "MMDiTConfig",
    "ModelConfig",
    "VAEConfig",
    "get_config",
    "load_model_folder",
    "save_model_folder",
]
