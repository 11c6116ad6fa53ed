"""``gpsk check FILES...``: run the post-checks on structure files and print a summary table."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from pymatgen.core import Structure

from gpsk_materials.atomic_files import write_text_atomic
from gpsk_materials.cli_options import add, alias
from gpsk_materials.errors import DataError, GPSKError
from gpsk_materials.provenance import plain

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` subcommand."""
    p = subparsers.add_parser(
        "check",
        help="post-checks (symmetry, validity, energy, volume scan, E_hull) of structure files",
        description="Run the post-checks on CIF/POSCAR files (every data block of a CIF is a structure).",
    )
    p.add_argument("files", nargs="+", type=Path, help="structure files (CIF, POSCAR, ...)")
    add(p, "potential")
    p.add_argument("--no-energy", action="store_true", help="skip the potential (symmetry and validity only)")
    p.add_argument("--relax", action="store_true", help="relax each structure (FIRE, cell included) before reporting")
    add(p, "fmax", "relax_steps")
    alias(p, "--steps", "relax_steps", type=int)  # its old name: --steps means sampler steps in every command
    p.add_argument("--volume-scan", action="store_true", help="rescale each structure by the volume scan first")
    p.add_argument("--scan-at-boundary", action="store_true",
                   help="apply a volume-scan minimum found at an end of the scanned range (default: keep the "
                        "structure as given and flag it, scan@edge = yes)")
    add(p, "hull", "space_group", hull=dict(choices=("self",)),
        space_group=dict(help="requested space group (1-230) to compare with"))
    p.add_argument("--symprec", type=float, default=0.1, help="spglib distance tolerance, A")
    p.add_argument("--json", type=Path, default=None, help="write the full results to this JSON file")
    add(p, "no_progress", "fail_fast", fail_fast=dict(
        help="stop at the first file or structure that fails (default: report it in its row, check the rest)"))
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
    """Run the checks, print the table (and write the JSON).

    One bad item never sinks the batch: a file that cannot be read, or a structure a check refuses, gets a row
    with its reason (``error``), the others are computed; ``--fail-fast`` stops at the first instead.

    Returns
    -------
    int
        0 when every structure was checked, 1 when any file or structure failed (each named on stderr).
    """
    from gpsk_materials.checks.symmetry import SymmetryCheck
    from gpsk_materials.checks.validity import ValidityCheck

    records: list[dict] = []
    structures: dict[int, Structure] = {}  # record index -> structure still being checked
    for f in args.files:
        try:
            found = _read(f)
        except GPSKError as exc:
            _fail(args, records, {"file": str(f)}, exc)
            continue
        for i, s in enumerate(found):
            structures[len(records)] = s
            records.append({"file": str(f) if len(found) == 1 else f"{f}[{i}]",
                            "formula": s.composition.reduced_formula, "nsites": len(s)})

    potential = None
    if not args.no_energy or args.relax or args.volume_scan or args.hull:
        from gpsk_materials.checks.potentials import resolve_potential

        potential = resolve_potential(args.potential)
    if args.volume_scan:
        from gpsk_materials.checks.volume_scan import VolumeScan

        scanner = VolumeScan(potential, apply_at_boundary=args.scan_at_boundary)
        for k, r in _per_item(args, records, structures, scanner.scan).items():
            structures[k] = r.structure
            records[k].update(volume_scale_factor=r.scale_factor, volume_scan_at_boundary=r.at_boundary,
                              volume_scan_applied=r.applied)
    if args.relax:
        def relax(batch):
            return potential.relax(batch, fmax=args.fmax, steps=args.relax_steps,
                                   progress=len(batch) > 1 and not args.no_progress)

        for k, r in _per_item(args, records, structures, relax).items():
            structures[k] = r.structure
            records[k].update(relax_converged=r.converged, relax_steps=r.steps)
    if potential is not None:
        for k, e in _per_item(args, records, structures, potential.energies).items():
            records[k].update(potential=potential.name, energy_per_atom=float(e))
        import numpy as np

        from gpsk_materials.checks.scoring import COHESIVE_ENERGY_RANGE, energy_sane

        lo, hi = COHESIVE_ENERGY_RANGE
        for k in [k for k in structures if np.isfinite(records[k].get("energy_per_atom", np.nan))]:
            c = float(potential.cohesive_energies(structures[k], [records[k]["energy_per_atom"]])[0])
            records[k].update(cohesive_energy=c, energy_sane=energy_sane(c))
            if records[k]["energy_sane"] is False:
                logger.warning("%s: cohesive energy %.2f eV/atom outside the sane range [%g, %g] (the potential's "
                               "free atoms minus its energy)", records[k]["file"], c, lo, hi)
        for k, isolated in _per_item(args, records, structures, potential.isolated_sites).items():
            records[k]["isolated_sites"] = isolated
            if isolated:
                logger.warning("%s: sites %s have no neighbour within the %.1f A cutoff of %s: its energy is the "
                               "model's free-atom term", records[k]["file"], isolated, potential.cutoff, potential.name)
    if args.hull:
        from gpsk_materials.checks.hull import ReferenceHull

        hull = ReferenceHull(potential)
        for k, s in list(structures.items()):
            try:
                records[k]["e_above_hull"] = hull.e_above_hull(s, records[k]["energy_per_atom"])
            except GPSKError as exc:
                _fail(args, records, records[k], exc, structures, k)

    sym, val = SymmetryCheck(symprec=args.symprec), ValidityCheck()
    for k, s in list(structures.items()):
        rec = records[k]
        try:
            sr = sym.check(s, space_group=args.space_group)
            vr = val.check(s)
        except GPSKError as exc:
            _fail(args, records, rec, exc, structures, k)
            continue
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
        write_text_atomic(args.json, json.dumps(plain(records), indent=1))
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"gpsk check: error: {r['file']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _fail(args, records: list[dict], rec: dict, exc: Exception, structures: dict | None = None,
          k: int | None = None) -> None:
    """Record why an item failed (or, with --fail-fast, raise naming its file)."""
    if args.fail_fast:
        raise type(exc)(f"{rec['file']}: {exc}") from exc
    rec["error"] = f"{type(exc).__name__}: {exc}"
    if rec not in records:
        records.append(rec)
    if structures is not None:
        structures.pop(k, None)


def _per_item(args, records: list[dict], structures: dict[int, Structure], fn) -> dict[int, object]:
    """``fn`` (a batch call: structures -> results) on the structures still being checked; when the batch call
    raises a project error, each structure alone, so that only the ones at fault fail."""
    keys = list(structures)
    if not keys:
        return {}
    try:
        return dict(zip(keys, fn([structures[k] for k in keys])))
    except GPSKError:
        if args.fail_fast and len(keys) == 1:
            raise
    out: dict[int, object] = {}
    for k in keys:
        try:
            out[k] = fn([structures[k]])[0]
        except GPSKError as exc:
            _fail(args, records, records[k], exc, structures, k)
    return out


def _print_table(records: list[dict]) -> None:
    cols = [("file", "file"), ("formula", "formula"), ("space_group", "SG"), ("space_group_symbol", "symbol")]
    if any("energy_per_atom" in r for r in records):
        cols.append(("energy_per_atom", "E (eV/atom)"))
    if any("e_above_hull" in r for r in records):
        cols.append(("e_above_hull", "E_hull"))
    if any("energy_sane" in r for r in records):
        cols.append(("energy_sane", "E_sane"))
    if any(r.get("isolated_sites") for r in records):
        cols.append(("isolated_sites", "isolated"))
    if any("volume_scale_factor" in r for r in records):
        cols.append(("volume_scale_factor", "a_new/a_old"))
        cols.append(("volume_scan_at_boundary", "scan@edge"))
    if any(r.get("space_group_match") is not None for r in records):
        cols.append(("space_group_match", "SG match"))
    cols += [("structural_valid", "struct"), ("compositional_valid", "SMACT"), ("strict_valid", "strict")]
    if any("error" in r for r in records):
        cols.append(("error", "error"))

    from gpsk_materials.text_table import format_table

    print(format_table(records, cols))
