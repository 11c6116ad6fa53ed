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
   (``pymatgen.core.Element.mendeleev_no``); candidates are ranked by that distance, then by their energy above
   hull (the more stable prototype first), then by material id;
3. the substituted cell gets its volume from pymatgen's ``RLSVolumePredictor`` with the template as the reference
   (the template's volume scaled by the ratio of ionic radii, atomic radii where no oxidation state can be
   guessed: KBr from KI comes out 35.9 Å³/atom, experiment 35.9; CaO from MgO 13.5, experiment 13.9; the
   template's own volume where an element has no radius).

It is the baseline every generative model of crystals has to beat on composition-only structure prediction
(``benchmarks/csp.py --method prototypes``, docs/benchmarks.md), and a source of candidates in its own right.

    >>> from gpsk_materials.prototypes import PrototypeSubstitutor
    >>> s = PrototypeSubstitutor().get_structures("KBr", n=1)[0]  # doctest: +SKIP
    >>> s.properties["gpsk"]["prototype"]["formula"]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

from gpsk_materials import provenance
from gpsk_materials.errors import ConditioningError, DataError

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
        best = min(itertools.permutations(tpl), key=lambda perm: (
            sum(abs(Element(r).mendeleev_no - Element(t).mendeleev_no) for r, t in zip(req, perm)), perm))
        distance += sum(abs(Element(r).mendeleev_no - Element(t).mendeleev_no) for r, t in zip(req, best))
        mapping.update({t: r for r, t in zip(req, best)})
    return distance, mapping


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

    Raises
    ------
    DataError
        Arrays of inconsistent shapes.
    """

    def __init__(self, lattice, frac_coords, numbers, offsets, material_id, e_above_hull) -> None:
        self.lattice = np.asarray(lattice, dtype=np.float64).reshape(-1, 3, 3)
        self.frac_coords = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        self.material_id = np.asarray(material_id).astype(str)
        self.e_above_hull = np.asarray(e_above_hull, dtype=np.float64).reshape(-1)
        n = len(self.lattice)
        if not (len(self.offsets) == n + 1 and len(self.material_id) == n and len(self.e_above_hull) == n
                and self.offsets[0] == 0 and self.offsets[-1] == len(self.frac_coords) == len(self.numbers)
                and np.all(np.diff(self.offsets) > 0)):
            raise DataError(f"prototype library arrays disagree: {n} lattices, {len(self.offsets)} offsets, "
                            f"{len(self.frac_coords)} coordinates, {len(self.numbers)} atomic numbers, "
                            f"{len(self.material_id)} ids, {len(self.e_above_hull)} energies")
        self._index: dict[tuple[int, ...], list[int]] | None = None

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
        if len(material_ids) != len(structures):
            raise DataError(f"{len(structures)} structures but {len(material_ids)} material ids")
        for i, s in enumerate(structures):
            if not s.is_ordered:
                raise DataError(f"structure {i} ({material_ids[i]}) is disordered; a prototype must be ordered")
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
        try:
            with np.load(path, allow_pickle=False) as d:
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
            raise DataError(f"prototype library {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as d:
                return cls(*(d[k] for k in _FIELDS))
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{path} is not a prototype library ({exc})") from exc

    def save(self, path: str | Path) -> Path:
        """Write the arrays to a compressed ``.npz`` atomically (lattices float32, coordinates float32: 1e-7
        fractional, far below what any comparison resolves). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        try:
            np.savez_compressed(tmp, lattice=self.lattice.astype(np.float32), frac_coords=self.frac_coords.astype(np.float32),
                                numbers=self.numbers.astype(np.uint8), offsets=self.offsets.astype(np.int32),
                                material_id=self.material_id, e_above_hull=self.e_above_hull.astype(np.float32))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    def composition(self, i: int) -> dict[str, int]:
        """Element symbol -> count in crystal ``i``'s cell."""
        z, c = np.unique(self.numbers[self.offsets[i]:self.offsets[i + 1]], return_counts=True)
        return {Element.from_Z(int(a)).symbol: int(b) for a, b in zip(z, c)}

    def structure(self, i: int) -> Structure:
        """Crystal ``i`` as a pymatgen Structure."""
        sl = slice(self.offsets[i], self.offsets[i + 1])
        return Structure(Lattice(self.lattice[i]), [int(z) for z in self.numbers[sl]], self.frac_coords[sl])

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
        Scale the substituted cell to the volume of pymatgen's ``RLSVolumePredictor`` (default True).
    exclude_formulas : sequence of str
        Reduced formulas whose crystals never serve as templates (a benchmark leaves the target's own out).
    """

    def __init__(self, library: PrototypeLibrary | str | Path | None = None, scale_volume: bool = True,
                 exclude_formulas: Sequence[str] = ()) -> None:
        self.library = library if isinstance(library, PrototypeLibrary) else PrototypeLibrary.load(library)
        self.scale_volume = bool(scale_volume)
        self.exclude_formulas = tuple(exclude_formulas)

    def rank(self, composition: Any, formula_units: int | None = None) -> list[tuple[float, int, dict[str, str]]]:
        """All templates for ``composition``, best first: (Pettifor distance, library index, element mapping).

        ``composition`` is a reduced formula (any number of formula units per cell, as the template has it) unless
        ``formula_units`` is given, in which case the cell content is ``formula_units`` times the reduced formula
        and only templates with exactly that many atoms qualify; a composition with a common factor (``Ti2O4``)
        counts as that cell content.

        Raises
        ------
        ConditioningError
            An unreadable composition or a ``formula_units`` < 1.
        """
        comp = _as_composition(composition, "prototype request")
        counts = {el.symbol: int(round(v)) for el, v in comp.items()}
        reduced, z = comp.get_reduced_composition_and_factor()
        if formula_units is not None:
            if isinstance(formula_units, bool) or int(formula_units) != formula_units or formula_units < 1:
                raise ConditioningError(f"formula_units must be a positive integer, got {formula_units!r}")
            counts = {el.symbol: int(round(v)) * int(formula_units) for el, v in reduced.items()}
        n_atoms = sum(counts.values()) if (formula_units is not None or z > 1) else None
        excluded = {Composition(f).reduced_formula for f in self.exclude_formulas}
        out = []
        for i in self.library.candidates(_pattern(list(counts.values()))):
            tpl = self.library.composition(i)
            if n_atoms is not None and sum(tpl.values()) != n_atoms:
                continue
            if excluded and Composition(tpl).reduced_formula in excluded:
                continue
            hit = pettifor_mapping(counts, tpl)
            if hit is not None:
                out.append((hit[0], i, hit[1]))
        e = self.library.e_above_hull
        out.sort(key=lambda r: (r[0], np.nan_to_num(e[r[1]], nan=np.inf), self.library.material_id[r[1]]))
        return out

    def get_structures(self, composition: Any, n: int = 1, formula_units: int | None = None) -> list[Structure]:
        """Up to ``n`` predicted structures of ``composition``, best template first (fewer when fewer exist).

        Each Structure's ``properties["gpsk"]["prototype"]`` holds the template's ``material_id``, reduced
        ``formula``, ``pettifor_distance``, the element ``mapping`` and how its ``volume`` was set (``"RLS"`` or
        ``"template"``) (:mod:`gpsk_materials.provenance`, section ``prototype``).

        Raises
        ------
        ConditioningError
            As :meth:`rank`, or ``n`` < 1.
        """
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ConditioningError(f"n must be a positive integer, got {n!r}")
        out = []
        for distance, i, mapping in self.rank(composition, formula_units)[: int(n)]:
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
                        v = RLSVolumePredictor().predict(s, template)
                    if np.isfinite(v) and v > 0:
                        s.scale_lattice(float(v))
                        volume = "RLS"
                except (ValueError, KeyError, TypeError, ZeroDivisionError):  # no radius: keep the template's volume
                    pass
            provenance.write(s, "prototype", {
                "material_id": str(self.library.material_id[i]), "formula": template_formula,
                "pettifor_distance": float(distance), "mapping": dict(mapping), "volume": volume})
            out.append(s)
        return out
