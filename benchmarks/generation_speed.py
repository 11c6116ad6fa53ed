"""End-to-end generation speed: structures/s of the sampler (50 Euler steps + VAE decode) and the closed-form
decoder, per sampler batch size, with peak GPU memory on CUDA. No post-checks (``checks="none"``).

Each batch size B generates B structures (mixed compositions) with ``CrystalGenerator(batch_size=B)``: once end to end
(``run``, after one warm-up run), then the two stages alone (``sample_grids``; ``decoder.decode_many``).

    python benchmarks/generation_speed.py --device cuda --batch-sizes 1 64 1024 --out results/generation_speed.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, load_generator, write_summary  # noqa: E402

from gpsk_materials.defaults import SAMPLER_STEPS  # noqa: E402

COMPOSITIONS = ["NaCl", "MgO", "SrTiO3", "GaAs", "Fe2O3", "TiO2", "ZnO", "LiFePO4"]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def resolve(gen, requests, seed: int):
    """The resolved requests (integer cell content) the generator decodes with."""
    from gpsk_materials.pipelines.requests import GenerationRequest, resolve_request

    return [resolve_request(GenerationRequest.coerce(r), i, seed, gen.max_sites, gen.model.config.mmdit.max_elements)
            for i, r in enumerate(requests)]


def main(argv=None) -> int:
    import torch

    p = generation_parser(__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024])
    p.add_argument("--steps", type=int, default=SAMPLER_STEPS, help="Euler steps of the sampler")
    args = p.parse_args(argv)
    gen = load_generator(args)
    cuda = args.device.startswith("cuda")
    rows = []
    for bs in args.batch_sizes:
        gen.batch_size = bs
        requests = [{"composition": COMPOSITIONS[i % len(COMPOSITIONS)], "n": 1, "steps": args.steps}
                    for i in range(bs)]
        gen.run(requests[: min(bs, 8)], seed=args.seed, checks="none", progress=False)  # warm-up (one batch)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _sync(args.device)
        t = time.perf_counter()
        results = gen.run(requests, seed=args.seed, checks="none", progress=False)
        _sync(args.device)
        t_e2e = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        t = time.perf_counter()
        grids = gen.sample_grids(requests, seed=args.seed)
        _sync(args.device)
        t_sample = time.perf_counter() - t
        flat = torch.cat(grids)
        comps = [None if r.cell is None else dict(r.cell) for r in resolve(gen, requests, args.seed)]
        t = time.perf_counter()
        decoded = gen.decoder.decode_many(flat, comps, ignore_errors=True)
        _sync(args.device)
        t_decode = time.perf_counter() - t
        n_ok = sum(r.decoded for r in results)
        row = {
            "batch_size": bs,
            "structures": bs,
            "decoded": n_ok,
            "decoded_stage_run": sum(s is not None for s in decoded),
            "seconds_end_to_end": t_e2e,
            "structures_per_s": bs / t_e2e,
            "seconds_sampling": t_sample,
            "sampling_per_s": bs / t_sample,
            "seconds_decoding": t_decode,
            "decoding_per_s": bs / t_decode,
            "peak_gpu_memory_mib": peak,
        }
        rows.append(row)
        mem = f", peak GPU memory {peak:.0f} MiB" if peak is not None else ""
        print(f"batch {bs:5d}: {bs / t_e2e:8.2f} structures/s end to end ({t_e2e:.2f} s; sampling {t_sample:.2f} s, "
              f"closed-form decoding {t_decode:.2f} s; {n_ok}/{bs} decoded){mem}")
    write_summary(args.out, {"device": str(gen.device), "gpu": torch.cuda.get_device_name() if cuda else None,
                             "steps": args.steps, "checks": "none", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
