"""Crystal structure prediction on MP-20 test targets: composition-only conditioning, one sample and best of k.

For the first ``--limit`` rows of ``shared/data/mp20/test.csv`` (a PARTIAL split, see shared/data/SOURCES.md:
results are not comparable with published MP-20 numbers) the model is asked for ``--k`` structures of the target's
cell composition (``formula_units`` set to the target cell's; no other condition, ``checks="none"``). ``gpsk_materials.evaluation.csp_metrics`` scores them
(StructureMatcher stol=0.5, angle_tol=10, ltol=0.3; a prediction counts only when it and its target are valid,
structural + SMACT). A candidate that does not decode counts as an invalid prediction, in its sample position.

    python benchmarks/csp.py --device cuda --limit 1000 --k 20 --out results/csp.json

``--projection T`` re-enters every sample into the flow at time T after the decoder has projected it onto the
target's atoms (``GenerationRequest.projection``, issue 14 item 3); the same seeds with and without compare it.

``--rank`` measures what a user gets for one composition (issue 14, item 4): ``--k`` candidates are drawn per target
as ``best_of`` of a request for one structure, the post-checks rank them (``basic``: validity, strict distances,
connectivity; ``volume_scan``: also the potential's energy after the volume scan, as the known-crystals benchmark
ranks) and only the returned structure is matched against the target (``match_rate_1`` is then the number a user
gets; ``match_rate_k`` equals it).

    python benchmarks/csp.py --device cuda --limit 200 --k 20 --rank volume_scan --out results/csp_ranked_20.json

``--method prototypes`` answers the same requests without the model: the ``--k`` best templates of
:class:`gpsk_materials.prototypes.PrototypeSubstitutor` (the nearest training crystal of the same stoichiometry and
site count on Pettifor's chemical scale, its elements substituted, its volume from pymatgen's RLSVolumePredictor)
are the predictions, in rank order. The library is the flow's own training set, from which every test material was
removed by id and by structure, so its remaining crystals of a target's own formula are other polymorphs;
``--own-formula`` lets them serve as templates too (by default they do not: the request is then a new composition,
as in CSP).

    python benchmarks/csp.py --method prototypes --limit 200 --k 20 --out results/csp_prototypes.json

With ``--rank`` and ``--prototypes K`` each request's ``--k`` model candidates are joined by the K best templates
(``GenerationRequest.prototypes``) and the checks pick the one returned from all of them: what
``gpsk generate --best-of k --prototypes K --checks volume_scan`` gives a user.

``--targets mp20/train.csv`` asks for crystals the model was trained on (every material of that file is in the
training pool): the gap between it and the test split separates a flow that cannot fit its data from one that fits
but does not generalize (issue 14, item 1).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    benchmark_library,
    generation_parser,
    is_valid,
    load_generator,
    read_structures,
    sample_index,
    use_benchmark_library,
    write_summary,
)

TEST_CSV = "mp20/test.csv"


def main(argv=None) -> int:
    from gpsk_materials import provenance
    from gpsk_materials.evaluation import csp_metrics
    from gpsk_materials.vocabulary import integer_counts

    p = generation_parser(__doc__)
    p.add_argument("--limit", type=int, default=1000, help="first N test targets")
    p.add_argument("--targets", default=TEST_CSV,
                   help="CSV of targets under the shared data folder (mp20/train.csv: materials trained on)")
    p.add_argument("--k", type=int, default=20, help="samples per target (best of k)")
    p.add_argument("--workers", type=int, default=2, help="processes parsing the CIFs")
    p.add_argument("--rank", choices=("none", "basic", "volume_scan"), default="none",
                   help="none: every candidate is a prediction (best of k); otherwise the post-checks pick one of k")
    p.add_argument("--projection", type=float, default=0.0,
                   help="re-enter each sample into the flow at this time after the decoder's projection (0 = off)")
    p.add_argument("--method", choices=("flow", "prototypes"), default="flow",
                   help="flow: the model's samples; prototypes: substituted training crystals (no model)")
    p.add_argument("--steps", type=int, default=None, help="Euler steps of the sampler (default: the request's)")
    p.add_argument("--prototypes", type=int, default=0, metavar="K",
                   help="with --rank: each request also takes the K best prototype templates as candidates "
                        "(GenerationRequest.prototypes), ranked with the model's; the returned one is matched")
    p.add_argument("--max-e-above-hull", type=float, default=0.1,
                   help="--method prototypes: templates within this energy above hull (eV/atom) rank first, "
                        "unknown stability next (PrototypeSubstitutor); inf ranks by Pettifor distance alone")
    p.add_argument("--space-group", action="store_true",
                   help="also give each target's space group (mp20 spacegroup.number): --method prototypes puts the "
                        "templates of that group first; the flow method adds it to each request's conditions and "
                        "reports how often the returned structure has it (spglib at the generator's symprec)")
    p.add_argument("--own-formula", action="store_true",
                   help="--method prototypes: crystals of the target's own reduced formula may serve as templates")
    args = p.parse_args(argv)
    print(f"NOTE: {args.targets} is a partial MP-20 split (shared/data/SOURCES.md); "
          "results are not comparable with published MP-20 numbers.")
    targets, df = read_structures(args.targets, limit=args.limit, workers=args.workers)
    target_ids = [str(m) for m in df["material_id"]]
    if args.method == "prototypes":
        return prototype_csp(args, targets, target_ids,
                             [int(g) for g in df["spacegroup.number"]] if args.space_group else None)
    gen = load_generator(args)
    use_benchmark_library(gen)
    ranked = args.rank != "none"
    per_request = {"n": 1, "best_of": args.k} if ranked else {"n": args.k}
    per_request["projection"] = args.projection
    if args.steps is not None:
        per_request["steps"] = args.steps
    if args.prototypes:
        if not ranked:
            p.error("--prototypes needs --rank (the checks choose among the model's and the prototypes' candidates)")
        per_request["prototypes"] = args.prototypes
    # the target's cell content, as given (formula_units set, so the generator does not choose Z)
    groups = [int(g) for g in df["spacegroup.number"]] if args.space_group else [None] * len(targets)
    requests = [{"composition": t.composition.formula.replace(" ", ""), **per_request, "space_group": g,
                 "formula_units": integer_counts(t.composition.get_el_amt_dict())[1]} for t, g in zip(targets, groups)]
    t0 = time.perf_counter()
    results = gen.run(requests, seed=args.seed, checks=args.rank)
    k = 1 if ranked else args.k
    seconds = time.perf_counter() - t0
    preds, pred_ids, pred_valid = [], [], []
    errors = 0
    for tid, target, res in zip(target_ids, targets, results):
        errors += res.error is not None
        slots = [None] * k
        for j, s in enumerate(res.structures):
            slots[0 if ranked else sample_index(s, j)] = s
        for j, s in enumerate(slots):
            preds.append(s if s is not None else target)  # placeholder: invalid predictions are never matched
            pred_ids.append(f"{tid}__{j}")
            pred_valid.append(s is not None and all(is_valid(s)))
    target_valid = [all(is_valid(t)) for t in targets]
    result = csp_metrics(preds, pred_ids, pred_valid, targets, target_ids, target_valid)
    summary = result.summary()
    n_dec = sum(r.decoded for r in results)
    from_prototypes = sum(bool(provenance.read(s, "prototype")) for r in results for s in r.structures)
    extra = {"split": f"{args.targets} (partial)", "rank": args.rank, "candidates_per_target": args.k,
             "prototypes_per_target": args.prototypes, "returned_from_prototypes": from_prototypes,
             "projection": args.projection, "projected": sum(len(r.projected) for r in results),
             "generated": len(targets) * args.k, "decoded": n_dec,
             "valid_predictions": int(sum(pred_valid)), "valid_targets": int(sum(target_valid)),
             "request_errors": errors, "seconds_generation": seconds, "device": str(gen.device)}
    if args.space_group:
        extra.update(space_group_hits(gen, results, groups, ranked))
    print(f"{len(targets)} targets x {args.k} samples: {n_dec} decoded, {sum(pred_valid)} valid "
          f"({errors} requests refused); generation {seconds:.1f} s")
    print(f"match rate 1 sample {summary['match_rate_1']:.4f}  RMSE {summary['rmse_1']:.4f}")
    if ranked:
        print(f"match rate of the structure returned from {args.k} candidates ranked by {args.rank}: "
              f"{summary['match_rate_1']:.4f}")
    else:
        print(f"match rate best of {args.k} {summary['match_rate_k']:.4f}  RMSE {summary['rmse_k']:.4f}")
    write_summary(args.out, {**summary, **extra})
    return 0


def space_group_hits(gen, results, groups, ranked: bool) -> dict:
    """How often the returned structures (the first of each request when ``ranked``, else every one) have the
    requested space group and its crystal system, detected by spglib at the generator's symprec; over requests (a
    request that returned nothing is a miss)."""
    from gpsk_materials.checks.symmetry import SymmetryCheck, crystal_system_of
    from gpsk_materials.errors import GPSKError

    check = SymmetryCheck(symprec=gen.symprec)
    asked = hit_group = hit_system = 0
    for res, g in zip(results, groups):
        got = res.structures[:1] if ranked else res.structures
        want = len(got) if got else 1
        asked += want
        for s in got:
            try:
                found = check.check(s, space_group=g).space_group_number
            except GPSKError:
                continue
            hit_group += found == g
            hit_system += crystal_system_of(found) == crystal_system_of(g)
    return {"space_group_given": True, "symprec": gen.symprec, "space_group_hit": hit_group / asked,
            "crystal_system_hit": hit_system / asked, "space_group_structures": asked}


def prototype_csp(args, targets, target_ids, space_groups=None) -> int:
    """``--method prototypes``: the ``--k`` best substituted templates of each target's cell content."""
    from gpsk_materials.evaluation import csp_metrics
    from gpsk_materials.prototypes import PrototypeSubstitutor
    from gpsk_materials.vocabulary import integer_counts

    library = benchmark_library()
    t0 = time.perf_counter()
    preds, pred_ids, pred_valid, found, distances, sg_hits = [], [], [], 0, [], 0
    for k, (tid, target) in enumerate(zip(target_ids, targets)):
        own = [] if args.own_formula else [target.composition.reduced_formula]
        sub = PrototypeSubstitutor(library, exclude_formulas=own, max_e_above_hull=args.max_e_above_hull)
        z = integer_counts(target.composition.get_el_amt_dict())[1]
        got = sub.get_structures(target.composition.reduced_composition, n=args.k, formula_units=z,
                                 space_group=None if space_groups is None else space_groups[k])
        found += bool(got)
        if space_groups is not None and got:
            sg_hits += got[0].properties["gpsk"]["prototype"].get("space_group") == space_groups[k]
        distances += [s.properties["gpsk"]["prototype"]["pettifor_distance"] for s in got[:1]]
        for j in range(args.k):
            s = got[j] if j < len(got) else None
            preds.append(s if s is not None else target)  # placeholder: invalid predictions are never matched
            pred_ids.append(f"{tid}__{j}")
            pred_valid.append(s is not None and all(is_valid(s)))
    seconds = time.perf_counter() - t0
    target_valid = [all(is_valid(t)) for t in targets]
    summary = csp_metrics(preds, pred_ids, pred_valid, targets, target_ids, target_valid).summary()
    extra = {"split": f"{args.targets} (partial)", "method": "prototypes", "own_formula": args.own_formula,
             "max_e_above_hull": args.max_e_above_hull, "space_group_given": space_groups is not None,
             "top_template_in_requested_space_group": sg_hits if space_groups is not None else None,
             "candidates_per_target": args.k, "library_crystals": len(library), "targets_with_a_template": found,
             "median_pettifor_distance_top1": float(sorted(distances)[len(distances) // 2]) if distances else None,
             "valid_predictions": int(sum(pred_valid)), "valid_targets": int(sum(target_valid)),
             "seconds_generation": seconds, "device": "cpu"}
    print(f"{len(targets)} targets: {found} with a template; match rate top 1 {summary['match_rate_1']:.4f}, "
          f"best of {args.k} {summary['match_rate_k']:.4f} ({seconds:.1f} s)")
    write_summary(args.out, {**summary, **extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
