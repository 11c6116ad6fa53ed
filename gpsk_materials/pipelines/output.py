"""Writing generation results: one CIF per structure, one extxyz of all, and a summary table (CSV and text)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from gpsk_materials import provenance
from gpsk_materials.atomic_files import write_atomic, write_csv_atomic
from gpsk_materials.checks.post import result_flags
from gpsk_materials.pipelines.generator import GenerationResult

#: columns of ``summary.csv`` (one row per written structure)
SUMMARY_COLUMNS = (
    "file", "request_index", "request", "formula", "nsites", "formula_units", "space_group_requested", "space_group",
    "space_group_match", "energy_per_atom", "e_above_hull", "valid", "strict_valid", "score",
    "decode_residual", "flags", "seed", "sample_index", "projected", "source",
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _structure(obj: Any):
    """A pymatgen Structure of a result item (Structure or ASE Atoms)."""
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(obj)


def summary_record(structure: Any, file: str | None = None) -> dict[str, Any]:
    """The summary row of one generated structure (from its ``properties["gpsk"]`` provenance)."""
    s = _structure(structure)
    checks = (provenance.read(s, "checks") or {}).get("results") or {}
    scores = provenance.read(s, "scores") or {}
    request = provenance.read(s, "request") or {}
    return {
        "file": file,
        "request_index": request.get("index"),
        "request": request.get("composition"),
        "formula": s.composition.reduced_formula,
        "nsites": len(s),
        "formula_units": (request.get("cell") or {}).get("formula_units"),
        "space_group_requested": request.get("space_group"),
        "space_group": checks.get("space_group"),
        "space_group_match": checks.get("space_group_match"),
        "energy_per_atom": checks.get("energy_per_atom"),
        "e_above_hull": checks.get("e_above_hull"),
        "valid": checks.get("valid"),
        "strict_valid": checks.get("strict_valid"),
        "score": scores.get("total"),
        "flags": result_flags(checks, provenance.read(s, "decode")),
        "decode_residual": (provenance.read(s, "decode") or {}).get("relative_residual"),
        "seed": request.get("seed"),
        "sample_index": request.get("sample_index"),
        "projected": request.get("projected"),
        "source": _source(s),
    }


def _source(s) -> str:
    """``model``, or ``prototype <material id> (<template formula>)`` for a substituted known crystal."""
    proto = provenance.read(s, "prototype")
    return "model" if not proto else f"prototype {proto.get('material_id')} ({proto.get('formula')})"


def _flat_info(record: dict[str, Any]) -> dict[str, Any]:
    """extxyz-friendly per-frame info: scalars only, no None."""
    return {k: v for k, v in record.items() if v is not None and isinstance(v, (str, int, float, bool))}


def write_results(results: Sequence[GenerationResult], folder: str | Path) -> list[dict[str, Any]]:
    """Write ``folder/<formula>_<i>.cif`` per structure, ``folder/structures.extxyz`` and ``folder/summary.csv``,
    each atomically (:mod:`gpsk_materials.atomic_files`).

    ``<formula>`` is the request's formula (the structure's own for a free composition) and ``i`` counts the
    structures written under that name. Returns the summary rows. With no structure at all nothing is written,
    so the files of an earlier run in ``folder`` are not replaced by empty ones.
    """
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.cif import CifWriter

    folder = Path(folder)
    counts: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    frames = []
    for res in results:
        for item in res.structures:
            s = _structure(item)
            label = (res.request.to_dict().get("composition") or s.composition.reduced_formula)
            name = _UNSAFE.sub("_", label) or "structure"
            i = counts.get(name, 0)
            counts[name] = i + 1
            fname = f"{name}_{i}.cif"
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / fname, lambda tmp, s=s: CifWriter(s).write_file(tmp), ".cif")
            rec = summary_record(s, fname)
            records.append(rec)
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.info = _flat_info(rec)
            frames.append(atoms)
    if not records:
        return records
    write_atomic(folder / "structures.extxyz", lambda tmp: ase_write(tmp, frames, format="extxyz"), ".extxyz")
    write_csv_atomic(folder / "summary.csv", records, SUMMARY_COLUMNS)
    return records


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Text table of summary rows: file, formula, space group requested/found, energy, E_hull, validity."""
    cols = [("file", "file"), ("formula", "formula"), ("space_group_requested", "SG req"), ("space_group", "SG found")]
    if any(r.get("energy_per_atom") is not None for r in records):
        cols.append(("energy_per_atom", "E (eV/atom)"))
    cols += [("e_above_hull", "E_hull"), ("valid", "valid"), ("strict_valid", "strict"), ("score", "score")]
    if any(r.get("source", "model") != "model" for r in records):
        cols.append(("source", "source"))
    if any(r.get("flags") for r in records):
        cols.append(("flags", "flags"))

    from gpsk_materials.text_table import format_table as _format

    return _format(records, cols)
