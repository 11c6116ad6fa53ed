"""GPSKModel: a loaded VAE + MMDiT with condition statistics and latent scaling, ready to sample grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from gpsk_materials.errors import CheckpointError, ConditioningError, ConfigError
from gpsk_materials.defaults import GUIDANCE, SAMPLER_COMPILE, SAMPLER_STEPS, SAMPLING_PRECISION
from gpsk_materials.models import rectified_flow
from gpsk_materials.models.conditioning import ConditionBatch, Conditions, ConditionStats
from gpsk_materials.models.configs import ModelConfig
from gpsk_materials.models.mmdit import MMDiT
from gpsk_materials.models.vae import GridVAE

#: ``precision`` of sampling: float32 throughout, or bfloat16 autocast for the MMDiT and the VAE's convolutions (the
#: precision the released weights were trained under; the VAE's lattice channel and FFTs stay float32)
PRECISIONS = ("fp32", "bf16")


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@dataclass
class GPSKModel:
    """The generative core: ``grids = model.sample_grids([Conditions(composition="Fe2O3"), ...])``.

    The flow runs in a normalised latent space, z_norm = (z - latent_mean) / latent_std per channel, with the
    statistics of the training latents; :meth:`sample_grids` undoes it before ``vae.decode``.
    """

    config: ModelConfig
    vae: GridVAE
    mmdit: MMDiT | None
    stats: ConditionStats
    latent_mean: Tensor | None = None
    latent_std: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def _scale(self) -> tuple[Tensor, Tensor]:
        c = self.config.vae.latent_channels
        mean = torch.zeros(c) if self.latent_mean is None else self.latent_mean
        std = torch.ones(c) if self.latent_std is None else self.latent_std
        return mean.view(1, c, 1, 1, 1).to(self.device), std.view(1, c, 1, 1, 1).to(self.device)

    def normalize_latents(self, z: Tensor) -> Tensor:
        mean, std = self._scale()
        return (z - mean.to(z.dtype)) / std.to(z.dtype)

    def denormalize_latents(self, z: Tensor) -> Tensor:
        mean, std = self._scale()
        return z * std.to(z.dtype) + mean.to(z.dtype)

    def condition_batch(self, conditions: Sequence[Conditions | Mapping[str, Any]]) -> ConditionBatch:
        """Validate user conditions (``Conditions`` or dicts of its fields) into a batch on the model's device."""
        conds = []
        for c in conditions:
            if isinstance(c, Conditions):
                conds.append(c)
            elif isinstance(c, Mapping):
                try:
                    conds.append(Conditions(**c))
                except TypeError as exc:
                    raise ConditioningError(f"bad condition fields {sorted(c)}: {exc}") from exc
            else:
                raise ConditioningError(f"a condition must be Conditions or a dict, got {type(c).__name__}")
        max_el = self.config.mmdit.max_elements
        return ConditionBatch.from_conditions(conds, self.stats, max_el).to(self.device)

    @torch.no_grad()
    def sample_latents(
        self, conditions: Sequence[Conditions | Mapping[str, Any]] | ConditionBatch, steps: int = SAMPLER_STEPS,
        guidance: float = GUIDANCE, generator: torch.Generator | None = None, progress: bool = False,
        noise: Tensor | None = None, guidance_terms: Sequence | None = None, t_start: float = 1.0,
        precision: str = SAMPLING_PRECISION, compile_mode: str = SAMPLER_COMPILE,
    ) -> Tensor:
        """Latents (B, 64, 8, 8, 8) in VAE space (denormalised); ``noise`` (B, 64, 8, 8, 8) replaces the draw from
        ``generator`` (the pipeline draws each request's noise from its own generator); ``guidance_terms`` and
        ``t_start`` (``noise`` is then the normalised state at that time) see
        :func:`~gpsk_materials.models.rectified_flow.sample`. ``precision="bf16"`` runs the MMDiT under bfloat16
        autocast (the state x stays float32). ``compile_mode`` (:data:`~gpsk_materials.models.rectified_flow.
        COMPILE_MODES`) runs the Euler step through ``torch.compile`` (``"reduce-overhead"``: CUDA graphs on CUDA)."""
        if self.mmdit is None:
            raise CheckpointError("this model folder holds no MMDiT weights (a VAE-only checkpoint)")
        cond = conditions if isinstance(conditions, ConditionBatch) else self.condition_batch(conditions)
        cfg = self.config.mmdit
        shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size, cfg.latent_size)
        with _autocast(self.device, precision):
            z = rectified_flow.sample(self.mmdit, cond, steps, guidance, generator, shape, noise=noise,
                                      device=self.device, progress=progress, guidance_terms=guidance_terms,
                                      t_start=t_start, compile_mode=compile_mode)
        return self.denormalize_latents(z.float())

    @torch.no_grad()
    def sample_grids(
        self, conditions: Sequence[Conditions | Mapping[str, Any]] | ConditionBatch, steps: int = SAMPLER_STEPS,
        guidance: float = GUIDANCE, generator: torch.Generator | None = None, progress: bool = False,
        noise: Tensor | None = None, guidance_terms: Sequence | None = None, t_start: float = 1.0,
        precision: str = SAMPLING_PRECISION, compile_mode: str = SAMPLER_COMPILE,
    ) -> Tensor:
        """Grids (B, 3, 32, 32, 32) float32 for the decoder (see :meth:`sample_latents`; ``precision="bf16"`` runs
        the VAE decoder's convolutions under bfloat16 autocast too)."""
        latents = self.sample_latents(conditions, steps, guidance, generator, progress, noise, guidance_terms,
                                      t_start, precision, compile_mode)
        with _autocast(self.device, precision):
            return self.vae.decode(latents).float()
