"""Batched torch engine of the closed-form grid decoder (CPU or CUDA).

The metric channel gives the lattice by linear least squares. Sites come from reciprocal-space peeling:
take the strongest peak of the residual density, refine it on the continuous Fourier series (Newton steps),
choose the element whose form-factor curve best explains the residual there, subtract that atom's exact
contribution to F, and repeat; then polish all positions jointly (Gauss-Newton) and try element swaps.

Sums over Miller indices run over the Friedel half of the symmetric block [-n/2+1, n/2-1]^3 with weight 2
(1 for h = 0): for Friedel-symmetric F every real quantity Re sum conj(T) R is twice its half-space sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from gpsk_materials.representations import grid as G
from gpsk_materials.representations.form_factors import torch_coefficient_table

TWO_PI = 2 * np.pi


@lru_cache(maxsize=8)
def _half_space(n: int):
    """Indices of the Friedel half of the symmetric block, their mirror indices, and the weights."""
    hkl = G.miller_grid(n).reshape(-1, 3)
    sym = np.all(np.abs(hkl) <= n // 2 - 1, axis=1)
    key = hkl[:, 2] * n * n + hkl[:, 1] * n + hkl[:, 0]
    half = sym & (key >= 0)
    idx = np.flatnonzero(half)
    mirror_hkl = -hkl[idx]
    off = n // 2
    mirror = ((mirror_hkl[:, 0] + off) * n + (mirror_hkl[:, 1] + off)) * n + (mirror_hkl[:, 2] + off)
    weight = np.where(key[idx] == 0, 1.0, 2.0)
    return idx, mirror, weight, hkl[idx]


@dataclass
class Engine:
    """Device-resident constants for one grid size."""

    n: int
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self):
        idx, mirror, weight, hkl = _half_space(self.n)
        dev, dt = self.device, self.dtype
        self.idx = torch.as_tensor(idx, device=dev)
        self.mirror = torch.as_tensor(mirror, device=dev)
        self.w = torch.as_tensor(weight, device=dev, dtype=dt)
        self.hkl = torch.as_tensor(hkl, device=dev, dtype=dt)  # (M, 3)
        self.hkl_int = torch.as_tensor(hkl, device=dev, dtype=torch.long)
        design = torch.as_tensor(G.metric_design_matrix(self.n), device=dev, dtype=torch.float64)
        self.metric_pinv = torch.linalg.pinv(design).to(dt)  # (6, n^3)
        self.table = torch_coefficient_table(dev, dt)
        self.fft_index = ((self.hkl_int + self.n) % self.n)  # FFT-order position of each half-space h
        self.fft_mirror = ((-self.hkl_int + self.n) % self.n)

    # ----------------------------------------------------------------- lattice
    def fit_metric(self, q: torch.Tensor) -> torch.Tensor:
        """Least-squares reciprocal metric (B, 3, 3) from the 1/d^2 channel (B, n^3) in 1/A^2."""
        g = q @ self.metric_pinv.T  # (B, 6)
        return torch.stack(
            [torch.stack([g[:, 0], g[:, 3], g[:, 4]], -1),
             torch.stack([g[:, 3], g[:, 1], g[:, 5]], -1),
             torch.stack([g[:, 4], g[:, 5], g[:, 2]], -1)], 1)

    def s2(self, gstar: torch.Tensor) -> torch.Tensor:
        """(sin theta / lambda)^2 = h^T G* h / 4 on the half space, (B, M)."""
        return torch.einsum("mi,bij,mj->bm", self.hkl, gstar, self.hkl) / 4.0

    def form_factors(self, z: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """f_z(s) for atomic numbers z (B, P) on the half space -> (B, P, M)."""
        coef = self.table[z]  # (B, P, 11)
        f = coef[..., 10, None].expand(*z.shape, s2.shape[-1]).clone()
        for g in range(5):
            f += coef[..., g, None] * torch.exp(-coef[..., 5 + g, None] * s2[:, None, :])
        return f

    # ----------------------------------------------------------------- Fourier helpers
    def phases(self, x: torch.Tensor) -> torch.Tensor:
        """e^{2 pi i h.x} on the half space for positions x (..., 3) -> (..., M)."""
        ang = TWO_PI * torch.einsum("...i,mi->...m", x, self.hkl)
        return torch.polar(torch.ones_like(ang), ang)

    def density(self, R: torch.Tensor) -> torch.Tensor:
        """Real-space density (B, n, n, n) of a half-space structure factor R (B, M), rho(x) = sum F e^{-2 pi i h.x}."""
        B = R.shape[0]
        full = torch.zeros((B, self.n, self.n, self.n), dtype=R.dtype, device=R.device)
        i, m = self.fft_index, self.fft_mirror
        full[:, i[:, 0], i[:, 1], i[:, 2]] = R
        full[:, m[:, 0], m[:, 1], m[:, 2]] = R.conj()
        return torch.fft.fftn(full, dim=(1, 2, 3)).real

    def newton(self, R: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, steps: int) -> torch.Tensor:
        """Maximise c(x) = Re sum_h w_h wt_h R(h) e^{-2 pi i h.x} from x (B, 3) by Newton steps."""
        max_step = 0.5 / self.n
        for _ in range(steps):
            Z = R * self.phases(x).conj() * self.w
            if weight is not None:
                Z = Z * weight
            zh = Z @ self.hkl.to(Z.dtype)  # (B, 3)
            grad = TWO_PI * zh.imag
            hess = -(TWO_PI**2) * torch.einsum("bm,mi,mj->bij", Z.real, self.hkl, self.hkl)
            eye = torch.eye(3, device=x.device, dtype=x.dtype)
            # at a maximum the Hessian is negative definite; otherwise fall back to a short gradient step
            evals = torch.linalg.eigvalsh(hess)
            ok = (evals.max(-1).values < 0)[:, None]
            safe = torch.where(ok[:, :, None], hess, -eye * (hess.abs().amax((1, 2), keepdim=True) + 1e-12))
            step = -torch.linalg.solve(safe, grad[..., None])[..., 0]
            step = step.clamp(-max_step, max_step)
            x = x + step
        return x % 1.0


def lattice_parameters(gstar: np.ndarray) -> np.ndarray:
    """(a, b, c, alpha, beta, gamma) from reciprocal metrics (B, 3, 3); NaN rows where not positive definite."""
    out = np.full((len(gstar), 6), np.nan)
    for i, gs in enumerate(gstar):
        if not np.all(np.isfinite(gs)) or np.linalg.eigvalsh(gs).min() <= 0:
            continue
        g = np.linalg.inv(gs)
        a, b, c = np.sqrt(np.diag(g))
        al = np.degrees(np.arccos(np.clip(g[1, 2] / (b * c), -1, 1)))
        be = np.degrees(np.arccos(np.clip(g[0, 2] / (a * c), -1, 1)))
        ga = np.degrees(np.arccos(np.clip(g[0, 1] / (a * b), -1, 1)))
        out[i] = (a, b, c, al, be, ga)
    return out
