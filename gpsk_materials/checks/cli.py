"""``gpsk check FILES...``: run the post-checks on structure files and print a summary table."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from gpsk_materials.defaults import FMAX, RELAX_STEPS
from gpsk_materials.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` subcommand."""
    p = subparsers.add_parser(
        "check",
        help="post-checks (symmetry, validity, energy, volume scan, E_hull) of structure files",
        description="Run the post-checks on CIF/POSCAR files (every data block of a CIF is a structure).",
    )
    p.add_argument("files", nargs="+", type=Path, help="structure files (CIF, POSCAR, ...)")
    p.add_argument("--potential", default=None, help="matgl model name or folder, or 'chgnet[:version]' (default: shared TensorNet-MatPES)")
    p.add_argument("--no-energy", action="store_true", help="skip the potential (symmetry and validity only)")
    p.add_argument("--relax", action="store_true", help="relax each structure (FIRE, cell included) before reporting")
    p.add_argument("--fmax", type=float, default=FMAX, help=f"relaxation force tolerance, eV/A (default {FMAX})")
    p.add_argument("--steps", type=int, default=RELAX_STEPS, help=f"maximum relaxation steps (default {RELAX_STEPS})")
    p.add_argument("--volume-scan", action="store_true", help="rescale each structure by the volume scan first")
    p.add_argument("--hull", action="store_true", help="energy above the reference hull from shared/data/pool.csv.gz")
    p.add_argument("--space-group", type=int, default=None, help="requested space group to compare with")
    p.add_argument("--symprec", type=float, default=0.1, help="spglib distance tolerance, A")
    p.add_argument("--json", type=Path, default=None, help="write the full results to this JSON file")
    p.set_defaults(func=run)


def _read(path: Path) -> list[Structure]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix.lower() == ".cif":
                from pymatgen.io.cif import CifParser

                return CifParser(path).parse_structures(primitive=False)
            return [Structure.from_file(path)]
    except Exception as exc:  # pymatgen raises many types on malformed files
        raise DataError(f"{path}: cannot read a structure ({exc})") from exc


def run(args: argparse.Namespace) -> int:
    """Run the checks, print the table (and write the JSON); return 0."""
    from gpsk_materials.checks.symmetry import SymmetryCheck
    from gpsk_materials.checks.validity import ValidityCheck

    items: list[tuple[str, Structure]] = []
    for f in args.files:
        found = _read(f)
        items += [(str(f) if len(found) == 1 else f"{f}[{i}]", s) for i, s in enumerate(found)]
    structures = [s for _, s in items]
    records: list[dict] = [{"file": n, "formula": s.composition.reduced_formula, "nsites": len(s)} for n, s in items]

    potential = None
    if not args.no_energy or args.relax or args.volume_scan or args.hull:
        from gpsk_materials.checks.potentials import resolve_potential

        potential = resolve_potential(args.potential)
    if args.volume_scan:
        from gpsk_materials.checks.volume_scan import VolumeScan

        scans = VolumeScan(potential).scan(structures)
        structures = [r.structure for r in scans]
        for rec, r in zip(records, scans):
            rec.update(volume_scale_factor=r.scale_factor, volume_scan_at_boundary=r.at_boundary)
    if args.relax:
        relaxed = potential.relax(structures, fmax=args.fmax, steps=args.steps, progress=len(structures) > 1)
        structures = [r.structure for r in relaxed]
        for rec, r in zip(records, relaxed):
            rec.update(relax_converged=r.converged, relax_steps=r.steps)
    if potential is not None:
        energies = potential.energies(structures)
        for rec, e in zip(records, energies):
            rec.update(potential=potential.name, energy_per_atom=float(e))
    if args.hull:
        from gpsk_materials.checks.hull import ReferenceHull

        hull = ReferenceHull(potential)
        for rec, s in zip(records, structures):
            rec["e_above_hull"] = hull.e_above_hull(s, rec["energy_per_atom"])

    sym, val = SymmetryCheck(symprec=args.symprec), ValidityCheck()
    for rec, s in zip(records, structures):
        sr = sym.check(s, space_group=args.space_group)
        vr = val.check(s)
        rec.update(
            space_group=sr.space_group_number,
            space_group_symbol=sr.space_group_symbol,
            crystal_system=sr.crystal_system,
            space_group_match=sr.space_group_match,
            structural_valid=vr.structural_valid,
            compositional_valid=vr.compositional_valid,
            valid=vr.valid,
            strict_valid=vr.strict_valid,
            min_distance=vr.min_distance,
            volume_per_atom=vr.volume_per_atom,
            validity_reasons=vr.reasons,
        )
        if args.relax or args.volume_scan:
            rec["structure"] = s.as_dict()

    _print_table(records)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1, default=_json_default))
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o).__name__)


def _print_table(records: list[dict]) -> None:
    cols = [("file", "file"), ("formula", "formula"), ("space_group", "SG"), ("space_group_symbol", "symbol")]
    if any("energy_per_atom" in r for r in records):
        cols.append(("energy_per_atom", "E (eV/atom)"))
    if any("e_above_hull" in r for r in records):
        cols.append(("e_above_hull", "E_hull"))
    if any("volume_scale_factor" in r for r in records):
        cols.append(("volume_scale_factor", "a_new/a_old"))
    cols += [("structural_valid", "struct"), ("compositional_valid", "SMACT"), ("strict_valid", "strict")]

    from gpsk_materials.cli import format_table

    print(format_table(records, cols))
