"""Profile agreement of a candidate structure with a measured powder pattern: a small Rietveld-style refinement.

What is refined (and nothing else):

* linear, solved exactly at every step by weighted least squares: the **scale** (>= 0) and a **Chebyshev polynomial
  background** of order ``background_order`` (default 3, i.e. 4 coefficients) over the measured 2theta range;
* non-linear, by ``scipy.optimize.least_squares`` (trust-region reflective, bounds): the **zero shift** of 2theta
  (|shift| <= ``max_zero_shift`` deg), the **peak width** as Caglioti ``W`` and ``U`` with ``V = 0``
  (H^2 = U tan^2 theta + W; H(0) in [0.01, 1] deg, U in [0, 1] deg^2), and the **lattice parameters** of the
  candidate's conventional standard cell under the constraints of its crystal system (spglib via pymatgen's
  ``SpacegroupAnalyzer``, ``symprec`` 0.01 A: a looser tolerance would impose a symmetry that the measured peak splitting contradicts): cubic a; tetragonal, trigonal and hexagonal a, c; orthorhombic a, b,
  c; monoclinic a, b, c and the one angle that is not 90 deg; triclinic all six. Lengths may change by at most
  ``max_strain`` (8 %), angles by 3 deg.

The fractional coordinates, the atoms and the pseudo-Voigt mixing ``eta`` are kept; the intensities are the
structure's ``|F|^2`` at its own lattice during the fit, and are recomputed at the refined lattice for the
reported R-factors. Because a generated lattice can be a few percent off, where a local fit would never find the
peaks, an isotropic scan of the cell (``strain_points`` values within +-``max_strain``) with broad peaks
(``start_fwhm``) picks the start.

The reported figure is the weighted profile R-factor (Young, *The Rietveld Method*, IUCr/OUP 1993, ch. 1)::

    Rwp = sqrt( sum_i w_i (y_obs,i - y_calc,i)^2 / sum_i w_i y_obs,i^2 ),   w_i = 1 / max(y_obs,i, 0.01 max y_obs)

(counting statistics, sigma_i^2 = y_obs,i, floored at 1 % of the maximum so that empty regions do not dominate;
the ratio is independent of the intensity scale), and the unweighted Rp = sum |y_obs - y_calc| / sum y_obs.

Threads: the profiles are small tensors, for which torch's intra-op threads cost more than they save (measured
2026-12-02 on a loaded 2-core machine: 3 refinements 4.1-4.5 s single-threaded, 36-63 s with torch's 2 threads).
A fit therefore runs with ``threads`` (default 1) intra-op threads inside :func:`torch_threads`, which restores the
caller's setting when the fit ends or raises; ``threads=None`` leaves torch's setting alone (a caller that runs
other torch work in parallel threads, for which the process-wide setting must not change).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from monty.json import MSONable
from tqdm.auto import tqdm

from gpsk_materials.diffraction.pattern import PowderPattern, Reflections, bragg_two_theta, lorentz_polarization, \
    render_profile
from gpsk_materials.errors import DiffractionError, GPSKError

logger = logging.getLogger(__name__)

#: an Rwp above this is flagged as poor agreement: about twice the noise floor of the benchmark's measurement model (the
#: true structures of 12 MP-20 test targets refine to Rwp 0.087-0.111 from a 2 % strained start; docs/diffraction.md)
POOR_RWP = 0.2
#: relative floor of the counting-statistics variance
WEIGHT_FLOOR = 0.01


@dataclass
class Refinement:
    """Outcome of :meth:`PatternRefiner.refine` for one candidate.

    Attributes
    ----------
    rwp, rp : float
        Weighted and unweighted profile R-factors (fractions, not percent).
    structure : Structure
        The candidate's conventional standard cell with the refined lattice (fractional coordinates kept).
    crystal_system : str
        The system whose constraints the lattice refinement kept.
    zero_shift : float
        Degrees added to the calculated 2theta.
    fwhm : tuple (U, W)
        Caglioti parameters, deg^2.
    scale : float
    background : ndarray (k + 1,)
        Chebyshev coefficients over the measured range mapped to [-1, 1].
    lattice_initial, lattice_refined : tuple of six floats
        a, b, c (A), alpha, beta, gamma (deg).
    two_theta, observed, calculated, background_profile : ndarray (N,)
        For plots.
    peaks : ndarray (M,)
        Positions of the calculated reflections, degrees (zero shift included).
    refined : list of str
        Names of the refined parameters.
    """

    rwp: float
    rp: float
    structure: Any
    crystal_system: str
    zero_shift: float
    fwhm: tuple[float, float]
    scale: float
    background: np.ndarray
    lattice_initial: tuple
    lattice_refined: tuple
    two_theta: np.ndarray = field(repr=False)
    observed: np.ndarray = field(repr=False)
    calculated: np.ndarray = field(repr=False)
    background_profile: np.ndarray = field(repr=False)
    peaks: np.ndarray = field(repr=False)
    refined: list[str] = field(default_factory=list)

    @property
    def poor(self) -> bool:
        """Rwp above :data:`POOR_RWP`."""
        return not self.rwp <= POOR_RWP

    def summary(self) -> dict[str, Any]:
        """JSON-friendly record (what the provenance stores)."""
        return {
            "rwp": float(self.rwp), "rp": float(self.rp), "agreement": "poor" if self.poor else "good",
            "poor_rwp_threshold": POOR_RWP, "crystal_system": self.crystal_system,
            "zero_shift": float(self.zero_shift), "caglioti_u": float(self.fwhm[0]), "caglioti_w": float(self.fwhm[1]),
            "lattice_initial": [float(v) for v in self.lattice_initial],
            "lattice_refined": [float(v) for v in self.lattice_refined],
            "refined": list(self.refined),
        }

    def plot(self, ax=None, title: str | None = None):
        """Overlay of measured and calculated profiles, their difference and the reflection ticks on a matplotlib
        Axes (a new bare ``Figure`` when None). Returns the Figure."""
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(8, 4.5))
            ax = fig.add_subplot(111)
        fig = ax.figure
        x = self.two_theta
        top = float(self.observed.max())
        ax.plot(x, self.observed, lw=0.8, color="k", label="measured")
        ax.plot(x, self.calculated, lw=0.8, color="tab:red", label="calculated")
        offset = -0.15 * top
        ax.plot(x, self.observed - self.calculated + offset, lw=0.6, color="tab:blue", label="difference")
        inside = self.peaks[(self.peaks >= x[0]) & (self.peaks <= x[-1])]
        ax.vlines(inside, offset * 0.35, offset * 0.2, color="tab:green", lw=0.6)
        ax.set_xlabel("2θ (deg)")
        ax.set_ylabel("intensity")
        ax.set_title(title or f"{self.structure.composition.reduced_formula}: Rwp = {100 * self.rwp:.1f} %")
        ax.legend(loc="upper right", fontsize=8)
        return fig


def _lattice_parameters(lat) -> tuple:
    return tuple(float(v) for v in (*lat.abc, *lat.angles))


def _tie_groups(system: str, angles: Sequence[float]) -> tuple[list[list[int]], list[int]]:
    """Length groups (indices into a, b, c that share a value) and free angle indices for a crystal system."""
    if system == "cubic":
        lengths = [[0, 1, 2]]
    elif system in ("tetragonal", "trigonal", "hexagonal"):
        lengths = [[0, 1], [2]]
    else:
        lengths = [[0], [1], [2]]
    if system == "triclinic":
        free = [0, 1, 2]
    elif system == "monoclinic":
        free = [i for i in range(3) if abs(angles[i] - 90.0) > 1e-3][:1]
    else:
        free = []
    return lengths, free


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and restore the previous number after (also on error);
    ``None`` changes nothing."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PatternRefiner(MSONable):
    """Refine a candidate against a powder pattern and report Rwp: ``PatternRefiner().refine(structure, pattern)``.

    Parameters
    ----------
    background_order : int
        Order of the Chebyshev background (>= 0).
    max_strain : float
        Largest relative change of a lattice length (the isotropic start scan covers +-max_strain).
    max_zero_shift : float
        Largest zero shift, degrees.
    eta : float
        Pseudo-Voigt Lorentzian fraction (kept fixed).
    refine_lattice : bool
        False keeps the candidate's lattice (scale, background, zero and widths are still refined).
    symprec : float
        spglib tolerance, A, for the crystal system whose constraints the lattice keeps.
    strain_points : int
        Points of the isotropic start scan.
    start_fwhm : float
        Peak FWHM of the start scan, degrees.
    max_nfev : int
        Budget of iterations of the least-squares fit (scipy's ``max_nfev``; the finite-difference Jacobian's
        evaluations come on top), which stops earlier when Rwp changes by less than 1e-4 relative.
    fit_step : float
        The fit sees the pattern averaged into bins of at least this many degrees (a finer measured step is
        merged by bin means; speed); the reported R-factors use the pattern as given.
    threads : int or None
        torch intra-op threads during a fit (the caller's setting is restored after); None leaves the setting
        alone. See the module docstring for the measurement behind the default 1.
    """

    def __init__(self, background_order: int = 3, max_strain: float = 0.08, max_zero_shift: float = 0.3,
                 eta: float = 0.5, refine_lattice: bool = True, symprec: float = 0.01, strain_points: int = 41,
                 start_fwhm: float = 0.4, max_nfev: int = 40, fit_step: float = 0.04,
                 threads: int | None = 1) -> None:
        if isinstance(background_order, bool) or not isinstance(background_order, int) or background_order < 0:
            raise DiffractionError(f"background_order must be an integer >= 0, got {background_order!r}")
        if not 0 <= max_strain < 0.5:
            raise DiffractionError(f"max_strain must lie in [0, 0.5), got {max_strain!r}")
        if not 0 <= eta <= 1:
            raise DiffractionError(f"eta must lie in [0, 1], got {eta!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise DiffractionError(f"threads must be None or an integer >= 1, got {threads!r}")
        self.background_order = background_order
        self.max_strain = float(max_strain)
        self.max_zero_shift = float(max_zero_shift)
        self.eta = float(eta)
        self.refine_lattice = bool(refine_lattice)
        self.symprec = float(symprec)
        self.strain_points = int(strain_points)
        self.start_fwhm = float(start_fwhm)
        self.max_nfev = int(max_nfev)
        self.fit_step = float(fit_step)
        self.threads = threads

    # ---------------------------------------------------------------------------------------- pieces
    def _conventional(self, structure) -> tuple[Any, str]:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        try:
            sga = SpacegroupAnalyzer(structure, symprec=self.symprec)
            return sga.get_conventional_standard_structure(), sga.get_crystal_system()
        except Exception as exc:  # spglib gives up on badly distorted cells: refine it as triclinic
            logger.debug("symmetry analysis failed (%s); refining %s as triclinic", exc, structure.formula)
            return structure.copy(), "triclinic"

    def _linear(self, profile: np.ndarray, basis: np.ndarray, y: np.ndarray, sw: np.ndarray):
        """Scale (>= 0) and background coefficients by weighted least squares; returns (scale, coef, calc)."""
        a = np.column_stack([profile, basis])
        coef, *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        if coef[0] < 0:
            bg, *_ = np.linalg.lstsq(basis * sw[:, None], y * sw, rcond=None)
            coef = np.concatenate([[0.0], bg])
        return float(coef[0]), coef[1:], a @ coef

    # ---------------------------------------------------------------------------------------- verbs
    def refine(self, structure: Any, pattern: Any) -> Refinement:
        """Refine ``structure`` against ``pattern`` (anything :meth:`PowderPattern.coerce` takes).

        Raises
        ------
        DiffractionError
            The pattern is invalid, or no reflection of the structure falls in its 2theta range.
        UnknownElementError
            A species without X-ray form factor.
        """
        with torch_threads(self.threads):
            return self._refine(structure, pattern)

    def _refine(self, structure: Any, pattern: Any) -> Refinement:
        """:meth:`refine` in the caller's torch threading."""
        from pymatgen.core import Lattice, Structure
        from scipy.optimize import least_squares

        pattern = PowderPattern.coerce(pattern)
        lam = pattern.wavelength
        x_full, y_full = pattern.two_theta, pattern.intensity
        k = max(1, int(round(self.fit_step / float(np.median(np.diff(x_full))))))
        m = (len(x_full) // k) * k
        x, y = x_full[:m].reshape(-1, k).mean(1), y_full[:m].reshape(-1, k).mean(1)
        conv, system = self._conventional(structure)
        lat0 = _lattice_parameters(conv.lattice)
        lengths, free_angles = _tie_groups(system, lat0[3:])
        if not self.refine_lattice:
            lengths, free_angles = [], []
        refl = Reflections.from_structure(conv, lam, min(x[-1] + 1.0, 179.0), margin=1.0 + self.max_strain + 0.02)
        if refl.hkl.size == 0:
            raise DiffractionError(f"{structure.composition.reduced_formula}: no reflection below 2theta = {x[-1]:g}")
        lo_x, hi_x = x_full[0], x_full[-1]

        def setup(xs, ys):
            sw = 1.0 / np.sqrt(np.maximum(ys, WEIGHT_FLOOR * ys.max()))
            basis = np.polynomial.chebyshev.chebvander(2.0 * (xs - lo_x) / (hi_x - lo_x) - 1.0, self.background_order)
            return sw, basis, torch.as_tensor(xs), float(np.sqrt(np.sum((sw * ys) ** 2)))

        sw, basis, axis, norm = setup(x, y)

        def lattice_of(p: np.ndarray):
            abc, ang = list(lat0[:3]), list(lat0[3:])
            for g, group in enumerate(lengths):
                for i in group:
                    abc[i] = lat0[i] * p[g]
            for k, i in enumerate(free_angles):
                ang[i] = lat0[3 + i] + p[len(lengths) + k]
            return Lattice.from_parameters(*abc, *ang)

        n_lat = len(lengths) + len(free_angles)

        def calc_profile(p: np.ndarray, f2: np.ndarray | None = None, axis=axis) -> tuple[np.ndarray, np.ndarray]:
            lat = lattice_of(p[:n_lat])
            zero, h0, u = p[n_lat], p[n_lat + 1], p[n_lat + 2]
            tt, ok = bragg_two_theta(torch.as_tensor(refl.inv_d2(lat.matrix)), lam)
            tt = tt[ok]
            inten = torch.as_tensor((refl.f2 if f2 is None else f2)[ok.numpy()]) * lorentz_polarization(tt)
            pos = tt + zero
            tan = torch.tan(torch.deg2rad(0.5 * tt))
            fw = torch.sqrt(u * tan * tan + h0 * h0)
            prof = render_profile(axis, pos[None], inten[None], fw[None], self.eta)[0].numpy()
            return prof, pos.numpy()

        def residual(p: np.ndarray) -> np.ndarray:
            prof, _ = calc_profile(p)
            _, _, calc = self._linear(prof, basis, y, sw)
            return sw * (y - calc) / norm

        # start: an isotropic scan of the cell with broad peaks
        p = np.concatenate([np.ones(len(lengths)), np.zeros(len(free_angles)), [0.0, self.start_fwhm, 0.0]])
        if lengths:
            best = None
            for c in np.linspace(1.0 - self.max_strain, 1.0 + self.max_strain, self.strain_points):
                p[: len(lengths)] = c
                r = float(np.sum(residual(p) ** 2))
                if best is None or r < best[0]:
                    best = (r, c)
            p[: len(lengths)] = best[1]
        lo = np.concatenate([np.full(len(lengths), 1.0 - self.max_strain - 1e-9), np.full(len(free_angles), -3.0),
                             [-self.max_zero_shift, 0.01, 0.0]])
        hi = np.concatenate([np.full(len(lengths), 1.0 + self.max_strain + 1e-9), np.full(len(free_angles), 3.0),
                             [self.max_zero_shift, 1.0, 1.0]])
        p = np.clip(p, lo, hi)
        fit = least_squares(residual, p, bounds=(lo, hi), x_scale="jac", max_nfev=self.max_nfev, ftol=1e-4,
                            xtol=1e-4)
        p = fit.x
        # report at the refined lattice, with |F|^2 recomputed there
        lat = lattice_of(p[:n_lat])
        refined_structure = Structure(lat, conv.species_and_occu, conv.frac_coords, site_properties=None)
        f2 = Reflections.structure_factors(refined_structure, refl.hkl)
        x, y = x_full, y_full
        sw, basis, axis, norm = setup(x, y)
        prof, peaks = calc_profile(p, f2, axis)
        scale, coef, calc = self._linear(prof, basis, y, sw)
        rwp = float(np.sqrt(np.sum((sw * (y - calc)) ** 2)) / norm)
        rp = float(np.sum(np.abs(y - calc)) / np.sum(y))
        names = [f"length[{','.join('abc'[i] for i in g)}]" for g in lengths]
        names += [("alpha", "beta", "gamma")[i] for i in free_angles]
        names += ["zero_shift", "caglioti_w", "caglioti_u", "scale", f"background(chebyshev order {self.background_order})"]
        return Refinement(
            rwp=rwp, rp=rp, structure=refined_structure, crystal_system=system, zero_shift=float(p[n_lat]),
            fwhm=(float(p[n_lat + 2]), float(p[n_lat + 1]) ** 2), scale=scale, background=coef,
            lattice_initial=lat0, lattice_refined=_lattice_parameters(lat), two_theta=x, observed=y, calculated=calc,
            background_profile=basis @ coef, peaks=peaks, refined=names,
        )

    def rank(self, structures: Sequence[Any], pattern: Any, progress: bool = False) -> list[Refinement | None]:
        """Refine every structure against one pattern; a candidate that cannot be refined gets None (logged), the
        others are unaffected. Order is the input order (sort by ``rwp`` to rank)."""
        pattern = PowderPattern.coerce(pattern)
        out: list[Refinement | None] = []
        for i, s in enumerate(tqdm(structures, desc="refining", unit="candidate", disable=not progress)):
            try:
                out.append(self.refine(s, pattern))
            except (GPSKError, np.linalg.LinAlgError, ValueError) as exc:
                logger.warning("candidate %d (%s): refinement failed: %s", i, s.composition.reduced_formula, exc)
                out.append(None)
        return out


__all__ = ["POOR_RWP", "PatternRefiner", "Refinement"]
