"""Layout and value scaling of the 32^3 x 3 reciprocal-space grid, shared by featurizer and decoder.

Layout: axis index i of each spatial dimension holds Miller index ``i - n/2`` (centered order, h in [-16, 15]
for n = 32); channels are ``(Re F', Im F', Q')``.

Scaling (elementwise, invertible, identical in NumPy and torch):

- structure factor: with z = F / F0 (F0 = 10 electrons), F' = z * asinh(|z|) / |z|. The phase is kept and the
  magnitude is compressed logarithmically, so F(000) of a 20-atom cell of heavy elements (~1500 e) maps to ~5.7
  while weak reflections stay linear. Inverse: z = F' * sinh(|F'|) / |F'|.
- metric: Q' = (1/d^2) / Q0 with Q0 = 16 1/Angstrom^2, linear so channel 2 stays an exact quadratic form in h.
"""

from __future__ import annotations

import numpy as np

#: default number of Miller indices per axis
GRID_SIZE = 32
#: structure-factor scale in electrons
F0 = 10.0
#: reciprocal-metric scale in 1/Angstrom^2
Q0 = 16.0
CHANNELS = ("re_F", "im_F", "inv_d2")


def _xp(x):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import torch

    return torch


def miller_axis(n: int = GRID_SIZE) -> np.ndarray:
    """Miller indices along one axis in grid order: ``[-n/2, ..., n/2 - 1]``.

    Raises
    ------
    GridError
        ``n`` is not an even integer >= 4 (a ``ValueError`` too).
    """
    from gpsk_materials.errors import GridError

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4 or n % 2:
        raise GridError(f"grid size must be an even integer >= 4, got {n!r}")
    return np.arange(-(n // 2), n // 2)


def miller_grid(n: int = GRID_SIZE) -> np.ndarray:
    """All Miller indices, shape (n, n, n, 3), in grid order."""
    ax = miller_axis(n)
    return np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)


def compress_structure_factor(re, im):
    """Map (Re F, Im F) in electrons to the stored channels; works on NumPy arrays and torch tensors."""
    xp = _xp(re)
    zr, zi = re / F0, im / F0
    mag = xp.sqrt(zr * zr + zi * zi)
    scale = xp.where(mag > 1e-12, xp.arcsinh(mag) / xp.where(mag > 1e-12, mag, 1.0), 1.0)
    return zr * scale, zi * scale


def expand_structure_factor(re_c, im_c):
    """Inverse of :func:`compress_structure_factor`: stored channels back to (Re F, Im F) in electrons."""
    xp = _xp(re_c)
    mag = xp.sqrt(re_c * re_c + im_c * im_c)
    scale = xp.where(mag > 1e-12, xp.sinh(mag) / xp.where(mag > 1e-12, mag, 1.0), 1.0)
    return re_c * scale * F0, im_c * scale * F0


def metric_design_matrix(n: int = GRID_SIZE) -> np.ndarray:
    """Rows ``[h^2, k^2, l^2, 2hk, 2hl, 2kl]`` for every grid point (n^3, 6): Q = D @ g* with
    g* = (G*11, G*22, G*33, G*12, G*13, G*23)."""
    h = miller_grid(n).reshape(-1, 3).astype(float)
    return np.stack(
        [h[:, 0] ** 2, h[:, 1] ** 2, h[:, 2] ** 2, 2 * h[:, 0] * h[:, 1], 2 * h[:, 0] * h[:, 2], 2 * h[:, 1] * h[:, 2]],
        axis=1,
    )
