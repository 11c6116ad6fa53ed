"""GridVAE: a KL-regularised 3D convolutional VAE between the 32^3 x 3 reciprocal grid and an 8^3 x 64 latent.

Padding. Grid axis index i holds Miller index i - 16, so the grid is neither an image with a meaningful
translation symmetry nor periodic: circular padding would make h = -16 a neighbour of h = 15, an adjacency the
FFT convention invents but the physics does not have, and the metric channel (a quadratic form centred on index 16)
is not translation invariant either. Zero padding is used, and the absolute Miller coordinates are given to the
network explicitly (CoordConv channels at the input and output) so that no position information has to be
inferred from the borders.

Metric channel. Channel 2 is exactly the quadratic form Q'(h) = D(h) . g with six coefficients g (see
``gpsk_materials.representations.grid``). The decoder predicts those six numbers from the latent and writes
D(h) . g into channel 2 in closed form, plus a convolutional residual; together with the up-weighted MSE this keeps
the lattice channel near-lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpsk_materials.errors import GridError
from gpsk_materials.models.configs import VAEConfig


def miller_features(n: int, device=None, dtype=None) -> Tensor:
    """Return (9, n, n, n): h/n*2 (3 linear channels) and the six quadratic monomials of the metric design
    ``[h^2, k^2, l^2, 2hk, 2hl, 2kl] / (n/2)^2`` in grid order (axis index i <-> Miller index i - n/2)."""
    ax = torch.arange(n, device=device, dtype=torch.float64) - n // 2
    h, k, l = torch.meshgrid(ax, ax, ax, indexing="ij")
    s = n / 2
    feats = [h / s, k / s, l / s, h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l]
    out = torch.stack(feats[:3] + [f / s**2 for f in feats[3:]])
    return out.to(dtype or torch.get_default_dtype())


def check_grid(grid: Tensor, size: int = 32, channels: int = 3) -> None:
    """Raise :class:`GridError` unless ``grid`` is a finite float tensor of shape (B, channels, size, size, size)."""
    if not isinstance(grid, Tensor):
        raise GridError(f"grid must be a torch.Tensor, got {type(grid).__name__}")
    if grid.ndim != 5 or tuple(grid.shape[1:]) != (channels, size, size, size):
        raise GridError(f"grid must have shape (B, {channels}, {size}, {size}, {size}), got {tuple(grid.shape)}")
    if not grid.is_floating_point():
        raise GridError(f"grid must be floating point, got {grid.dtype}")
    if not torch.isfinite(grid).all():
        raise GridError("grid contains NaN or inf")


class ResBlock3d(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with a residual connection (1x1x1 projection when widths differ)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


@dataclass
class LatentDistribution:
    """Diagonal Gaussian posterior q(z | grid)."""

    mean: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, averaged over latent elements."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).mean(1)


class GridVAE(nn.Module):
    """3D convolutional VAE, grid (B, 3, 32, 32, 32) <-> latent (B, 64, 8, 8, 8)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        g, nb = config.groups, config.blocks_per_level
        self.register_buffer("coords", miller_features(config.grid_size), persistent=False)
        nc = self.coords.shape[0]

        self.enc_in = nn.Conv3d(config.grid_channels + nc, c0, 3, padding=1)
        enc: list[nn.Module] = []
        for cin, cout in ((c0, c1), (c1, c2)):
            enc += [ResBlock3d(cin, cin, g) for _ in range(nb)]
            enc.append(nn.Conv3d(cin, cout, 3, stride=2, padding=1))
        enc += [ResBlock3d(c2, c2, g) for _ in range(nb)]
        self.encoder = nn.Sequential(*enc)
        self.enc_out = nn.Sequential(nn.GroupNorm(g, c2), nn.SiLU(), nn.Conv3d(c2, 2 * config.latent_channels, 3, padding=1))

        self.dec_in = nn.Conv3d(config.latent_channels, c2, 3, padding=1)
        dec: list[nn.Module] = [ResBlock3d(c2, c2, g) for _ in range(nb)]
        for cin, cout in ((c2, c1), (c1, c0)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(cin, cout, 3, padding=1)]
            dec += [ResBlock3d(cout, cout, g) for _ in range(nb)]
        self.decoder = nn.Sequential(*dec)
        self.dec_norm = nn.GroupNorm(g, c0)
        self.dec_out = nn.Conv3d(c0 + nc, config.grid_channels, 3, padding=1)
        # closed-form metric head: six quadratic-form coefficients from the pooled latent
        self.metric_head = nn.Sequential(nn.Linear(config.latent_channels, c2), nn.SiLU(), nn.Linear(c2, 6))

    def _coords(self, batch: int, like: Tensor) -> Tensor:
        return self.coords.to(like.dtype).expand(batch, -1, -1, -1, -1)

    def encode(self, grid: Tensor) -> LatentDistribution:
        """Posterior over latents (B, 64, 8, 8, 8) of a batch of grids."""
        check_grid(grid, self.config.grid_size, self.config.grid_channels)
        x = torch.cat([grid, self._coords(grid.shape[0], grid)], dim=1)
        h = self.enc_out(self.encoder(self.enc_in(x)))
        mean, logvar = h.chunk(2, dim=1)
        return LatentDistribution(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, latent: Tensor) -> Tensor:
        """Grid (B, 3, 32, 32, 32) of a batch of latents (B, 64, 8, 8, 8)."""
        c, n = self.config.latent_channels, self.config.grid_size // 4
        if latent.ndim != 5 or tuple(latent.shape[1:]) != (c, n, n, n):
            raise GridError(f"latent must have shape (B, {c}, {n}, {n}, {n}), got {tuple(latent.shape)}")
        h = self.decoder(self.dec_in(latent))
        coords = self._coords(latent.shape[0], h)
        out = self.dec_out(torch.cat([F.silu(self.dec_norm(h)), coords], dim=1))
        # the lattice channel is assembled in float32 even under bf16 autocast: it must stay near-lossless
        with torch.autocast(latent.device.type, enabled=False):
            coef = self.metric_head(latent.float().mean(dim=(2, 3, 4)))  # (B, 6)
            metric = torch.einsum("bk,kxyz->bxyz", coef, self.coords[3:].float())
            return torch.cat([out[:, :2].float(), out[:, 2:3].float() + metric.unsqueeze(1)], dim=1)

    def forward(self, grid: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, LatentDistribution]:
        posterior = self.encode(grid)
        return self.decode(posterior.sample(generator)), posterior

    def loss(self, grid: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted reconstruction MSE + ``kl_weight`` * KL; returns the loss and its detached parts."""
        return self.loss_from(grid, *self(grid, generator))

    def loss_from(self, grid: Tensor, recon: Tensor, posterior: LatentDistribution) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`loss` from a forward pass already made (e.g. through a DDP wrapper)."""
        err = (recon.float() - grid.float()).pow(2).mean(dim=(0, 2, 3, 4))  # per channel
        w = torch.tensor(self.config.channel_weights, device=err.device, dtype=err.dtype)
        kl = posterior.kl().float().mean()
        loss = (w * err).sum() / w.sum() + self.config.kl_weight * kl
        parts = {"mse_re": err[0], "mse_im": err[1], "mse_metric": err[2], "kl": kl}
        return loss, {k: v.detach() for k, v in parts.items()}
