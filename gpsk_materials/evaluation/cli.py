"""``gpsk evaluate``: metrics of generated structures, written as a table, a JSON report and plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpsk_materials.cli_options import add, alias
from gpsk_materials.defaults import EVALUATION_RELAX_STEPS, RELAX_BATCH
from gpsk_materials.errors import ConfigError, DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="validity, uniqueness, novelty, CSP, stability and distribution metrics of generated structures",
        description="Evaluate generated structures (a CIF folder, .cif, .extxyz, .json of Structures, or .csv with "
        "a 'cif' column). Writes report.json (summary and per-structure results), metrics.md, "
        "per_structure.csv and plots into --out. See docs/evaluation.md for each protocol.",
    )
    p.add_argument("input", type=Path, help="generated structures")
    p.add_argument("--train-csv", type=Path, help="training set (CSV with a cif column) for novelty and S.U.N.")
    p.add_argument("--train-split", help="keep rows of --train-csv whose mp20_split/split column equals this")
    p.add_argument("--novelty-reference", choices=["mp20-bawl", "mp20-bawl-train"],
                   help="novelty (and S.U.N.) by BAWL hash, as LeMat-GenBench: against all 45,229 MP-20 materials "
                        "(mp20-bawl, 44,654 hashes) or its train split (mp20-bawl-train), from shared/data/reference; "
                        "instead of --train-csv (StructureMatcher against a CSV)")
    p.add_argument("--reference-csv", type=Path,
                   help="reference distribution (e.g. a test set) for Wasserstein distances and coverage")
    p.add_argument("--reference-split", help="keep rows of --reference-csv whose mp20_split/split equals this")
    p.add_argument("--max-sites", type=int, help="keep reference/train rows with at most this many sites")
    p.add_argument("--coverage-reference-size", type=int, default=1000,
                   help="reference structures sampled for coverage and Wasserstein distances (0 = all; default 1000)")
    p.add_argument("--wdist-samples", type=int, default=1000,
                   help="valid generated structures sampled for Wasserstein distances (CDVAE: 1000; 0 = all)")
    p.add_argument("--cov-dataset", choices=["mp20", "carbon", "perovskite"], default="mp20",
                   help="CDVAE coverage cutoffs to use")
    p.add_argument("--csp-targets", type=Path,
                   help="target structures for CSP; prediction ids must be '<target id>' or '<target id>__<k>'")
    p.add_argument("--stability", action="store_true",
                   help="relax, compute E_hull and stable/SUN rates (against the --hull KIND, default self)")
    add(p, "hull", hull=dict(help="energy above the convex hull against KIND (implies --stability): self (the "
                                  "potential's own hull of shared/data/pool.csv.gz; the default), mp-dft (CHGNet "
                                  "energies vs Materials Project DFT formation energies) or both"))
    p.add_argument("--hull-mode", choices=["relax", "single_point"], default="relax",
                   help="reference energies of the self hull: relaxed with the potential (default) or single points "
                        "of the DFT geometries (faster, E_hull biased low by the residual relaxation energy)")
    p.add_argument("--hull-max-sites", type=int, help="ignore pool references with more sites")
    p.add_argument("--reference-energies", type=Path,
                   help="cached reference energies (JSON, from benchmarks/build_reference_energies.py)")
    add(p, "potential", "device", "fmax", "relax_steps", "relax_batch", "workers",
        potential=dict(help="potential for --hull self (default: the shared TensorNet-MatPES model; 'chgnet' or "
                            "'matgl:<name or path>')"),
        device=dict(default=None, help="torch device for relaxations (cpu, cuda)"),
        relax_steps=dict(default=EVALUATION_RELAX_STEPS),
        relax_batch=dict(help=f"structures per forward pass of the batched relaxation (default {RELAX_BATCH}; each "
                              "result is cached as it finishes)"),
        workers=dict(help="processes for matching and fingerprints (default 1)"))
    p.add_argument("--cache-dir", type=Path, help="resumable cache (default: OUT/cache)")
    add(p, "seed", "out", "no_progress", "fail_fast", seed=dict(default=0, help="random seed (default 0)"),
        out=dict(default=Path("evaluation_report"), help="report folder (default ./evaluation_report)"),
        fail_fast=dict(help="stop at the first structure that cannot be read (default: skip it, name it on stderr "
                            "and in report.json, evaluate the rest)"))
    alias(p, "--quiet", "no_progress", nargs=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``gpsk evaluate``."""
    from gpsk_materials.evaluation.evaluate import (
        CSP_WITH_TRAIN,
        TWO_NOVELTY_REFERENCES,
        EvaluationOptions,
        evaluate,
        format_table,
        write_report,
    )
    from gpsk_materials.evaluation.io import ReferenceSet, read_structures

    if args.csp_targets is not None and (args.train_csv is not None or args.novelty_reference is not None):
        raise ConfigError(CSP_WITH_TRAIN)  # before minutes of reading the training set
    if args.train_csv is not None and args.novelty_reference is not None:
        raise ConfigError(TWO_NOVELTY_REFERENCES)

    if args.hull is not None:
        args.stability = True  # --hull asks for the energy above the hull, which the stability protocol computes
    args.hull = args.hull or "self"
    if args.stability and args.train_csv is None and args.novelty_reference is None:
        print("gpsk evaluate: note: no --train-csv or --novelty-reference, so S.U.N. rates are not computed",
              file=sys.stderr)
    if args.workers < 1:
        raise DataError("--workers must be at least 1")
    skipped: list[dict] | None = None if args.fail_fast else []
    ids, structures = read_structures(args.input, skipped=skipped)
    for item in skipped or []:
        print(f"gpsk evaluate: skipped {item['id']}: {item['error']}", file=sys.stderr)
    train = (ReferenceSet.from_csv(args.train_csv, args.max_sites, args.train_split)
             if args.train_csv is not None else None)
    reference = (ReferenceSet.from_csv(args.reference_csv, args.max_sites, args.reference_split)
                 if args.reference_csv is not None else None)
    targets = read_structures(args.csp_targets) if args.csp_targets is not None else None
    options = EvaluationOptions(
        cov_dataset=args.cov_dataset, wdist_samples=args.wdist_samples,
        coverage_reference_size=args.coverage_reference_size, seed=args.seed, workers=args.workers,
        progress=not args.no_progress, cache_dir=str(args.cache_dir or args.out / "cache"), stability=args.stability,
        hull_protocol=args.hull, potential=args.potential, device=args.device, fmax=args.fmax,
        relax_steps=args.relax_steps, relax_batch=args.relax_batch, hull_mode=args.hull_mode,
        hull_max_sites=args.hull_max_sites,
        reference_energies=None if args.reference_energies is None else str(args.reference_energies),
    )
    report = evaluate(ids, structures, train=train, reference=reference, csp_targets=targets, options=options,
                      novelty_reference=args.novelty_reference)
    if skipped:
        # the rates are over the structures read; the skipped ones are named in report.json and counted here
        report["summary"] = {"n_skipped": len(skipped), **report["summary"]}
        report["skipped"] = skipped
    files = write_report(report, args.out, structures)
    print(format_table({k: v for k, v in report["summary"].items() if not k.startswith("_")}))
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=1))
    for message in report["summary"].get("warnings", []):
        print(f"gpsk evaluate: warning: {message}", file=sys.stderr)
    return 0
