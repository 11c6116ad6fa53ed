"""ArrayCache: padded crystal arrays and labels in one ``.npz`` file, readable with NumPy alone.

The trainer runs from this cache, so it needs no pymatgen: the sources (CSV, Structures, ASE databases; see
:mod:`gpsk_materials.datasets.sources`) are parsed once, canonicalised and validated, and stored as

============================ ===================================================================
``lattice`` (N, 3, 3) f8     lattice vectors as rows, Angstrom (canonical cell)
``frac_coords`` (N, M, 3) f8 fractional coordinates, padded
``numbers`` (N, M) i2        atomic numbers, 0 = padding
``occupancy`` (N, M) f4      site occupancies (0 on padding)
``band_gap`` (N,) f8         eV, NaN = missing
``formation_energy`` (N,) f8 eV/atom, NaN = missing
``e_above_hull`` (N,) f8     eV/atom, NaN = missing
``space_group`` (N,) i2      1..230, -1 = missing
``crystal_system`` (N,) i1   index into CRYSTAL_SYSTEMS, -1 = missing
``magnetic_ordering`` (N,) i1  0..3 = NM, FM, FiM, AFM; -1 = unknown
``material_id`` (N,) str     unique ids
``formula`` (N,) str         reduced formula
``source`` (N,) str          where each row came from
``meta`` () str              JSON: format, provenance, how labels were derived
============================ ===================================================================
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from gpsk_materials.errors import DataError
from gpsk_materials.vocabulary import SCALARS, crystal_system_index

FORMAT = "gpsk-array-cache/1"
_ARRAYS = {
    "lattice": np.float64,
    "frac_coords": np.float64,
    "numbers": np.int16,
    "occupancy": np.float32,
    "band_gap": np.float64,
    "formation_energy": np.float64,
    "e_above_hull": np.float64,
    "space_group": np.int16,
    "crystal_system": np.int8,
    "magnetic_ordering": np.int8,
    "material_id": str,
    "formula": str,
    "source": str,
}


@dataclass
class ArrayCache:
    """Padded arrays of N crystals with their labels (see the module docstring for the fields)."""

    lattice: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    occupancy: np.ndarray
    band_gap: np.ndarray
    formation_energy: np.ndarray
    e_above_hull: np.ndarray
    space_group: np.ndarray
    crystal_system: np.ndarray
    magnetic_ordering: np.ndarray
    material_id: np.ndarray
    formula: np.ndarray
    source: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dtype in _ARRAYS.items():
            value = np.asarray(getattr(self, name))
            setattr(self, name, value.astype(str) if dtype is str else value.astype(dtype, copy=False))
        self.validate()

    def __len__(self) -> int:
        return len(self.lattice)

    @property
    def max_sites(self) -> int:
        return self.numbers.shape[1]

    def validate(self) -> None:
        """Raise :class:`DataError` if shapes or values are inconsistent."""
        n = len(self.lattice)
        m = self.numbers.shape[1] if self.numbers.ndim == 2 else -1
        expected = {"lattice": (n, 3, 3), "frac_coords": (n, m, 3), "numbers": (n, m), "occupancy": (n, m)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise DataError(f"cache field {name} has shape {getattr(self, name).shape}, expected {shape}")
        for name in set(_ARRAYS) - set(expected):
            if getattr(self, name).shape != (n,):
                raise DataError(f"cache field {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if ((self.numbers < 0) | (self.numbers > 98)).any():
            raise DataError("cache atomic numbers must lie in 0..98 (0 = padding)")
        if n and not (self.numbers > 0).any(axis=1).all():
            raise DataError("a cache row has no atoms")
        if not np.isfinite(self.lattice).all() or not np.isfinite(self.frac_coords).all():
            raise DataError("cache lattice or coordinates contain NaN or inf")
        if len(set(self.material_id.tolist())) != n:
            raise DataError("material_id values in the cache are not unique")

    def labels(self) -> dict[str, np.ndarray]:
        """The continuous labels keyed by :data:`~gpsk_materials.vocabulary.SCALARS`."""
        return {name: getattr(self, name) for name in SCALARS}

    def subset(self, index: np.ndarray | slice) -> ArrayCache:
        """Rows ``index`` (trimmed to the widest remaining structure)."""
        rows = {name: getattr(self, name)[index] for name in _ARRAYS}
        width = max(int((rows["numbers"] > 0).sum(1).max(initial=1)), 1)
        for name in ("frac_coords", "numbers", "occupancy"):
            rows[name] = rows[name][:, :width]
        return ArrayCache(**rows, meta=dict(self.meta))

    @classmethod
    def concatenate(cls, caches: list[ArrayCache]) -> ArrayCache:
        """Join caches (padding to the widest); material ids must stay unique."""
        if not caches:
            raise DataError("nothing to concatenate")
        width = max(c.max_sites for c in caches)
        rows: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS}
        for c in caches:
            pad = width - c.max_sites
            for name in _ARRAYS:
                a = getattr(c, name)
                if name in ("frac_coords", "numbers", "occupancy"):
                    a = np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
                rows[name].append(a)
        meta = {"format": FORMAT, "parts": [c.meta for c in caches]}
        return cls(**{k: np.concatenate(v) for k, v in rows.items()}, meta=meta)

    def save(self, path: str | Path) -> Path:
        """Write the cache as a compressed ``.npz`` atomically (no pickled objects; padded rows compress well)."""
        from gpsk_materials.atomic_files import write_bytes_atomic

        path = Path(path)
        buf = io.BytesIO()
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        np.savez_compressed(buf, **arrays, meta=np.array(json.dumps({"format": FORMAT, **self.meta})))
        write_bytes_atomic(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ArrayCache:
        """Read a cache written by :meth:`save`; raise :class:`DataError` if it is missing or malformed."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in _ARRAYS}
                meta = json.loads(str(data["meta"]))
        except FileNotFoundError as exc:
            raise DataError(f"array cache {path} not found") from exc
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path} is not a readable gpsk array cache: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise DataError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
        return cls(**arrays, meta=meta)


def empty_labels(n: int) -> dict[str, np.ndarray]:
    """Label arrays of ``n`` rows, all missing."""
    return {
        "band_gap": np.full(n, np.nan),
        "formation_energy": np.full(n, np.nan),
        "e_above_hull": np.full(n, np.nan),
        "space_group": np.full(n, -1, dtype=np.int16),
        "magnetic_ordering": np.full(n, -1, dtype=np.int8),
    }


def cache_from_arrays(
    arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray], material_id, formula, source, meta=None
) -> ArrayCache:
    """Build a cache from padded structure arrays and label arrays (crystal system derived from space group)."""
    sg = np.asarray(labels["space_group"], dtype=np.int16)
    names = {f.name for f in fields(ArrayCache)}
    extra = set(labels) - names
    if extra:
        raise DataError(f"unknown label fields {sorted(extra)}")
    return ArrayCache(
        lattice=arrays["lattice"],
        frac_coords=arrays["frac_coords"],
        numbers=arrays["numbers"],
        occupancy=arrays["occupancy"],
        band_gap=labels["band_gap"],
        formation_energy=labels["formation_energy"],
        e_above_hull=labels["e_above_hull"],
        space_group=sg,
        crystal_system=crystal_system_index(sg),
        magnetic_ordering=labels["magnetic_ordering"],
        material_id=np.asarray(material_id, dtype=str),
        formula=np.asarray(formula, dtype=str),
        source=np.asarray(source, dtype=str),
        meta=dict(meta or {}),
    )
