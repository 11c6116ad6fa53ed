"""Crystal structure prediction by prototype substitution: the nearest known analogue on Pettifor's chemical scale.

Before anything generative, a materials scientist asked for the structure of a composition looks for a known crystal
of the same stoichiometry made of chemically similar elements and puts the new elements on its sites. This module
does that over a library of known crystals (by default the model's own training crystals, shipped with the package,
``data/prototypes.npz``):

1. the candidates are the library crystals with the same anonymized formula as the request (``AB2`` for TiO2,
   ``ABC3`` for SrTiO3) and, when the cell content is given, the same number of atoms in the cell;
2. each candidate's elements are mapped onto the requested ones, keeping the stoichiometric counts, by the mapping
   of smallest Pettifor distance: the sum of |M(requested) - M(template)| over the mapped elements, M the Mendeleev
   number of D. G. Pettifor, "A chemical scale for crystal-structure maps", Solid State Commun. 51, 31 (1984)
   (``pymatgen.core.Element.mendeleev_no``); candidates known to lie within ``max_e_above_hull`` of the hull rank
   first, those of unknown stability next, the rest last, each group by that distance, then energy above hull,
   then material id;
3. the substituted cell gets its volume from pymatgen's ``RLSVolumePredictor`` with the template as the reference
   (the template's volume scaled by the ratio of ionic radii, the oxidation states from pymatgen's guesses: KBr from
   KI comes out 36.1 Å³/atom, experiment 35.9); the template's own volume where an ion has no tabulated radius or
   the composition no oxidation states.

The shipped library is the model's training set: the MP-20 test materials are missing from it by design (see
docs/generator.md, "Prototypes"); ``PrototypeLibrary.from_structures`` builds one from any crystals.

It is the baseline every generative model of crystals has to beat on composition-only structure prediction
(``benchmarks/csp.py --method prototypes``, docs/benchmarks.md), and a source of candidates in its own right.

    >>> from gpsk_materials.prototypes import PrototypeSubstitutor
    >>> s = PrototypeSubstitutor().get_structures("KBr", n=1)[0]  # doctest: +SKIP
    >>> s.properties["gpsk"]["prototype"]["formula"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

from gpsk_materials import provenance
from gpsk_materials.errors import ConditioningError, DataError

logger = logging.getLogger(__name__)
#: templates whose space group :meth:`PrototypeSubstitutor.rank` determines when one is requested (spglib costs
#: milliseconds per crystal; the best-ranked few hundred hold the useful ones)
SYMMETRY_CHECKS = 200

#: the shipped library: the training crystals of the shipped model (``benchmarks/build_prototype_library.py``)
LIBRARY_FILE = Path(__file__).resolve().parent / "data" / "prototypes.npz"
_FIELDS = ("lattice", "frac_coords", "numbers", "offsets", "material_id", "e_above_hull")


def _as_composition(composition: Any, where: str) -> Composition:
    if isinstance(composition, Composition):
        comp = composition
    else:
        try:
            comp = Composition(composition)
        except Exception as exc:  # noqa: BLE001  (pymatgen raises several types for a bad formula)
            raise ConditioningError(f"{where}: cannot read the composition {composition!r}: {exc}") from exc
    unknown = [str(el) for el in comp if not isinstance(el, Element)]
    if unknown:
        raise ConditioningError(f"{where}: {composition!r} holds {unknown}, not chemical elements")
    if len(comp) == 0 or any(v <= 0 for v in comp.values()):
        raise ConditioningError(f"{where}: the composition {composition!r} holds no atoms")
    if any(abs(v - round(v)) > 1e-6 for v in comp.values()):
        raise ConditioningError(f"{where}: the composition {composition!r} has fractional amounts")
    return comp


def _positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or :class:`ConditioningError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConditioningError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _mendeleev(symbol: str) -> float:
    m = Element(symbol).mendeleev_no
    if m is None:
        raise ConditioningError(f"{symbol} has no Mendeleev number on Pettifor's scale (pymatgen knows it for Z <= 103)")
    return float(m)


def _with_oxidation_states(structure: Structure) -> Structure:
    """A copy decorated with pymatgen's most likely oxidation states of its composition (``oxi_state_guesses``);
    ValueError when there is none (an intermetallic), so that the caller keeps the template's volume."""
    guesses = structure.composition.oxi_state_guesses(max_sites=-50)
    if not guesses:
        raise ValueError(f"no oxidation states for {structure.composition.reduced_formula}")
    out = structure.copy()
    out.add_oxidation_state_by_element(guesses[0])
    return out


def _pattern(counts: Sequence[int]) -> tuple[int, ...]:
    """Stoichiometry without element names, reduced by the gcd: (1, 2) for TiO2 and for Ti2O4."""
    g = math.gcd(*[int(c) for c in counts])
    return tuple(sorted(int(c) // g for c in counts))


def pettifor_mapping(requested: Mapping[str, int], template: Mapping[str, int]) -> tuple[float, dict[str, str]] | None:
    """The count-preserving map of ``template``'s elements onto ``requested``'s of smallest Pettifor distance.

    Parameters
    ----------
    requested, template : mapping of element symbol -> count
        Two compositions of one stoichiometric pattern (their counts equal up to one common factor).

    Returns
    -------
    (distance, mapping) or None
        ``distance`` = sum of |Mendeleev number difference| over the mapped pairs (Pettifor 1984, see the module
        docstring); ``mapping`` template symbol -> requested symbol. None when no map keeps the counts.
    """
    if len(requested) != len(template) or _pattern(list(requested.values())) != _pattern(list(template.values())):
        return None
    gr, gt = math.gcd(*requested.values()), math.gcd(*template.values())
    by_count_r, by_count_t = defaultdict(list), defaultdict(list)
    for el, c in requested.items():
        by_count_r[c // gr].append(el)
    for el, c in template.items():
        by_count_t[c // gt].append(el)
    distance, mapping = 0.0, {}
    for c, req in by_count_r.items():
        tpl = by_count_t.get(c, [])
        if len(tpl) != len(req):
            return None
        d, best = min((sum(abs(_mendeleev(r) - _mendeleev(t)) for r, t in zip(req, perm)), perm)
                      for perm in itertools.permutations(tpl))
        distance += d
        mapping.update({t: r for r, t in zip(req, best)})
    return distance, mapping


def _open_npz(path: Path, what: str):
    """``np.load`` of an ``.npz`` archive (never pickles), or :class:`DataError` saying the file is not ``what``."""
    import zipfile

    try:
        d = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not {what} (an .npz archive of arrays): {type(exc).__name__}") from exc
    if not hasattr(d, "files"):
        raise DataError(f"{path} is not {what}: it holds a single array, not an .npz archive")
    return d


class PrototypeLibrary:
    """Known crystals, stored as arrays (no pickles): lattices, fractional coordinates and atomic numbers.

    Parameters
    ----------
    lattice : array (N, 3, 3), Å
    frac_coords : array (S, 3)
        Fractional coordinates of every site of every crystal, crystal i's sites at ``offsets[i]:offsets[i + 1]``.
    numbers : array (S,)
        Atomic numbers of the sites.
    offsets : array (N + 1,)
    material_id : array (N,) of str
    e_above_hull : array (N,), eV/atom (NaN where unknown)
    holdout : array (N,) of bool, optional
        Crystals kept out of the model's training because they are evaluation targets (the MP-20 test materials,
        by id and by structure). A user wants them (the known answer, e.g. diamond Si); a benchmark must not see
        them: :meth:`without_holdout`. Default: none.

    Raises
    ------
    DataError
        Arrays of inconsistent shapes.
    """

    def __init__(self, lattice, frac_coords, numbers, offsets, material_id, e_above_hull, holdout=None) -> None:
        try:
            self.lattice = np.asarray(lattice, dtype=np.float64).reshape(-1, 3, 3)
            self.frac_coords = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
            self.numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
            self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
            self.material_id = np.asarray(material_id).astype(str).reshape(-1)
            self.e_above_hull = np.asarray(e_above_hull, dtype=np.float64).reshape(-1)
            self.holdout = (np.zeros(len(self.lattice), dtype=bool) if holdout is None
                            else np.asarray(holdout, dtype=bool).reshape(-1))
        except (TypeError, ValueError) as exc:
            raise DataError(f"prototype library arrays of the wrong kind: {exc}") from exc
        n = len(self.lattice)
        if len(self.numbers) and not (self.numbers.min() >= 1 and self.numbers.max() <= 103):
            raise DataError("prototype library atomic numbers must lie in 1..103, got "
                            f"{self.numbers.min()}..{self.numbers.max()}")
        if n and not np.all(np.abs(np.linalg.det(self.lattice)) > 1e-6):
            raise DataError(f"prototype library lattices {np.flatnonzero(np.abs(np.linalg.det(self.lattice)) <= 1e-6)[:5].tolist()} "
                            "have no volume")
        if not (len(self.offsets) == n + 1 and len(self.material_id) == n and len(self.e_above_hull) == n
                and len(self.holdout) == n
                and self.offsets[0] == 0 and self.offsets[-1] == len(self.frac_coords) == len(self.numbers)
                and np.all(np.diff(self.offsets) > 0)):
            raise DataError(f"prototype library arrays disagree: {n} lattices, {len(self.offsets)} offsets, "
                            f"{len(self.frac_coords)} coordinates, {len(self.numbers)} atomic numbers, "
                            f"{len(self.material_id)} ids, {len(self.e_above_hull)} energies, "
                            f"{len(self.holdout)} holdout flags")
        self._index: dict[tuple[int, ...], list[int]] | None = None
        self._space_groups: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.lattice)

    @classmethod
    def from_structures(cls, structures: Sequence[Structure], material_ids: Sequence[str],
                        e_above_hull: Sequence[float] | None = None) -> PrototypeLibrary:
        """A library of ordered pymatgen Structures (their cells as given).

        Raises
        ------
        DataError
            A disordered structure, or ``material_ids`` of another length.
        """
        if isinstance(material_ids, str) or len(material_ids) != len(structures):
            raise DataError(f"{len(structures)} structures need as many material ids, got {material_ids!r}")
        if not len(structures):
            raise DataError("a prototype library needs at least one structure")
        for i, s in enumerate(structures):
            if not isinstance(s, Structure):
                raise DataError(f"structure {i} ({material_ids[i]}) is a {type(s).__name__}, not a pymatgen Structure")
            if not s.is_ordered or not len(s):
                raise DataError(f"structure {i} ({material_ids[i]}) is disordered or empty; a prototype must be an "
                                "ordered crystal")
            if not all(isinstance(sp, Element) for sp in s.composition.elements):
                raise DataError(f"structure {i} ({material_ids[i]}) holds {s.composition.elements}: a prototype's "
                                "sites must be plain elements")
        offsets = np.cumsum([0] + [len(s) for s in structures])
        return cls(np.stack([s.lattice.matrix for s in structures]),
                   np.concatenate([s.frac_coords for s in structures]),
                   np.concatenate([[site.specie.Z for site in s] for s in structures]), offsets, list(material_ids),
                   np.full(len(structures), np.nan) if e_above_hull is None else e_above_hull)

    @classmethod
    def from_training_cache(cls, path: str | Path) -> PrototypeLibrary:
        """The crystals of a training cache (``gpsk train --cache-only``: canonical cells, padded to its max sites).

        Raises
        ------
        DataError
            The file is not such a cache.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"training cache {path} does not exist or is not a file")
        try:
            with _open_npz(path, "a training cache") as d:
                numbers = d["numbers"].astype(np.int64)
                occ = d["occupancy"] if "occupancy" in d.files else (numbers > 0).astype(np.float32)
                if np.any((numbers > 0) & (occ < 1.0 - 1e-6)):
                    raise DataError(f"{path}: the cache holds partially occupied sites")
                keep = numbers > 0
                counts = keep.sum(1)
                return cls(d["lattice"], d["frac_coords"][keep], numbers[keep], np.concatenate([[0], np.cumsum(counts)]),
                           d["material_id"], d["e_above_hull"])
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{path} is not a training cache ({exc})") from exc

    @classmethod
    def load(cls, path: str | Path | None = None) -> PrototypeLibrary:
        """Read a library written by :meth:`save` (default: the shipped :data:`LIBRARY_FILE`).

        Raises
        ------
        DataError
            A missing file or missing arrays.
        """
        path = Path(path) if path is not None else LIBRARY_FILE
        if not path.is_file():
            raise DataError(f"prototype library {path} does not exist or is not a file")
        d = _open_npz(path, "a prototype library")
        with d:
            missing = [k for k in _FIELDS if k not in d.files]
            if missing:
                raise DataError(f"{path} is not a prototype library: it lacks {missing}")
            return cls(*(d[k] for k in _FIELDS), holdout=d["holdout"] if "holdout" in d.files else None)

    def save(self, path: str | Path) -> Path:
        """Write the arrays to a compressed ``.npz`` atomically (lattices float32, coordinates float32: 1e-7
        fractional, far below what any comparison resolves). Returns the path.

        Raises
        ------
        DataError
            ``path`` cannot be written (a folder, a missing permission).
        """
        from gpsk_materials.atomic_files import write_atomic

        path = Path(path)

        def write(tmp: str) -> None:
            np.savez_compressed(tmp, lattice=self.lattice.astype(np.float32), frac_coords=self.frac_coords.astype(np.float32),
                                numbers=self.numbers.astype(np.uint8), offsets=self.offsets.astype(np.int32),
                                material_id=self.material_id, e_above_hull=self.e_above_hull.astype(np.float32),
                                holdout=self.holdout)

        try:
            write_atomic(path, write, suffix=".npz")
        except OSError as exc:
            raise DataError(f"cannot write the prototype library to {path}: {exc}") from exc
        return path

    def subset(self, indices: Sequence[int]) -> PrototypeLibrary:
        """A library of the crystals ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(idx):
            raise DataError("a prototype library needs at least one structure")
        sites = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        offsets = np.concatenate([[0], np.cumsum(np.diff(self.offsets)[idx])])
        return PrototypeLibrary(self.lattice[idx], self.frac_coords[sites], self.numbers[sites], offsets,
                                self.material_id[idx], self.e_above_hull[idx], self.holdout[idx])

    def without_holdout(self) -> PrototypeLibrary:
        """The library without its held-out evaluation crystals: what a benchmark on those targets must use (the
        shipped library without them is the model's training set exactly)."""
        return self.subset(np.flatnonzero(~self.holdout)) if self.holdout.any() else self

    def composition(self, i: int) -> dict[str, int]:
        """Element symbol -> count in crystal ``i``'s cell."""
        z, c = np.unique(self.numbers[self.offsets[i]:self.offsets[i + 1]], return_counts=True)
        return {Element.from_Z(int(a)).symbol: int(b) for a, b in zip(z, c)}

    def structure(self, i: int) -> Structure:
        """Crystal ``i`` as a pymatgen Structure."""
        sl = slice(self.offsets[i], self.offsets[i + 1])
        return Structure(Lattice(self.lattice[i]), [int(z) for z in self.numbers[sl]], self.frac_coords[sl])

    def space_group(self, i: int) -> int:
        """International number of crystal ``i``'s space group (pymatgen ``SpacegroupAnalyzer``, symprec 0.1; cached;
        0 where spglib finds none)."""
        if i not in self._space_groups:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            try:
                self._space_groups[i] = int(SpacegroupAnalyzer(self.structure(i), symprec=0.1).get_space_group_number())
            except (ValueError, TypeError):  # spglib found no symmetry dataset
                self._space_groups[i] = 0
        return self._space_groups[i]

    def candidates(self, pattern: tuple[int, ...]) -> list[int]:
        """Indices of the crystals whose cell has stoichiometric ``pattern`` (:func:`_pattern`)."""
        if self._index is None:
            index: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i in range(len(self)):
                _, c = np.unique(self.numbers[self.offsets[i]:self.offsets[i + 1]], return_counts=True)
                index[_pattern(c.tolist())].append(i)
            self._index = dict(index)
        return self._index.get(pattern, [])


class PrototypeSubstitutor:
    """Predict the structure of a composition from its nearest known analogue (see the module docstring).

    Parameters
    ----------
    library : PrototypeLibrary or path, optional
        Default: the shipped library (the shipped model's training crystals).
    scale_volume : bool
        Scale the substituted cell to the volume of pymatgen's ``RLSVolumePredictor`` (ionic radii; default True).
    exclude_formulas : str or sequence of str
        Reduced formulas whose crystals never serve as templates (a benchmark leaves the target's own out).
    max_e_above_hull : float
        Templates known to lie at most this far above the hull (eV/atom; default 0.1) rank first, those of unknown
        stability next and the rest last, each group by Pettifor distance: a stable analogue one step away on the
        chemical scale is a better guess than a high-energy polymorph of the very formula (KBr: rock salt from KI
        before a 0.2 eV/atom KBr entry). ``inf`` ranks by distance alone.

    Raises
    ------
    DataError
        ``library`` is neither a :class:`PrototypeLibrary` nor the path of a library file.
    ConditioningError
        An ``exclude_formulas`` entry that is not a formula, or a negative or non-numeric ``max_e_above_hull``.
    """

    def __init__(self, library: PrototypeLibrary | str | Path | None = None, scale_volume: bool = True,
                 exclude_formulas: str | Sequence[str] = (), max_e_above_hull: float = 0.1) -> None:
        if library is not None and not isinstance(library, (PrototypeLibrary, str, Path)):
            raise DataError(f"library must be a PrototypeLibrary or the path of one, got {type(library).__name__}")
        self.library = library if isinstance(library, PrototypeLibrary) else PrototypeLibrary.load(library)
        self.scale_volume = bool(scale_volume)
        self.exclude_formulas = (exclude_formulas,) if isinstance(exclude_formulas, str) else tuple(exclude_formulas)
        self._excluded = {_as_composition(f, "exclude_formulas").reduced_formula for f in self.exclude_formulas}
        if isinstance(max_e_above_hull, bool) or not isinstance(max_e_above_hull, (int, float)) or not max_e_above_hull >= 0:
            raise ConditioningError(f"max_e_above_hull must be a number >= 0 (eV/atom), got {max_e_above_hull!r}")
        self.max_e_above_hull = float(max_e_above_hull)

    def rank(self, composition: Any, formula_units: int | None = None,
             space_group: int | None = None) -> list[tuple[float, int, dict[str, str]]]:
        """All templates for ``composition``, best first: (Pettifor distance, library index, element mapping).

        ``composition`` is a reduced formula (any number of formula units per cell, as the template has it) unless
        ``formula_units`` is given, in which case the cell content is ``formula_units`` times the reduced formula
        and only templates with exactly that many atoms qualify; a composition with a common factor (``Ti2O4``)
        counts as that cell content. Order: stability group (see ``max_e_above_hull``), Pettifor distance, energy
        above hull, material id; with ``space_group`` (1-230), the templates of that space group (spglib through
        pymatgen's ``SpacegroupAnalyzer``, symprec 0.1, on the first :data:`SYMMETRY_CHECKS` of that order; element
        substitution keeps a template's symmetry) move ahead of the others, in that order.

        Raises
        ------
        ConditioningError
            An unreadable composition, an element off Pettifor's scale, a ``formula_units`` that is not an integer
            >= 1 or that disagrees with a cell content, a ``space_group`` outside 1-230.
        """
        if space_group is not None and (isinstance(space_group, bool) or not isinstance(space_group, (int, np.integer))
                                        or not 1 <= int(space_group) <= 230):
            raise ConditioningError(f"space_group must be an integer in 1..230, got {space_group!r}")
        comp = _as_composition(composition, "prototype request")
        counts = {el.symbol: int(round(v)) for el, v in comp.items()}
        reduced, z = comp.get_reduced_composition_and_factor()
        if formula_units is not None:
            fu = _positive_int("formula_units", formula_units)
            if z > 1 and fu != int(round(z)):
                raise ConditioningError(f"prototype request: the cell content {comp.formula} holds {z:g} formula units "
                                        f"of {reduced.formula}, but formula_units={fu} was asked")
            counts = {el.symbol: int(round(v)) * fu for el, v in reduced.items()}
        for el in counts:
            _mendeleev(el)
        n_atoms = sum(counts.values()) if (formula_units is not None or z > 1) else None
        out = []
        for i in self.library.candidates(_pattern(list(counts.values()))):
            tpl = self.library.composition(i)
            if n_atoms is not None and sum(tpl.values()) != n_atoms:
                continue
            if self._excluded and Composition(tpl).reduced_formula in self._excluded:
                continue
            hit = pettifor_mapping(counts, tpl)
            if hit is not None:
                out.append((hit[0], i, hit[1]))
        e = self.library.e_above_hull
        cut = self.max_e_above_hull

        def key(r):
            ei = e[r[1]]
            group = 1 if np.isnan(ei) else (0 if ei <= cut else 2)
            return group, r[0], np.nan_to_num(ei, nan=np.inf), self.library.material_id[r[1]]

        out.sort(key=key)
        if space_group is not None:
            hit = {r[1] for r in out[:SYMMETRY_CHECKS] if self.library.space_group(r[1]) == int(space_group)}
            out.sort(key=lambda r: r[1] not in hit)  # stable: the requested group's templates first, in order
        return out

    def get_structures(self, composition: Any, n: int = 1, formula_units: int | None = None,
                       space_group: int | None = None) -> list[Structure]:
        """Up to ``n`` predicted structures of ``composition``, best template first (fewer when fewer exist; none
        is logged as a warning naming the stoichiometry).

        Each Structure's ``properties["gpsk"]["prototype"]`` holds the template's ``material_id``, reduced
        ``formula``, ``e_above_hull`` (eV/atom, None if unknown), its ``space_group`` when one was requested (as
        :meth:`rank` computes it), ``pettifor_distance``, the element ``mapping`` and
        how its ``volume`` was set (``"RLS"``: ionic radii; ``"template"``: the template's, where pymatgen has no
        ionic radius for an element in its guessed oxidation state) (:mod:`gpsk_materials.provenance`, section
        ``prototype``).

        Raises
        ------
        ConditioningError
            As :meth:`rank`, or ``n`` not an integer >= 1.
        """
        n = _positive_int("n", n)
        ranked = self.rank(composition, formula_units, space_group)
        if not ranked:
            logger.warning("no prototype of the stoichiometry of %s%s in the library (%d crystals)",
                           composition if isinstance(composition, str) else _as_composition(composition, "").formula,
                           "" if formula_units is None else f" with {formula_units} formula units", len(self.library))
        out = []
        for distance, i, mapping in ranked[:n]:
            template = self.library.structure(i)
            template_formula = template.composition.reduced_formula
            s = template.copy()
            s.replace_species(mapping)
            volume = "template"
            if self.scale_volume:
                from pymatgen.analysis.structure_prediction.volume_predictor import RLSVolumePredictor

                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        v = RLSVolumePredictor(radii_type="ionic", use_bv=False).predict(
                            _with_oxidation_states(s), _with_oxidation_states(template))
                    if np.isfinite(v) and v > 0:
                        s.scale_lattice(float(v))
                        volume = "RLS"
                except (ValueError, KeyError, TypeError, ZeroDivisionError):  # no ionic radius: the template's volume
                    pass
            e = self.library.e_above_hull[i]
            provenance.write(s, "prototype", {
                "material_id": str(self.library.material_id[i]), "formula": template_formula,
                "e_above_hull": None if np.isnan(e) else float(e),
                **({} if space_group is None else {"space_group": self.library.space_group(i)}),
                "pettifor_distance": float(distance), "mapping": dict(mapping), "volume": volume})
            out.append(s)
        return out
