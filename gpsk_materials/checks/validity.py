"""Structural and compositional validity of crystals.

Two definitions live here:

* the benchmark definitions of CDVAE (Xie et al. 2022), reused by DiffCSP, MatterGen, ...:
  :func:`structural_validity` (every pairwise distance >= 0.5 A, cell volume >= 0.1 A^3) and
  :func:`smact_validity` (charge neutrality with the SMACT oxidation states + Pauling electronegativity test,
  single elements and all-metal alloys valid). These follow ``cdvae/common/eval_utils.py`` line by line so that
  our numbers are comparable with published ones;
* our stricter checks in :class:`ValidityCheck`: volume per atom in a plausible range and every interatomic
  distance at least a fraction of the sum of covalent radii (periodic images of a site included).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import smact
from monty.json import MSONable
from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
from pymatgen.core import Composition, Element, Structure

from gpsk_materials.checks._common import as_structure
from gpsk_materials.errors import InvalidStructureError, UnknownElementError
from gpsk_materials.representations.reciprocal import shortest_lattice_vector
from gpsk_materials.vocabulary import reduced_formula

#: CDVAE gives up on compositions whose oxidation-state product exceeds this (and calls them invalid).
_CDVAE_MAX_OX_COMBOS = 1e7


def structural_validity(structure: Structure, min_distance: float = 0.5, min_volume: float = 0.1) -> bool:
    """CDVAE structural validity: all pairwise site distances >= ``min_distance`` and volume >= ``min_volume``.

    Distances are pymatgen's minimum-image ``distance_matrix`` between distinct sites (a site's distance to its own
    periodic images is not considered, as in CDVAE).
    """
    structure = as_structure(structure)
    if structure.volume < min_volume:
        return False
    dist = structure.distance_matrix + np.eye(len(structure)) * (min_distance + 10.0)
    return bool(dist.min() >= min_distance)


def _integer_counts(composition: Composition | str | Mapping) -> tuple[tuple[str, ...], tuple[int, ...]]:
    comp = composition if isinstance(composition, Composition) else Composition(composition)
    if comp.num_atoms <= 0:
        raise InvalidStructureError("empty composition")
    amounts = dict(sorted(comp.get_el_amt_dict().items(), key=lambda kv: Element(kv[0]).Z))
    try:
        reduced = reduced_formula(amounts)  # the vocabulary's integer cell content, reduced by the GCD
    except (ValueError, OverflowError):  # not whole numbers of atoms
        reduced = {}
    if not reduced or min(reduced.values()) <= 0:
        raise InvalidStructureError(f"{comp.formula}: smact_validity needs integer atom counts")
    return tuple(reduced), tuple(reduced.values())


def _cdvae_pauling_test(ox_states: tuple[int, ...], electronegs: list[float | None]) -> bool:
    """Pauling test as CDVAE ran it (smact 2.x): a missing electronegativity that has to be compared raises
    TypeError, which CDVAE reads as "passes". smact >= 3 returns False instead, so smact's own test is not used."""
    try:
        for (ox1, en1), (ox2, en2) in itertools.combinations(list(zip(ox_states, electronegs)), 2):
            if ox1 > 0 and ox2 < 0 and en1 >= en2:  # type: ignore[operator]
                return False
            if ox1 < 0 and ox2 > 0 and en1 <= en2:  # type: ignore[operator]
                return False
    except TypeError:
        return True
    return True


def smact_validity(
    composition: Composition | str | Mapping, use_pauling_test: bool = True, include_alloys: bool = True
) -> bool:
    """CDVAE compositional validity (``smact_validity`` of ``cdvae/common/eval_utils.py``).

    Valid if a single element, or (with ``include_alloys``) only metals, or if some combination of SMACT's original
    default oxidation states (the ``smact14`` set, which was ``Element.oxidation_states`` in the smact 2.x CDVAE used;
    smact >= 3 defaults to ICSD-2024 states instead) is charge neutral for the gcd-reduced atom counts and passes the
    Pauling electronegativity test.

    Parameters
    ----------
    composition
        A pymatgen Composition, a formula or an element -> count mapping (integer counts).

    Raises
    ------
    InvalidStructureError
        An empty composition or non-integer counts.
    UnknownElementError
        An element SMACT holds no data for (e.g. Nh, which pymatgen reads from a CIF type symbol ``NH3``).
    """
    elem_symbols, counts = _integer_counts(composition)
    if len(set(elem_symbols)) == 1:
        return True
    if include_alloys and all(el in smact.metals for el in elem_symbols):
        return True
    unknown = [el for el in elem_symbols if el not in _smact_symbols()]
    if unknown:
        raise UnknownElementError(f"SMACT has no oxidation states or electronegativity for {', '.join(unknown)}")
    smact_elems = [smact.Element(el) for el in elem_symbols]
    electronegs = [e.pauling_eneg for e in smact_elems]
    ox_combos = [e.oxidation_states_smact14 or [] for e in smact_elems]
    if np.prod([float(len(o)) for o in ox_combos]) > _CDVAE_MAX_OX_COMBOS:
        return False
    stoichs = [(c,) for c in counts]
    threshold = max(counts)
    for ox_states in itertools.product(*ox_combos):
        if not smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold):
            continue
        if not use_pauling_test or _cdvae_pauling_test(ox_states, electronegs):
            return True
    return False


def _smact_symbols() -> frozenset[str]:
    """Elements with SMACT data (oxidation states, electronegativity)."""
    global _SMACT_SYMBOLS
    if _SMACT_SYMBOLS is None:
        from smact.data_loader import lookup_element_data

        _SMACT_SYMBOLS = frozenset(el.symbol for el in Element if _has_smact_data(lookup_element_data, el.symbol))
    return _SMACT_SYMBOLS


def _has_smact_data(lookup, symbol: str) -> bool:
    try:
        return lookup(symbol) is not None
    except (KeyError, NameError, ValueError):
        return False


_SMACT_SYMBOLS: frozenset[str] | None = None


def _covalent_radius(symbol: str) -> float:
    try:
        return float(CovalentRadius.radius[symbol])
    except KeyError:  # elements beyond Cm in Cordero's table
        return float(Element(symbol).atomic_radius or 1.5)


def _site_radius(species: Composition) -> float:
    """Covalent radius of a site: occupancy-weighted mean over its species (one species: its radius)."""
    total = sum(species.values())
    return sum(occ * _covalent_radius(getattr(sp, "element", sp).symbol) for sp, occ in species.items()) / total


#: most boxes of pymatgen's cell list (one per (max(reach, 1 A))^3 of the sites' extent) before the neighbour search
#: takes minimum-image distances instead (a sparse 10^6 A cell would ask for 10^15 boxes, petabytes)
MAX_CELL_LIST_BOXES = 1e6


def _contacts(structure: Structure, cutoff_factor: float, cutoff: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour pairs within ``cutoff_factor`` times the largest sum of covalent radii, or ``cutoff`` (A) if larger
    (periodic images of a site included): ``(centers, points, distances in A, distance / (r_i + r_j))``. A
    disordered site has the occupancy-weighted mean radius of its species.

    Every pair that can hold a site's smallest distance or smallest distance / radii sum is listed, which is all the
    callers read (:func:`nearest_neighbours`, :func:`closest_contact`); the work stays bounded whatever the cell:

    * each site meets its own image at the shortest lattice vector L, so no site's minimum lies beyond
      L (r_min + r_max) / (2 r_min), and the reach is cut to that (a 0.04 A cell asked for billions of images);
    * where pymatgen's cell list would need more than ``MAX_CELL_LIST_BOXES`` boxes (a sparse cell of 10^6 A) or
      periodic images (a sub-angstrom cell: pymatgen's search reaches at least 1 A), the pairs are the
      minimum-image distances between sites plus each site's own image at L: the closest image of every pair,
      which is what a minimum needs.
    """
    radii = np.array([_site_radius(site.species) for site in structure])
    reach = max(cutoff_factor * 2.0 * radii.max(), cutoff)
    shortest = shortest_lattice_vector(structure.lattice.matrix)
    reach = min(reach, shortest * (radii.min() + radii.max()) / (2.0 * radii.min()) * (1 + 1e-9) + 1e-9)
    cart = structure.cart_coords
    boxes = np.prod(np.ceil((np.ptp(cart, axis=0) + 2 * reach) / max(reach, 1.0)))
    # periodic images the search scans: pymatgen's cell list reaches at least 1 A, so a sub-angstrom cell asks for
    # (1 A / spacing)^3 images of every site however short the reach
    m = structure.lattice.matrix
    spacings = abs(np.linalg.det(m)) / np.linalg.norm(np.cross(m[[1, 2, 0]], m[[2, 0, 1]]), axis=1).clip(min=1e-300)
    images = np.prod(2 * np.ceil(max(reach, 1.0) / spacings.clip(min=1e-12)) + 1) * len(structure)
    if boxes <= MAX_CELL_LIST_BOXES and images <= MAX_CELL_LIST_BOXES:
        centers, points, _, dists = structure.get_neighbor_list(reach)
    else:
        parts: list[list[np.ndarray]] = [[], [], []]
        frac = structure.frac_coords
        for start in range(0, len(structure), 256):
            d = structure.lattice.get_all_distances(frac[start : start + 256], frac)
            ii, jj = np.nonzero(d <= reach)
            keep = ii + start != jj
            parts[0].append(ii[keep] + start), parts[1].append(jj[keep]), parts[2].append(d[ii[keep], jj[keep]])
        if shortest <= reach:
            own = np.arange(len(structure))
            parts[0].append(own), parts[1].append(own), parts[2].append(np.full(len(own), shortest))
        centers, points, dists = (np.concatenate(p) for p in parts)
    return centers, points, dists, dists / (radii[centers] + radii[points]) if len(centers) else dists


def nearest_neighbours(structure: Structure, cutoff_factor: float = 1.5, cutoff: float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each site's closest neighbours from one neighbour list (periodic images of the site itself included).

    Parameters
    ----------
    structure
        The structure (a disordered site has the occupancy-weighted mean covalent radius of its species).
    cutoff_factor
        The list reaches ``cutoff_factor`` times the largest sum of two covalent radii ...
    cutoff
        ... or ``cutoff`` (A), whichever is larger (e.g. a potential's :attr:`~gpsk_materials.checks.potentials.
        Potential.cutoff`, so that one list serves the radii checks and the isolated-atom check).

    Returns
    -------
    ratios, distances
        Per site, the smallest d_ij / (r_i + r_j) and the smallest d_ij (A) over its neighbours; ``inf`` where no
        neighbour lies within the list's reach.
    """
    structure = as_structure(structure)
    centers, _, dists, r = _contacts(structure, cutoff_factor, cutoff)
    ratios = np.full(len(structure), np.inf)
    nearest = np.full(len(structure), np.inf)
    if len(centers):
        np.minimum.at(ratios, centers, r)
        np.minimum.at(nearest, centers, dists)
    return ratios, nearest


def distance_ratios(structure: Structure, cutoff_factor: float = 1.5) -> np.ndarray:
    """For each site, the smallest d_ij / (r_i + r_j) over its neighbours (covalent radii, periodic images of the
    site itself included); ``inf`` where no neighbour lies within ``cutoff_factor`` times the largest sum (the
    ratios of :func:`nearest_neighbours`)."""
    return nearest_neighbours(structure, cutoff_factor)[0]


def closest_contact(structure: Structure) -> tuple[int, int, float, float] | None:
    """The pair of sites closest relative to their covalent radii, the quantity :func:`distance_ratios` reports per
    site: ``(i, j, distance in A, distance / (r_i + r_j))``, ``j`` possibly ``i`` (a site and its own periodic
    image); None when no pair lies within 1.5 times the largest sum of radii."""
    structure = as_structure(structure)
    centers, points, dists, r = _contacts(structure, 1.5)
    if not len(centers):
        return None
    k = int(np.argmin(r))
    return int(centers[k]), int(points[k]), float(dists[k]), float(r[k])


def connectivity(structure: Structure, factor: float = 1.3, ratios: np.ndarray | None = None) -> float:
    """Fraction of atoms with at least one neighbour within ``factor`` times the sum of covalent radii.

    ``ratios`` are the structure's :func:`distance_ratios` when already computed with a ``cutoff_factor`` of at
    least ``factor`` (None: computed here)."""
    if ratios is None:
        ratios = distance_ratios(structure, cutoff_factor=max(factor, 1.0))
    return float(np.mean(np.asarray(ratios) <= factor))


@dataclass
class ValidityResult(MSONable):
    """Outcome of :meth:`ValidityCheck.check`.

    ``valid`` is the CDVAE definition (structural and compositional); ``strict_valid`` adds our own checks.
    """

    formula: str
    structural_valid: bool
    compositional_valid: bool
    min_distance: float
    volume: float
    volume_per_atom: float
    volume_per_atom_ok: bool
    min_distance_ratio: float
    distance_ratio_ok: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.structural_valid and self.compositional_valid

    @property
    def strict_valid(self) -> bool:
        return self.valid and self.volume_per_atom_ok and self.distance_ratio_ok

    def as_dict(self) -> dict:
        d = {"@module": type(self).__module__, "@class": type(self).__name__, **asdict(self)}
        d.update(valid=self.valid, strict_valid=self.strict_valid)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ValidityResult:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _compositional_validity(structure: Structure) -> tuple[bool, str]:
    """SMACT validity of a structure's composition and, when invalid, why. A disordered structure is judged by the
    smallest integer ratio of its composition (Cu0.5Au0.5 -> CuAu); an element without SMACT data makes the
    verdict unknown, reported as invalid with that reason."""
    comp = structure.composition
    note = ""
    if not structure.is_ordered:
        formula, _ = comp.get_integer_formula_and_factor(max_denominator=100)
        comp, note = Composition(formula), f" (disordered; judged as its integer ratio {formula})"
    try:
        if smact_validity(comp):
            return True, ""
    except UnknownElementError as exc:
        return False, f"SMACT: compositional validity unknown: {exc}"
    return False, f"SMACT: no charge-neutral, electronegativity-ordered oxidation states{note}"


class ValidityCheck(MSONable):
    """Structural, compositional and stricter geometric validity of a structure.

    Parameters
    ----------
    min_distance, min_volume
        CDVAE structural-validity thresholds (A, A^3).
    volume_per_atom_range
        Plausible volume per atom (A^3); the bounds enclose the densest (diamond, 5.7) and loosest ordinary
        inorganic solids with a margin.
    min_distance_ratio
        Smallest allowed d_ij / (r_i + r_j) with Cordero covalent radii (bonds sit near 1.0).
    """

    def __init__(
        self,
        min_distance: float = 0.5,
        min_volume: float = 0.1,
        volume_per_atom_range: tuple[float, float] = (4.0, 100.0),
        min_distance_ratio: float = 0.6,
    ) -> None:
        lo, hi = volume_per_atom_range
        if not 0 <= lo < hi:
            raise InvalidStructureError(f"volume_per_atom_range must satisfy 0 <= low < high, got {volume_per_atom_range}")
        self.min_distance = float(min_distance)
        self.min_volume = float(min_volume)
        self.volume_per_atom_range = (float(lo), float(hi))
        self.min_distance_ratio = float(min_distance_ratio)

    def check(self, structure: Structure, ratios: np.ndarray | None = None) -> ValidityResult:
        """Run every validity check on ``structure``; ``ratios`` are its :func:`distance_ratios` when already
        computed (None: computed here)."""
        structure = as_structure(structure)
        reasons = []
        struct_ok = structural_validity(structure, self.min_distance, self.min_volume)
        dist = structure.distance_matrix + np.eye(len(structure)) * 1e9
        min_dist = float(dist.min()) if len(structure) > 1 else float("inf")
        if not struct_ok:
            reasons.append(f"CDVAE structural: min distance {min_dist:.3f} A or volume {structure.volume:.3f} A^3")
        comp_ok, why = _compositional_validity(structure)
        if not comp_ok:
            reasons.append(why)
        vpa = structure.volume / structure.num_sites
        lo, hi = self.volume_per_atom_range
        vpa_ok = lo <= vpa <= hi
        if not vpa_ok:
            reasons.append(f"volume per atom {vpa:.2f} A^3 outside [{lo}, {hi}]")
        ratio = float(np.min(distance_ratios(structure) if ratios is None else ratios))
        ratio_ok = ratio >= self.min_distance_ratio
        if not ratio_ok:
            reasons.append(f"distance / covalent-radii sum {ratio:.2f} < {self.min_distance_ratio}")
        return ValidityResult(
            formula=structure.composition.reduced_formula,
            structural_valid=struct_ok,
            compositional_valid=comp_ok,
            min_distance=min_dist,
            volume=float(structure.volume),
            volume_per_atom=float(vpa),
            volume_per_atom_ok=vpa_ok,
            min_distance_ratio=ratio,
            distance_ratio_ok=ratio_ok,
            reasons=reasons,
        )
