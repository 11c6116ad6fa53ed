"""Readers of the structures to evaluate and of reference tables.

Inputs accepted by :func:`read_structures`: a folder of CIF files, a single CIF, an extended-XYZ file (via ASE),
a JSON (optionally gzipped) holding pymatgen ``Structure`` dicts, or a CSV with a ``cif`` column.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from gpsk_materials.errors import DataError, GPSKError, InvalidStructureError

_ID_KEYS = ("id", "material_id", "name", "structure_id")


def structure_from_cif(text: str, name: str = "<cif>") -> Structure:
    """Parse one CIF string (first data block) into a Structure; raises :class:`DataError`."""
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structures = CifParser.from_str(text).parse_structures(primitive=False)
    except Exception as exc:  # pymatgen raises ValueError, KeyError, IndexError... on malformed CIFs
        raise DataError(f"{name}: CIF cannot be parsed ({exc})") from exc
    if not structures:
        raise DataError(f"{name}: CIF holds no structure")
    return structures[0]


def _check(structure: Structure, name: str) -> Structure:
    if len(structure) == 0:
        raise InvalidStructureError(f"{name}: structure has no sites")
    if not np.all(np.isfinite(structure.frac_coords)) or not np.all(np.isfinite(structure.lattice.matrix)):
        raise InvalidStructureError(f"{name}: non-finite lattice or coordinates")
    return structure


class _Items:
    """Collects (id, structure) pairs; a bad item is raised (``skipped`` None: fail fast) or recorded in
    ``skipped`` as ``{"id": ..., "error": ...}`` and left out."""

    def __init__(self, skipped: list[dict] | None):
        self.ids: list[str] = []
        self.structures: list[Structure] = []
        self.skipped = skipped

    def add(self, item_id: str, read) -> None:
        try:
            structure = read()
        except GPSKError as exc:
            if self.skipped is None:
                raise
            self.skipped.append({"id": item_id, "error": f"{type(exc).__name__}: {exc}"})
            return
        self.ids.append(item_id)
        self.structures.append(structure)


def _read_cif_folder(folder: Path, items: _Items) -> None:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".cif" or p.name.lower().endswith(".cif.gz"))
    if not files:
        raise DataError(f"{folder}: no *.cif files")
    for path in files:
        items.add(path.name.split(".cif")[0], lambda path=path: structure_from_cif(_read_text(path), str(path)))


def _read_text(path: Path) -> str:
    try:
        return gzip.open(path, "rt").read() if path.name.endswith(".gz") else path.read_text()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc


def _read_extxyz(path: Path, items: _Items) -> None:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        frames = read(str(path), index=":", format="extxyz")
    except Exception as exc:
        raise DataError(f"{path}: not a readable extended-XYZ file ({exc})") from exc
    for i, atoms in enumerate(frames):
        def frame(atoms=atoms, i=i) -> Structure:
            if not atoms.pbc.all():
                raise InvalidStructureError(f"{path} frame {i}: not periodic in 3D (pbc={atoms.pbc.tolist()})")
            return AseAtomsAdaptor.get_structure(atoms)

        items.add(next((str(atoms.info[k]) for k in _ID_KEYS if k in atoms.info), f"{path.stem}-{i}"), frame)


def _structure_from_record(record: object, name: str) -> tuple[str | None, Structure]:
    if isinstance(record, dict) and "structure" in record:
        sid = next((str(record[k]) for k in _ID_KEYS if k in record), None)
        return sid, _structure_from_record(record["structure"], name)[1]
    if isinstance(record, dict) and "lattice" in record and "sites" in record:
        try:
            return None, Structure.from_dict(record)
        except Exception as exc:
            raise DataError(f"{name}: not a pymatgen Structure dict ({exc})") from exc
    if isinstance(record, dict) and "cif" in record:
        sid = next((str(record[k]) for k in _ID_KEYS if k in record), None)
        return sid, structure_from_cif(record["cif"], name)
    raise DataError(f"{name}: expected a Structure dict, {{'structure': ...}} or {{'cif': ...}}")


def _read_json(path: Path, items: _Items) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from exc
    if isinstance(data, dict) and not ("lattice" in data and "sites" in data):
        records: Iterable = data.items()
    elif isinstance(data, list):
        records = ((None, rec) for rec in data)
    else:
        records = [(None, data)]
    for i, (key, record) in enumerate(records):
        name = f"{path} entry {key if key is not None else i}"
        sid = next((str(record[k]) for k in _ID_KEYS if k in record), None) if isinstance(record, dict) else None
        item_id = str(key) if key is not None else sid if sid is not None else f"{path.name.split('.')[0]}-{i}"
        items.add(item_id, lambda record=record, name=name: _structure_from_record(record, name)[1])


def _read_csv(path: Path, items: _Items) -> None:
    table = read_table(path)
    for i, (item_id, cif) in enumerate(zip(_table_ids(table, path), table["cif"])):
        items.add(item_id, lambda cif=cif, i=i: structure_from_cif(cif, f"{path} row {i}"))


def read_structures(path: str | Path, skipped: list[dict] | None = None) -> tuple[list[str], list[Structure]]:
    """Read the structures to evaluate.

    Parameters
    ----------
    path
        A folder of ``*.cif`` (ids are file stems), a ``.cif``, an ``.extxyz``/``.xyz`` (ids from
        ``atoms.info['id'|'material_id'|'name']``), a ``.json[.gz]`` (a list of Structure dicts, a dict
        ``id -> Structure dict``, or records ``{"id": ..., "structure": ...}``), or a ``.csv[.gz]`` with a
        ``cif`` column.
    skipped
        A list: each structure that cannot be read (a malformed CIF among good ones, a non-periodic frame, no
        sites, NaN coordinates) is left out and appended to it as ``{"id": ..., "error": ...}``. None (the
        default): the first such structure raises.

    Returns
    -------
    ids, structures
        Parallel lists; ids are unique.

    Raises
    ------
    DataError
        The path does not exist, has an unknown format, holds no readable structure, or duplicate ids; with
        ``skipped`` None also a structure that cannot be parsed.
    InvalidStructureError
        With ``skipped`` None, a structure without sites, with non-finite coordinates or not periodic.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    name = path.name.lower()
    items = _Items(skipped)
    if path.is_dir():
        _read_cif_folder(path, items)
    elif name.endswith((".cif", ".cif.gz")):
        # a single file is the whole input: its failure is not skipped
        items.ids, items.structures = [path.name.split(".cif")[0]], [structure_from_cif(_read_text(path), str(path))]
    elif name.endswith((".extxyz", ".xyz")):
        _read_extxyz(path, items)
    elif name.endswith((".json", ".json.gz")):
        _read_json(path, items)
    elif name.endswith((".csv", ".csv.gz")):
        _read_csv(path, items)
    else:
        raise DataError(f"{path}: unknown input format (expected a CIF folder, .cif, .extxyz, .json or .csv)")
    checked = _Items(skipped)
    for i, s in zip(items.ids, items.structures):
        checked.add(i, lambda s=s, i=i: _check(s, f"{path}:{i}"))
    ids, structures = checked.ids, checked.structures
    if not structures:
        raise DataError(f"{path}: no structures" + (f" could be read ({len(skipped)} skipped)" if skipped else ""))
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise DataError(f"{path}: duplicate structure id {dup!r}")
    return ids, structures


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) of structures that has a ``cif`` column."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        table = pd.read_csv(path, low_memory=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    if "cif" not in table.columns:
        raise DataError(f"{path}: no 'cif' column (columns: {', '.join(map(str, table.columns[:12]))})")
    return table.reset_index(drop=True)


def _table_ids(table: pd.DataFrame, path: Path) -> list[str]:
    if "material_id" in table.columns:
        return [str(x) for x in table["material_id"]]
    return [f"{path.name.split('.')[0]}-{i}" for i in range(len(table))]


@dataclass
class ReferenceSet:
    """Reference structures (a training set, a test set) read lazily from a CSV with a ``cif`` column.

    Structures are parsed only when asked for, so novelty checks against tens of thousands of references parse
    only the ones whose reduced formula also occurs among the generated structures.
    """

    ids: list[str]
    formulas: list[str]
    cifs: list[str]
    source: str = ""
    _cache: dict[int, Structure] = field(default_factory=dict, repr=False)

    @classmethod
    def from_csv(cls, path: str | Path, max_sites: int | None = None, split: str | None = None) -> ReferenceSet:
        """Read a reference table (e.g. ``shared/data/pool.csv.gz`` or ``mp20/train.csv``).

        Parameters
        ----------
        path
            CSV with a ``cif`` column; ``material_id`` and ``reduced_formula`` (or ``pretty_formula``) are used
            when present.
        max_sites
            Keep rows with at most this many sites (needs an ``nsites`` column, else structures are parsed).
        split
            Keep rows whose ``mp20_split`` (or ``split``) column equals this value.
        """
        path = Path(path)
        table = read_table(path)
        if split is not None:
            col = next((c for c in ("mp20_split", "split") if c in table.columns), None)
            if col is None:
                raise DataError(f"{path}: no split column to select {split!r}")
            table = table[table[col].astype(str) == split].reset_index(drop=True)
        ids = _table_ids(table, path)
        if "reduced_formula" in table.columns:
            formulas = [str(f) for f in table["reduced_formula"]]
        elif "pretty_formula" in table.columns:
            formulas = [Composition(str(f)).reduced_formula for f in table["pretty_formula"]]
        else:
            formulas = [structure_from_cif(c, f"{path} row {i}").reduced_formula for i, c in enumerate(table["cif"])]
        ref = cls(ids=ids, formulas=formulas, cifs=[str(c) for c in table["cif"]], source=str(path))
        if max_sites is not None:
            if "nsites" in table.columns:
                keep = np.flatnonzero(table["nsites"].to_numpy() <= max_sites)
            else:
                keep = np.array([i for i in range(len(ref)) if len(ref.structure(i)) <= max_sites], dtype=int)
            ref = ref.subset(keep)
        if len(ref) == 0:
            raise DataError(f"{path}: no reference rows left after filtering")
        return ref

    @classmethod
    def from_structures(cls, ids: list[str], structures: list[Structure], source: str = "") -> ReferenceSet:
        """Wrap structures already in memory."""
        ref = cls(ids=list(ids), formulas=[s.reduced_formula for s in structures], cifs=[""] * len(ids), source=source)
        ref._cache = dict(enumerate(structures))
        return ref

    def __len__(self) -> int:
        return len(self.ids)

    def structure(self, index: int) -> Structure:
        """The structure of row ``index`` (parsed on first use)."""
        if index not in self._cache:
            self._cache[index] = structure_from_cif(self.cifs[index], f"{self.source} row {index}")
        return self._cache[index]

    def structures(self, indices: Iterable[int] | None = None) -> list[Structure]:
        """Structures of the given rows (all rows by default)."""
        return [self.structure(i) for i in (range(len(self)) if indices is None else indices)]

    def subset(self, indices: Iterable[int]) -> ReferenceSet:
        """A new set with the given rows (parsed structures carried over)."""
        idx = [int(i) for i in indices]
        ref = ReferenceSet(
            ids=[self.ids[i] for i in idx],
            formulas=[self.formulas[i] for i in idx],
            cifs=[self.cifs[i] for i in idx],
            source=self.source,
        )
        ref._cache = {new: self._cache[old] for new, old in enumerate(idx) if old in self._cache}
        return ref

    def sample(self, n: int, seed: int = 0) -> ReferenceSet:
        """A random subset of ``n`` rows (all rows when ``n`` is 0 or at least ``len(self)``)."""
        if n <= 0 or n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        return self.subset(np.sort(rng.choice(len(self), size=n, replace=False)))
