"""Training of GPSK-300: VAE stage, latent caching, rectified-flow MMDiT stage (resumable, DDP, bf16)."""

from gpsk_materials.training.trainer import STAGES, Trainer, TrainConfig

__all__ = ["STAGES", "TrainConfig", "Trainer"]
