"""GridVAE: a KL-regularised 3D convolutional VAE between the 32^3 x 3 reciprocal grid and an 8^3 x 64 latent.

Where the convolutions run (``VAEConfig.domain``):

- ``"real"`` (default): the structure-factor channels are expanded to F(h) and inverse-FFT'd to the (complex,
  almost real) density of the cell on a 32^3 fractional-coordinate grid; the convolutions run there with
  **circular padding**, which is exactly right because the density is periodic in the cell. The decoder predicts
  the density and FFTs it back to F. An atom is a local peak in real space but a plane wave spread over the whole
  Miller grid, and 3x3x3 convolutions with stride cannot demodulate ~20 superposed plane waves: trained on the
  grid directly (``"reciprocal"``), the Re/Im reconstruction barely improved in 600 GPU steps, while the real-space
  encoder learns them. The FFT pair is fixed, exact and differentiable, so the VAE still maps grid <-> latent.
- ``"reciprocal"``: convolutions on the Miller grid itself. Axis index i holds Miller index i - 16, so the grid
  is not periodic: circular padding would make h = -16 a neighbour of h = 15, an adjacency the FFT convention
  invents but the physics does not have. Zero padding is used, with the absolute Miller coordinates as extra
  (CoordConv) channels.

Sub-voxel branches (``VAEConfig.subvoxel``, real domain). The Miller grid's outer shells (max |h_i| near 16) are the
density's near-Nyquist patterns, which alternate from one 32^3 voxel to the next; a decoder that reaches 32^3 by
nearest-neighbour upsampling and 3x3x3 convolutions makes them poorly (c7's VAE: 1-3 % error in F below max
|h_i| = 12, 13-30 % at the edge, 61 % of its error). The branches give every voxel of a 2^3 block its own channel:
a space-to-depth view of the input density (2 -> 16 channels at 16^3) added into the encoder after its first stride,
and a depth-to-space head (16 -> 2 channels at 32^3) from the decoder's 16^3 features added to the output density
(the sub-pixel convolution of Shi et al., CVPR 2016, in 3D). Their last convolutions start at zero. Measured on c7's
VAE (1,500-1,650 steps, decoder alone or whole VAE): the edge error fell by 1-5 %, the match rate not at all
(docs/benchmarks.md, "Sub-voxel hold"); an option, off by default.

Metric channel. Channel 2 is exactly the quadratic form Q'(h) = D(h) . g with six coefficients g (see
``gpsk_materials.representations.grid``). The encoder receives g, computed in closed form by least squares, as
six constant input channels; the decoder predicts the six numbers from the pooled latent and writes D(h) . g into
channel 2 (plus a convolutional residual in the reciprocal domain). Together with the up-weighted MSE this keeps
the lattice channel near-lossless, and it is assembled in float32 even under bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpsk_materials.errors import ConfigError, GridError
from gpsk_materials.models.configs import VAEConfig
from gpsk_materials.representations.grid import compress_structure_factor, expand_structure_factor

#: density scale of the real-space domain: rho = ifftn(F) / DENSITY_SCALE enters asinh (peaks of heavy atoms
#: reach a few hundred, the background ~1)
DENSITY_SCALE = 0.01
#: bound of the decoder's asinh-density output (sinh(12) ~ 8e4 covers any physical cell)
DENSITY_CLAMP = 12.0


def miller_features(n: int, device=None, dtype=None) -> Tensor:
    """Return (9, n, n, n): h/n*2 (3 linear channels) and the six quadratic monomials of the metric design
    ``[h^2, k^2, l^2, 2hk, 2hl, 2kl] / (n/2)^2`` in grid order (axis index i <-> Miller index i - n/2)."""
    ax = torch.arange(n, device=device, dtype=torch.float64) - n // 2
    h, k, l = torch.meshgrid(ax, ax, ax, indexing="ij")
    s = n / 2
    feats = [h / s, k / s, l / s, h * h, k * k, l * l, 2 * h * k, 2 * h * l, 2 * k * l]
    out = torch.stack(feats[:3] + [f / s**2 for f in feats[3:]])
    return out.to(dtype or torch.get_default_dtype())


def check_grid(grid: Tensor, size: int = 32, channels: int = 3, finite: bool = True) -> None:
    """Raise :class:`GridError` unless ``grid`` is a float tensor of shape (B, channels, size, size, size), and
    (``finite=True``) free of NaN and inf. The finiteness test reads a value back from the device, so the training
    loop, whose grids come from the featurizer, skips it."""
    if not isinstance(grid, Tensor):
        raise GridError(f"grid must be a torch.Tensor, got {type(grid).__name__}")
    if grid.ndim != 5 or tuple(grid.shape[1:]) != (channels, size, size, size):
        raise GridError(f"grid must have shape (B, {channels}, {size}, {size}, {size}), got {tuple(grid.shape)}")
    if not grid.is_floating_point():
        raise GridError(f"grid must be floating point, got {grid.dtype}")
    if finite and not torch.isfinite(grid).all():
        raise GridError("grid contains NaN or inf")


def periodic_pad(x: Tensor, p: int) -> Tensor:
    """Wrap-around padding of the last three axes by ``p`` (as ``F.pad(mode="circular")``, whose backward is
    several times slower on CPU).

    Without autograd (sampling) the padded tensor is allocated once and filled by slice copies: the interior,
    then the wrapped faces axis by axis, each copied from the part already filled (edges and corners follow), the
    same values as three concatenations at less than half their memory traffic (2.4x faster for a (64, 32, 32^3)
    float32 tensor on one CPU thread)."""
    if p > 0 and not (torch.is_grad_enabled() and x.requires_grad):
        a, b, c = x.shape[2:]
        out = x.new_empty((*x.shape[:2], a + 2 * p, b + 2 * p, c + 2 * p))
        out[:, :, p:-p, p:-p, p:-p] = x
        out[:, :, :p, p:-p, p:-p] = x[:, :, -p:]
        out[:, :, -p:, p:-p, p:-p] = x[:, :, :p]
        out[:, :, :, :p, p:-p] = out[:, :, :, b : b + p, p:-p]
        out[:, :, :, -p:, p:-p] = out[:, :, :, p : 2 * p, p:-p]
        out[..., :p] = out[..., c : c + p]
        out[..., -p:] = out[..., p : 2 * p]
        return out
    for dim in (2, 3, 4):
        n = x.shape[dim]
        x = torch.cat([x.narrow(dim, n - p, p), x, x.narrow(dim, 0, p)], dim=dim)
    return x


def space_to_depth(x: Tensor, r: int = 2) -> Tensor:
    """(B, C, rD, rH, rW) -> (B, C r^3, D, H, W): each r^3 block's voxels become channels (channel c r^3 + i r^2 +
    j r + k holds voxel (i, j, k) of the block); the inverse of :func:`depth_to_space`."""
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // r, r, h // r, r, w // r, r).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * r**3, d // r, h // r, w // r)


def depth_to_space(x: Tensor, r: int = 2) -> Tensor:
    """(B, C r^3, D, H, W) -> (B, C, rD, rH, rW), the 3D pixel shuffle (inverse of :func:`space_to_depth`)."""
    b, c, d, h, w = x.shape
    c //= r**3
    x = x.reshape(b, c, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * r, h * r, w * r)


class PeriodicConv3d(nn.Conv3d):
    """Conv3d with circular ("same") padding of an odd kernel: the field is periodic in the cell."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(periodic_pad(x, self.kernel_size[0] // 2))


def conv3d(cin: int, cout: int, periodic: bool, stride: int = 1) -> nn.Conv3d:
    """3x3x3 convolution keeping the size (halving it with stride 2), periodic or zero padded."""
    if periodic:
        return PeriodicConv3d(cin, cout, 3, stride)
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1)


class ResBlock3d(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with a residual connection (1x1x1 projection when widths differ)."""

    def __init__(self, cin: int, cout: int, groups: int, periodic: bool = False):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = conv3d(cin, cout, periodic)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = conv3d(cout, cout, periodic)
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
        if config.domain not in ("real", "reciprocal"):
            raise ConfigError(f"VAE domain must be 'real' or 'reciprocal', got {config.domain!r}")
        self.real = config.domain == "real"
        pad = self.real  # periodic padding in real space
        self.register_buffer("coords", miller_features(config.grid_size), persistent=False)
        design = self.coords[3:].reshape(6, -1).double()
        self.register_buffer("metric_pinv", torch.linalg.pinv(design.T).float(), persistent=False)  # (6, n^3)
        nc = self.coords.shape[0]
        # real: Re/Im density + the six metric coefficients; reciprocal: the grid + Miller coordinates
        n_in = 2 + 6 if self.real else config.grid_channels + nc

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
            return conv3d(cin, cout, pad, stride)

        self.enc_in = conv(n_in, c0)
        enc: list[nn.Module] = []
        for cin, cout in ((c0, c1), (c1, c2)):
            enc += [ResBlock3d(cin, cin, g, pad) for _ in range(nb)]
            enc.append(conv(cin, cout, stride=2))
        enc += [ResBlock3d(c2, c2, g, pad) for _ in range(nb)]
        self.encoder = nn.Sequential(*enc)
        self.subvoxel = bool(config.subvoxel and self.real)
        self._enc_split = nb + 1  # encoder layers before (and including) the first stride-2 convolution
        self._dec_split = 2 * nb + 2  # decoder layers up to the end of the 16^3 level
        self.enc_out = nn.Sequential(nn.GroupNorm(g, c2), nn.SiLU(), conv(c2, 2 * config.latent_channels))

        self.dec_in = conv(config.latent_channels, c2)
        dec: list[nn.Module] = [ResBlock3d(c2, c2, g, pad) for _ in range(nb)]
        for cin, cout in ((c2, c1), (c1, c0)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, cout)]
            dec += [ResBlock3d(cout, cout, g, pad) for _ in range(nb)]
        self.decoder = nn.Sequential(*dec)
        self.dec_norm = nn.GroupNorm(g, c0)
        self.dec_out = conv(c0, 2) if self.real else conv(c0 + nc, config.grid_channels)
        if self.subvoxel:
            self.enc_subvoxel = conv(2 * 8, c1)
            self.dec_subvoxel = nn.Sequential(nn.GroupNorm(g, c1), nn.SiLU(), conv(c1, 2 * 8))
            for layer in (self.enc_subvoxel, self.dec_subvoxel[-1]):  # start as no-ops
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        # closed-form metric head: six quadratic-form coefficients from the pooled latent
        self.metric_head = nn.Sequential(nn.Linear(config.latent_channels, c2), nn.SiLU(), nn.Linear(c2, 6))

    def _coords(self, batch: int, like: Tensor) -> Tensor:
        return self.coords.to(like.dtype).expand(batch, -1, -1, -1, -1)

    def metric_coefficients(self, grid: Tensor) -> Tensor:
        """Least-squares coefficients (B, 6) of the metric channel on the quadratic features."""
        with torch.autocast(grid.device.type, enabled=False):
            return grid[:, 2].float().flatten(1) @ self.metric_pinv.T

    def to_density(self, grid: Tensor) -> Tensor:
        """Structure-factor channels -> (B, 2, n, n, n) asinh-compressed Re/Im of the inverse FFT (the density)."""
        with torch.autocast(grid.device.type, enabled=False):
            re, im = expand_structure_factor(grid[:, 0].float(), grid[:, 1].float())
            F_h = torch.fft.ifftshift(torch.complex(re, im), dim=(-3, -2, -1))  # h = 0 at index 0
            rho = torch.fft.ifftn(F_h, dim=(-3, -2, -1)) / DENSITY_SCALE
            return torch.asinh(torch.stack([rho.real, rho.imag], dim=1))

    def from_density(self, y: Tensor) -> Tensor:
        """Inverse of :meth:`to_density`: (B, 2, n, n, n) -> compressed (Re F, Im F) channels (B, 2, n, n, n)."""
        with torch.autocast(y.device.type, enabled=False):
            y = y.float().clamp(-DENSITY_CLAMP, DENSITY_CLAMP)
            rho = torch.complex(torch.sinh(y[:, 0]), torch.sinh(y[:, 1])) * DENSITY_SCALE
            F_h = torch.fft.fftshift(torch.fft.fftn(rho, dim=(-3, -2, -1)), dim=(-3, -2, -1))
            re, im = compress_structure_factor(F_h.real, F_h.imag)
            return torch.stack([re, im], dim=1)

    def encode(self, grid: Tensor, check_finite: bool = True) -> LatentDistribution:
        """Posterior over latents (B, 64, 8, 8, 8) of a batch of grids (``check_finite=False`` skips the NaN/inf
        test, a host sync, for grids known to be finite)."""
        check_grid(grid, self.config.grid_size, self.config.grid_channels, finite=check_finite)
        if self.real:
            coef = self.metric_coefficients(grid)
            density = self.to_density(grid)
            x = torch.cat([density, coef[:, :, None, None, None].expand(-1, -1, *grid.shape[2:])], 1)
        else:
            x = torch.cat([grid, self._coords(grid.shape[0], grid)], dim=1)
        if self.subvoxel:
            h = self.encoder[: self._enc_split](self.enc_in(x)) + self.enc_subvoxel(space_to_depth(density))
            h = self.enc_out(self.encoder[self._enc_split :](h))
        else:
            h = self.enc_out(self.encoder(self.enc_in(x)))
        mean, logvar = h.chunk(2, dim=1)
        return LatentDistribution(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, latent: Tensor) -> Tensor:
        """Grid (B, 3, 32, 32, 32) of a batch of latents (B, 64, 8, 8, 8)."""
        c, n = self.config.latent_channels, self.config.grid_size // 4
        if latent.ndim != 5 or tuple(latent.shape[1:]) != (c, n, n, n):
            raise GridError(f"latent must have shape (B, {c}, {n}, {n}, {n}), got {tuple(latent.shape)}")
        if self.subvoxel:
            mid = self.decoder[: self._dec_split](self.dec_in(latent))
            h = F.silu(self.dec_norm(self.decoder[self._dec_split :](mid)))
            sf, residual = self.from_density(self.dec_out(h) + depth_to_space(self.dec_subvoxel(mid))), 0.0
        elif self.real:
            h = F.silu(self.dec_norm(self.decoder(self.dec_in(latent))))
            sf, residual = self.from_density(self.dec_out(h)), 0.0
        else:
            h = F.silu(self.dec_norm(self.decoder(self.dec_in(latent))))
            out = self.dec_out(torch.cat([h, self._coords(latent.shape[0], h)], dim=1)).float()
            sf, residual = out[:, :2], out[:, 2]
        # the lattice channel is assembled in float32 even under bf16 autocast: it must stay near-lossless
        with torch.autocast(latent.device.type, enabled=False):
            coef = self.metric_head(latent.float().mean(dim=(2, 3, 4)))  # (B, 6)
            metric = torch.einsum("bk,kxyz->bxyz", coef, self.coords[3:].float()) + residual
            return torch.cat([sf.float(), metric.unsqueeze(1)], dim=1)

    def forward(self, grid: Tensor, generator: torch.Generator | None = None,
                check_finite: bool = True) -> tuple[Tensor, LatentDistribution]:
        posterior = self.encode(grid, check_finite)
        return self.decode(posterior.sample(generator)), posterior

    @staticmethod
    def relative_residual(grid: Tensor, recon: Tensor) -> Tensor:
        """Per structure ||F_rec - F||^2 / ||F||^2 of the expanded structure factor (the decoder's measure)."""
        with torch.autocast(grid.device.type, enabled=False):
            re, im = expand_structure_factor(grid[:, 0].float(), grid[:, 1].float())
            re_r, im_r = expand_structure_factor(recon[:, 0].float(), recon[:, 1].float())
            num = ((re_r - re) ** 2 + (im_r - im) ** 2).flatten(1).sum(1)
            return num / (re**2 + im**2).flatten(1).sum(1).clamp_min(1e-12)

    def shell_log_power_error(self, grid: Tensor, recon: Tensor, shells: int = 8) -> Tensor:
        """Per structure, the mean over shells of ``log(P_rec / P)^2``, where P is the power sum |F(h)|^2 of the
        expanded structure factor over a shell of the Miller grid: F(000) alone, then ``shells`` shells of equal
        width in |h| (index units, out to the grid corner). Shape (B,).

        Why: the closed-form decoder tells elements apart by the fall-off of the form factors with |h|, and a few
        per cent of amplitude separate neighbouring elements (~1/Z). The compressed-channel MSE barely weighs that:
        the shipped VAE's reconstructions have F(000) a median 4.5 % low, too little power at low |h| and too much
        in the middle, and decode without a composition to the right formula 1 time in 40
        (``benchmarks/vae_element_identity.py``, docs/benchmarks.md). This term is zero exactly when every shell
        carries the true power, and a 5 % amplitude error costs about (2 ln 0.95)^2 = 0.01 per shell.
        """
        with torch.autocast(grid.device.type, enabled=False):
            re, im = expand_structure_factor(grid[:, 0].float(), grid[:, 1].float())
            re_r, im_r = expand_structure_factor(recon[:, 0].float(), recon[:, 1].float())
            power = (re**2 + im**2).flatten(1)
            power_r = (re_r**2 + im_r**2).flatten(1)
            radius = self.coords[:3].float().pow(2).sum(0).sqrt().flatten() / self.coords[:3].abs().amax()
            idx = torch.where(radius == 0, 0, 1 + (radius / radius.max() * shells).long().clamp_max(shells - 1))
            P = power.new_zeros(power.shape[0], shells + 1).index_add_(1, idx, power)
            P_r = power.new_zeros(power.shape[0], shells + 1).index_add_(1, idx, power_r)
            eps = 1e-6 * P[:, :1].clamp_min(1e-12)  # relative to F(000)^2: an empty shell adds nothing
            return (torch.log(P_r + eps) - torch.log(P + eps)).pow(2).mean(1)

    def loss(self, grid: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted reconstruction MSE + ``kl_weight`` * KL; returns the loss and its detached parts."""
        return self.loss_from(grid, *self(grid, generator))

    def loss_from(self, grid: Tensor, recon: Tensor, posterior: LatentDistribution,
                  shell_weight: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`loss` from a forward pass already made (e.g. through a DDP wrapper); ``shell_weight`` > 0 adds
        that multiple of :meth:`shell_log_power_error` (a training option, ``TrainConfig.vae_shell_weight``)."""
        err = (recon.float() - grid.float()).pow(2).mean(dim=(0, 2, 3, 4))  # per channel
        w = torch.tensor(self.config.channel_weights, device=err.device, dtype=err.dtype)
        kl = posterior.kl().float().mean()
        loss = (w * err).sum() / w.sum() + self.config.kl_weight * kl
        parts = {"mse_re": err[0], "mse_im": err[1], "mse_metric": err[2], "kl": kl}
        if self.config.residual_weight:
            parts["residual"] = self.relative_residual(grid, recon).mean()
            loss = loss + self.config.residual_weight * parts["residual"]
        if shell_weight:
            parts["shell"] = self.shell_log_power_error(grid, recon).mean()
            loss = loss + shell_weight * parts["shell"]
        return loss, {k: v.detach() for k, v in parts.items()}
