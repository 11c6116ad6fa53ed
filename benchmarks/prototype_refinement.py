"""Does the flow improve a substituted prototype? Template alone against template refined by the flow (SDEdit).

For the first ``--limit`` rows of ``mp20/test.csv`` (a PARTIAL split): the best template of
:class:`gpsk_materials.prototypes.PrototypeSubstitutor` for the target's cell content (its own reduced formula left
out, as ``benchmarks/csp.py --method prototypes``) is matched against the target as it is, and after the model has
refined it: featurized, encoded (posterior mean), noised to flow time T (x_T = (1 - T) z + T eps, seeded), integrated
back to 0 in round(steps T) Euler steps conditioned on the target's cell content (guidance ``--guidance``), decoded
with that cell content by the generator's decoder. T = 0 is the VAE round trip alone (encode, decode), the ceiling
the refinement inherits. Scores: ``gpsk_materials.evaluation.csp_metrics`` (StructureMatcher stol 0.5, angle_tol 10,
ltol 0.3; only valid predictions of valid targets count), one prediction per target.

    python benchmarks/prototype_refinement.py --limit 100 --t 0 0.3 0.5 --out docs/results/prototype_refinement_n100.json
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
    write_summary,
)


def main(argv=None) -> int:
    import torch

    from gpsk_materials.evaluation import csp_metrics
    from gpsk_materials.models.conditioning import Conditions
    from gpsk_materials.prototypes import PrototypeSubstitutor
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer
    from gpsk_materials.vocabulary import integer_counts

    p = generation_parser(__doc__)
    p.add_argument("--limit", type=int, default=100, help="first N test targets")
    p.add_argument("--t", type=float, nargs="+", default=[0.0, 0.3, 0.5], help="flow times to refine from")
    p.add_argument("--steps", type=int, default=50, help="Euler steps of a full trajectory")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=1, help="processes parsing the CIFs")
    args = p.parse_args(argv)
    print("NOTE: mp20/test.csv is a partial MP-20 split (shared/data/SOURCES.md).")
    t0 = time.perf_counter()
    targets, df = read_structures("mp20/test.csv", limit=args.limit, workers=args.workers)
    ids = [str(m) for m in df["material_id"]]
    library = benchmark_library()
    templates = []
    for target in targets:
        sub = PrototypeSubstitutor(library, exclude_formulas=[target.composition.reduced_formula])
        z = integer_counts(target.composition.get_el_amt_dict())[1]
        got = sub.get_structures(target.composition.reduced_composition, n=1, formula_units=z)
        templates.append(got[0] if got else None)
    gen = load_generator(args)
    model = gen.model
    feat = ReciprocalGridFeaturizer(backend="torch", device=args.device)
    have = [i for i, s in enumerate(templates) if s is not None]
    grids, errors = feat.featurize_many([templates[i] for i in have], return_errors=True)
    have = [i for i, e in zip(have, errors) if e is None]
    grids = torch.as_tensor(grids)[[k for k, e in enumerate(errors) if e is None]].to(model.device)
    cells = [feat.canonical_structure(templates[i]) for i in have]
    comps = [{str(el): int(round(v)) for el, v in c.composition.items()} for c in cells]
    target_valid = [all(is_valid(t)) for t in targets]

    def score(preds: list) -> dict:
        valid = [s is not None and all(is_valid(s)) for s in preds]
        filled = [s if s is not None else t for s, t in zip(preds, targets)]  # placeholders never count
        return csp_metrics(filled, [f"{i}__0" for i in ids], valid, targets, ids, target_valid).summary()

    rows = {"template": {**score(templates), "decoded": len(have)}}
    print(f"template alone: match {rows['template']['match_rate_1']:.3f} ({len(have)} featurized)")
    with torch.no_grad():
        z = model.normalize_latents(torch.cat([model.vae.encode(grids[i:i + 32]).mean for i in range(0, len(grids), 32)]))
        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(args.seed)).to(z.device)
        conds = model.condition_batch([Conditions(composition=c.composition) for c in cells])
        for t in args.t:
            if t <= 0:
                out = torch.cat([model.vae.decode(model.denormalize_latents(z[i:i + 32])) for i in range(0, len(z), 32)])
            else:
                out = torch.cat([model.sample_grids(conds.index(torch.arange(i, min(i + 16, len(z)), device=conds.present.device)),
                                                    max(1, round(args.steps * t)), args.guidance,
                                                    noise=(1 - t) * z[i:i + 16] + t * eps[i:i + 16], t_start=t)
                                 for i in range(0, len(z), 16)])
            structs = gen.decoder.decode_many(out, comps, return_errors=True, exact_counts=True)[0]
            preds = [None] * len(targets)
            for i, s in zip(have, structs):
                preds[i] = s
            rows[f"t={t:g}"] = {**score(preds), "decoded": sum(s is not None for s in structs)}
            print(f"T = {t:g}: match {rows[f't={t:g}']['match_rate_1']:.3f}, decoded {rows[f't={t:g}']['decoded']}")
    write_summary(args.out, {"n_targets": len(targets), "split": "mp20/test.csv (partial)", "steps": args.steps,
                             "guidance": args.guidance, "seed": args.seed, "rows": rows,
                             "seconds": time.perf_counter() - t0, "device": args.device})
    return 0


if __name__ == "__main__":
    sys.exit(main())
