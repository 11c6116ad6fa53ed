"""Closed-form decoding speed, batched implementation against the reference one, on the same grids in one run.

Grids: the first ``--n`` structures of mp20/test.csv featurized by the torch featurizer (canonical cells), in four
sets: ``clean`` (composition given), ``noisy`` (Gaussian noise of ``--noise`` times each grid's standard deviation
added to the Re/Im channels, composition given), ``inferred`` (clean, no composition) and ``vae`` (the shipped VAE's
reconstructions, posterior mean, composition given). Each set is decoded by ``ReciprocalGridDecoder(implementation=
"reference")`` and ``(implementation="batched")`` in turns (``--repeats`` rounds, median time), with
``ignore_errors=True`` as the generator decodes. Reported per set and implementation: grids/s, grids decoded, and
the agreement of the two: the same grids decoded, the same species and lattice, the largest position difference
(Angstrom, sites matched by element and periodic distance) and the same acceptance reasons.

    python benchmarks/decode_speed.py --device cpu --n 64 --out docs/results/decode_speed_cpu.json
    python benchmarks/decode_speed.py --device cuda --n 1024 --batch-size 256 --out docs/results/decode_speed_cuda.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_model, mp20_test_grids, write_summary  # noqa: E402

SETS = ("clean", "noisy", "inferred", "vae")


def compare(a: list, b: list, why_a: list, why_b: list) -> dict:
    """Agreement of two decodes of the same grids (structures or None, and the reasons)."""
    from scipy.optimize import linear_sum_assignment

    same_ok = [(x is None) == (y is None) for x, y in zip(a, b)]
    worst, species, lattice, reasons = 0.0, 0, 0, 0
    for x, y, wx, wy in zip(a, b, why_a, why_b):
        if x is None or y is None:
            reasons += int((x is None and y is None) and wx != wy)
            continue
        if sorted(x.atomic_numbers) != sorted(y.atomic_numbers):
            species += 1
            continue
        if not np.allclose(x.lattice.parameters, y.lattice.parameters, rtol=1e-9, atol=1e-9):
            lattice += 1
        d = y.lattice.get_all_distances(x.frac_coords, y.frac_coords)
        d = np.where(np.array(x.atomic_numbers)[:, None] == np.array(y.atomic_numbers)[None], d, 1e6)
        r, c = linear_sum_assignment(d)
        worst = max(worst, float(d[r, c].max()))
        px, py = x.properties["gpsk"]["decode"], y.properties["gpsk"]["decode"]
        reasons += int(px["low_confidence_reasons"] != py["low_confidence_reasons"])
    return {"same_grids_decoded": all(same_ok), "grids_decoded_differently": int(len(same_ok) - sum(same_ok)),
            "species_differ": species, "lattice_differs": lattice, "max_position_difference_A": worst,
            "reasons_differ": reasons}


def main(argv=None) -> int:
    import torch

    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=64, help="MP-20 test structures")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--noise", type=float, default=0.02, help="noise of the noisy set, times each grid's std")
    p.add_argument("--batch-size", type=int, default=16, help="grids per decoder chunk")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the two implementations in turns")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--model", default=default_model(), help="model folder of the VAE of the 'vae' set")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    structures, _, cells, grids = mp20_test_grids(args.n, dev, args.workers)
    comps = [c.composition for c in cells]
    sets = {}
    if "clean" in args.sets:
        sets["clean"] = (grids, comps)
    if "inferred" in args.sets:
        sets["inferred"] = (grids, [None] * len(grids))
    if "noisy" in args.sets:
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(grids[:, :2].shape, generator=g).to(dev)
        noisy = grids.clone()
        noisy[:, :2] += args.noise * grids[:, :2].flatten(1).std(1)[:, None, None, None, None] * noise
        sets["noisy"] = (noisy, comps)
    if "vae" in args.sets:
        from gpsk_materials.models.io import load_model_folder

        model = load_model_folder(args.model, dev)
        with torch.no_grad():
            recon = torch.cat([model.vae.decode(model.vae.encode(grids[i : i + 16]).mean)
                               for i in range(0, len(grids), 16)]).float()
        sets["vae"] = (recon, comps)

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    decoders = {impl: ReciprocalGridDecoder(device=dev, batch_size=args.batch_size, implementation=impl)
                for impl in ("reference", "batched")}
    for dec in decoders.values():  # warm-up: engines, caches, kernels
        dec.decode_many(grids[:2], comps[:2], ignore_errors=True, pbar=False)
    rows = []
    for name, (g, c) in sets.items():
        times = {impl: [] for impl in decoders}
        out = {}
        for _ in range(args.repeats):
            for impl, dec in decoders.items():
                sync()
                t = time.perf_counter()
                out[impl] = dec.decode_many(g, c, return_errors=True, pbar=False)
                sync()
                times[impl].append(time.perf_counter() - t)
        row = {"set": name, "grids": len(g)}
        for impl in decoders:
            t = float(np.median(times[impl]))
            row[impl] = {"seconds": t, "seconds_all": times[impl], "grids_per_s": len(g) / t,
                         "decoded": sum(s is not None for s in out[impl][0])}
        row["speedup"] = row["batched"]["grids_per_s"] / row["reference"]["grids_per_s"]
        row["agreement"] = compare(out["batched"][0], out["reference"][0], out["batched"][1], out["reference"][1])
        rows.append(row)
        a = row["agreement"]
        print(f"{name:9s} reference {row['reference']['grids_per_s']:7.2f} grids/s ({row['reference']['decoded']}"
              f"/{len(g)} decoded)  batched {row['batched']['grids_per_s']:7.2f} grids/s ({row['batched']['decoded']}"
              f"/{len(g)})  x{row['speedup']:.2f}  same decodes {a['same_grids_decoded']}, max position difference "
              f"{a['max_position_difference_A']:.1e} A", flush=True)
    device = torch.cuda.get_device_name() if dev.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    write_summary(args.out, {"device": device, "n": len(grids), "noise": args.noise, "batch_size": args.batch_size,
                             "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
