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
``--compile MODE`` adds each batched configuration with the sampler's Euler step compiled (``CrystalGenerator(
compile_mode=MODE)``; ``reduce-overhead`` = CUDA graphs on CUDA), ``--pipeline`` each batched configuration with
sampling and decoding overlapped (``CrystalGenerator(pipeline=True)``), which needs ``--batches`` >= 2 sampler
batches per run. Every ratio is against the first configuration (``reference`` when run) measured in the same run.

    python benchmarks/generation_speed.py --device cuda --batch-sizes 1 64 1024 --out results/generation_speed.json
    python benchmarks/generation_speed.py --device cpu --batch-sizes 64 --out docs/results/generation_speed_cpu.json
    python benchmarks/generation_speed.py --device cuda --batch-sizes 1024 --batches 4 --bf16 \
        --compile reduce-overhead --pipeline --decode-batch-size 256 --out results/generation_speed_h200.json
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


def configurations(args) -> dict:
    """name -> (decoder implementation, sampling precision, compile mode, pipeline) of every configuration run; the
    first is the baseline of the ratios (``reference``, the pipeline before issue 15, when it is run)."""
    configs = {impl: (impl, "fp32", "none", False) for impl in args.implementations}
    precisions = ["fp32"] + (["bf16"] if args.bf16 else [])
    for precision in precisions:
        suffix = "" if precision == "fp32" else "_bf16"
        if suffix:
            configs["batched" + suffix] = ("batched", precision, "none", False)
        if args.compile != "none":
            configs[f"batched{suffix}_compiled"] = ("batched", precision, args.compile, False)
    if args.pipeline:
        for name, (impl, precision, mode, _) in list(configs.items()):
            if impl == "batched":
                configs[name + "_pipeline"] = (impl, precision, mode, True)
    return configs


def main(argv=None) -> int:
    import torch

    from gpsk_materials.models.rectified_flow import COMPILE_MODES

    p = generation_parser(__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--batches", type=int, default=1,
                   help="sampler batches per run: each run generates batches x batch size structures (the pipeline "
                        "overlaps the decoding of one batch with the sampling of the next, so it needs >= 2)")
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS, help="Euler steps of the sampler")
    p.add_argument("--implementations", nargs="+", default=["reference", "batched"], choices=IMPLEMENTATIONS,
                   help="decoder implementations, run in turns")
    p.add_argument("--repeats", type=int, default=1, help="end-to-end rounds of the implementations in turns")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--bf16", action="store_true", help="also run the batched decoder after a bf16 sampler")
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="also run every batched configuration with the sampler step compiled in this torch.compile "
                        "mode ('reduce-overhead': CUDA graphs on CUDA); the warm-up run compiles")
    p.add_argument("--pipeline", action="store_true",
                   help="also run every batched configuration pipelined (CrystalGenerator(pipeline=True): decoding "
                        "of sampler batch i on a worker thread / CUDA stream while batch i + 1 is sampled)")
    p.add_argument("--decode-batch-size", type=int, default=None,
                   help="grids per decoder chunk (default: the generator's, 16 on the CPU, 64 on a GPU)")
    args = p.parse_args(argv)
    configs = configurations(args)
    baseline = next(iter(configs))
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = load_generator(args)
    if args.decode_batch_size:
        gen.decoder.batch_size = args.decode_batch_size
    cuda = args.device.startswith("cuda")

    def configure(impl, precision, mode, pipeline):
        gen.decoder.implementation, gen.precision, gen.compile_mode, gen.pipeline = impl, precision, mode, pipeline

    rows = []
    for bs in args.batch_sizes:
        gen.batch_size = bs
        total = bs * args.batches
        requests = [{"composition": COMPOSITIONS[i % len(COMPOSITIONS)], "n": 1, "steps": args.steps}
                    for i in range(total)]
        row: dict = {"batch_size": bs, "batches": args.batches, "structures": total}
        times: dict = {name: [] for name in configs}
        results: dict = {}
        for config in configs.values():  # warm-up (one padded batch each; compiles the sampler step)
            configure(*config)
            gen.run(requests[: min(bs, 8)], seed=args.seed, checks="none", progress=False)
        for _ in range(args.repeats):
            for name, config in configs.items():
                configure(*config)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                _sync(args.device)
                t = time.perf_counter()
                results[name] = gen.run(requests, seed=args.seed, checks="none", progress=False)
                _sync(args.device)
                times[name].append(time.perf_counter() - t)
                row.setdefault(name, dict(zip(("implementation", "precision", "compile_mode", "pipeline"), config)))[
                    "peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        comps = [r.cell(0) for r in resolve(gen, requests, args.seed)]
        grids: dict = {}
        for precision, mode in sorted({(c[1], c[2]) for c in configs.values()}):
            configure("batched", precision, mode, False)
            _sync(args.device)
            t = time.perf_counter()
            grids[precision, mode] = torch.cat(gen.sample_grids(requests, seed=args.seed))
            _sync(args.device)
            t_sample = time.perf_counter() - t
            key = precision if mode == "none" else f"{precision}_{mode}"
            row[f"seconds_sampling_{key}"] = t_sample
            row[f"sampling_per_s_{key}"] = total / t_sample
        decoded = {}
        for name, (impl, precision, mode, pipeline) in configs.items():
            if pipeline:  # the stage alone is the same as without the pipeline
                decoded[name] = decoded[name[: -len("_pipeline")]]
                t_decode = row[name[: -len("_pipeline")]]["seconds_decoding"]
            else:
                gen.decoder.implementation = impl
                _sync(args.device)
                t = time.perf_counter()
                decoded[name] = gen.decoder.decode_many(grids[precision, mode], comps, ignore_errors=True, pbar=False,
                                                        exact_counts=True, warn_kept=False)
                _sync(args.device)
                t_decode = time.perf_counter() - t
            t_sample = row[f"seconds_sampling_{precision if mode == 'none' else f'{precision}_{mode}'}"]
            t_e2e = float(np.median(times[name]))
            n_ok = sum(r.decoded for r in results[name])
            row[name].update({
                "seconds_end_to_end": t_e2e,
                "seconds_end_to_end_all": times[name],
                "structures_per_s": total / t_e2e,
                "decoded": n_ok,
                "decode_rate": n_ok / total,
                "seconds_decoding": t_decode,
                "decoding_grids_per_s": total / t_decode,
                "decoded_stage_run": sum(s is not None for s in decoded[name]),
            })
            mem = row[name]["peak_gpu_memory_mib"]
            print(f"batch {bs:5d} x {args.batches} {name:24s}: {total / t_e2e:8.2f} structures/s end to end "
                  f"({t_e2e:.2f} s; sampling {t_sample:.2f} s, closed-form decoding {t_decode:.2f} s = "
                  f"{total / t_decode:.1f} grids/s; {n_ok}/{total} decoded)"
                  + (f", peak GPU memory {mem:.0f} MiB" if mem is not None else ""), flush=True)
        base = row[baseline]
        for name in configs:
            if name == baseline:
                continue
            cur = row[name]
            cur["speedup_end_to_end"] = cur["structures_per_s"] / base["structures_per_s"]
            cur["speedup_decoding"] = cur["decoding_grids_per_s"] / base["decoding_grids_per_s"]
            # the same sampled grids (same precision and compile mode) must decode to the same candidates
            same_grids = configs[name][1:3] == configs[baseline][1:3]
            cur["same_candidates_decoded"] = (
                [s is None for s in decoded[baseline]] == [s is None for s in decoded[name]]
                and [r.failures for r in results[baseline]] == [r.failures for r in results[name]]) if same_grids else None
            print(f"batch {bs:5d} x {args.batches}: {name} / {baseline} = {cur['speedup_end_to_end']:.2f}x end to end, "
                  f"{cur['speedup_decoding']:.2f}x decoding; decode rate {cur['decode_rate']:.3f} ({baseline} "
                  f"{base['decode_rate']:.3f})" + ("" if not same_grids else
                                                   f"; same candidates decoded: {cur['same_candidates_decoded']}"),
                  flush=True)
        rows.append(row)
    device = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    write_summary(args.out, {"device": device, "gpu": torch.cuda.get_device_name() if cuda else None,
                             "steps": args.steps, "checks": "none", "repeats": args.repeats, "baseline": baseline,
                             "configurations": {k: list(v) for k, v in configs.items()},
                             "decode_batch_size": gen.decoder.batch_size, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
