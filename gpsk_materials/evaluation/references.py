"""Novelty references: the whole of MP-20 by BAWL hash (LeMat-GenBench's novelty), with composition-level checks.

The shared folder holds, for MP-20 (``shared/data/reference/``, see ``shared/data/SOURCES.md``): the BAWL hashes of
all of MP-20 (44,654 distinct hashes of 45,229 materials) and of its train split (26,899 of 27,136), as
LeMat-GenBench computed them with LeMaterial's material-hasher, and binary composition matrices (materials x 118,
column ``Z - 1`` is 1 where the element occurs). A generated structure is *novel* against such a reference when its
:class:`~gpsk_materials.evaluation.hashing.BAWLHasher` hash is not among the reference hashes (LeMat-GenBench's
``NoveltyMetric`` with ``fingerprint_method="bawl"``). Two coarser questions come with it: is its reduced formula
among MP-20's (the formulas are the third field of the hashes), and is its chemical system (element set) among
MP-20's (rows of the composition matrix).

Every report names the reference it used and how many entries it holds; a reference below
:data:`gpsk_materials.defaults.SMALL_NOVELTY_REFERENCE` entries gets a warning (:func:`small_reference_warning`).
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Element, Structure

from gpsk_materials.defaults import SMALL_NOVELTY_REFERENCE
from gpsk_materials.errors import DataError
from gpsk_materials.evaluation.hashing import BAWLHasher
from gpsk_materials.paths import shared_data
from gpsk_materials.vocabulary import parse_formula, reduced_formula

logger = logging.getLogger(__name__)

#: Tolerance (Angstrom) of the last cell :meth:`BAWLReference.hash_and_match` tries: the structure symmetrized by
#: spglib at 0.1, the tolerance the Materials Project labels its structures with (emmet's ``SYMPREC``). A relaxed
#: structure keeps distortions the hash's own ``symprec=0.01`` sees: a CsCl-type CaO relaxed by TensorNet to rock salt
#: has rhombohedral angles of 59.73 degrees, space group 166 at 0.01 and 225 (mp-2605's hash) at 0.05 and 0.1.
SYMMETRIZE_SYMPREC = 0.1

#: name -> (hash file, composition matrix, what it holds); files under ``shared/data``
MP20_REFERENCES: dict[str, tuple[str, str, str]] = {
    "mp20-bawl": ("reference/mp20_bawl_fingerprints.txt.gz", "reference/mp20_compositions.npz",
                  "BAWL hashes of all of MP-20 (train, val and test)"),
    "mp20-bawl-train": ("reference/mp20_bawl_fingerprints_train.txt.gz", "reference/mp20_compositions_train.npz",
                        "BAWL hashes of the MP-20 train split"),
}


#: a BAWL cell formula: element symbols each with an explicit integer count (``Mn3Ge3Pd3``)
_CELL_FORMULA = re.compile(r"(?:[A-Z][a-z]?\d+)+")


def formula_key(composition: Composition | str) -> tuple[tuple[str, int], ...]:
    """Reduced composition as sorted (element, count) pairs: the key formulas are compared by.

    A BAWL cell formula (``Mn3Ge3Pd3``, explicit integer counts) is read by the package's formula parser
    (:func:`~gpsk_materials.vocabulary.parse_formula`); anything else through pymatgen's ``Composition``. Amounts
    are rounded to 6 decimals and reduced by their GCD (:func:`~gpsk_materials.vocabulary.reduced_formula`) when
    they are integers to that precision; otherwise the amounts themselves (normalised to the smallest) are used.
    """
    if isinstance(composition, str) and _CELL_FORMULA.fullmatch(composition):
        amounts = parse_formula(composition)
    else:
        amounts = Composition(composition).get_el_amt_dict()
    rounded = {el: round(a, 6) for el, a in amounts.items()}
    if all(float(v).is_integer() for v in rounded.values()):
        return tuple(sorted(reduced_formula(rounded).items()))
    low = min(rounded.values())
    return tuple(sorted((el, round(v / low, 6)) for el, v in rounded.items()))  # type: ignore[misc]


def small_reference_warning(name: str, size: int) -> str | None:
    """The warning for a novelty reference of fewer than :data:`SMALL_NOVELTY_REFERENCE` entries, else None."""
    if size >= SMALL_NOVELTY_REFERENCE:
        return None
    return (f"novelty reference {name} holds only {size:,} entries (< {SMALL_NOVELTY_REFERENCE:,}): a structure "
            "known to MP-20 but absent from it counts as novel, so novelty and S.U.N. are upper bounds; MP-20 has "
            "45,229 materials (--novelty-reference mp20-bawl)")


@dataclass(frozen=True)
class BAWLReference:
    """A set of BAWL hashes (and the formulas and chemical systems they cover) to judge novelty against.

    Attributes
    ----------
    name
        Short name shown in reports (``mp20-bawl``).
    hashes
        Distinct reference hashes ``"<graph hash>_<space group>_<cell formula>"``.
    formulas
        Reduced compositions of the reference materials (:func:`formula_key`).
    chemical_systems
        Element sets of the reference materials (from the composition matrix; the formulas' when there is none).
    n_materials
        Reference materials (rows of the composition matrix; several may share one hash).
    source, description
        The hash file, and what it holds.
    """

    name: str
    hashes: frozenset[str]
    formulas: frozenset[tuple]
    chemical_systems: frozenset[frozenset[str]]
    n_materials: int
    source: str = ""
    description: str = ""

    @classmethod
    def from_files(cls, hashes: str | Path, compositions: str | Path | None = None, name: str | None = None,
                   description: str = "") -> BAWLReference:
        """Read a hash file (one hash a line, optionally gzipped) and a composition matrix (scipy sparse ``.npz``,
        materials x 118, column ``Z - 1``).

        Raises
        ------
        DataError
            A file is missing or unreadable, a line is not a BAWL hash, or the matrix is not N x 118.
        """
        path = Path(hashes)
        try:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt") as handle:
                lines = [line.strip() for line in handle if line.strip()]
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the reference hashes ({exc}); set $GPSK_SHARED_DIR") from exc
        bad = next((i for i, line in enumerate(lines) if line.count("_") != 2), None)
        if bad is not None:
            raise DataError(f"{path} line {bad + 1}: not a BAWL hash '<graph>_<space group>_<formula>': {lines[bad]!r}")
        formulas = frozenset(formula_key(f) for f in {line.rsplit("_", 1)[1] for line in lines})
        if compositions is not None:
            systems, n_materials = _chemical_systems(Path(compositions))
        else:
            systems = frozenset(frozenset(el for el, _ in key) for key in formulas)
            n_materials = len(set(lines))
        return cls(name=name or path.name, hashes=frozenset(lines), formulas=formulas, chemical_systems=systems,
                   n_materials=n_materials, source=str(path), description=description)

    @classmethod
    def mp20(cls, name: str = "mp20-bawl") -> BAWLReference:
        """The MP-20 reference of the shared folder: ``"mp20-bawl"`` (all of MP-20) or ``"mp20-bawl-train"``.

        Raises
        ------
        DataError
            Unknown name, or the files are missing (``$GPSK_SHARED_DIR``).
        """
        return _load_mp20(name)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def label(self) -> str:
        """What reports print: name, description, entries and file."""
        return (f"{self.name}: {self.description or 'BAWL hashes'}, {len(self):,} distinct hashes of "
                f"{self.n_materials:,} materials ({self.source})")

    def match(self, structures: Sequence[Structure], hasher: BAWLHasher | None = None, other_cells: bool = True,
              progress: bool = False) -> list[str | None]:
        """The reference hash each structure matches, or None (novel, or cannot be hashed).

        See :meth:`hash_and_match` for ``other_cells``; use it to tell a novel structure from an unhashable one.
        """
        return [h if known else None for h, known in zip(*self.hash_and_match(structures, hasher, other_cells,
                                                                              progress))]

    def hash_and_match(self, structures: Sequence[Structure], hasher: BAWLHasher | None = None,
                       other_cells: bool = True,
                       progress: bool = False) -> tuple[list[str | None], list[bool | None]]:
        """Hash each structure and look it up.

        Parameters
        ----------
        structures
            Structures to look up.
        hasher
            Default :class:`BAWLHasher` (material-hasher's settings).
        other_cells
            Where the hash of the cell as given is not a reference hash, also try the same cell with its sites sorted
            by electronegativity (pymatgen ``get_sorted_structure``, the order of Materials Project structures),
            its primitive cell (``get_primitive_structure``) and that sorted, each only where it differs from the
            cells tried before, and last the structure symmetrized at :data:`SYMMETRIZE_SYMPREC` (spglib's primitive
            standard cell) and that sorted. The hash depends on the cell, the site order and the symmetry found at
            ``symprec=0.01`` (module :mod:`~gpsk_materials.evaluation.hashing`); the MP-20 reference hashes are of
            each material's own primitive cell in MP's order (the 7 misses among 800 MP-20 rows, whose CSV cell is a
            supercell, match through their primitive cell: benchmarks/bawl_hash_agreement.py), and a relaxed
            structure keeps small distortions, so this recognises a supercell, a reordered copy or a slightly
            distorted copy of a known crystal; a supercell whose reduction permutes sites of one element can still
            be missed. False: the cell as given only, LeMat-GenBench's rule.

        Returns
        -------
        hashes, known
            The hash that matched (else the hash of the cell as given; None where the structure cannot be hashed),
            and whether it is a reference hash (None where there is no hash).
        """
        hasher = hasher or BAWLHasher()
        hashes = hasher.get_hashes(structures, progress=progress)
        known: list[bool | None] = [None if h is None else h in self.hashes for h in hashes]
        if other_cells:
            for i, (s, k) in enumerate(zip(structures, known)):
                if k is not False:
                    continue
                for cell in _other_cells(s):
                    alt = hasher.get_hashes([cell])[0]
                    if alt is not None and alt in self.hashes:
                        hashes[i], known[i] = alt, True
                        break
        return hashes, known

    def composition_known(self, composition: Composition | str) -> bool:
        """Whether the reduced composition occurs among the reference materials."""
        return formula_key(composition) in self.formulas

    def chemical_system_known(self, composition: Composition | str) -> bool:
        """Whether the element set occurs among the reference materials (exactly that set, not a superset)."""
        return frozenset(el.symbol for el in Composition(composition).elements) in self.chemical_systems


def _order(structure: Structure) -> list[str]:
    return [site.species_string for site in structure]


def _other_cells(structure: Structure):
    """The sorted cell, the primitive cell and it sorted, then the cell symmetrized at :data:`SYMMETRIZE_SYMPREC`
    (primitive standard cell) and it sorted; the first three only where they are a new cell or site order."""
    from gpsk_materials.checks.symmetry import SymmetryCheck

    seen = [(len(structure), _order(structure))]
    try:
        primitive = structure.get_primitive_structure()
    except Exception:  # pymatgen's search on a degenerate cell: only the sorted cell as given
        primitive = structure
    for cell in (structure.get_sorted_structure(), primitive, primitive.get_sorted_structure()):
        key = (len(cell), _order(cell))
        if key not in seen:
            seen.append(key)
            yield cell
    try:
        symmetrized = SymmetryCheck(symprec=SYMMETRIZE_SYMPREC).symmetrize(structure, primitive=True)
    except Exception:  # spglib finds no cell (InvalidStructureError) or worse: nothing more to try
        return
    yield symmetrized
    yield symmetrized.get_sorted_structure()


def _chemical_systems(path: Path) -> tuple[frozenset[frozenset[str]], int]:
    import scipy.sparse as sp

    try:
        matrix = sp.load_npz(path).tocsr()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the composition matrix ({exc}); set $GPSK_SHARED_DIR") from exc
    if matrix.shape[1] != 118:
        raise DataError(f"{path}: expected materials x 118 elements, got shape {matrix.shape}")
    symbols = [Element.from_Z(z).symbol for z in range(1, 119)]
    rows = {tuple(matrix.indices[a:b][matrix.data[a:b] > 0]) for a, b in zip(matrix.indptr[:-1], matrix.indptr[1:])}
    return frozenset(frozenset(symbols[i] for i in np.sort(r)) for r in rows), matrix.shape[0]


@lru_cache(maxsize=2)
def _load_mp20(name: str) -> BAWLReference:
    if name not in MP20_REFERENCES:
        raise DataError(f"unknown novelty reference {name!r}; known: {', '.join(MP20_REFERENCES)}")
    hashes, compositions, description = MP20_REFERENCES[name]
    ref = BAWLReference.from_files(shared_data(hashes), shared_data(compositions), name=name, description=description)
    logger.info("novelty reference %s", ref.label)
    return ref
