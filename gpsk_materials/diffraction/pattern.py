"""Powder X-ray diffraction profiles: measured patterns in, differentiable simulated profiles out.

A powder pattern is the sum over reflections h of ``|F(h)|^2 * LP(2theta_h)`` placed at the Bragg angle of its
d-spacing and spread by a peak shape. Summing over every reflection of the full Miller set (h and -h, and all
symmetry-equivalent h) gives the multiplicities without listing them.

* Bragg's law: ``lambda = 2 d sin(theta)``, with ``1/d^2 = h^T G* h`` (the grid's metric channel).
* Lorentz-polarization factor of an unpolarised beam without monochromator,
  ``LP = (1 + cos^2 2theta) / (sin^2 theta cos theta)`` (International Tables for Crystallography Vol. C, 6.2.5;
  the same expression as pymatgen's ``XRDCalculator``).
* Peak shape: area-normalised pseudo-Voigt ``eta L + (1 - eta) G`` of full width at half maximum H (Thompson, Cox
  & Hastings, J. Appl. Cryst. 20 (1987) 79), H from the Caglioti relation ``H^2 = U tan^2 theta + V tan theta + W``
  (Caglioti, Paoletti & Ricci, Nucl. Instrum. 3 (1958) 223); a constant width is ``U = V = 0, W = H^2``.
* Structure factors use the package's Waasmaier-Kirfel form factors
  (:mod:`gpsk_materials.representations.form_factors`); pymatgen uses its own table, so relative intensities agree
  with ``XRDCalculator`` to a few percent, and peak positions exactly (tests/test_diffraction.py states the bounds).

Everything that takes a tensor is torch and differentiable with respect to the grid (positions through the metric
channel, intensities through the structure-factor channels); the same renderer serves the least-squares
refinement of finished candidates (:mod:`gpsk_materials.diffraction.refine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpsk_materials.errors import DiffractionError
from gpsk_materials.representations import grid as G

#: default radiation (pymatgen's ``"CuKa"``, the Ka1/Ka2 weighted mean, 1.54184 A)
DEFAULT_WAVELENGTH = "CuKa"
#: 2theta range of simulated patterns when the caller gives none, degrees (pymatgen's default upper end)
DEFAULT_TWO_THETA_RANGE = (5.0, 90.0)
#: sampling step of a profile rendered from a stick pattern, degrees
DEFAULT_STEP = 0.02
#: full width at half maximum of peaks rendered from a stick pattern, degrees (a laboratory diffractometer)
DEFAULT_FWHM = 0.1
#: pseudo-Voigt Lorentzian fraction used when none is given
DEFAULT_ETA = 0.5
#: a peak is evaluated within this many FWHM of its centre (the Lorentzian is 0.7 % of its height at 6 FWHM)
WINDOW_FWHM = 6.0
#: wavelengths accepted as numbers, Angstrom (hard X-rays from Ag Kb to Cr Ka)
WAVELENGTH_BOUNDS = (0.3, 3.0)


def wavelengths() -> dict[str, float]:
    """Named X-ray lines, Angstrom: pymatgen's ``WAVELENGTHS`` table (``"CuKa"``, ``"MoKa1"``, ...)."""
    from pymatgen.analysis.diffraction.xrd import WAVELENGTHS

    return dict(WAVELENGTHS)


def resolve_wavelength(wavelength: str | float | None) -> float:
    """Wavelength in Angstrom of a line name (pymatgen's table) or a number; None is Cu Ka.

    Raises
    ------
    DiffractionError
        An unknown line name, or a number that is not finite or outside ``WAVELENGTH_BOUNDS`` (0.3-3 A).
    """
    if wavelength is None:
        wavelength = DEFAULT_WAVELENGTH
    if isinstance(wavelength, str):
        table = wavelengths()
        if wavelength not in table:
            raise DiffractionError(f"unknown wavelength {wavelength!r}: give a number in Angstrom or one of "
                                   f"{', '.join(sorted(table))}")
        return float(table[wavelength])
    if isinstance(wavelength, bool) or not isinstance(wavelength, (int, float, np.integer, np.floating)):
        raise DiffractionError(f"wavelength must be a line name or a number in Angstrom, got {wavelength!r}")
    lo, hi = WAVELENGTH_BOUNDS
    if not math.isfinite(float(wavelength)) or not lo <= float(wavelength) <= hi:
        raise DiffractionError(f"wavelength {wavelength!r} A is outside the X-ray range {lo}-{hi} A")
    return float(wavelength)


@dataclass
class PowderPattern:
    """A measured (or simulated) powder profile: intensities on an increasing 2theta axis.

    Attributes
    ----------
    two_theta : ndarray (N,)
        Diffraction angles 2theta, degrees, strictly increasing, in (0, 180).
    intensity : ndarray (N,)
        Counts or any linear intensity scale, >= 0.
    wavelength : float
        Angstrom.
    """

    two_theta: np.ndarray
    intensity: np.ndarray
    wavelength: float

    def __post_init__(self) -> None:
        self.wavelength = resolve_wavelength(self.wavelength)
        x = np.asarray(self.two_theta, dtype=float)
        y = np.asarray(self.intensity, dtype=float)
        if x.ndim != 1 or y.ndim != 1:
            raise DiffractionError(f"2theta and intensity must be 1-D arrays, got shapes {x.shape} and {y.shape}")
        if x.shape != y.shape:
            raise DiffractionError(f"2theta has {x.size} points but intensity has {y.size}: they must have the same "
                                   "length")
        if x.size < 10:
            raise DiffractionError(f"a powder profile needs at least 10 points, got {x.size}")
        for name, a in (("2theta", x), ("intensity", y)):
            bad = np.flatnonzero(~np.isfinite(a))
            if bad.size:
                raise DiffractionError(f"{name} is not finite at index {int(bad[0])} ({bad.size} points in all)")
        neg = np.flatnonzero(y < 0)
        if neg.size:
            raise DiffractionError(f"intensity is negative at index {int(neg[0])} (2theta = {x[neg[0]]:.3f} deg, "
                                   f"{y[neg[0]]:g}; {neg.size} points in all): give raw counts, not a "
                                   "background-subtracted profile")
        if not np.all(np.diff(x) > 0):
            i = int(np.flatnonzero(np.diff(x) <= 0)[0])
            raise DiffractionError(f"2theta must be strictly increasing; index {i + 1} ({x[i + 1]:g}) follows "
                                   f"{x[i]:g}")
        if x[0] <= 0 or x[-1] >= 180:
            raise DiffractionError(f"2theta must lie in (0, 180) degrees, got {x[0]:g}..{x[-1]:g}")
        if not y.max() > 0:
            raise DiffractionError("the intensity is zero everywhere")
        self.two_theta, self.intensity = np.ascontiguousarray(x), np.ascontiguousarray(y)

    @property
    def two_theta_range(self) -> tuple[float, float]:
        return float(self.two_theta[0]), float(self.two_theta[-1])

    @classmethod
    def from_sticks(cls, two_theta: Any, intensity: Any, wavelength: str | float | None = None,
                    two_theta_range: tuple[float, float] | None = None, step: float = DEFAULT_STEP,
                    fwhm: float = DEFAULT_FWHM, eta: float = DEFAULT_ETA) -> PowderPattern:
        """Render a stick pattern (peak positions and integrated intensities) as a profile: pseudo-Voigt peaks of
        ``fwhm`` degrees on a ``step`` degree axis over ``two_theta_range`` (default: 5 deg, or below the first
        peak, to 90 deg, or past the last)."""
        x = np.asarray(two_theta, dtype=float).reshape(-1)
        y = np.asarray(intensity, dtype=float).reshape(-1)
        if x.shape != y.shape:
            raise DiffractionError(f"{x.size} peak positions but {y.size} intensities: they must have the same length")
        if x.size == 0 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)) or np.any(y < 0):
            raise DiffractionError("a stick pattern needs at least one peak, finite positions and intensities >= 0")
        if two_theta_range is None:
            two_theta_range = (min(DEFAULT_TWO_THETA_RANGE[0], max(x.min() - 2.0, 1.0)),
                               max(DEFAULT_TWO_THETA_RANGE[1], min(x.max() + 2.0, 179.0)))
        axis = np.arange(two_theta_range[0], two_theta_range[1] + step / 2, step)
        prof = render_profile(torch.as_tensor(axis), torch.as_tensor(x)[None], torch.as_tensor(y)[None],
                              fwhm=fwhm, eta=eta)[0].numpy()
        return cls(axis, prof, wavelength)

    @classmethod
    def from_file(cls, path: str | Path, wavelength: str | float | None = None) -> PowderPattern:
        """Read a two-column text pattern (``.xy``, ``.xye``, ``.csv``: 2theta in degrees, intensity; further
        columns ignored; lines starting with ``#`` or ``!`` skipped)."""
        path = Path(path)
        if not path.is_file():
            raise DiffractionError(f"pattern file {path} does not exist")
        rows = []
        for i, line in enumerate(path.read_text(errors="replace").splitlines()):
            line = line.strip()
            if not line or line[0] in "#!;":
                continue
            parts = line.replace(",", " ").split()
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                if rows:  # a header is fine, garbage inside the data is not
                    raise DiffractionError(f"{path}, line {i + 1}: expected two numbers, got {line[:60]!r}") from None
        if not rows:
            raise DiffractionError(f"{path} holds no two-column data")
        arr = np.asarray(rows)
        return cls(arr[:, 0], arr[:, 1], wavelength)

    @classmethod
    def coerce(cls, obj: Any, wavelength: str | float | None = None) -> PowderPattern:
        """A :class:`PowderPattern` from what a user has: a PowderPattern, a pymatgen ``DiffractionPattern`` (the
        sticks of ``XRDCalculator().get_pattern``, rendered with :meth:`from_sticks`), a pair ``(two_theta,
        intensity)`` or a triple ``(two_theta, intensity, wavelength)``, a dict with those keys, or a path to a two-column file. ``wavelength`` overrides the
        pattern's own (default Cu Ka).

        Raises
        ------
        DiffractionError
            Anything else, or arrays that fail the checks of the class.
        """
        from pymatgen.analysis.diffraction.core import DiffractionPattern

        if isinstance(obj, PowderPattern):
            return obj if wavelength is None else cls(obj.two_theta, obj.intensity, wavelength)
        if isinstance(obj, DiffractionPattern):
            return cls.from_sticks(obj.x, obj.y, wavelength)
        if isinstance(obj, (str, Path)):
            return cls.from_file(obj, wavelength)
        if isinstance(obj, dict):
            try:
                x, y = obj["two_theta"], obj["intensity"]
            except KeyError as exc:
                raise DiffractionError(f"a pattern dict needs keys 'two_theta' and 'intensity', missing {exc}") from None
            return cls(x, y, obj.get("wavelength", wavelength) if wavelength is None else wavelength)
        if isinstance(obj, (tuple, list)) and len(obj) in (2, 3):
            return cls(obj[0], obj[1], obj[2] if len(obj) == 3 and wavelength is None else wavelength)
        raise DiffractionError(f"diffraction must be a PowderPattern, a pymatgen DiffractionPattern, a pair "
                               f"(two_theta, intensity) or a pattern file, got {type(obj).__name__}")

    def as_dict(self) -> dict:
        return {"two_theta": self.two_theta.tolist(), "intensity": self.intensity.tolist(),
                "wavelength": self.wavelength}

    def write(self, path: str | Path) -> None:
        """Write a two-column ``.xy`` file (atomically: a temporary file renamed into place)."""
        from gpsk_materials.atomic_files import write_atomic

        write_atomic(path, lambda tmp: np.savetxt(
            tmp, np.column_stack([self.two_theta, self.intensity]), fmt="%.5f",
            header=f"2theta(deg) intensity; wavelength {self.wavelength:.5f} A"))


# ---------------------------------------------------------------------------------------------- torch kernels
def bragg_two_theta(inv_d2: Tensor, wavelength: float) -> tuple[Tensor, Tensor]:
    """2theta in degrees from 1/d^2 (1/A^2) by Bragg's law, and the mask of reflections that exist
    (``0 < lambda / (2d) < 1``); masked entries get 2theta = 0."""
    pos = inv_d2 > 0
    sin_t = 0.5 * wavelength * torch.sqrt(torch.where(pos, inv_d2, torch.ones_like(inv_d2)))  # finite gradients
    ok = pos & (sin_t < 1.0)
    theta = torch.asin(torch.where(ok, sin_t, torch.zeros_like(sin_t)))
    return torch.rad2deg(2.0 * theta), ok


def lorentz_polarization(two_theta: Tensor) -> Tensor:
    """LP = (1 + cos^2 2theta) / (sin^2 theta cos theta), 2theta in degrees (International Tables Vol. C, 6.2.5;
    pymatgen's ``XRDCalculator``)."""
    tt = torch.deg2rad(two_theta)
    th = 0.5 * tt
    return (1.0 + torch.cos(tt) ** 2) / (torch.sin(th) ** 2 * torch.cos(th)).clamp_min(1e-12)


def caglioti_fwhm(two_theta: Tensor, u: float | Tensor = 0.0, v: float | Tensor = 0.0,
                  w: float | Tensor = DEFAULT_FWHM ** 2) -> Tensor:
    """Peak FWHM in degrees, H = sqrt(U tan^2 theta + V tan theta + W) (Caglioti et al. 1958), floored at 1e-3."""
    t = torch.tan(torch.deg2rad(0.5 * two_theta))
    return torch.sqrt((u * t * t + v * t + w).clamp_min(1e-6))


def pseudo_voigt(dx: Tensor, fwhm: Tensor, eta: float | Tensor) -> Tensor:
    """Area-normalised pseudo-Voigt eta L + (1 - eta) G at offsets ``dx`` (degrees) for FWHM ``fwhm`` (degrees)."""
    z = dx / fwhm
    gauss = (2.0 * math.sqrt(math.log(2.0) / math.pi)) / fwhm * torch.exp(-4.0 * math.log(2.0) * z * z)
    lorentz = (2.0 / math.pi) / fwhm / (1.0 + 4.0 * z * z)
    return eta * lorentz + (1.0 - eta) * gauss


def render_profile(axis: Tensor, positions: Tensor, intensities: Tensor, fwhm: float | Tensor = DEFAULT_FWHM,
                   eta: float | Tensor = DEFAULT_ETA) -> Tensor:
    """Sum of pseudo-Voigt peaks on a 2theta axis.

    Parameters
    ----------
    axis : Tensor (N,)
        Increasing 2theta values, degrees.
    positions, intensities : Tensor (B, P)
        Peak centres (degrees) and integrated intensities; a zero intensity is no peak.
    fwhm : float or Tensor broadcastable to (B, P)
        Full width at half maximum, degrees (per peak for a Caglioti width).
    eta : float or Tensor
        Lorentzian fraction in [0, 1].

    Returns
    -------
    Tensor (B, N)
        The profile; each peak is evaluated on the axis points within ``WINDOW_FWHM`` widths of its centre and
        scattered into place (differentiable with respect to positions, intensities, widths and eta).
    """
    axis = axis.to(positions.dtype)
    b, p = positions.shape
    fwhm_t = torch.as_tensor(fwhm, dtype=positions.dtype, device=positions.device).expand(b, p)
    out = torch.zeros((b, axis.numel()), dtype=positions.dtype, device=positions.device)
    if p == 0 or axis.numel() == 0:
        return out
    half = WINDOW_FWHM * fwhm_t.detach()
    lo = torch.searchsorted(axis, (positions.detach() - half).contiguous())
    hi = torch.searchsorted(axis, (positions.detach() + half).contiguous())
    width = int((hi - lo).max().item()) if p else 0
    if width <= 0:
        return out
    idx = lo[..., None] + torch.arange(width, device=axis.device)
    inside = idx < hi[..., None]
    idx = idx.clamp_max(axis.numel() - 1)
    dx = axis[idx] - positions[..., None]
    vals = intensities[..., None] * pseudo_voigt(dx, fwhm_t[..., None], eta) * inside
    return out.scatter_add(1, idx.reshape(b, -1), vals.reshape(b, -1))


# ---------------------------------------------------------------------------------------------- reflections
def grid_reflections(grid: Tensor, wavelength: float,
                     two_theta_range: tuple[float, float] = DEFAULT_TWO_THETA_RANGE) -> tuple[Tensor, Tensor]:
    """Powder reflections of a batch of reciprocal grids: every Miller point of the symmetric block
    ``[-n/2 + 1, n/2 - 1]^3`` except 000 is one reflection (Friedel pairs and symmetry-equivalent reflections each
    count, which is the multiplicity).

    Parameters
    ----------
    grid : Tensor (B, 3, n, n, n) or (3, n, n, n)
        Scaled channels (Re F', Im F', Q') as the featurizer writes them (:mod:`gpsk_materials.representations.grid`).
    wavelength : float
        Angstrom.
    two_theta_range : (float, float)
        Degrees; reflections outside get zero intensity.

    Returns
    -------
    two_theta, intensity : Tensor (B, P)
        Bragg angles (degrees) and ``|F|^2 LP`` (electrons^2), zero where a reflection does not exist or lies
        outside the range; P is the number of grid points inside the range for some grid of the batch.
        Reflections beyond the grid (|h| > n/2 - 1) are missing: for Cu Ka to 90 deg this needs cells with
        d100 below about 16 A, which the featurizer's resolution limit already implies for most cells.
    """
    if grid.ndim == 4:
        grid = grid[None]
    if grid.ndim != 5 or grid.shape[1] != 3:
        from gpsk_materials.errors import GridError

        raise GridError(f"grid must have shape (B, 3, n, n, n), got {tuple(grid.shape)}")
    block = grid[:, :, 1:, 1:, 1:].flatten(2)  # h in [-n/2 + 1, n/2 - 1]
    centre = (block.shape[-1] - 1) // 2  # index of 000 in the flattened symmetric block
    # |F| = F0 sinh(|F'|) (the inverse of the grid's scaling); a floored square root keeps gradients finite at F = 0
    mag = torch.sqrt((block[:, 0] ** 2 + block[:, 1] ** 2).clamp_min(1e-20))
    f2_all = (G.F0 * torch.sinh(mag)) ** 2
    q = block[:, 2] * G.Q0
    two_theta, ok = bragg_two_theta(q, wavelength)
    ok = ok & (two_theta >= two_theta_range[0]) & (two_theta <= two_theta_range[1])
    ok[:, centre] = False
    keep = ok.detach().any(0).nonzero().squeeze(1)
    two_theta, ok = two_theta[:, keep], ok[:, keep]
    f2 = f2_all[:, keep]
    intensity = torch.where(ok, f2 * lorentz_polarization(torch.where(ok, two_theta, torch.full_like(two_theta, 90.0))),
                            torch.zeros_like(f2))
    return two_theta, intensity


@dataclass
class Reflections:
    """The reflections of one structure for powder work: Miller indices of its cell (one of each Friedel pair,
    counted twice) and their ``|F|^2``, computed once at the structure's own lattice.

    Attributes
    ----------
    hkl : ndarray (P, 3) int
    f2 : ndarray (P,)
        ``|F(hkl)|^2`` in electrons^2 times the Friedel weight 2.
    """

    hkl: np.ndarray
    f2: np.ndarray

    @classmethod
    def from_structure(cls, structure: Any, wavelength: float, max_two_theta: float = DEFAULT_TWO_THETA_RANGE[1],
                       margin: float = 1.1) -> Reflections:
        """Reflections of a pymatgen ``Structure`` up to ``max_two_theta`` (degrees), with 1/d up to ``margin``
        times the limit so that a refined lattice keeps its reflections near the upper end.

        F(h) = sum_j occ_j f_j(s) exp(2 pi i h . x_j) with the Waasmaier-Kirfel f_j; no thermal factor, no
        anomalous dispersion (as the grid).

        Raises
        ------
        UnknownElementError
            A species without form factor (dummy species, Z > 98).
        """
        max_r = min(2.0, 2.0 * math.sin(math.radians(min(max_two_theta, 179.0) / 2.0)) / wavelength * margin)
        recip = structure.lattice.reciprocal_lattice_crystallographic
        pts = recip.get_points_in_sphere([[0.0, 0.0, 0.0]], [0.0, 0.0, 0.0], max_r)
        hkl = np.array([np.round(p[0]).astype(int) for p in pts if p[1] > 1e-8]).reshape(-1, 3)
        # one of each Friedel pair: the first nonzero index positive
        first = np.where(hkl[:, 0] != 0, hkl[:, 0], np.where(hkl[:, 1] != 0, hkl[:, 1], hkl[:, 2]))
        hkl = hkl[first > 0]
        return cls(hkl, cls.structure_factors(structure, hkl))

    @staticmethod
    def structure_factors(structure: Any, hkl: np.ndarray) -> np.ndarray:
        """2 |F(hkl)|^2 (electrons^2; the 2 counts the Friedel mate) of reflections ``hkl`` (P, 3) of a Structure,
        F(h) = sum_j occ_j f_j(s) exp(2 pi i h . x_j) with the Waasmaier-Kirfel f_j.

        Raises
        ------
        UnknownElementError
            A species without form factor (dummy species, Z > 98).
        """
        from gpsk_materials.errors import UnknownElementError
        from gpsk_materials.representations.form_factors import form_factor

        numbers, occ, frac = [], [], []
        for i, site in enumerate(structure):
            for sp, o in site.species.items():
                z = int(getattr(sp, "Z", 0) or 0)
                if z < 1:
                    raise UnknownElementError(f"site {i} ({sp}) has no X-ray form factor (a dummy species)")
                numbers.append(z)
                occ.append(float(o))
                frac.append(site.frac_coords)
        numbers, occ, frac = np.asarray(numbers), np.asarray(occ), np.asarray(frac)
        hkl = np.asarray(hkl).reshape(-1, 3)
        g_star = np.linalg.inv(structure.lattice.metric_tensor)
        s2 = 0.25 * np.einsum("pi,ij,pj->p", hkl, g_star, hkl)
        uniq, inv = np.unique(numbers, return_inverse=True)
        f = form_factor(uniq, s2)[inv]  # (A, P)
        phase = np.exp(2j * np.pi * frac @ hkl.T)  # (A, P)
        F = np.sum(occ[:, None] * f * phase, axis=0)
        return 2.0 * np.abs(F) ** 2

    def inv_d2(self, lattice_matrix: np.ndarray) -> np.ndarray:
        """1/d^2 (1/A^2) of each reflection in the lattice with row vectors ``lattice_matrix`` (3, 3)."""
        g_star = np.linalg.inv(lattice_matrix @ lattice_matrix.T)
        return np.einsum("pi,ij,pj->p", self.hkl, g_star, self.hkl)

    def sticks(self, lattice_matrix: np.ndarray, wavelength: float) -> tuple[np.ndarray, np.ndarray]:
        """(2theta in degrees, |F|^2 LP) of the reflections that exist for this lattice."""
        tt, ok = bragg_two_theta(torch.as_tensor(self.inv_d2(lattice_matrix)), wavelength)
        tt, ok = tt.numpy(), ok.numpy()
        inten = self.f2[ok] * lorentz_polarization(torch.as_tensor(tt[ok])).numpy()
        return tt[ok], inten


def structure_sticks(structure: Any, wavelength: str | float | None = None,
                     two_theta_range: tuple[float, float] = DEFAULT_TWO_THETA_RANGE,
                     tolerance: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Stick pattern of a Structure: distinct peak positions (degrees) and their summed ``|F|^2 LP``, reflections
    within ``tolerance`` degrees merged (as pymatgen's ``XRDCalculator``, whose ``TWO_THETA_TOL`` is 1e-5)."""
    lam = resolve_wavelength(wavelength)
    refl = Reflections.from_structure(structure, lam, two_theta_range[1], margin=1.0)
    tt, inten = refl.sticks(structure.lattice.matrix, lam)
    keep = (tt >= two_theta_range[0]) & (tt <= two_theta_range[1])
    return merge_sticks(tt[keep], inten[keep], tolerance)


def merge_sticks(two_theta: np.ndarray, intensity: np.ndarray, tolerance: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Merge reflections whose 2theta differ by less than ``tolerance`` degrees (sorted output)."""
    order = np.argsort(two_theta)
    tt, inten = np.asarray(two_theta)[order], np.asarray(intensity)[order]
    if tt.size == 0:
        return tt, inten
    new = np.concatenate([[True], np.diff(tt) >= tolerance])
    group = np.cumsum(new) - 1
    return tt[new], np.bincount(group, weights=inten)


def simulate_pattern(structure: Any, wavelength: str | float | None = None,
                     two_theta_range: tuple[float, float] = DEFAULT_TWO_THETA_RANGE, step: float = DEFAULT_STEP,
                     fwhm: float = DEFAULT_FWHM, eta: float = DEFAULT_ETA) -> PowderPattern:
    """The powder profile of a Structure: :func:`structure_sticks` rendered with pseudo-Voigt peaks of ``fwhm``
    degrees on a ``step`` degree axis."""
    lam = resolve_wavelength(wavelength)
    tt, inten = structure_sticks(structure, lam, two_theta_range)
    axis = np.arange(two_theta_range[0], two_theta_range[1] + step / 2, step)
    prof = render_profile(torch.as_tensor(axis), torch.as_tensor(tt)[None], torch.as_tensor(inten)[None],
                          fwhm, eta)[0].numpy()
    return PowderPattern(axis, prof, lam)


__all__ = [
    "DEFAULT_WAVELENGTH", "PowderPattern", "Reflections", "bragg_two_theta", "caglioti_fwhm", "grid_reflections",
    "lorentz_polarization", "merge_sticks", "pseudo_voigt", "render_profile", "resolve_wavelength",
    "simulate_pattern", "structure_sticks", "wavelengths",
]
