"""GPSKModel: a loaded VAE + MMDiT with condition statistics and latent scaling, ready to sample grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from gpsk_materials.errors import CheckpointError, ConditioningError
from gpsk_materials.defaults import GUIDANCE, SAMPLER_STEPS
from gpsk_materials.models import rectified_flow
from gpsk_materials.models.conditioning import ConditionBatch, Conditions, ConditionStats
from gpsk_materials.models.configs import ModelConfig
from gpsk_materials.models.mmdit import MMDiT
from gpsk_materials.models.vae import GridVAE


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
    ) -> Tensor:
        """Latents (B, 64, 8, 8, 8) in VAE space (denormalised); ``noise`` (B, 64, 8, 8, 8) replaces the draw from
        ``generator`` (the pipeline draws each request's noise from its own generator); ``guidance_terms`` and
        ``t_start`` (``noise`` is then the normalised state at that time) see
        :func:`~gpsk_materials.models.rectified_flow.sample`."""
        if self.mmdit is None:
            raise CheckpointError("this model folder holds no MMDiT weights (a VAE-only checkpoint)")
        cond = conditions if isinstance(conditions, ConditionBatch) else self.condition_batch(conditions)
        cfg = self.config.mmdit
        shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size, cfg.latent_size)
        z = rectified_flow.sample(self.mmdit, cond, steps, guidance, generator, shape, noise=noise, device=self.device,
                                  progress=progress, guidance_terms=guidance_terms, t_start=t_start)
        return self.denormalize_latents(z)

    @torch.no_grad()
    def sample_grids(
        self, conditions: Sequence[Conditions | Mapping[str, Any]] | ConditionBatch, steps: int = SAMPLER_STEPS,
        guidance: float = GUIDANCE, generator: torch.Generator | None = None, progress: bool = False,
        noise: Tensor | None = None, guidance_terms: Sequence | None = None, t_start: float = 1.0,
    ) -> Tensor:
        """Grids (B, 3, 32, 32, 32) float32 for the decoder (see :meth:`sample_latents`)."""
        return self.vae.decode(self.sample_latents(conditions, steps, guidance, generator, progress, noise,
                                                   guidance_terms, t_start)).float()
