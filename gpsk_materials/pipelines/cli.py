"""``gpsk generate FORMULA [FORMULA ...]``: generate crystals, write CIFs + one extxyz + summary.csv, print a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpsk_materials.defaults import GUIDANCE, SAMPLER_STEPS

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` subcommand."""
    p = subparsers.add_parser(
        "generate",
        help="generate crystals of given compositions under conditions",
        description="Generate crystals with a GPSK model. Every FORMULA is one request of N structures under the "
        "same conditions; writes OUT/<formula>_<i>.cif, OUT/structures.extxyz and OUT/summary.csv.",
    )
    p.add_argument("formulas", nargs="+", metavar="FORMULA",
                   help="compositions: a reduced formula (TiO2: the number of formula units Z of each candidate is "
                   "drawn from the training prior, among the Z the space group allows) or a cell content (Ti2O4)")
    p.add_argument("-n", type=int, default=1, help="structures per formula (default 1)")
    p.add_argument("--formula-units", "-z", type=int, default=None, metavar="Z",
                   help="formula units per generated (primitive) cell, for every FORMULA (default: drawn per "
                   "candidate)")
    p.add_argument("--space-group", type=int, default=None, help="space-group number 1-230")
    p.add_argument("--crystal-system", default=None, help="triclinic ... cubic")
    p.add_argument("--band-gap", type=float, default=None, help="eV, >= 0")
    p.add_argument("--formation-energy", type=float, default=None, help="eV/atom")
    p.add_argument("--e-above-hull", type=float, default=None, help="eV/atom, >= 0 (condition)")
    p.add_argument("--magnetic-ordering", default=None, help="NM, FM, FiM or AFM")
    p.add_argument("--guidance", type=float, default=GUIDANCE,
                   help=f"classifier-free guidance scale (default {GUIDANCE:g})")
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS,
                   help=f"Euler steps of the flow sampler (default {SAMPLER_STEPS})")
    p.add_argument("--seed", type=int, default=None, help="base seed (request i uses seed + i)")
    p.add_argument("--best-of", type=int, default=1, help="candidates per wanted structure; the best are kept")
    p.add_argument("--checks", default="basic",
                   help="comma-separated post-checks: none, basic (validity + symmetry; default), energy, volume_scan, "
                   "relax, hull")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the model shipped in the package)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--batch-size", type=int, default=None, help="latents per sampler call (default 8 on CPU, 64 on GPU)")
    p.add_argument("--potential", default=None, help="potential of the energy checks (default: shared TensorNet-MatPES)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default ./results)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate, write the files, print the table; exit code 1 if any request was invalid."""
    from gpsk_materials.pipelines.generator import CrystalGenerator
    from gpsk_materials.pipelines.output import format_table, write_results
    from gpsk_materials.models.conditioning import MODALITIES, Conditions
    from gpsk_materials.pipelines.requests import GenerationRequest

    gen = CrystalGenerator.from_pretrained(
        args.model, device=args.device, batch_size=args.batch_size, potential=args.potential
    )
    # the six conditions besides the composition, shared by every formula of the command line
    shared = Conditions(**{m: getattr(args, m) for m in MODALITIES[1:]})
    requests = [
        GenerationRequest(f, args.n, conditions=shared, guidance=args.guidance, steps=args.steps, best_of=args.best_of,
                          formula_units=args.formula_units)
        for f in args.formulas
    ]
    results = gen.run(requests, seed=args.seed, checks=args.checks, progress=False if args.no_progress else None)
    records = write_results(results, args.out)
    if records:
        print(format_table(records))
    bad = 0
    for res in results:
        label = res.request.to_dict().get("composition")
        if res.error is not None:
            bad += 1
            print(f"gpsk generate: rejected {res.error}", file=sys.stderr)
        elif len(res.structures) < res.request.n:
            reason = f"; first failure: {res.failures[0]}" if res.failures else ""
            print(f"gpsk generate: request {res.index} ({label}): {len(res.structures)} of {res.request.n} structures "
                  f"({res.decoded} of {res.candidates} candidates decoded, seed {res.seed}){reason}", file=sys.stderr)
    print(f"wrote {len(records)} structures to {args.out}/ (CIF files, structures.extxyz, summary.csv)")
    return 1 if bad else 0
