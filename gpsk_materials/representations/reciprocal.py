"""The GPSK-300 reciprocal-space grid: structure factor and reciprocal metric on a 32^3 Miller-index grid.

Channel 0/1: Re/Im of F(h) = sum_j occ_j f_j(s) exp(2 pi i h . x_j), with s = sin(theta)/lambda = sqrt(h^T G* h)/2
and f_j the Waasmaier-Kirfel form factor (see :mod:`.form_factors`). Channel 2: 1/d^2(h) = h^T G* h.
Layout and scaling are documented in :mod:`.grid`; the canonical cell in :mod:`.canonical`.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import numpy as np
from monty.json import MSONable

from gpsk_materials.defaults import MIN_SITE_DISTANCE
from gpsk_materials.errors import (
    ConfigError,
    DegenerateLatticeError,
    GPSKError,
    GridError,
    ResolutionError,
    batch_policy,
)
from gpsk_materials.representations import grid as G
from gpsk_materials.representations.canonical import as_structure, canonical_structure, structure_to_arrays
from gpsk_materials.representations.form_factors import CITATION, check_numbers, form_factor


def check_cell(
    lattice: np.ndarray,
    frac: np.ndarray,
    n: int = G.GRID_SIZE,
    max_sites: int = 256,
    min_volume_per_atom: float = 1.0,
    max_resolution: float = 1.6,
    *,
    numbers: np.ndarray | None = None,
    occupancy: np.ndarray | None = None,
    site_index: np.ndarray | None = None,
    min_distance: float = MIN_SITE_DISTANCE,
) -> None:
    """Raise if a cell cannot be represented faithfully on an n^3 grid.

    Parameters
    ----------
    lattice : ndarray (3, 3)
        Lattice vectors as rows, Angstrom.
    frac : ndarray (A, 3)
        Fractional coordinates of the entries.
    n : int
        Grid size.
    max_sites : int
        Largest number of entries accepted.
    min_volume_per_atom : float
        Smallest volume per entry, A^3.
    max_resolution : float
        Bound on the real-space grid spacing (Angstrom) along each axis, |a_i| / n for the distance between the
        lattice planes; larger cells alias: neighbouring atoms blur into one peak.
    numbers, occupancy, site_index : ndarray (A,), optional
        Atomic numbers (they name the sites in messages), occupancies, and the input site of each entry (a
        disordered site gives one entry per species). See :func:`check_overlap`.
    min_distance : float
        Smallest distance (Angstrom) between two sites, periodic images included; 0 skips the test.

    Raises
    ------
    DegenerateLatticeError
        The lattice is singular, too small per site, or too large for the grid.
    ResolutionError
        More than ``max_sites`` entries, or two sites (or a site and its own periodic image) closer than
        ``min_distance``; the message names both sites and their distance.
    """
    volume = abs(np.linalg.det(lattice))
    if not np.isfinite(volume) or volume < 1e-6:
        raise DegenerateLatticeError(f"lattice is singular (volume {volume:.3g} A^3)")
    n_atoms = len(frac)
    if n_atoms > max_sites:
        raise ResolutionError(f"{n_atoms} sites exceed the {max_sites} that the {n}^3 grid is configured to resolve")
    if volume / n_atoms < min_volume_per_atom:
        raise DegenerateLatticeError(
            f"volume per site {volume / n_atoms:.3f} A^3 is below {min_volume_per_atom} A^3: atoms overlap"
        )
    check_resolution(lattice, n, max_resolution)
    if min_distance > 0:
        check_overlap(lattice, frac, min_distance, numbers=numbers, occupancy=occupancy, site_index=site_index)


def grid_spacing(lattice: np.ndarray, n: int = G.GRID_SIZE) -> float:
    """Largest real-space grid spacing (Angstrom) of a cell on an n^3 grid: the interplanar spacing of the (100),
    (010), (001) planes over n."""
    return float((1.0 / np.linalg.norm(np.linalg.inv(lattice).T, axis=1) / n).max())


def check_resolution(lattice: np.ndarray, n: int = G.GRID_SIZE, max_resolution: float = 1.6) -> None:
    """Raise ``DegenerateLatticeError`` if the grid spacing of ``lattice`` exceeds ``max_resolution`` (it aliases).

    Raises
    ------
    DegenerateLatticeError
        The message gives the spacing and the lattice lengths.
    """
    spacing = grid_spacing(lattice, n)
    if spacing > max_resolution:
        raise DegenerateLatticeError(
            f"cell too large for a {n}^3 grid: spacing {spacing:.3f} A exceeds {max_resolution} A "
            f"(lattice lengths {np.round(np.linalg.norm(lattice, axis=1), 3).tolist()} A alias)"
        )


def check_primitive_fits(
    arrays: dict[str, np.ndarray], n: int = G.GRID_SIZE, max_sites: int = 256, max_resolution: float = 1.6,
    symprec: float = 0.05,
) -> None:
    """Refuse, before the primitive-cell search, a structure whose primitive cell cannot fit the grid.

    pymatgen's primitive-cell search takes minutes for a thousand sites; spglib's count of the cell's lattice
    points (pure translations, at a tolerance looser than the canonical cell's 0.02 A so that it never counts
    fewer) bounds the primitive cell's size in well under a second: ``sites / points`` entries, and, when the cell
    is already primitive, the grid spacing of its reduced lattice (refused here when it exceeds ``max_resolution``
    by more than 25 %, the exact check follows the search). A cell that fits as given is not searched at all.

    Parameters
    ----------
    arrays : dict
        Output of :func:`~gpsk_materials.representations.canonical.structure_to_arrays` of the input.
    n, max_sites, max_resolution
        As in :func:`check_cell`.
    symprec : float
        spglib tolerance (Angstrom) of the translation search.

    Raises
    ------
    ResolutionError
        The primitive cell holds more than ``max_sites`` entries.
    DegenerateLatticeError
        The cell is primitive and its reduced lattice too large for the grid.
    """
    lattice, n_entries = arrays["lattice"], len(arrays["numbers"])
    if n_entries <= max_sites and grid_spacing(lattice, n) <= max_resolution:
        return
    import spglib

    site_index = arrays["site_index"]
    sites, first = np.unique(site_index, return_index=True)
    # one spglib type per distinct site content (species and occupancies), so a disordered site keeps its identity
    content = [tuple(zip(arrays["numbers"][site_index == i], np.round(arrays["occupancy"][site_index == i], 4)))
               for i in sites]
    kinds = {c: k for k, c in enumerate(dict.fromkeys(content))}
    types = np.array([kinds[c] + 1 for c in content], dtype=np.intc)
    try:
        sym = spglib.get_symmetry((lattice, arrays["frac_coords"][first] % 1.0, types), symprec=symprec)
    except Exception:  # noqa: BLE001 - no bound from spglib: the primitive-cell search decides
        sym = None
    points = 1
    if sym is not None:
        points = int(sum(np.array_equal(r, np.eye(3, dtype=int)) for r in sym["rotations"])) or 1
    if n_entries / points > max_sites:
        raise ResolutionError(
            f"{n_entries} sites; the primitive cell holds {n_entries // points}, more than the {max_sites} that the "
            f"{n}^3 grid is configured to resolve (refused before the primitive-cell search)"
        )
    if points == 1:
        from pymatgen.core import Lattice

        # the canonical cell is the Niggli reduction of this lattice (seconds for a huge cell); the LLL reduction
        # (microseconds) is close to it, and a margin keeps borderline cells for the exact check after the search
        reduced = Lattice(lattice).get_lll_reduced_lattice().matrix
        if grid_spacing(reduced, n) > 1.25 * max_resolution:
            check_resolution(reduced, n, max_resolution)


def shortest_lattice_vector(lattice: np.ndarray) -> float:
    """Length (A) of the shortest lattice vector among the small combinations (-1, 0, 1) of the LLL-reduced basis:
    the distance from every site to its own nearest periodic image (a Niggli reduction of a huge or needle-like
    cell takes seconds; LLL takes microseconds). 0 for a singular or non-finite lattice."""
    from pymatgen.core import Lattice

    lattice = np.asarray(lattice, dtype=float)
    if not np.all(np.isfinite(lattice)) or abs(np.linalg.det(lattice)) <= 1e-12 * np.prod(
            np.linalg.norm(lattice, axis=1)):
        return 0.0
    basis = Lattice(lattice).get_lll_reduced_lattice().matrix
    combos = np.array([c for c in itertools.product((-1, 0, 1), repeat=3) if any(c)])
    return float(np.linalg.norm(combos @ basis, axis=1).min())


def _close_pairs(lattice: np.ndarray, frac: np.ndarray, r: float) -> tuple[np.ndarray, ...]:
    """(centers, neighbours, images, distances) of entry pairs closer than ``r``, periodic images included."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    cart = np.ascontiguousarray((frac % 1.0) @ lattice)
    # the cell list of find_points_in_spheres has one box per (max(r, 1 A))^3 of the points' extent: a sparse
    # cell of 10^6 A would ask for 10^18 boxes, so large extents take the minimum-image distances instead
    boxes = np.prod(np.ceil((np.ptp(cart, axis=0) + 2 * r) / max(r, 1.0)))
    if boxes <= 1e6:
        centers, neighbors, images, dist = find_points_in_spheres(
            cart, cart, r=float(r), pbc=np.array([1, 1, 1], dtype=np.int64), lattice=lattice, tol=1e-8
        )
        return np.asarray(centers, dtype=int), np.asarray(neighbors, dtype=int), np.asarray(images), np.asarray(dist)
    from pymatgen.core import Lattice

    lat = Lattice(lattice)
    out: list[list] = [[], [], [], []]
    for start in range(0, len(frac), 256):
        d = lat.get_all_distances(frac[start : start + 256], frac)
        ii, jj = np.nonzero(d < r)
        keep = ii + start != jj
        out[0].append(ii[keep] + start), out[1].append(jj[keep]), out[3].append(d[ii[keep], jj[keep]])
        out[2].append(np.zeros((int(keep.sum()), 3)))
    shortest = shortest_lattice_vector(lattice)
    if shortest < r:  # each site meets its own image along the shortest lattice vector
        out[0].append(np.array([0])), out[1].append(np.array([0])), out[3].append(np.array([shortest]))
        out[2].append(np.array([[1, 0, 0]]))
    return tuple(np.concatenate(x) for x in out)


def check_overlap(
    lattice: np.ndarray,
    frac: np.ndarray,
    min_distance: float = MIN_SITE_DISTANCE,
    *,
    numbers: np.ndarray | None = None,
    occupancy: np.ndarray | None = None,
    site_index: np.ndarray | None = None,
) -> None:
    """Raise ``ResolutionError`` if two sites of a periodic cell lie closer than ``min_distance``.

    The species of one disordered site share its position, and entries whose occupancies sum to at most 1 (the
    alternative positions of a positionally disordered site) may lie closer: neither is an overlap.

    Parameters
    ----------
    lattice, frac, min_distance
        As in :func:`check_cell`.
    numbers, occupancy, site_index : ndarray (A,), optional
        Atomic numbers, occupancies (default 1) and input site (default: one site per entry) of each entry.

    Raises
    ------
    ResolutionError
        Names the closest offending pair and its distance, e.g. ``sites 0 (Al) and 4 (Al) are 0.0000 A apart``.
    """
    frac = np.asarray(frac, dtype=float)
    lattice = np.ascontiguousarray(lattice, dtype=float)
    n_entries = len(frac)
    site = np.arange(n_entries) if site_index is None else np.asarray(site_index)
    occ = np.ones(n_entries) if occupancy is None else np.asarray(occupancy, dtype=float)
    centers, neighbors, images, dist = _close_pairs(lattice, frac, float(min_distance))
    home = np.all(images == 0, axis=1)
    # species of one site at its own position; entries sharing a position by partial occupancy (sum <= 1)
    allowed = (home & (site[centers] == site[neighbors])) | (
        (site[centers] != site[neighbors]) & (occ[centers] + occ[neighbors] <= 1 + 1e-6)
    )
    bad = ~allowed & (dist < min_distance)
    if not bad.any():
        return
    k = np.flatnonzero(bad)[np.argmin(dist[bad])]
    i, j = sorted((int(centers[k]), int(neighbors[k])))

    def name(e: int) -> str:
        if numbers is None:
            return str(site[e])
        from pymatgen.core import Element

        return f"{site[e]} ({Element.from_Z(int(numbers[e])).symbol})"

    if site[i] == site[j]:
        what = f"site {name(i)} and its own periodic image are"
    else:
        what = f"sites {name(i)} and {name(j)} are"
    raise ResolutionError(
        f"{what} {dist[k]:.4f} A apart, closer than {min_distance} A: atoms overlap "
        "(remove the duplicate site, or merge sites closer than a tolerance with Structure.merge_sites)"
    )


def validated_arrays(
    structure, canonicalize: bool = True, allow_disorder: bool = True, n: int = G.GRID_SIZE, max_sites: int = 256,
    max_resolution: float = 1.6, min_distance: float = MIN_SITE_DISTANCE,
) -> dict[str, np.ndarray]:
    """Arrays of ``structure`` (its canonical cell if ``canonicalize``) after every input check of the featurizers.

    Raises
    ------
    InvalidStructureError
        Any check of :func:`~gpsk_materials.representations.canonical.structure_to_arrays` or :func:`check_cell`
        (subclasses ``DegenerateLatticeError``, ``ResolutionError``, ``UnknownElementError``, ``DisorderError``);
        overlapping sites are named by their index in ``structure``.
    """
    arrays = structure_to_arrays(structure, allow_disorder=allow_disorder)
    if canonicalize:
        # a singular or overlapping cell would make the primitive-cell search fail with a LinAlgError, and what
        # cannot fit is refused before that search (minutes for a thousand sites)
        check_cell(arrays["lattice"], arrays["frac_coords"], n, max_sites=len(arrays["numbers"]),
                   max_resolution=np.inf, min_distance=min_distance, **_site_arrays(arrays))
        check_primitive_fits(arrays, n, max_sites, max_resolution)
        arrays = structure_to_arrays(canonical_structure(structure), allow_disorder=allow_disorder)
    check_cell(arrays["lattice"], arrays["frac_coords"], n, max_sites, max_resolution=max_resolution,
               min_distance=min_distance, **_site_arrays(arrays))
    return arrays


def _site_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"numbers": arrays["numbers"], "occupancy": arrays["occupancy"], "site_index": arrays["site_index"]}


def featurize_arrays(
    lattice: np.ndarray, frac_coords: np.ndarray, numbers: np.ndarray, occupancy: np.ndarray | None = None,
    n: int = G.GRID_SIZE,
) -> np.ndarray:
    """NumPy reference featurizer for one cell -> float32 grid of shape (3, n, n, n)."""
    numbers = np.asarray(numbers, dtype=int)
    keep = numbers > 0
    numbers, frac = numbers[keep], np.asarray(frac_coords, dtype=float)[keep]
    occ = np.ones(len(numbers)) if occupancy is None else np.asarray(occupancy, dtype=float)[keep]
    hkl = G.miller_grid(n).reshape(-1, 3).astype(float)
    recip_metric = np.linalg.inv(lattice @ lattice.T)
    q = np.einsum("mi,ij,mj->m", hkl, recip_metric, hkl)
    species, inverse = np.unique(numbers, return_inverse=True)
    f = form_factor(species, q / 4.0)[inverse]  # (A, M)
    phase = np.exp(2j * np.pi * (frac @ hkl.T))  # (A, M)
    F = np.einsum("a,am,am->m", occ, f, phase)
    re, im = G.compress_structure_factor(F.real, F.imag)
    return np.stack([re, im, q / G.Q0]).reshape(3, n, n, n).astype(np.float32)


def featurize_batch(
    lattice, frac_coords, numbers, occupancy=None, n: int = G.GRID_SIZE, chunk_size: int | None = None,
):
    """Batched torch featurizer (CPU or CUDA) -> tensor (B, 3, n, n, n) on the inputs' device.

    Parameters
    ----------
    lattice : Tensor (B, 3, 3)
        Lattice vectors as rows, Angstrom.
    frac_coords : Tensor (B, N, 3)
        Fractional coordinates, padded.
    numbers : LongTensor (B, N)
        Atomic numbers, 0 for padding.
    occupancy : Tensor (B, N), optional
        Site occupancies (default 1).
    chunk_size : int, optional
        Structures per pass, bounding memory (default 2048 on CUDA, 64 on CPU).

    Notes
    -----
    Computation is in the dtype of ``lattice`` if it is float64, else float32; the output is float32.
    """
    import torch

    from gpsk_materials.representations.form_factors import torch_coefficient_table

    lattice = torch.as_tensor(lattice)
    device = lattice.device
    dtype = torch.float64 if lattice.dtype == torch.float64 else torch.float32
    lattice = lattice.to(dtype)
    frac_coords = torch.as_tensor(frac_coords, device=device).to(dtype)
    numbers = torch.as_tensor(numbers, device=device).long()
    if lattice.ndim != 3 or lattice.shape[1:] != (3, 3):
        raise GridError(f"lattice must have shape (B, 3, 3), got {tuple(lattice.shape)}")
    if frac_coords.shape[:2] != numbers.shape or frac_coords.shape[-1] != 3 or len(numbers) != len(lattice):
        raise GridError(
            f"inconsistent shapes: lattice {tuple(lattice.shape)}, frac_coords {tuple(frac_coords.shape)}, "
            f"numbers {tuple(numbers.shape)}"
        )
    check_numbers(numbers.cpu().numpy())
    occ = (numbers > 0).to(dtype) if occupancy is None else torch.as_tensor(occupancy, device=device).to(dtype)
    occ = occ * (numbers > 0)
    if chunk_size is None:
        chunk_size = 2048 if device.type == "cuda" else 64
    table = torch_coefficient_table(device, dtype)
    out = torch.empty((len(lattice), 3, n, n, n), device=device, dtype=torch.float32)
    for start in range(0, len(lattice), max(1, chunk_size)):
        sl = slice(start, start + chunk_size)
        out[sl] = _featurize_chunk(lattice[sl], frac_coords[sl], numbers[sl], occ[sl], n, table)
    return out


def _featurize_chunk(lattice, frac, numbers, occ, n, table):
    import torch

    B, N = numbers.shape
    dtype = lattice.dtype
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    h = torch.arange(-(n // 2), n // 2, device=lattice.device, dtype=dtype)
    gs = torch.linalg.inv(lattice @ lattice.transpose(1, 2))  # (B, 3, 3)
    hh, kk, ll = torch.meshgrid(h, h, h, indexing="ij")
    q = (
        gs[:, 0, 0, None, None, None] * hh**2 + gs[:, 1, 1, None, None, None] * kk**2
        + gs[:, 2, 2, None, None, None] * ll**2 + 2 * gs[:, 0, 1, None, None, None] * hh * kk
        + 2 * gs[:, 0, 2, None, None, None] * hh * ll + 2 * gs[:, 1, 2, None, None, None] * kk * ll
    )  # (B, n, n, n)

    # element slots: each structure's distinct elements, so form factors are evaluated once per element
    present = torch.zeros((B, table.shape[0]), device=lattice.device, dtype=torch.bool)
    present.scatter_(1, numbers, True)
    present[:, 0] = False
    K = max(int(present.sum(1).max()), 1)
    slot_z = torch.sort(present.to(torch.int8) * torch.arange(table.shape[0], device=lattice.device), 1,
                        descending=True).values[:, :K]  # (B, K), 0 = unused slot
    slot_of_atom = (numbers[:, :, None] == slot_z[:, None, :]) & (numbers[:, :, None] > 0)  # (B, N, K)
    weights = slot_of_atom.to(dtype) * occ[:, :, None]

    # partial structure factors S_k(h,k,l) = sum_j w_jk e^{2 pi i h x_j} e^{2 pi i k y_j} e^{2 pi i l z_j}
    angle = 2 * torch.pi * frac[:, :, :, None] * h  # (B, N, 3, n)
    phase = torch.polar(torch.ones_like(angle), angle)
    exy = (phase[:, :, 0, :, None] * phase[:, :, 1, None, :]).reshape(B, N, n * n)
    wz = weights.to(ctype)[:, :, :, None] * phase[:, :, 2, None, :]  # (B, N, K, n)
    S = torch.bmm(exy.transpose(1, 2), wz.reshape(B, N, K * n)).reshape(B, n, n, K, n)
    S = S.permute(0, 3, 1, 2, 4)  # (B, K, n, n, n)

    coef = table[slot_z]  # (B, K, 11)
    s2 = (q / 4.0)[:, None]  # (B, 1, n, n, n)
    f = coef[:, :, 10, None, None, None].expand(B, K, n, n, n).clone()
    for g in range(5):
        f = f + coef[:, :, g, None, None, None] * torch.exp(-coef[:, :, 5 + g, None, None, None] * s2)
    F = (f * S).sum(1)
    re, im = G.compress_structure_factor(F.real, F.imag)
    return torch.stack([re, im, q / G.Q0], dim=1).float()


def shift_origin(grid, shift):
    """Grid of the same crystal with every atom moved by ``shift`` (fractional): F(h) -> F(h) e^{2 pi i h.t}.

    Works on NumPy arrays (3, n, n, n) / (B, 3, n, n, n) and torch tensors alike (``shift`` (3,) or (B, 3));
    the compression of |F| commutes with the phase factor, so this acts on stored grids directly (augmentation).
    """
    xp = G._xp(grid)
    n = grid.shape[-1]
    if xp is np:
        shift = np.asarray(shift, dtype=float)
        arg = np.einsum("...i,xyzi->...xyz", shift, G.miller_grid(n).astype(float))
        ph = np.exp(2j * np.pi * arg)
        z = (grid[..., 0, :, :, :] + 1j * grid[..., 1, :, :, :]) * ph
        return np.stack([z.real, z.imag, grid[..., 2, :, :, :]], axis=-4).astype(grid.dtype)
    import torch

    shift = torch.as_tensor(shift, device=grid.device, dtype=torch.float64)
    hh = torch.as_tensor(G.miller_grid(n), device=grid.device, dtype=torch.float64)
    arg = torch.einsum("...i,xyzi->...xyz", shift, hh)
    cos, sin = torch.cos(2 * torch.pi * arg), torch.sin(2 * torch.pi * arg)
    re, im = grid[..., 0, :, :, :].double(), grid[..., 1, :, :, :].double()
    out = torch.stack([re * cos - im * sin, re * sin + im * cos, grid[..., 2, :, :, :].double()], dim=-4)
    return out.to(grid.dtype)


def structures_to_arrays(
    structures: Iterable[Any], max_sites: int | None = None, canonicalize: bool = True, allow_disorder: bool = True,
    max_resolution: float = np.inf,
) -> dict[str, np.ndarray]:
    """Padded arrays of many structures for :func:`featurize_batch`: ``lattice`` (B, 3, 3), ``frac_coords``
    (B, N, 3), ``numbers`` (B, N) with 0 padding, ``occupancy`` (B, N).

    ``max_resolution`` (Angstrom, default no bound) refuses cells too large for the grid; give it for any cell that
    may be huge, as the primitive-cell search of a sparse 10^6 A cell exhausts memory.

    Raises
    ------
    InvalidStructureError
        A structure fails an input check of :func:`validated_arrays` (overlapping sites: ``ResolutionError``).
    ResolutionError
        A structure has more than ``max_sites`` entries.
    DegenerateLatticeError
        A cell too large for ``max_resolution``.
    """
    # every input check of the featurizers; the site bound applies to the padded width below
    bound = np.iinfo(np.int64).max if max_sites is None else max_sites
    items = [validated_arrays(s, canonicalize, allow_disorder, max_sites=bound, max_resolution=max_resolution)
             for s in structures]
    width = max([len(it["numbers"]) for it in items] + [1])
    if max_sites is not None:
        if width > max_sites:
            raise ResolutionError(f"a structure has {width} atoms, more than max_sites={max_sites}")
        width = max_sites
    B = len(items)
    out = {
        "lattice": np.zeros((B, 3, 3)),
        "frac_coords": np.zeros((B, width, 3)),
        "numbers": np.zeros((B, width), dtype=np.int64),
        "occupancy": np.zeros((B, width)),
    }
    for i, it in enumerate(items):
        a = len(it["numbers"])
        out["lattice"][i] = it["lattice"]
        out["frac_coords"][i, :a] = it["frac_coords"]
        out["numbers"][i, :a] = it["numbers"]
        out["occupancy"][i, :a] = it["occupancy"]
    return out


class ReciprocalGridFeaturizer(MSONable):
    """Structure -> (3, n, n, n) float32 reciprocal-space grid (GPSK-300 representation).

    Parameters
    ----------
    grid_size : int
        Miller indices per axis (32: h in [-16, 15]).
    canonicalize : bool
        Featurize the canonical cell (Niggli-reduced, canonical setting and origin) so one crystal gives one grid.
    random_origin : bool
        Augmentation: shift every structure by a random fractional vector after canonicalization.
    seed : int, optional
        Seed of the random origin shifts.
    allow_disorder : bool
        Partially occupied sites enter F through their occupancies; if False they raise ``DisorderError``.
    max_sites : int
        Largest number of (species, site) entries accepted.
    max_resolution : float
        Largest real-space grid spacing (Angstrom) accepted; larger cells alias.
    min_distance : float
        Smallest distance (Angstrom) between two sites accepted, periodic images included; closer sites raise
        ``ResolutionError`` naming both (default ``gpsk_materials.defaults.MIN_SITE_DISTANCE``, 0.5).
    backend : {"numpy", "torch"}
        Engine of :meth:`featurize_many`; :meth:`featurize` always uses NumPy.
    device : str
        Torch device for the torch backend ("cpu", "cuda").
    batch_size : int
        Structures per torch call.
    """

    def __init__(
        self,
        grid_size: int = G.GRID_SIZE,
        canonicalize: bool = True,
        random_origin: bool = False,
        seed: int | None = None,
        allow_disorder: bool = True,
        max_sites: int = 256,
        max_resolution: float = 1.6,
        min_distance: float = MIN_SITE_DISTANCE,
        backend: str = "numpy",
        device: str = "cpu",
        batch_size: int = 256,
    ):
        if backend not in ("numpy", "torch"):
            raise ConfigError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        G.miller_axis(grid_size)
        self.grid_size = grid_size
        self.canonicalize = canonicalize
        self.random_origin = random_origin
        self.seed = seed
        self.allow_disorder = allow_disorder
        self.max_sites = max_sites
        self.max_resolution = max_resolution
        self.min_distance = min_distance
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)

    def prepare(self, structure) -> dict[str, np.ndarray]:
        """Validated (and canonicalized) arrays of one structure."""
        arrays = validated_arrays(structure, self.canonicalize, self.allow_disorder, self.grid_size, self.max_sites,
                                  self.max_resolution, self.min_distance)
        if self.random_origin:
            arrays["frac_coords"] = (arrays["frac_coords"] + self._rng.random(3)) % 1.0
        return arrays

    def canonical_structure(self, structure):
        """The cell whose grid :meth:`featurize` returns (canonical cell when ``canonicalize``)."""
        return canonical_structure(structure) if self.canonicalize else as_structure(structure)

    def featurize(self, structure) -> np.ndarray:
        """Grid of one structure, shape (3, n, n, n), float32."""
        a = self.prepare(structure)
        return featurize_arrays(a["lattice"], a["frac_coords"], a["numbers"], a["occupancy"], self.grid_size)

    def __call__(self, structure) -> np.ndarray:
        """:meth:`featurize` (as matminer's ``BaseFeaturizer.__call__``)."""
        return self.featurize(structure)

    def featurize_many(
        self, entries: Sequence[Any], ignore_errors: bool = False, return_errors: bool = False, pbar: bool = True,
        *, progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, list]:
        """Grids of many structures, matminer's ``featurize_many`` convention (batched on ``device`` for the torch
        backend).

        Parameters
        ----------
        entries : sequence of Structure or ase.Atoms
        ignore_errors : bool
            A structure that cannot be featurized gets a grid of NaN instead of raising its error.
        return_errors : bool
            Also return the reasons: ``None`` per featurized structure, else ``"structure <i>: <Error>: <why>"``.
            Implies ``ignore_errors`` (:func:`gpsk_materials.errors.batch_policy`).
        pbar : bool
            tqdm progress bar.
        progress
            Deprecated spelling of ``pbar``.

        Returns
        -------
        numpy.ndarray, shape (B, 3, n, n, n), float32, or ``(grids, reasons)`` with ``return_errors``.

        Raises
        ------
        InvalidStructureError
            Without ``ignore_errors`` / ``return_errors``, the first structure that cannot be featurized (see
            :func:`validated_arrays`).
        """
        from tqdm.auto import tqdm

        ignore_errors, return_errors, pbar = batch_policy(ignore_errors, return_errors, pbar, progress=progress,
                                                          where="ReciprocalGridFeaturizer.featurize_many")
        entries = list(entries)
        n = self.grid_size
        out = np.full((len(entries), 3, n, n, n), np.nan, dtype=np.float32)
        reasons: list = [None] * len(entries)
        step = self.batch_size if self.backend == "torch" else 1
        for start in tqdm(range(0, len(entries), step), disable=not pbar, desc="featurize", unit="batch"):
            chunk, where = [], []
            for i in range(start, min(start + step, len(entries))):
                try:
                    chunk.append(self.prepare(entries[i]))
                    where.append(i)
                except GPSKError as exc:  # one bad structure fails alone
                    if not ignore_errors:
                        raise
                    reasons[i] = f"structure {i}: {type(exc).__name__}: {exc}"
            if not chunk:
                continue
            if self.backend == "numpy":
                a = chunk[0]
                out[where[0]] = featurize_arrays(a["lattice"], a["frac_coords"], a["numbers"], a["occupancy"], n)
                continue
            import torch

            width = max(len(a["numbers"]) for a in chunk)
            pad = {k: np.zeros((len(chunk), width, *([3] if k == "frac_coords" else [])),
                               dtype=np.int64 if k == "numbers" else float)
                   for k in ("frac_coords", "numbers", "occupancy")}
            for i, a in enumerate(chunk):
                for k in pad:
                    pad[k][i, : len(a["numbers"])] = a[k]
            lat = torch.as_tensor(np.stack([a["lattice"] for a in chunk]), device=self.device)
            grids = featurize_batch(lat, torch.as_tensor(pad["frac_coords"]), torch.as_tensor(pad["numbers"]),
                                    torch.as_tensor(pad["occupancy"]), n=n)
            out[where] = grids.cpu().numpy()
        return (out, reasons) if return_errors else out

    def feature_labels(self) -> list[str]:
        """One label per grid value, in C order of the (3, n, n, n) array."""
        ax = G.miller_axis(self.grid_size)
        return [f"{c}[{h},{k},{l}]" for c in G.CHANNELS for h in ax for k in ax for l in ax]

    def citations(self) -> list[str]:
        return [CITATION]

    def implementors(self) -> list[str]:
        return ["gpsk_materials developers"]

