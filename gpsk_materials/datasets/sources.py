"""Reading crystal sources into an :class:`~gpsk_materials.datasets.cache.ArrayCache`.

Sources: CSV files in the ``shared/data`` format (a ``cif`` column, labels in the columns listed in
:data:`LABEL_COLUMNS`; ``.csv`` or ``.csv.gz``), lists of pymatgen ``Structure`` / ASE ``Atoms``, and ASE databases
(``ase.db``; labels from each row's key-value pairs under the same names). Every structure is parsed,
canonicalised (primitive, Niggli-reduced, canonical setting; see :mod:`gpsk_materials.representations`) and checked
for representability on the 32^3 grid; rows that fail are skipped and counted by reason in ``cache.meta``.

Label columns (first non-empty column wins):

- band gap: ``band_gap`` (Materials Project), then ``band_gap_wbm``. Not used: ``band_gap_optb88vdw`` (JARVIS,
  another functional) and perov_5's ``dir_gap``/``ind_gap`` (GLLB-SC gaps, systematically larger than PBE).
- formation energy: ``formation_energy_per_atom`` (MP), then ``formation_energy_per_atom_wbm`` (MP-compatible).
  Not used: ``formation_energy_per_atom_jarvis_optb88vdw`` (other functional, no MP corrections), perov_5 ``heat_*``
  (per formula unit, other reference).
- energy above hull: ``e_above_hull``, then ``energy_above_hull`` (MPTS-52).
- space group: ``spacegroup_number_pmg``, ``spacegroup.number``, ``spacegroup_number_src``, ``space_group``; if none
  is given it is computed with pymatgen's SpacegroupAnalyzer (symprec 0.1), like ``spacegroup_number_pmg``.
- magnetic ordering: ``magnetic_ordering``, then ``ordering`` (``shared/data/magnetic/mp_magnetic_orderings.csv.gz``
  has one). Values are ``NM``, ``FM``, ``FiM``, ``AFM`` (any case) or their indices 0-3 in
  :data:`~gpsk_materials.vocabulary.MAGNETIC_ORDERINGS`; an empty cell, ``unknown`` or ``nan`` means
  unknown (-1). Any other value is an error (:class:`~gpsk_materials.errors.DataError` naming the file, the 1-based
  data row and the material id), not a silent unknown: a typo in a labelled file would otherwise drop every label
  of that class without notice. Rows with no given label get the derived one where honest (only NM; see
  :mod:`gpsk_materials.datasets.magnetism`): a given label always wins over the derived rule.

Several CSV files are read as one table. A ``material_id`` that occurs more than once (e.g. a Materials Project
material in ``pool.csv.gz`` and in the magnetic-ordering file) is kept once: the first row's structure and labels,
with every label that row lacks taken from the later rows (first non-missing value wins; so the magnetic file's
measured ordering is attached to the pool row). Two different given orderings for one id keep the first and are
counted in a warning. How many rows were merged is logged and stored in ``cache.meta["merged"]``.

pymatgen is imported only inside the parsing functions: reading a finished cache needs NumPy alone.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import sys
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from gpsk_materials.datasets.cache import FORMAT, ArrayCache, cache_from_arrays
from gpsk_materials.datasets.magnetism import derive_magnetic_ordering
from gpsk_materials.errors import DataError
from gpsk_materials.vocabulary import MAGNETIC_ORDERINGS

log = logging.getLogger(__name__)

LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "band_gap": ("band_gap", "band_gap_wbm"),
    "formation_energy": ("formation_energy_per_atom", "formation_energy_per_atom_wbm"),
    "e_above_hull": ("e_above_hull", "energy_above_hull"),
    "space_group": ("spacegroup_number_pmg", "spacegroup.number", "spacegroup_number_src", "space_group"),
    "magnetic_ordering": ("magnetic_ordering", "ordering"),
}
#: default largest number of sites (canonical primitive cell) kept in a cache
MAX_SITES = 20
_MAG_INDEX = {m.lower(): i for i, m in enumerate(MAGNETIC_ORDERINGS[:4])}
_MAG_INDEX.update({str(i): i for i in range(4)})
_MAG_MISSING = {"", "unknown", "nan", "none", "-1"}
_LABELS = ("band_gap", "formation_energy", "e_above_hull", "space_group", "magnetic_ordering")


def _float(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def parse_labels(record: Mapping[str, Any]) -> dict[str, Any]:
    """Labels of one CSV row / ASE key-value mapping (missing: NaN, space group -1, magnetic ordering -1)."""
    out: dict[str, Any] = {}
    for name in ("band_gap", "formation_energy", "e_above_hull"):
        out[name] = next((v for v in (_float(record.get(c)) for c in LABEL_COLUMNS[name]) if not math.isnan(v)), math.nan)
    sg = next((v for v in (_float(record.get(c)) for c in LABEL_COLUMNS["space_group"]) if not math.isnan(v)), math.nan)
    out["space_group"] = int(sg) if not math.isnan(sg) and sg == int(sg) and 1 <= sg <= 230 else -1
    out["magnetic_ordering"] = -1
    for column in LABEL_COLUMNS["magnetic_ordering"]:
        value = record.get(column)
        text = "" if value is None else str(value).strip().lower()
        number = _float(text)
        if not math.isnan(number) and number == int(number):
            text = str(int(number))  # 1, 1.0 (ASE key-value pairs, NumPy ints) -> "1"
        if text in _MAG_MISSING:
            continue
        if text not in _MAG_INDEX:
            raise DataError(f"unknown magnetic ordering {value!r} in column {column!r}; expected one of "
                            f"{', '.join(MAGNETIC_ORDERINGS[:4])} (or 0-3), or empty/'unknown' for unknown")
        out["magnetic_ordering"] = _MAG_INDEX[text]
        break
    return out


def _missing(name: str, value: Any) -> bool:
    return value < 0 if name in ("space_group", "magnetic_ordering") else math.isnan(value)


def _merge_labels(kept: dict[str, Any], other: Mapping[str, Any]) -> tuple[bool, bool]:
    """Fill the labels ``kept`` lacks from ``other`` (in place); returns (magnetic label attached, orderings clash)."""
    attached = clash = False
    for name in _LABELS:
        if _missing(name, kept[name]) and not _missing(name, other[name]):
            kept[name] = other[name]
            attached |= name == "magnetic_ordering"
    if not attached and not _missing("magnetic_ordering", other["magnetic_ordering"]):
        clash = other["magnetic_ordering"] != kept["magnetic_ordering"]
    return attached, clash


def _prepare(item: tuple[Any, bool, int, float]) -> dict[str, Any] | str:
    """Worker: (CIF string | Structure | Atoms, want space group, max sites, max resolution) -> arrays or a reason."""
    payload, want_sg, max_sites, max_resolution = item
    warnings.filterwarnings("ignore", message="Issues encountered while parsing CIF")
    try:
        from pymatgen.core import Structure

        from gpsk_materials.representations.canonical import as_structure
        from gpsk_materials.representations.reciprocal import check_cell, structures_to_arrays

        if isinstance(payload, str):
            structure = Structure.from_str(payload, fmt="cif")
        else:
            structure = as_structure(payload)
        arrays = structures_to_arrays([structure], canonicalize=True, max_resolution=max_resolution)
        n_sites = int((arrays["numbers"][0] > 0).sum())
        if n_sites > max_sites:
            return f"more than {max_sites} sites"
        check_cell(arrays["lattice"][0], arrays["frac_coords"][0], max_resolution=max_resolution,
                   numbers=arrays["numbers"][0], occupancy=arrays["occupancy"][0])
        result = {k: v[0] for k, v in arrays.items()}
        result["formula"] = structure.composition.reduced_formula
        if want_sg:
            from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

            result["space_group"] = int(SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number())
        return result
    except Exception as exc:  # noqa: BLE001 - every failure of one record is a reason to skip that record
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"


def _prepare_all(items: list[tuple], workers: int | None, progress: bool, desc: str) -> list[dict[str, Any] | str]:
    workers = (os.cpu_count() or 1) if workers is None else workers
    bar = dict(total=len(items), disable=not progress, desc=desc, unit="struct", file=sys.stderr)
    if workers <= 1 or len(items) < 64:
        return [_prepare(it) for it in tqdm(items, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_prepare, items, chunksize=32), **bar))


def build_cache(
    payloads: Sequence[Any],
    labels: Sequence[Mapping[str, Any]],
    material_ids: Sequence[str],
    sources: Sequence[str],
    max_sites: int = MAX_SITES,
    max_resolution: float = 0.75,
    workers: int | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> ArrayCache:
    """Parse, canonicalise and validate structures with their labels into a cache (failures skipped, counted)."""
    if not (len(payloads) == len(labels) == len(material_ids) == len(sources)):
        raise DataError("payloads, labels, material_ids and sources must have the same length")
    dupes = [k for k, c in Counter(material_ids).items() if c > 1]
    if dupes:
        raise DataError(f"duplicate material ids, e.g. {dupes[:3]}")
    items = [(p, lab["space_group"] < 1, max_sites, max_resolution) for p, lab in zip(payloads, labels)]
    results = _prepare_all(items, workers, progress, "parse")
    keep = [i for i, r in enumerate(results) if isinstance(r, dict)]
    skipped = Counter(r.split(":")[0] if not r.startswith("more than") else r for r in results if isinstance(r, str))
    if skipped:
        log.warning("skipped %d of %d structures: %s", len(results) - len(keep), len(results), dict(skipped))
    if not keep:
        raise DataError(f"no usable structure among {len(results)} (reasons: {dict(skipped)})")
    width = max(len(results[i]["numbers"]) for i in keep)
    n = len(keep)
    arrays = {
        "lattice": np.stack([results[i]["lattice"] for i in keep]),
        "frac_coords": np.zeros((n, width, 3)),
        "numbers": np.zeros((n, width), dtype=np.int16),
        "occupancy": np.zeros((n, width), dtype=np.float32),
    }
    for row, i in enumerate(keep):
        a = len(results[i]["numbers"])
        for key in ("frac_coords", "numbers", "occupancy"):
            arrays[key][row, :a] = results[i][key]
    lab = {
        name: np.array([labels[i][name] for i in keep])
        for name in ("band_gap", "formation_energy", "e_above_hull", "space_group", "magnetic_ordering")
    }
    lab["space_group"] = np.array([results[i].get("space_group", labels[i]["space_group"]) for i in keep])
    derived = derive_magnetic_ordering(arrays["numbers"], arrays["occupancy"], lab["band_gap"])
    given = lab["magnetic_ordering"] >= 0
    overridden = int((given & (derived == 0) & (lab["magnetic_ordering"] != 0)).sum())
    if overridden:
        log.info("%d given magnetic orderings replace the derived NM label", overridden)
    lab["magnetic_ordering"] = np.where(given, lab["magnetic_ordering"], derived)
    info = {
        "format": FORMAT,
        "n_read": len(results),
        "n_kept": n,
        "skipped": dict(skipped),
        "max_sites": max_sites,
        "max_resolution": max_resolution,
        "label_columns": {k: list(v) for k, v in LABEL_COLUMNS.items()},
        "magnetic_ordering": {
            "given": int(given.sum()),
            "derived_nm": int((~given & (derived == 0)).sum()),
            "unknown": int((lab["magnetic_ordering"] < 0).sum()),
            "given_over_derived_nm": overridden,
            "counts": {m: int((lab["magnetic_ordering"] == i).sum()) for i, m in enumerate(MAGNETIC_ORDERINGS[:4])},
            "rule": "NM only: no d/f-block element, fully ordered, not (odd electrons and gap > 0 or unknown); "
            "see gpsk_materials.datasets.magnetism",
        },
        **dict(meta or {}),
    }
    return cache_from_arrays(
        arrays, lab, [material_ids[i] for i in keep], [results[i]["formula"] for i in keep],
        [sources[i] for i in keep], info,
    )


def iter_csv(path: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a (optionally gzipped) CSV file with multi-line quoted fields (CIFs)."""
    path = Path(path)
    csv.field_size_limit(2**30)
    try:
        raw = gzip.open(path, "rt", newline="") if path.suffix == ".gz" else open(path, newline="")
    except FileNotFoundError as exc:
        raise DataError(f"CSV file {path} not found") from exc
    with raw as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "cif" not in reader.fieldnames:
            raise DataError(f"{path} has no 'cif' column (columns: {reader.fieldnames})")
        try:
            yield from reader
        except (csv.Error, OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc


def cache_from_csv(
    paths: str | Path | Sequence[str | Path], limit: int | None = None, **kwargs: Any
) -> ArrayCache:
    """Cache of one or more CSV files (``limit``: at most that many rows per file). A material id seen again is
    merged into its first row (missing labels filled; see the module docstring). ``kwargs`` go to
    :func:`build_cache` (``max_sites``, ``workers``, ``progress``, ...)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    payloads, labels, ids, sources = [], [], [], []
    row_of: dict[str, int] = {}
    merged = attached = 0
    clashes: list[str] = []
    for path in paths:
        stem = Path(path).name.split(".")[0]
        for k, row in enumerate(iter_csv(path)):
            if limit is not None and k >= limit:
                break
            mid = (row.get("material_id") or "").strip() or f"{stem}:{k}"
            try:
                lab = parse_labels(row)
            except DataError as exc:
                raise DataError(f"{path}, row {k + 1} (material_id {mid}): {exc}") from None
            if mid in row_of:  # the same material listed twice (e.g. in two files): one row, labels merged
                got, clash = _merge_labels(labels[row_of[mid]], lab)
                merged += 1
                attached += got
                if clash:
                    clashes.append(mid)
                continue
            row_of[mid] = len(ids)
            payloads.append(row["cif"])
            labels.append(lab)
            ids.append(mid)
            sources.append(row.get("source") or str(path))
    if merged:
        log.info("merged %d rows whose material_id was already read (first row kept, missing labels filled); "
                 "%d of them gave a magnetic-ordering label", merged, attached)
    if clashes:
        log.warning("%d material ids have two different magnetic orderings; the first was kept, e.g. %s",
                    len(clashes), clashes[:3])
    meta = {"sources": [str(p) for p in paths],
            "merged": {"rows": merged, "magnetic_attached": attached, "magnetic_clashes": len(clashes)}}
    return build_cache(payloads, labels, ids, sources, meta=meta, **kwargs)


def cache_from_structures(
    structures: Sequence[Any],
    labels: Mapping[str, Sequence[Any]] | None = None,
    material_ids: Sequence[str] | None = None,
    **kwargs: Any,
) -> ArrayCache:
    """Cache of pymatgen Structures / ASE Atoms. ``labels`` maps label names (``band_gap``,
    ``formation_energy_per_atom`` or ``formation_energy``, ``e_above_hull``, ``space_group``,
    ``magnetic_ordering``) to per-structure values; a Structure's ``properties`` are used where ``labels`` has none."""
    structures = list(structures)
    n = len(structures)
    ids = list(material_ids) if material_ids is not None else [f"structure-{i}" for i in range(n)]
    given = {k: list(v) for k, v in (labels or {}).items()}
    for k, v in given.items():
        if len(v) != n:
            raise DataError(f"label {k!r} has {len(v)} values for {n} structures")
    records = []
    for i, s in enumerate(structures):
        rec = dict(getattr(s, "properties", None) or {})
        rec.update({k: v[i] for k, v in given.items()})
        if "formation_energy" in rec:
            rec.setdefault("formation_energy_per_atom", rec["formation_energy"])
        try:
            records.append(parse_labels(rec))
        except DataError as exc:
            raise DataError(f"structure {i} ({ids[i]}): {exc}") from None
    return build_cache(structures, records, ids, ["structures"] * n, **kwargs)


def cache_from_ase_db(path: str | Path, selection: Any = None, **kwargs: Any) -> ArrayCache:
    """Cache of the rows of an ASE database (``ase.db``) matching ``selection``; labels from key-value pairs
    (names as in :data:`LABEL_COLUMNS`, plus ``formation_energy``), ids from ``material_id`` or ``<db>-<row id>``."""
    from ase.db import connect

    path = Path(path)
    if not path.exists():
        raise DataError(f"ASE database {path} not found")
    atoms, records, ids = [], [], []
    try:
        rows = list(connect(str(path)).select(selection))
    except Exception as exc:  # noqa: BLE001 - ase raises many types for unreadable files
        raise DataError(f"cannot read ASE database {path}: {exc}") from exc
    for row in rows:
        kvp = dict(row.key_value_pairs)
        if "formation_energy" in kvp:
            kvp.setdefault("formation_energy_per_atom", kvp["formation_energy"])
        atoms.append(row.toatoms())
        try:
            records.append(parse_labels(kvp))
        except DataError as exc:
            raise DataError(f"{path}, row id {row.id}: {exc}") from None
        ids.append(str(kvp.get("material_id") or f"{path.stem}-{row.id}"))
    return build_cache(atoms, records, ids, [str(path)] * len(atoms), meta={"sources": [str(path)]}, **kwargs)


def load_source(paths: str | Path | Iterable[str | Path], **kwargs: Any) -> ArrayCache:
    """A cache from files by suffix: ``.npz`` (a saved cache), ``.csv``/``.csv.gz``, ``.db`` (ASE database)."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    caches, csvs = [], []
    for p in paths:
        name = p.name.lower()
        if name.endswith(".npz"):
            caches.append(ArrayCache.load(p))
        elif name.endswith((".csv", ".csv.gz")):
            csvs.append(p)
        elif name.endswith(".db"):
            caches.append(cache_from_ase_db(p, **{k: v for k, v in kwargs.items() if k != "limit"}))
        else:
            raise DataError(f"unknown source type {p} (expected .npz, .csv, .csv.gz or .db)")
    if csvs:
        caches.append(cache_from_csv(csvs, **kwargs))
    return caches[0] if len(caches) == 1 else ArrayCache.concatenate(caches)
