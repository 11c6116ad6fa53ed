"""End-to-end generation speed: structures/s of the sampler (50 Euler steps + VAE decode) and the closed-form
decoder, per sampler batch size, with peak GPU memory on CUDA. No post-checks (``checks="none"``).

Each batch size B generates B structures (mixed compositions) with ``CrystalGenerator(batch_size=B)``, once end to
end per decoder implementation (``run``, after one warm-up run each): ``ReciprocalGridDecoder(implementation=
"reference")``, the decoder before issue 15, and ``"batched"``, its batched tensor twin, in turns (``--repeats``
rounds, median times), on the same requests and seed, so both decode the same sampled grids. Then the stages alone:
``sample_grids`` once, and ``decoder.decode_many`` of those grids by each implementation. Reported: structures/s end
to end, grids/s decoded, the grids each implementation decoded (the decode rate, which must not change) and whether
the two decoded the same candidates. ``--bf16`` adds a third configuration, the batched decoder after sampling under
bfloat16 autocast (``CrystalGenerator(precision="bf16")``): other samples, so its decode rate is reported beside.

    python benchmarks/generation_speed.py --device cuda --batch-sizes 1 64 1024 --out results/generation_speed.json
    python benchmarks/generation_speed.py --device cpu --batch-sizes 64 --out docs/results/generation_speed_cpu.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, load_generator, write_summary  # noqa: E402

from gpsk_materials.defaults import SAMPLER_STEPS  # noqa: E402
from gpsk_materials.representations.decoding import IMPLEMENTATIONS  # noqa: E402

COMPOSITIONS = ["NaCl", "MgO", "SrTiO3", "GaAs", "Fe2O3", "TiO2", "ZnO", "LiFePO4"]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resolve(gen, requests, seed: int):
    """The resolved requests (integer cell content) the generator decodes with."""
    from gpsk_materials.pipelines.requests import GenerationRequest, resolve_request

    return [resolve_request(GenerationRequest.coerce(r), i, seed, gen.max_sites, gen.model.config.mmdit.max_elements,
                            gen.formula_unit_prior)
            for i, r in enumerate(requests)]


def main(argv=None) -> int:
    import torch

    p = generation_parser(__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS, help="Euler steps of the sampler")
    p.add_argument("--implementations", nargs="+", default=["reference", "batched"], choices=IMPLEMENTATIONS,
                   help="decoder implementations, run in turns")
    p.add_argument("--repeats", type=int, default=1, help="end-to-end rounds of the implementations in turns")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="also run the batched decoder after a bf16 sampler")
    p.add_argument("--decode-batch-size", type=int, default=None,
                   help="grids per decoder chunk (default: the generator's, 16 on the CPU, 64 on a GPU)")
    args = p.parse_args(argv)
    configs = {impl: (impl, "fp32") for impl in args.implementations}
    if args.bf16:
        configs["batched_bf16"] = ("batched", "bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = load_generator(args)
    if args.decode_batch_size:
        gen.decoder.batch_size = args.decode_batch_size
    cuda = args.device.startswith("cuda")
    rows = []
    for bs in args.batch_sizes:
        gen.batch_size = bs
        requests = [{"composition": COMPOSITIONS[i % len(COMPOSITIONS)], "n": 1, "steps": args.steps}
                    for i in range(bs)]
        row: dict = {"batch_size": bs, "structures": bs}
        times: dict = {name: [] for name in configs}
        results: dict = {}
        for impl, precision in configs.values():  # warm-up (one batch each)
            gen.decoder.implementation, gen.precision = impl, precision
            gen.run(requests[: min(bs, 8)], seed=args.seed, checks="none", progress=False)
        for _ in range(args.repeats):
            for name, (impl, precision) in configs.items():
                gen.decoder.implementation, gen.precision = impl, precision
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                _sync(args.device)
                t = time.perf_counter()
                results[name] = gen.run(requests, seed=args.seed, checks="none", progress=False)
                _sync(args.device)
                times[name].append(time.perf_counter() - t)
                row.setdefault(name, {"implementation": impl, "precision": precision})["peak_gpu_memory_mib"] = (
                    torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
        comps = [r.cell(0) for r in resolve(gen, requests, args.seed)]
        grids: dict = {}
        for precision in sorted({precision for _, precision in configs.values()}):
            gen.precision = precision
            _sync(args.device)
            t = time.perf_counter()
            grids[precision] = torch.cat(gen.sample_grids(requests, seed=args.seed))
            _sync(args.device)
            t_sample = time.perf_counter() - t
            row[f"seconds_sampling_{precision}"] = t_sample
            row[f"sampling_per_s_{precision}"] = bs / t_sample
        decoded = {}
        for name, (impl, precision) in configs.items():
            gen.decoder.implementation = impl
            _sync(args.device)
            t = time.perf_counter()
            decoded[name] = gen.decoder.decode_many(grids[precision], comps, ignore_errors=True, pbar=False,
                                                    exact_counts=True, warn_kept=False)
            _sync(args.device)
            t_decode = time.perf_counter() - t
            t_sample = row[f"seconds_sampling_{precision}"]
            t_e2e = float(np.median(times[name]))
            n_ok = sum(r.decoded for r in results[name])
            row[name].update({
                "seconds_end_to_end": t_e2e,
                "seconds_end_to_end_all": times[name],
                "structures_per_s": bs / t_e2e,
                "decoded": n_ok,
                "decode_rate": n_ok / bs,
                "seconds_decoding": t_decode,
                "decoding_grids_per_s": bs / t_decode,
                "decoded_stage_run": sum(s is not None for s in decoded[name]),
            })
            mem = row[name]["peak_gpu_memory_mib"]
            print(f"batch {bs:5d} {name:12s}: {bs / t_e2e:8.2f} structures/s end to end ({t_e2e:.2f} s; sampling "
                  f"{t_sample:.2f} s, closed-form decoding {t_decode:.2f} s = {bs / t_decode:.1f} grids/s; {n_ok}/{bs} "
                  f"decoded)" + (f", peak GPU memory {mem:.0f} MiB" if mem is not None else ""), flush=True)
        if {"reference", "batched"} <= set(args.implementations):
            ref, new = row["reference"], row["batched"]
            row["speedup_end_to_end"] = new["structures_per_s"] / ref["structures_per_s"]
            row["speedup_decoding"] = new["decoding_grids_per_s"] / ref["decoding_grids_per_s"]
            row["same_candidates_decoded"] = (
                [s is None for s in decoded["reference"]] == [s is None for s in decoded["batched"]]
                and [r.failures for r in results["reference"]] == [r.failures for r in results["batched"]])
            print(f"batch {bs:5d}: batched / reference = {row['speedup_end_to_end']:.2f}x end to end, "
                  f"{row['speedup_decoding']:.2f}x decoding; same candidates decoded: "
                  f"{row['same_candidates_decoded']}", flush=True)
        if "batched_bf16" in configs and "reference" in configs:
            row["speedup_end_to_end_bf16"] = row["batched_bf16"]["structures_per_s"] / row["reference"]["structures_per_s"]
            print(f"batch {bs:5d}: batched + bf16 sampler / reference = {row['speedup_end_to_end_bf16']:.2f}x end to "
                  f"end; decode rate {row['batched_bf16']['decode_rate']:.3f} (fp32 sampler "
                  f"{row['reference']['decode_rate']:.3f})", flush=True)
        rows.append(row)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    write_summary(args.out, {"device": device, "gpu": torch.cuda.get_device_name() if cuda else None,
                             "steps": args.steps, "checks": "none", "repeats": args.repeats,
                             "decode_batch_size": gen.decoder.batch_size, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
