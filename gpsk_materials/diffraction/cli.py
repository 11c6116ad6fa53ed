"""``gpsk solve PATTERN.xy --composition FORMULA``: solve a structure from a powder pattern; writes one CIF, one
overlay plot (measured vs calculated) per candidate and ``solve_summary.csv`` with the R-factors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpsk_materials.atomic_files import write_atomic, write_csv_atomic
from gpsk_materials.cli_options import add

#: columns of ``solve_summary.csv``
SOLVE_COLUMNS = ("rank", "file", "plot", "formula", "rwp", "rp", "agreement", "crystal_system", "space_group",
                 "a", "b", "c", "alpha", "beta", "gamma", "zero_shift", "sample_index", "source")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``solve`` subcommand."""
    p = subparsers.add_parser(
        "solve",
        help="solve a crystal structure from a powder diffraction pattern and its composition",
        description="Generate candidates of COMPOSITION, refine each against the powder pattern (scale, zero "
        "shift, background, peak widths, lattice) and keep the N of lowest Rwp. Writes OUT/<formula>_<rank>.cif, "
        "OUT/<formula>_<rank>.png (measured vs calculated) and OUT/solve_summary.csv.",
    )
    p.add_argument("pattern", type=Path, metavar="PATTERN", help="two-column text file: 2theta (deg), intensity")
    p.add_argument("--composition", required=True, help="cell content, e.g. TiO2 or Ti2O4")
    add(p, "n", "best_of", n=dict(default=5, help="structures to keep (default %(default)s)"),
        best_of=dict(default=4, help="candidates drawn per kept structure (default %(default)s)"))
    p.add_argument("--wavelength", default="CuKa",
                   help="Angstrom, or a line name of pymatgen's table (default CuKa, 1.54184 A)")
    add(p, "space_group", "crystal_system", space_group=dict(help="space-group number 1-230, if known"),
        crystal_system=dict(help="triclinic ... cubic, if known"))
    p.add_argument("--pattern-guidance", type=float, default=0.0,
                   help="strength of sampler guidance toward the pattern (0 = off; 0.3 measured best for the shipped model, docs/diffraction.md; slow on a CPU)")
    add(p, "prototypes", prototypes=dict(help="also refine the K nearest known crystals of the same stoichiometry, "
                                               "their elements substituted (gpsk_materials.prototypes), beside the "
                                               "model's candidates (default 0)"))
    add(p, "guidance", "steps", "seed", "checks", "model", "device", "no_progress", "out",
        out=dict(default=Path("solved"), help="output folder (default ./solved)"))
    p.set_defaults(func=run)


def _wavelength(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def write_solution(solution, folder: Path, label: str) -> list[dict]:
    """Write the CIFs, overlay plots and ``solve_summary.csv`` of a :class:`PowderSolution`; returns the rows."""
    from pymatgen.io.cif import CifWriter

    from gpsk_materials import provenance
    from gpsk_materials.pipelines.output import _UNSAFE, _source

    folder.mkdir(parents=True, exist_ok=True)
    name = _UNSAFE.sub("_", label) or "structure"
    rows = []
    for rank, (s, fit) in enumerate(zip(solution.structures, solution.refinements)):
        cif, png = f"{name}_{rank}.cif", f"{name}_{rank}.png"
        write_atomic(folder / cif, lambda p, s=s: CifWriter(s, symprec=0.1).write_file(p), ".cif")
        fig = fit.plot(title=f"{s.composition.reduced_formula} #{rank}: Rwp = {100 * fit.rwp:.1f} %")
        write_atomic(folder / png, lambda p, fig=fig: fig.savefig(p, dpi=120, format="png"), ".png")
        checks = (provenance.read(s, "checks") or {}).get("results") or {}
        req = provenance.read(s, "request") or {}
        a, b, c, al, be, ga = fit.lattice_refined
        rows.append({"rank": rank, "file": cif, "plot": png, "formula": s.composition.reduced_formula,
                     "rwp": round(fit.rwp, 4), "rp": round(fit.rp, 4), "agreement": "poor" if fit.poor else "good",
                     "crystal_system": fit.crystal_system, "space_group": checks.get("space_group"),
                     "a": round(a, 4), "b": round(b, 4), "c": round(c, 4), "alpha": round(al, 3),
                     "beta": round(be, 3), "gamma": round(ga, 3), "zero_shift": round(fit.zero_shift, 4),
                     "sample_index": req.get("sample_index"), "source": _source(s)})
    write_csv_atomic(folder / "solve_summary.csv", rows, SOLVE_COLUMNS)
    return rows


def run(args: argparse.Namespace) -> int:
    """Solve, write the files, print the table; exit 1 when no candidate could be refined."""
    from gpsk_materials.text_table import format_table
    from gpsk_materials.diffraction.pattern import PowderPattern
    from gpsk_materials.diffraction.solve import solve_pattern
    from gpsk_materials.pipelines.generator import CrystalGenerator

    pattern = PowderPattern.from_file(args.pattern, _wavelength(args.wavelength))  # bad input fails before loading
    gen = CrystalGenerator.from_pretrained(args.model, device=args.device)
    solution = solve_pattern(gen, args.composition, pattern, args.n, best_of=args.best_of, guidance=args.guidance,
                             steps=args.steps, seed=args.seed, checks=args.checks,
                             progress=False if args.no_progress else None, pattern_guidance=args.pattern_guidance,
                             space_group=args.space_group, crystal_system=args.crystal_system,
                             prototypes=args.prototypes)
    rows = write_solution(solution, args.out, args.composition)
    if rows:
        print(format_table(rows, [("file", "file"), ("formula", "formula"), ("space_group", "SG"),
                                  ("crystal_system", "system"), ("rwp", "Rwp"), ("rp", "Rp"),
                                  ("agreement", "agreement"), ("a", "a"), ("b", "b"), ("c", "c"),
                                  ("source", "source")]))
    for note in solution.notes:
        print(f"gpsk solve: warning: {note}", file=sys.stderr)
    res = solution.result
    print(f"wrote {len(rows)} structures to {args.out}/ (CIF files, overlay plots, solve_summary.csv); "
          f"{res.decoded} of {res.candidates} candidates decoded, {solution.refined} refined, seed {res.seed}")
    return 0 if rows else 1
