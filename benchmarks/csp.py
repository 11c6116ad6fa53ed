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
    generation_parser,
    is_valid,
    load_generator,
    read_structures,
    sample_index,
    write_summary,
)

TEST_CSV = "mp20/test.csv"


def main(argv=None) -> int:
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
    args = p.parse_args(argv)
    print(f"NOTE: {args.targets} is a partial MP-20 split (shared/data/SOURCES.md); "
          "results are not comparable with published MP-20 numbers.")
    targets, df = read_structures(args.targets, limit=args.limit, workers=args.workers)
    target_ids = [str(m) for m in df["material_id"]]
    gen = load_generator(args)
    ranked = args.rank != "none"
    per_request = {"n": 1, "best_of": args.k} if ranked else {"n": args.k}
    per_request["projection"] = args.projection
    # the target's cell content, as given (formula_units set, so the generator does not choose Z)
    requests = [{"composition": t.composition.formula.replace(" ", ""), **per_request,
                 "formula_units": integer_counts(t.composition.get_el_amt_dict())[1]} for t in targets]
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
    extra = {"split": f"{args.targets} (partial)", "rank": args.rank, "candidates_per_target": args.k,
             "projection": args.projection, "projected": sum(len(r.projected) for r in results),
             "generated": len(targets) * args.k, "decoded": n_dec,
             "valid_predictions": int(sum(pred_valid)), "valid_targets": int(sum(target_valid)),
             "request_errors": errors, "seconds_generation": seconds, "device": str(gen.device)}
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


if __name__ == "__main__":
    sys.exit(main())
