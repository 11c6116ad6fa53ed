"""Guidance terms for the rectified-flow sampler: a differentiable loss of the predicted clean latent.

At each guided step the sampler (:func:`gpsk_materials.models.rectified_flow.sample`) forms the clean-latent
estimate x0 = x_t - t v, evaluates each term's loss on it and adds ``scale * g / rms(g)`` to the velocity, g the
gradient of the loss with respect to x0 (reconstruction guidance in the sense of Chung et al., "Diffusion posterior
sampling", ICLR 2023, with the Jacobian of x0 with respect to x_t taken as the identity, so the MMDiT is not
differentiated). Since x0 = x_t - t v, raising v along g lowers the loss of x0, and the Euler step x <- x + dt v
(dt < 0) moves x_t the same way. The gradient is normalised per sample, so ``scale`` is in units of the
normalised latent's standard deviation per unit time: 0.1-1 is a gentle to strong push. No retraining is needed.

Terms here decode x0 with the model's own VAE decoder to a reciprocal grid:

* :class:`PatternGuidance`: 1 - cos^2 between the grid's powder profile (:func:`~gpsk_materials.diffraction.pattern.grid_reflections`
  rendered with broad pseudo-Voigt peaks) and the measured profile with its background removed; the distance is
  the scale-free least-squares misfit (min over s of |y - s p|^2 / |y|^2).
* :class:`VolumeGuidance`: (ln V - ln V_target)^2 with V the cell volume of the grid's metric channel (least
  squares for G*, V = det(G*)^(-1/2)), the volume term of an energy; the potential's own energy is not offered,
  because the closed-form decoder that turns a grid into atoms (peak peeling) is not differentiable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpsk_materials.diffraction.pattern import PowderPattern, grid_reflections, render_profile
from gpsk_materials.errors import ConditioningError
from gpsk_materials.representations import grid as G


class GuidanceTerm:
    """A differentiable loss of the predicted clean latent that the sampler descends.

    Parameters
    ----------
    scale : float
        Strength (>= 0), in units of the normalised latent's standard deviation per unit time.
    interval : (float, float)
        Flow times t (1 = noise, 0 = data) at which the term acts; the x0 estimate is meaningless near t = 1.
    """

    def __init__(self, scale: float, interval: tuple[float, float] = (0.0, 0.8)) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ConditioningError(f"guidance scale must be a finite number >= 0, got {scale!r}")
        lo, hi = interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConditioningError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {interval!r}")
        self.scale = float(scale)
        self.interval = (float(lo), float(hi))

    def active(self, t: float) -> bool:
        return self.scale > 0 and self.interval[0] <= t <= self.interval[1]

    def loss(self, x0: Tensor, t: Tensor) -> Tensor:
        """Per-sample loss (B,) of normalised clean latents x0 (B, C, n, n, n)."""
        raise NotImplementedError

    def __call__(self, x0: Tensor, t: Tensor) -> Tensor:
        return self.loss(x0, t)


class _DecodedGridTerm(GuidanceTerm):
    """A term computed on the grid that the model's VAE decodes from x0."""

    def __init__(self, model: Any, scale: float, interval: tuple[float, float] = (0.0, 0.8)) -> None:
        super().__init__(scale, interval)
        self.model = model

    def grid(self, x0: Tensor) -> Tensor:
        return self.model.vae.decode(self.model.denormalize_latents(x0)).float()


def remove_background(pattern: PowderPattern, axis: np.ndarray, window: float = 3.0, fwhm: float = 0.0) -> np.ndarray:
    """The measured profile resampled on ``axis`` minus a smooth lower envelope (a running minimum over ``window``
    degrees, smoothed by a running mean of the same width; scipy.ndimage), clipped at 0, blurred by a Gaussian of
    ``fwhm`` degrees (the guidance's own peak width, so that both profiles are equally broad) and scaled to max 1."""
    from scipy.ndimage import gaussian_filter1d, minimum_filter1d, uniform_filter1d

    y = np.interp(axis, pattern.two_theta, pattern.intensity, left=np.nan, right=np.nan)
    inside = np.isfinite(y)
    y = np.where(inside, y, 0.0)
    step = float(np.median(np.diff(axis)))
    size = max(3, int(round(window / step)) | 1)
    base = uniform_filter1d(minimum_filter1d(np.where(inside, y, y[inside].max()), size, mode="nearest"), size,
                            mode="nearest")
    out = np.clip(y - base, 0.0, None) * inside
    if fwhm > 0:
        out = gaussian_filter1d(out, fwhm / 2.3548 / step, mode="constant")
    return out / max(out.max(), 1e-12)


class PatternGuidance(_DecodedGridTerm):
    """Pull samples toward a measured powder pattern (see the module docstring).

    Parameters
    ----------
    model : GPSKModel
    pattern : PowderPattern or anything :meth:`PowderPattern.coerce` accepts
    scale, interval
        See :class:`GuidanceTerm`.
    fwhm : (float, float)
        Width of the guidance's peaks, degrees, at t = 0 and at the top of ``interval`` (linear in between):
        broader than the measured peaks, so that a predicted peak a little off its measured position still
        overlaps it (a smooth loss landscape); the measured profile is blurred to the same width.
    eta : float
        Lorentzian fraction of the guidance's peaks (default 0: Gaussian, matching the blur of the target).
    step : float
        2theta step of the guidance's axis, degrees.
    """

    def __init__(self, model: Any, pattern: Any, scale: float = 0.5, interval: tuple[float, float] = (0.0, 0.8),
                 fwhm: tuple[float, float] = (0.5, 3.0), step: float = 0.05, eta: float = 0.0) -> None:
        super().__init__(model, scale, interval)
        self.pattern = PowderPattern.coerce(pattern)
        lo, hi = self.pattern.two_theta_range
        self.axis = np.arange(lo, hi + step / 2, step)
        fw = (float(fwhm), float(fwhm)) if isinstance(fwhm, (int, float)) else (float(fwhm[0]), float(fwhm[1]))
        if not 0 < fw[0] <= fw[1]:
            raise ConditioningError(f"guidance fwhm must be positive, (at t = 0, at the top of the interval), got {fwhm!r}")
        self.fwhm, self.eta = fw, float(eta)
        self._targets: dict[float, np.ndarray] = {}

    def width(self, t: float) -> float:
        """Peak FWHM (degrees) at flow time t: from ``fwhm[1]`` at the top of the interval to ``fwhm[0]`` at t = 0,
        linearly, rounded to 0.1 deg (coarse to fine: early, broad peaks overlap even when the cell is a few
        percent off)."""
        top = max(self.interval[1], 1e-6)
        w = self.fwhm[0] + (self.fwhm[1] - self.fwhm[0]) * min(max(t / top, 0.0), 1.0)
        return round(w, 1) if w >= 0.1 else w

    def target(self, fwhm: float) -> np.ndarray:
        """The background-free measured profile blurred to ``fwhm`` degrees (cached)."""
        if fwhm not in self._targets:
            self._targets[fwhm] = remove_background(self.pattern, self.axis, fwhm=fwhm)
        return self._targets[fwhm]

    def profiles(self, grid: Tensor, fwhm: float | None = None) -> Tensor:
        """Powder profiles (B, N) of grids (B, 3, n, n, n) on the guidance axis, peaks of ``fwhm`` degrees
        (default the final width)."""
        axis = torch.as_tensor(self.axis, dtype=grid.dtype, device=grid.device)
        tt, inten = grid_reflections(grid, self.pattern.wavelength, (float(self.axis[0]), float(self.axis[-1])))
        return render_profile(axis, tt, inten, self.fwhm[0] if fwhm is None else fwhm, self.eta)

    def distance(self, grid: Tensor, fwhm: float | None = None) -> Tensor:
        """1 - cos^2(profile, target) per grid (B,): 0 for a perfect match up to scale, 1 for no overlap."""
        fwhm = self.fwhm[0] if fwhm is None else fwhm
        p = self.profiles(grid, fwhm)
        y = torch.as_tensor(self.target(fwhm), dtype=p.dtype, device=p.device)
        num = (p * y).sum(1) ** 2
        den = (p * p).sum(1) * (y * y).sum() + 1e-30
        return 1.0 - num / den

    def loss(self, x0: Tensor, t: Tensor) -> Tensor:
        return self.distance(self.grid(x0), self.width(float(t[0])))


class VolumeGuidance(_DecodedGridTerm):
    """Pull the cell volume of samples toward ``volume`` (A^3 per cell of the requested content).

    Parameters
    ----------
    model : GPSKModel
    volume : float
        Target volume of the generated cell, A^3 (e.g. the number of atoms times a volume per atom).
    scale, interval
        See :class:`GuidanceTerm`.
    """

    def __init__(self, model: Any, volume: float, scale: float = 0.5, interval: tuple[float, float] = (0.0, 0.8)) -> None:
        super().__init__(model, scale, interval)
        if isinstance(volume, bool) or not isinstance(volume, (int, float)) or not math.isfinite(volume) or volume <= 0:
            raise ConditioningError(f"target volume must be a positive number of A^3, got {volume!r}")
        self.volume = float(volume)
        n = model.config.vae.grid_size
        self._pinv = torch.as_tensor(np.linalg.pinv(G.metric_design_matrix(n)), dtype=torch.float32)

    def volumes(self, grid: Tensor) -> Tensor:
        """Cell volumes (B,), A^3, of the metric channel of grids (B, 3, n, n, n)."""
        q = grid[:, 2].flatten(1) * G.Q0
        c = q @ self._pinv.to(q.device, q.dtype).T  # (B, 6): G*11, G*22, G*33, G*12, G*13, G*23
        gs = torch.stack([torch.stack([c[:, 0], c[:, 3], c[:, 4]], -1), torch.stack([c[:, 3], c[:, 1], c[:, 5]], -1),
                          torch.stack([c[:, 4], c[:, 5], c[:, 2]], -1)], -2)
        return torch.linalg.det(gs).clamp_min(1e-12).rsqrt()

    def loss(self, x0: Tensor, t: Tensor) -> Tensor:
        return (torch.log(self.volumes(self.grid(x0))) - math.log(self.volume)) ** 2


__all__ = ["GuidanceTerm", "PatternGuidance", "VolumeGuidance", "remove_background"]
