"""Speed of the evaluation itself: structures/s for novelty (and uniqueness) and for relaxation.

Novelty: ``--n-novelty`` queries against the pool's structures with at most 20 sites (40,183 references). Queries are
pool structures with every site moved by ``--perturb`` A (so each shares a formula bucket with, and matches, a
reference: the expensive case) mixed half and half with the same structures with two species swapped (mostly novel).
Relaxation: ``--n-relax`` pool structures relaxed with the default potential (or ``--potential``) on ``--device``,
batched (``--relax-batch`` per FIRE run), against the baseline of ASE's FIRE one structure at a time on the first
``--n-baseline`` of them, measured in the same run.

    python benchmarks/evaluation_speed.py --n-novelty 2000 --n-relax 20 --device cpu --workers 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from gpsk_materials.defaults import EVALUATION_RELAX_STEPS, FMAX, RELAX_BATCH
from gpsk_materials.evaluation.io import ReferenceSet
from gpsk_materials.evaluation.matching import novelty, uniqueness
from gpsk_materials.paths import shared_data


def _queries(ref: ReferenceSet, n: int, perturb: float, seed: int) -> list:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ref), size=n, replace=False)
    out = []
    for j, r in enumerate(rows):
        s = ref.structure(int(r)).copy()
        if j % 2 and len(s.composition.elements) > 1:
            a, b = [el.symbol for el in s.composition.elements[:2]]
            s.replace_species({a: b, b: a})
        s.perturb(perturb)
        out.append(s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-novelty", type=int, default=2000)
    parser.add_argument("--n-relax", type=int, default=20)
    parser.add_argument("--relax-batch", type=int, default=RELAX_BATCH, help="structures per batched relaxation")
    parser.add_argument("--n-baseline", type=int, default=8, help="structures relaxed one by one with ASE (baseline)")
    parser.add_argument("--perturb", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--potential", default=None, help="default: shared TensorNet-MatPES; or 'chgnet'")
    parser.add_argument("--fmax", type=float, default=FMAX)
    parser.add_argument("--steps", type=int, default=EVALUATION_RELAX_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    results: dict[str, object] = {"host": platform.node(), "torch_threads": torch.get_num_threads(),
                                  "workers": args.workers, "device": args.device}
    t = time.perf_counter()
    ref = ReferenceSet.from_csv(shared_data("pool.csv.gz"), max_sites=20)
    results["reference_load_s"] = time.perf_counter() - t
    results["n_reference"] = len(ref)

    if args.n_novelty:
        queries = _queries(ref, args.n_novelty, args.perturb, args.seed)
        # a fresh ReferenceSet: parsing of the matched references is part of the measured cost
        fresh = ReferenceSet.from_csv(shared_data("pool.csv.gz"), max_sites=20)
        t = time.perf_counter()
        matched = novelty(queries, fresh, workers=args.workers, progress=False)
        dt = time.perf_counter() - t
        results.update(novelty_s=dt, novelty_structures_per_s=args.n_novelty / dt,
                       novelty_rate=float(np.mean([m < 0 for m in matched])),
                       references_parsed=len(fresh._cache))
        t = time.perf_counter()
        uniqueness(queries, workers=args.workers, progress=False)
        dt = time.perf_counter() - t
        results.update(uniqueness_s=dt, uniqueness_structures_per_s=args.n_novelty / dt)

    if args.n_relax:
        from gpsk_materials.checks.potentials import load_potential, resolve_potential
        from gpsk_materials.evaluation.stability import relax_structures

        pot = resolve_potential(args.potential) if args.potential else load_potential()
        pot.to(args.device)
        rng = np.random.default_rng(args.seed + 1)
        structs = [ref.structure(int(r)) for r in rng.choice(len(ref), size=args.n_relax, replace=False)]
        relax_structures(structs[:1], pot, fmax=args.fmax, steps=5, progress=False)  # warm-up (compilation, caches)
        t = time.perf_counter()
        rel = relax_structures(structs, pot, fmax=args.fmax, steps=args.steps, batch_size=args.relax_batch, progress=False)
        dt = time.perf_counter() - t
        results.update(
            potential=pot.name, relax_batch=args.relax_batch, relax_s=dt, relax_structures_per_s=args.n_relax / dt,
            relax_mean_sites=float(np.mean([len(s) for s in structs])),
            relax_mean_steps=float(np.mean([r.steps for r in rel])),
            relax_converged=float(np.mean([r.converged for r in rel])),
        )
        # baseline in the same run: ASE's FIRE (FrechetCellFilter), one structure at a time, on the first structures
        base = structs[: args.n_baseline]
        t = time.perf_counter()
        ase = pot.relax(base, fmax=args.fmax, steps=args.steps, batched=False)
        dt = time.perf_counter() - t
        same = rel[: len(base)]
        results.update(
            ase_relax_s=dt, ase_relax_structures_per_s=len(base) / dt, n_baseline=len(base),
            batched_speedup=results["relax_structures_per_s"] / (len(base) / dt),
            ase_vs_batched_max_energy_diff=float(np.nanmax([abs(a.energy_per_atom - b.energy_per_atom)
                                                            for a, b in zip(ase, same) if a.converged and b.converged]
                                                           or [np.nan])),
        )
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
