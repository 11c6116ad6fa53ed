"""``gpsk generate FORMULA [FORMULA ...]``: generate crystals, write CIFs + one extxyz + summary.csv, print a table."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gpsk_materials.cli_options import add
from gpsk_materials.defaults import PROJECTION_TIME

def _flow_time(text: str) -> float:
    """``--projection``: a flow time in [0, 1), refused by argparse before the model loads."""
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= t < 1.0:
        raise argparse.ArgumentTypeError(f"must be a flow time in [0, 1) (0 = off), got {text}")
    return t


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
    add(p, "n", "space_group")
    p.add_argument("--formula-units", "-z", type=int, default=None, metavar="Z",
                   help="formula units per generated (primitive) cell, for every FORMULA (default: drawn per "
                   "candidate)")
    add(p, "crystal_system")
    p.add_argument("--band-gap", type=float, default=None, help="eV, >= 0")
    p.add_argument("--formation-energy", type=float, default=None, help="eV/atom")
    p.add_argument("--e-above-hull", type=float, default=None, help="eV/atom, >= 0 (condition)")
    p.add_argument("--magnetic-ordering", default=None, help="NM, FM, FiM or AFM")
    add(p, "guidance", "steps", "seed", seed=dict(help="base seed (request i uses seed + i)"))
    add(p, "best_of")
    p.add_argument("--projection", type=_flow_time, default=PROJECTION_TIME, metavar="T",
                   help="re-enter each sample into the flow at time T (0 <= T < 1, 0 = off, the default) after the "
                   "decoder has projected it onto the requested atoms (docs/generator.md)")
    add(p, "prototypes", "checks")
    p.add_argument("--volume-scan", action="store_true", help="add the volume-scan check (as --checks volume_scan)")
    p.add_argument("--relax", action="store_true", help="add the relaxation check (as --checks relax)")
    add(p, "hull", hull=dict(choices=("self",), help="add the energy above the potential's own hull of "
                                                     "shared/data/pool.csv.gz (as --checks hull)"))
    add(p, "model", "device", "potential")
    p.add_argument("--batch-size", type=int, default=None, help="latents per sampler call (default 8 on CPU, 64 on GPU)")
    add(p, "out", "no_progress", out=dict(default=Path("results"), help="output folder (default ./results)"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate, write the files, print the table; exit code 1 if any request was invalid."""
    from gpsk_materials.pipelines.generator import REQUEST_ERROR, CrystalGenerator
    from gpsk_materials.pipelines.output import format_table, write_results
    from gpsk_materials.models.conditioning import Conditions
    from gpsk_materials.pipelines.requests import GenerationRequest
    from gpsk_materials.vocabulary import MODALITIES

    gen = CrystalGenerator.from_pretrained(
        args.model, device=args.device, batch_size=args.batch_size, potential=args.potential
    )
    # the six conditions besides the composition, shared by every formula of the command line
    shared = Conditions(**{m: getattr(args, m) for m in MODALITIES[1:]})
    requests = [
        GenerationRequest(f, args.n, conditions=shared, guidance=args.guidance, steps=args.steps, best_of=args.best_of,
                          formula_units=args.formula_units, projection=args.projection, prototypes=args.prototypes)
        for f in args.formulas
    ]
    checks = ",".join([args.checks, *(c for c in ("volume_scan", "relax", "hull") if getattr(args, c))])
    # rejected requests are printed below, once: the generator's own log line of each is filtered out
    def not_a_rejection(record: logging.LogRecord) -> bool:
        return not getattr(record, REQUEST_ERROR, False)

    gen_logger = logging.getLogger("gpsk_materials.pipelines.generator")
    gen_logger.addFilter(not_a_rejection)
    try:
        results = gen.run(requests, seed=args.seed, checks=checks, progress=False if args.no_progress else None)
    finally:
        gen_logger.removeFilter(not_a_rejection)
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
    if records:
        print(f"wrote {len(records)} structures to {args.out}/ (CIF files, structures.extxyz, summary.csv)")
    else:
        print(f"no structures: nothing written to {args.out}/")
    return 1 if bad else 0
