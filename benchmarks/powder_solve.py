"""Structure solution from powder patterns on MP-20 test targets: the composition plus a noisy simulated Cu Ka
pattern, against the same model given the composition alone.

For the first ``--limit`` rows of ``shared/data/mp20/test.csv`` (a PARTIAL split, see shared/data/SOURCES.md) the
target's pattern is simulated with ``gpsk_materials.diffraction.simulate_measurement`` (seed = row index): 10-80 deg,
zero shift within +-0.1 deg, Caglioti broadening, a decaying background, Poisson noise at 5000 peak counts, the range
below 10 deg missing and two impurity peaks of 1-5 %. The model draws ``--k`` candidates of the target's cell
composition (``checks="none"``).

* ``pattern``: the candidates are refined against the pattern (``PatternRefiner``: scale, zero shift, Chebyshev
  background, Caglioti widths, lattice under the candidate's crystal-system constraints) and ranked by Rwp; the
  prediction is the refined structure.
* ``no pattern``: the same model and noise, candidates in sample order (the CSP benchmark's protocol).

* ``prototype_order`` (``--prototypes K``): the K best substituted known crystals of the target's cell content
  (``CrystalGenerator.prototype_candidates``, the shipped library, which holds no MP-20 test material) in their own
  order, no pattern (the prototype CSP baseline on the same targets);
* ``pattern_prototypes``: the model's candidates and the K prototypes refined against the pattern together, ranked
  by Rwp (``generate(..., diffraction=p, prototypes=K)``). ``--k 0`` leaves the model out (prototypes alone).

With ``--pattern-guidance 0`` both model arms share the very same candidates (one sampling run), so the difference is the
ranking and the lattice refinement alone; with guidance > 0 the pattern arm samples again, guided.
Matching: StructureMatcher stol 0.5, angle_tol 10, ltol 0.3 (``csp_metrics``), match rate at 1 and at k candidates.

    python benchmarks/powder_solve.py --device cuda --limit 200 --k 20 --out results/powder_solve.json
    python benchmarks/powder_solve.py --limit 200 --k 0 --prototypes 5 --out results/powder_solve_prototypes.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    generation_parser,
    is_valid,
    load_generator,
    read_structures,
    sample_index,
    use_benchmark_library,
    write_summary,
)

TEST_CSV = "mp20/test.csv"


def _slots(structures, k, key):
    slots = [None] * k
    for j, s in enumerate(structures):
        slots[key(s, j)] = s
    return slots


def main(argv=None) -> int:
    from tqdm.auto import tqdm

    from gpsk_materials.diffraction import PatternRefiner, simulate_measurement
    from gpsk_materials.diffraction.solve import solve_pattern
    from gpsk_materials.evaluation import csp_metrics

    p = generation_parser(__doc__)
    p.add_argument("--limit", type=int, default=200, help="first N test targets")
    p.add_argument("--k", type=int, default=20, help="candidates per target")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the package default)")
    p.add_argument("--pattern-guidance", type=float, default=0.0, help="sampler guidance toward the pattern")
    p.add_argument("--workers", type=int, default=2, help="processes parsing the CIFs")
    p.add_argument("--prototypes", type=int, default=0, help="substituted known crystals per target (K)")
    p.add_argument("--space-group", action="store_true",
                   help="also give each target's space group (mp20 spacegroup.number), as a solver that indexed the "
                        "pattern would: a condition of the model's candidates, and the templates of that group first")
    args = p.parse_args(argv)
    if args.k < 0 or args.prototypes < 0 or args.k + args.prototypes < 1:
        p.error("--k and --prototypes must be >= 0 and not both 0")
    if args.k == 0 and args.pattern_guidance > 0:
        p.error("--pattern-guidance needs model candidates (--k > 0)")
    print(f"NOTE: {TEST_CSV} is a partial MP-20 test split (shared/data/SOURCES.md).")
    targets, df = read_structures(TEST_CSV, limit=args.limit, workers=args.workers)
    tids = [str(m) for m in df["material_id"]]
    gen = load_generator(args)
    use_benchmark_library(gen)
    steps = {} if args.steps is None else {"steps": args.steps}
    refiner = PatternRefiner()
    patterns = [simulate_measurement(t, "CuKa", seed=i)[0] for i, t in enumerate(targets)]
    comps = [t.composition.formula.replace(" ", "") for t in targets]
    groups = [int(g) for g in df["spacegroup.number"]] if args.space_group else [None] * len(comps)
    t0 = time.perf_counter()
    base = (gen.run([{"composition": c, "n": args.k, "space_group": g, **steps} for c, g in zip(comps, groups)],
                    seed=args.seed, checks="none", progress=True) if args.k else [None] * len(comps))
    t_sample = time.perf_counter() - t0
    protos, refused = [], []
    if args.prototypes:
        from gpsk_materials.pipelines.requests import GenerationRequest, resolve_request

        from gpsk_materials.errors import ConditioningError

        for c, g in tqdm(list(zip(comps, groups)), desc="prototypes", unit="target"):
            try:
                r = resolve_request(GenerationRequest(c, 1, prototypes=args.prototypes, space_group=g), 0, 0,
                                    gen.max_sites, gen.model.config.mmdit.max_elements)
            except ConditioningError as exc:  # counted: a space group the generator refuses for this cell
                refused.append(f"{c}: {exc}")
                r = resolve_request(GenerationRequest(c, 1, prototypes=args.prototypes), 0, 0, gen.max_sites,
                                    gen.model.config.mmdit.max_elements)
            protos.append(gen.prototype_candidates(r, args.prototypes))
    ranked, ranked_p, rwp_best, rwp_best_p, rwp_true, refine_s = [], [], [], [], [], 0.0
    for i, (t, res, pat) in enumerate(tqdm(list(zip(targets, base, patterns)), desc="solving", unit="target")):
        t1 = time.perf_counter()
        if res is None:
            fits, structures = [], []
        elif args.pattern_guidance > 0:
            sol = solve_pattern(gen, comps[i], pat, args.k, seed=args.seed + i, checks="none", space_group=groups[i],
                                pattern_guidance=args.pattern_guidance, refiner=refiner, **steps)
            fits = sol.refinements
            structures = sol.structures
        else:
            fits_all = refiner.rank(res.structures, pat)
            order = sorted([j for j, f in enumerate(fits_all) if f is not None], key=lambda j: fits_all[j].rwp)
            fits = [fits_all[j] for j in order]
            structures = [f.structure for f in fits]
        if args.prototypes:  # the model's refined candidates and the prototypes, one ranking by Rwp
            pf = [f for f in refiner.rank(protos[i], pat) if f is not None]
            both = sorted(list(fits) + pf, key=lambda f: f.rwp)
            ranked_p.append([f.structure for f in both])
            rwp_best_p.append(both[0].rwp if both else None)
        refine_s += time.perf_counter() - t1
        ranked.append(structures)
        rwp_best.append(fits[0].rwp if fits else None)
        rwp_true.append(refiner.refine(t, pat).rwp)  # the target itself: the floor set by the noise model
    seconds = time.perf_counter() - t0
    target_valid = [all(is_valid(t)) for t in targets]
    summary = {"split": f"{TEST_CSV} (partial)", "targets": len(targets), "k": args.k, "prototypes": args.prototypes,
               "space_group_given": args.space_group, "space_group_refused": refused,
               "pattern_guidance": args.pattern_guidance, "seconds": seconds, "seconds_sampling": t_sample,
               "seconds_refinement": refine_s, "device": str(gen.device), "steps": args.steps,
               "decoded": int(sum(r.decoded for r in base if r)), "generated": int(sum(r.candidates for r in base if r)),
               "targets_with_a_refined_candidate": int(sum(v is not None for v in rwp_best)),
               "targets_with_a_prototype": int(sum(bool(p) for p in protos))}
    arms = (["no_pattern", "pattern"] if args.k else []) + (["prototype_order", "pattern_prototypes"] if args.prototypes
                                                             else [])
    for arm in arms:
        preds, pids, pvalid = [], [], []
        width = args.prototypes if arm == "prototype_order" else args.k + (args.prototypes if arm == "pattern_prototypes" else 0)
        for i, (tid, t, res, rk) in enumerate(zip(tids, targets, base, ranked)):
            if arm == "no_pattern":
                slots = _slots(res.structures, args.k, lambda s, j: sample_index(s, j))
            else:
                got = {"pattern": rk, "prototype_order": protos[i] if protos else [],
                       "pattern_prototypes": ranked_p[i] if ranked_p else []}[arm]
                slots = (list(got) + [None] * width)[:width]
            for j, s in enumerate(slots):
                preds.append(s if s is not None else t)  # placeholder, never matched (invalid)
                pids.append(f"{tid}__{j}")
                pvalid.append(s is not None and all(is_valid(s)))
        r = csp_metrics(preds, pids, pvalid, targets, tids, target_valid, progress=False).summary()
        summary[arm] = {"match_rate_1": r["match_rate_1"], "match_rate_k": r["match_rate_k"], "rmse_1": r["rmse_1"],
                        "rmse_k": r["rmse_k"], "candidates": width}
        print(f"{arm:>18}: match rate at 1 {r['match_rate_1']:.4f}, at {width} {r['match_rate_k']:.4f}")
    if args.prototypes:
        okp = [v for v in rwp_best_p if v is not None]
        summary["rwp_best_median_with_prototypes"] = float(sorted(okp)[len(okp) // 2]) if okp else None
    ok = [v for v in rwp_best if v is not None]
    summary["rwp_best_median"] = float(sorted(ok)[len(ok) // 2]) if ok else None
    summary["rwp_target_median"] = float(sorted(rwp_true)[len(rwp_true) // 2])
    summary["per_target"] = [{"id": tid, "rwp_best": rb, "rwp_target": rt,
                              "rwp_best_with_prototypes": rwp_best_p[i] if rwp_best_p else None}
                             for i, (tid, rb, rt) in enumerate(zip(tids, rwp_best, rwp_true))]
    print(f"median Rwp: best candidate {summary['rwp_best_median']}, true structure {summary['rwp_target_median']:.4f}"
          f"; {seconds:.0f} s")
    write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
