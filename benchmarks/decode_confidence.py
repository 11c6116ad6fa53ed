"""False-accept and false-reject rates of the decoder's acceptance on MP-20 test grids, clean and noisy.

Issue 16, case 3. Each of the first ``--n`` MP-20 test structures is featurized; each grid is decoded clean and with
Gaussian noise of ``level`` times each channel's standard deviation added to every voxel (``--noise``, default
0.1 %, 0.3 % and 1 %):

* without a composition, with every acceptance switched off except ``max_residual`` and ``min_distance``
  (``min_confidence=0``, ``min_distance_ratio=0``), recording the decode confidence and whether the decoded
  structure is right (pymatgen ``StructureMatcher``, default tolerances, against the canonical cell: same
  formula and structure). For each threshold t of ``--thresholds``, a decode is accepted when its confidence is
  >= t; the **false-accept rate** is the share of wrong decodes that are accepted and the **false-reject rate**
  the share of right decodes that are rejected;
* with the composition (``--given``), with ``min_distance_ratio=0`` and with the default: the round-trip match rate
  before and after the physical-plausibility check, and how many right decodes the check rejects;
* with ``--disordered``, disordered crystals (a mixed site: Cu0.5Au0.5, (Na,K)Cl, (Sr,La)TiO3, (Pb,Mg)S,
  Fe0.7Ni0.3) decoded without a composition with the default acceptance: no ordered answer is right, so every
  accepted one is a false accept;
* with ``--radii-all``, the smallest distance / covalent-radii sum of every structure of mp20/test.csv: a structure
  below ``min_distance_ratio`` would be refused even when decoded exactly (the check's false rejects on the whole
  test set, without decoding it).

The JSON is written after each part, so that a run stopped early keeps what it measured.

    python benchmarks/decode_confidence.py --n 16 --noise 0 0.001 0.01 --given 0 --disordered \
        --out docs/results/decode_confidence.json
    python benchmarks/decode_confidence.py --rates-of docs/results/decode_confidence.json
    python benchmarks/decode_confidence.py --noise --given --radii-all --out docs/results/decode_confidence_radii.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, mp20_test_grids, write_summary  # noqa: E402

THRESHOLDS = (0.0, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 0.001, 0.01, 0.05, 0.1)


def noisy(grids: np.ndarray, level: float, seed: int) -> np.ndarray:
    """``grids`` (B, 3, n, n, n) plus N(0, (level * std of the channel)^2) noise on every voxel."""
    if level == 0:
        return grids
    rng = np.random.default_rng(seed)
    std = grids.std(axis=(2, 3, 4), keepdims=True)
    return (grids + level * std * rng.normal(size=grids.shape)).astype(grids.dtype)


def decode_records(decoder, grids, comps, cells) -> list[dict]:
    """Per grid: formula decoded, confidence, largest radial misfit of its sites, right (StructureMatcher against
    the canonical cell), reason of a failure."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    out, reasons = decoder.decode_many(grids, comps, return_errors=True, pbar=False)
    matcher = StructureMatcher()
    rows = []
    for cell, s, why in zip(cells, out, reasons):
        d = {} if s is None else s.properties["gpsk"]["decode"]
        rows.append({"formula": cell.composition.reduced_formula,
                     "decoded": None if s is None else s.composition.reduced_formula,
                     "confidence": d.get("confidence"), "low_confidence_reasons": d.get("low_confidence_reasons"),
                     "largest_misfit": None if s is None else max(s.site_properties["decode_radial_misfit"]),
                     "right": bool(s is not None and matcher.fit(cell, s)), "error": why})
    return rows


def rates(rows: list[dict], threshold: float) -> dict:
    """False-accept / false-reject counts and rates of accepting a decode with confidence >= ``threshold``."""
    done = [r for r in rows if r["decoded"] is not None]
    right = [r for r in done if r["right"]]
    wrong = [r for r in done if not r["right"]]
    fa = sum(r["confidence"] >= threshold for r in wrong)
    fr = sum(r["confidence"] < threshold for r in right)
    return {"threshold": threshold, "decoded": len(done), "right": len(right), "wrong": len(wrong),
            "false_accepts": fa, "false_rejects": fr,
            "false_accept_rate": fa / len(wrong) if wrong else None,
            "false_reject_rate": fr / len(right) if right else None}


def radii_all(threshold: float) -> dict:
    """Smallest distance / covalent-radii sum (:func:`gpsk_materials.checks.validity.distance_ratios`) of each
    mp20/test.csv structure: how many lie below ``threshold`` and the lowest ones."""
    from _common import read_structures

    from gpsk_materials.checks.validity import distance_ratios

    structures, _ = read_structures("mp20/test.csv")
    ratios = np.array([float(distance_ratios(s).min()) for s in structures])
    order = np.argsort(ratios)[:10]
    out = {"structures": len(ratios), "threshold": threshold, "below": int((ratios < threshold).sum()),
           "below_0.7": int((ratios < 0.7).sum()),
           "lowest": [(structures[i].composition.reduced_formula, round(float(ratios[i]), 3)) for i in order]}
    print(f"mp20/test.csv: {out['below']} of {out['structures']} structures below distance / radii {threshold}; "
          f"lowest {out['lowest'][:3]}", flush=True)
    return out


def disordered_crystals() -> list:
    """Disordered crystals with one mixed site each (issue 16, case 3 and its kind)."""
    from pymatgen.core import Lattice, Structure

    return [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.9), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]),
        Structure(Lattice.cubic(4.2), [{"Na": 0.5, "K": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(4.0), [{"Sr": 0.5, "La": 0.5}, "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        Structure(Lattice.cubic(4.1), [{"Pb": 0.3, "Mg": 0.7}, "S"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.cubic(2.9), [{"Fe": 0.7, "Ni": 0.3}] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]


def disordered(device: str) -> list[dict]:
    """Each disordered crystal decoded without a composition (default acceptance): formula, accepted or the
    reason, and the decode's confidence, least element margin and largest radial misfit (kept to read them)."""
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    structures = disordered_crystals()
    grids = np.stack([ReciprocalGridFeaturizer().featurize(s) for s in structures])
    out, reasons = ReciprocalGridDecoder(device=device).decode_many(grids, return_errors=True, pbar=False)
    kept = ReciprocalGridDecoder(device=device, keep_low_confidence=True).decode_many(grids, pbar=False,
                                                                                        warn_kept=False)
    rows = []
    for s, o, why, k in zip(structures, out, reasons, kept):
        rows.append({"formula": s.composition.formula, "decoded": None if k is None else k.composition.reduced_formula,
                     "accepted": o is not None, "error": why,
                     "confidence": None if k is None else k.properties["gpsk"]["decode"]["confidence"],
                     "least_margin": None if k is None else min(k.site_properties["decode_element_margin"]),
                     "largest_misfit": None if k is None else max(k.site_properties["decode_radial_misfit"])})
        print(f"{rows[-1]['formula']:>16} -> {rows[-1]['decoded']}: {'ACCEPTED' if o is not None else 'refused'} "
              f"(confidence {rows[-1]['confidence']}, margin {rows[-1]['least_margin']}, "
              f"misfit {rows[-1]['largest_misfit']})", flush=True)
    return rows


def main(argv=None) -> int:
    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=24, help="first N structures of mp20/test.csv")
    p.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.001, 0.003, 0.01],
                   help="noise levels (fraction of each channel's standard deviation)")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    p.add_argument("--given", type=float, nargs="*", default=[0.0, 0.01],
                   help="noise levels decoded with the composition (plausibility check before / after)")
    p.add_argument("--radii-all", action="store_true", help="distance / radii of every mp20/test.csv structure")
    p.add_argument("--disordered", action="store_true", help="disordered crystals decoded without a composition")
    p.add_argument("--rates-of", type=Path, default=None,
                   help="recompute the rate tables of this result file for --thresholds (no decoding)")
    args = p.parse_args(argv)
    if args.rates_of:
        import json

        result = json.loads(args.rates_of.read_text())
        for part in result["inferred"]:
            part["rates"] = [rates(part["grids"], t) for t in args.thresholds]
        args.rates_of.write_text(json.dumps(result, indent=1))
        for part in result["inferred"]:
            print(f"noise {part['noise']:.3%}: " + ", ".join(
                f"t={r['threshold']:g} FA {r['false_accepts']}/{r['wrong']} FR {r['false_rejects']}/{r['right']}"
                for r in part["rates"]))
        return 0
    from gpsk_materials.representations.decoding import MIN_CONFIDENCE, MIN_DISTANCE_RATIO, ReciprocalGridDecoder

    summary = {"n": args.n, "seed": args.seed, "default_min_confidence": MIN_CONFIDENCE,
               "default_min_distance_ratio": MIN_DISTANCE_RATIO}
    if args.radii_all:
        summary["radii_all"] = radii_all(MIN_DISTANCE_RATIO)
        write_summary(args.out, summary)
    if args.disordered:
        summary["disordered"] = disordered(args.device)
        write_summary(args.out, summary)
    if not args.noise and not args.given:
        return 0
    _, _, cells, grids = mp20_test_grids(args.n, "cpu")
    grids = grids.numpy()
    permissive = ReciprocalGridDecoder(min_confidence=0.0, min_distance_ratio=0.0, device=args.device)
    default = ReciprocalGridDecoder(device=args.device)
    inferred, given = summary.setdefault("inferred", []), summary.setdefault("given", [])
    for k, level in enumerate(args.noise):
        t0 = time.perf_counter()
        rows = decode_records(permissive, noisy(grids, level, args.seed + k), [None] * len(cells), cells)
        table = [rates(rows, t) for t in args.thresholds]
        inferred.append({"noise": level, "seconds": time.perf_counter() - t0, "rates": table, "grids": rows})
        print(f"noise {level:.3%} inferred: {sum(r['right'] for r in rows)}/{len(rows)} right "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for r in table:
            print(f"  t={r['threshold']:<6} false accepts {r['false_accepts']}/{r['wrong']}  "
                  f"false rejects {r['false_rejects']}/{r['right']}", flush=True)
        write_summary(args.out, summary)
    comps = [c.composition for c in cells]
    for k, level in enumerate(args.given):
        g = noisy(grids, level, args.seed + 100 + k)
        before = decode_records(ReciprocalGridDecoder(min_distance_ratio=0.0, device=args.device), g, comps, cells)
        after = decode_records(default, g, comps, cells)
        row = {"noise": level, "matched_before": sum(r["right"] for r in before),
               "matched_after": sum(r["right"] for r in after), "n": len(cells),
               "rejected_by_plausibility": [r["error"] for r in after if r["error"] and "plausible" in r["error"]]}
        given.append(row)
        print(f"noise {level:.3%} given: matched {row['matched_before']} -> {row['matched_after']} of {len(cells)}; "
              f"plausibility rejects {len(row['rejected_by_plausibility'])}", flush=True)
        write_summary(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
