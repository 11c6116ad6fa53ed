"""Deterministic splits that never leak evaluation materials.

A row's split is fixed by a SHA-256 hash of ``seed:key`` (key = material id, or reduced formula so that all
polymorphs of a composition fall in one split), independent of row order and of the other rows. Evaluation
materials are removed from every split beforehand: by material id, and on request by structure (pymatgen
``StructureMatcher`` against reference structures with the same reduced formula), which also catches the same
crystal filed under another id (e.g. an OQMD or Alexandria copy of an MP-20 test material).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

from gpsk_materials.datasets.cache import ArrayCache
from gpsk_materials.errors import DataError


def hash_unit(keys: Iterable[str], seed: int = 0) -> np.ndarray:
    """Map each key to a number in [0, 1) via SHA-256 of ``f"{seed}:{key}"``."""
    vals = [int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "big") for k in keys]
    return np.array(vals, dtype=np.float64) / 2.0**64


def split_indices(
    cache: ArrayCache,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    by: str = "material_id",
    exclude: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Row indices per split (sorted), e.g. ``{"train": ..., "val": ...}``; rows with ``exclude`` True go nowhere.

    ``fractions`` (default 95% train / 5% val) must sum to 1; ``by`` is ``"material_id"`` or ``"formula"``.
    """
    fractions = dict(fractions or {"train": 0.95, "val": 0.05})
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-9:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    if by not in ("material_id", "formula"):
        raise DataError(f"split key must be 'material_id' or 'formula', got {by!r}")
    u = hash_unit(getattr(cache, by).tolist(), seed)
    keep = np.ones(len(cache), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    edges = np.cumsum([0.0, *fractions.values()])
    edges[-1] = 1.0 + 1e-12
    return {
        name: np.flatnonzero(keep & (u >= lo) & (u < hi)) for name, lo, hi in zip(fractions, edges[:-1], edges[1:])
    }


def read_id_list(path) -> set[str]:
    """Material ids from a text file (one per line, ``#`` comments) or from the ``material_id`` column of a CSV."""
    from pathlib import Path

    path = Path(path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        import csv
        import gzip

        csv.field_size_limit(2**30)
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", newline="") as fh:
            reader = csv.DictReader(fh)
            if "material_id" not in (reader.fieldnames or []):
                raise DataError(f"{path} has no material_id column")
            return {row["material_id"].strip() for row in reader if row["material_id"].strip()}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"exclusion list {path} not found") from exc
    return {ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()}


def exclusion_mask(
    cache: ArrayCache,
    ids: Iterable[str] = (),
    reference: ArrayCache | None = None,
    match_structures: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Rows to keep out of training: material id in ``ids`` or in ``reference``, and with ``match_structures`` any
    row that pymatgen's StructureMatcher (default tolerances) matches to a reference structure of the same
    reduced formula."""
    ids = set(ids) | (set(reference.material_id.tolist()) if reference is not None else set())
    mask = np.isin(cache.material_id, list(ids)) if ids else np.zeros(len(cache), dtype=bool)
    if match_structures and reference is not None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        matcher = StructureMatcher()
        by_formula: dict[str, list[int]] = defaultdict(list)
        for j, f in enumerate(reference.formula.tolist()):
            by_formula[f].append(j)
        candidates = [i for i in np.flatnonzero(~mask) if cache.formula[i] in by_formula]
        ref_cache: dict[int, object] = {}
        for i in tqdm(candidates, disable=not progress, desc="match exclusions"):
            s = to_structure(cache, i)
            for j in by_formula[cache.formula[i]]:
                if j not in ref_cache:
                    ref_cache[j] = to_structure(reference, j)
                if matcher.fit(s, ref_cache[j]):
                    mask[i] = True
                    break
    return mask


def to_structure(cache: ArrayCache, i: int):
    """pymatgen Structure of cache row ``i`` (disordered sites are not merged back: one site per entry)."""
    from pymatgen.core import Structure

    real = cache.numbers[i] > 0
    return Structure(cache.lattice[i], cache.numbers[i][real].tolist(), cache.frac_coords[i][real])
