"""Share of generated samples that decode to valid structures, per composition, for the shipped model.

    python benchmarks/generation_decode_rate.py --n 8 --out docs/results/generation_decode_rate.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_summary  # noqa: E402

COMPOSITIONS = ["NaCl", "MgO", "CaO", "NiO", "MnO", "SrTiO3", "GaAs", "Fe2O3", "CaF2", "TiO2", "ZnS", "LiFePO4"]


def main(argv=None) -> int:
    from gpsk_materials import CrystalGenerator

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8, help="samples per composition")
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    gen = CrystalGenerator.from_pretrained(args.model, device=args.device)
    t = time.perf_counter()
    results = gen.run([{"composition": c, "n": args.n} for c in COMPOSITIONS], seed=args.seed, checks="basic")
    elapsed = time.perf_counter() - t
    rows = {}
    for comp, res in zip(COMPOSITIONS, results):
        rows[comp] = {"candidates": res.candidates, "decoded_valid": len(res.structures), "error": res.error and str(res.error)}
        print(f"{comp:10s} {len(res.structures)}/{res.candidates} decoded and returned")
    total = sum(r["candidates"] for r in rows.values())
    ok = sum(r["decoded_valid"] for r in rows.values())
    print(f"returned {ok}/{total} ({ok / max(total, 1):.1%}) in {elapsed:.1f} s")
    write_summary(args.out, {"samples": total, "returned": ok, "rate": ok / max(total, 1), "seconds": elapsed,
                             "per_composition": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
