"""GPSK-01's representation, kept as a baseline: a Z-weighted Gaussian density on a fractional periodic grid.

Each atom j is a periodic Gaussian of width ``sigma`` voxels centred on its fractional position, scaled so that
its voxel sum is ``Z_j * occ_j``. The grid lives in fractional coordinates only, so two cells that differ by a
scale factor (or by any lattice with the same fractional content) give identical grids: the lattice is not in
the representation and :class:`RealSpacePeakDecoder` must be handed it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from monty.json import MSONable

from gpsk_materials import provenance
from gpsk_materials.defaults import MIN_SITE_DISTANCE
from gpsk_materials.errors import (
    ConfigError,
    DecodingError,
    DeprecatedLastErrors,
    GPSKError,
    GridError,
    batch_policy,
)
from gpsk_materials.representations import grid as G
from gpsk_materials.representations.canonical import as_structure, canonical_structure
from gpsk_materials.representations.reciprocal import validated_arrays

CITATION = (
    "@inproceedings{xiang2025trellis,\n"
    "  author = {Xiang, Jianfeng and others},\n"
    "  title = {Structured 3D Latents for Scalable and Versatile 3D Generation},\n"
    "  booktitle = {CVPR}, year = {2025}, eprint = {2412.01506}, archivePrefix = {arXiv}}"
)


def periodic_gaussian_1d(x: np.ndarray, n: int, sigma: float) -> np.ndarray:
    """Normalised periodic Gaussians on ``n`` voxels centred at fractional ``x`` (A,) -> (A, n), rows sum to 1.

    Voxel ``i`` sits at fractional ``i / n``; ``sigma`` is in voxels.
    """
    images = np.arange(-2, 3)  # enough periodic images for sigma up to ~n/4
    d = np.arange(n)[None, :, None] - n * np.asarray(x, dtype=float)[:, None, None] - n * images[None, None, :]
    g = np.exp(-0.5 * (d / sigma) ** 2).sum(-1)
    return g / g.sum(1, keepdims=True)


def density_arrays(
    frac_coords: np.ndarray, numbers: np.ndarray, occupancy: np.ndarray | None = None,
    n: int = G.GRID_SIZE, sigma: float = 1.0,
) -> np.ndarray:
    """Density of one cell, float32 (1, n, n, n); an atom's voxel sum is Z * occupancy.

    The isotropic fractional Gaussian is separable, so the grid is a sum of outer products of three 1-D
    profiles per atom (one einsum, O(A n^3)).
    """
    numbers = np.asarray(numbers, dtype=int)
    keep = numbers > 0
    frac = np.asarray(frac_coords, dtype=float)[keep] % 1.0
    weight = numbers[keep] * (1.0 if occupancy is None else np.asarray(occupancy, dtype=float)[keep])
    gx, gy, gz = (periodic_gaussian_1d(frac[:, i], n, sigma) for i in range(3))
    return np.einsum("a,ai,aj,ak->ijk", weight, gx, gy, gz)[None].astype(np.float32)


class RealSpaceDensityFeaturizer(MSONable):
    """Structure -> (1, n, n, n) float32 real-space density on the fractional grid (GPSK-01 representation).

    Parameters
    ----------
    grid_size : int
        Voxels per axis.
    sigma : float
        Gaussian width in voxels (fractional units of 1/grid_size), the same along every axis.
    canonicalize : bool
        Featurize the canonical cell (as :class:`ReciprocalGridFeaturizer` does), so both grids describe one cell.
    allow_disorder : bool
        Partially occupied sites are weighted by occupancy; if False they raise ``DisorderError``.
    max_sites : int
        Largest number of (species, site) entries accepted.
    max_resolution : float
        Largest real-space voxel spacing (Angstrom) accepted.
    min_distance : float
        Smallest distance (Angstrom) between two sites accepted, periodic images included; closer sites raise
        ``ResolutionError`` naming both (default ``gpsk_materials.defaults.MIN_SITE_DISTANCE``, 0.5).
    """

    def __init__(
        self,
        grid_size: int = G.GRID_SIZE,
        sigma: float = 1.0,
        canonicalize: bool = True,
        allow_disorder: bool = True,
        max_sites: int = 256,
        max_resolution: float = 1.6,
        min_distance: float = MIN_SITE_DISTANCE,
    ):
        G.miller_axis(grid_size)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"sigma must be a positive number of voxels, got {sigma}")
        self.grid_size = grid_size
        self.sigma = sigma
        self.canonicalize = canonicalize
        self.allow_disorder = allow_disorder
        self.max_sites = max_sites
        self.max_resolution = max_resolution
        self.min_distance = min_distance

    def canonical_structure(self, structure):
        """The cell whose grid :meth:`featurize` returns (canonical cell when ``canonicalize``)."""
        return canonical_structure(structure) if self.canonicalize else as_structure(structure)

    def prepare(self, structure) -> dict[str, np.ndarray]:
        """Validated (and canonicalized) arrays of one structure."""
        return validated_arrays(structure, self.canonicalize, self.allow_disorder, self.grid_size, self.max_sites,
                                self.max_resolution, self.min_distance)

    def featurize(self, structure) -> np.ndarray:
        """Density of one structure, shape (1, n, n, n), float32."""
        a = self.prepare(structure)
        return density_arrays(a["frac_coords"], a["numbers"], a["occupancy"], self.grid_size, self.sigma)

    def __call__(self, structure) -> np.ndarray:
        """:meth:`featurize` (as matminer's ``BaseFeaturizer.__call__``)."""
        return self.featurize(structure)

    def featurize_many(
        self, entries: Sequence[Any], ignore_errors: bool = False, return_errors: bool = False, pbar: bool = True,
        *, progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list]:
        """Densities of many structures, shape (B, 1, n, n, n), float32; failures, ``return_errors`` and ``pbar`` as
        :meth:`ReciprocalGridFeaturizer.featurize_many` (NaN density for a structure that fails when ignored).

        Raises
        ------
        InvalidStructureError
            Without ``ignore_errors`` / ``return_errors``, the first structure that cannot be featurized.
        """
        from tqdm.auto import tqdm

        ignore_errors, return_errors, pbar = batch_policy(ignore_errors, return_errors, pbar, progress=progress,
                                                          where="RealSpaceDensityFeaturizer.featurize_many")
        entries = list(entries)
        n = self.grid_size
        out = np.full((len(entries), 1, n, n, n), np.nan, dtype=np.float32)
        reasons: list = [None] * len(entries)
        for i, s in enumerate(tqdm(entries, disable=not pbar, desc="featurize", unit="structure")):
            try:
                out[i] = self.featurize(s)
            except GPSKError as exc:
                if not ignore_errors:
                    raise
                reasons[i] = f"structure {i}: {type(exc).__name__}: {exc}"
        return (out, reasons) if return_errors else out

    def feature_labels(self) -> list[str]:
        """One label per voxel, in C order of the (1, n, n, n) array."""
        r = range(self.grid_size)
        return [f"density[{i},{j},{k}]" for i in r for j in r for k in r]

    def citations(self) -> list[str]:
        return [CITATION]

    def implementors(self) -> list[str]:
        return ["gpsk_materials developers"]



def _as_density(grid: Any) -> np.ndarray:
    a = np.asarray(grid)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or not (a.shape[0] == a.shape[1] == a.shape[2]):
        raise GridError(f"density must have shape (1, n, n, n) or (n, n, n), got {np.shape(grid)}")
    if not np.issubdtype(a.dtype, np.floating):
        raise GridError(f"density must hold floating-point values, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise DecodingError("density holds NaN or inf values")
    return a.astype(float)


def _as_lattice(lattice: Any):
    from pymatgen.core import Lattice

    if lattice is None:
        raise DecodingError(
            "RealSpacePeakDecoder needs the lattice: the fractional density grid (GPSK-01) does not contain it; "
            "pass lattice= (pymatgen Lattice, 3x3 matrix, or (a, b, c, alpha, beta, gamma))"
        )
    if isinstance(lattice, Lattice):
        return lattice
    arr = np.asarray(lattice, dtype=float)
    if arr.shape == (3, 3):
        return Lattice(arr)
    if arr.shape == (6,):
        return Lattice.from_parameters(*arr)
    raise DecodingError(f"lattice must be a Lattice, a 3x3 matrix or 6 parameters, got shape {arr.shape}")


class RealSpacePeakDecoder(DeprecatedLastErrors, MSONable):
    """Density (1, n, n, n) + lattice + composition -> pymatgen ``Structure`` (GPSK-01's peak picking).

    The number of formula units is the density's total (sum of Z) over the formula's sum of Z; the sites are
    the brightest periodic local maxima (3x3x3 neighbourhood), refined to sub-voxel precision by a parabola
    through each peak and its two neighbours along every axis; the brightest peak gets the heaviest element.

    Parameters
    ----------
    min_distance : float
        Smallest accepted interatomic distance (Angstrom) of a decoded structure.
    """

    def __init__(self, min_distance: float = 0.5):
        self.min_distance = min_distance

    def as_dict(self) -> dict:
        return {"@module": type(self).__module__, "@class": type(self).__name__, "min_distance": self.min_distance}

    def decode(self, grid, lattice=None, composition=None):
        """Decode one density; raises :class:`DecodingError` without a lattice or composition, or when the
        density has too few peaks."""
        from pymatgen.core import Structure

        from gpsk_materials.representations.decoding import parse_composition

        rho = _as_density(grid)
        lat = _as_lattice(lattice)
        if composition is None:
            raise DecodingError("RealSpacePeakDecoder needs a composition: peaks carry no element identity")
        comp = parse_composition(composition)
        zs = np.array(sorted(comp, reverse=True))
        amounts = np.array([comp[z] for z in zs])
        if np.any(np.abs(amounts - np.round(amounts)) > 1e-6):
            raise DecodingError(f"composition amounts {amounts.tolist()} are not integers")
        reduced = np.round(amounts).astype(int) // int(np.gcd.reduce(np.round(amounts).astype(int)))
        units = int(round(rho.sum() / float(np.dot(reduced, zs))))
        if units < 1:
            raise DecodingError(f"density total {rho.sum():.2f} cannot hold one formula unit of {composition}")
        labels = np.repeat(zs, reduced * units)  # heaviest first

        n = rho.shape[0]
        neighbours = [np.roll(rho, s, axis=ax) for ax in range(3) for s in (-1, 1)]
        is_max = rho > 0
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    if dx or dy or dz:
                        is_max &= rho >= np.roll(rho, (dx, dy, dz), axis=(0, 1, 2))
        peaks = np.argwhere(is_max)
        if len(peaks) < len(labels):
            raise DecodingError(f"density has {len(peaks)} peaks for {len(labels)} atoms (merged or missing peaks)")
        heights = rho[tuple(peaks.T)]
        peaks = peaks[np.argsort(-heights, kind="stable")[: len(labels)]]
        heights = rho[tuple(peaks.T)]
        # parabola through log rho at (i-1, i, i+1) along each axis, exact for an isolated Gaussian:
        # vertex offset (v- - v+) / (2 (v- - 2 v0 + v+))
        offsets = np.zeros(peaks.shape)
        tiny = 1e-300
        v0 = np.log(np.maximum(heights, tiny))
        for ax in range(3):
            vm = np.log(np.maximum(neighbours[2 * ax + 1][tuple(peaks.T)], tiny))  # roll by +1 brings i-1 to i
            vp = np.log(np.maximum(neighbours[2 * ax][tuple(peaks.T)], tiny))
            curv = vm - 2 * v0 + vp
            offsets[:, ax] = np.where(curv < 0, 0.5 * (vm - vp) / np.where(curv < 0, curv, -1.0), 0.0)
        frac = ((peaks + np.clip(offsets, -0.5, 0.5)) / n) % 1.0
        s = Structure(lat, labels.tolist(), frac, site_properties={"decode_peak_height": heights.round(6).tolist()})
        provenance.write(s, "decode", {"method": "realspace_peaks", "composition": "given"})
        if len(s) > 1:
            dmin = s.distance_matrix[np.triu_indices(len(s), 1)].min()
            if dmin < self.min_distance:
                raise DecodingError(f"decoded sites {dmin:.3f} A apart, below min_distance={self.min_distance}")
        return s

    def decode_many(
        self, grids, lattices: Sequence[Any], compositions: Sequence[Any], ignore_errors: bool = False,
        return_errors: bool = False, pbar: bool = True, *, errors: str | None = None,
    ) -> list | tuple[list, list]:
        """Decode a batch (B, 1, n, n, n) with one lattice and composition per grid. Failures follow
        :meth:`ReciprocalGridDecoder.decode_many`: with ``ignore_errors`` None in place of a failure (any project
        error of that item), with ``return_errors`` also the reasons ``"grid <i>: <Error>: <why>"``; ``errors`` is
        the deprecated spelling.

        Raises
        ------
        GridError
            As many lattices and compositions as grids not given.
        GPSKError
            Without ``ignore_errors`` / ``return_errors``, the first item's error.
        """
        from tqdm.auto import tqdm

        ignore_errors, return_errors, pbar = batch_policy(ignore_errors, return_errors, pbar, errors,
                                                          where="RealSpacePeakDecoder.decode_many")
        if not (len(grids) == len(lattices) == len(compositions)):
            raise GridError(f"{len(grids)} grids, {len(lattices)} lattices and {len(compositions)} compositions")
        out, reasons = [], []
        items = tqdm(list(zip(grids, lattices, compositions)), disable=not pbar, desc="decode", unit="grid")
        for i, (grid, lat, comp) in enumerate(items):
            try:
                out.append(self.decode(grid, lat, comp))
                reasons.append(None)
            except GPSKError as exc:  # a bad grid, lattice or composition fails its item alone
                if not ignore_errors:
                    raise
                out.append(None)
                reasons.append(f"grid {i}: {type(exc).__name__}: {exc}")
        self._last_errors = reasons
        return (out, reasons) if return_errors else out
