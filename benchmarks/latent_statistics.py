"""Why do conditioned samples not decode? Flow samples against the data latents they should resemble (issue 14).

For the first ``--n`` rows of mp20/test.csv (a partial split, shared/data/SOURCES.md) the script compares, in the
flow's normalised latent space (z - latent_mean) / latent_std:

- ``data``: the VAE posterior means of the true grids;
- ``samples``: flow samples asked for the same cell contents (composition only, ``--steps`` Euler steps,
  ``--guidance``), one per target, seeded.

Per set it reports the overall mean and standard deviation, the spread of per-channel standard deviations, the
excess kurtosis, and the radially averaged spatial power spectrum of the 8^3 latent (share of power per |k| shell
of the 3D FFT: a flow that cannot follow the data shows it as too much or too little fine spatial structure). It
then compares nearest-neighbour distances (RMS per latent element): sample -> nearest data latent, sample -> its
own target's latent, and data -> nearest other data latent. Finally both sets are decoded (VAE, then the
closed-form decoder with the cell content given) and the per-shell power of their grids is compared with that of
the true grids (``power_ratio`` per shell of s = 1/(2d)), beside the decode and match rates.

Where along the trajectory the flow is weak: ``denoising`` holds, for times t in ``--probe-times``, the error of the
model's one-step data estimate x0 = x_t - t v (``rectified_flow.predict_x0``, guidance ``--guidance``) from
x_t = (1 - t) x0 + t eps, as RMS per latent element and as a fraction of the error of the trivial estimate x_t
itself (t |eps - x0|): 0 would be a perfect denoiser, 1 one that learned nothing at that t. ``--t-start T`` < 1
starts the samples from the data latents noised to T (SDEdit-style; the same noise draw) instead of from pure
noise: a flow that is right near the data brings T = 0.1-0.3 back to the target crystal. Each ``denoising`` row also
holds the same error without the condition (``_unconditional``: the guidance-0 branch) and with each row given the
next row's cell content (``_shuffled_conditions``): how much the estimate leans on the condition at that t.

    python benchmarks/latent_statistics.py --n 40 --out docs/results/latent_statistics_c5_n40.json
    python benchmarks/latent_statistics.py --n 40 --t-start 0.3 --out docs/results/latent_statistics_c6_n40_t0.3.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import generation_parser, mp20_test_grids, vae_digest, write_summary  # noqa: E402
from vae_reconstruction import shell_profile  # noqa: E402


def latent_summary(z) -> dict:
    """Statistics of normalised latents z (B, C, n, n, n): mean, std, per-channel std quantiles, excess
    kurtosis, and the share of spatial power per integer shell of |k| of the 3D FFT (mean removed per channel)."""
    import torch

    z = z.double()
    ch_std = z.transpose(0, 1).flatten(1).std(1)
    x = z.flatten()
    kurt = float(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3.0)
    n = z.shape[-1]
    zc = z - z.mean(dim=(2, 3, 4), keepdim=True)
    power = torch.fft.fftn(zc, dim=(2, 3, 4)).abs().pow(2).mean(dim=(0, 1))
    k = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)
    kk = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2).round().long()
    shells = torch.bincount(kk.flatten(), weights=power.flatten())
    share = (shells / shells.sum()).tolist()
    return {"mean": float(x.mean()), "std": float(x.std()),
            "channel_std_q10_q50_q90": [float(v) for v in torch.quantile(ch_std, torch.tensor([0.1, 0.5, 0.9],
                                                                                             dtype=torch.float64))],
            "excess_kurtosis": kurt, "spatial_power_share_by_k": share}


def target_conditions(cell, row, which: str):
    """The request for one target: its cell content, plus (``symmetry``) the MP space group and its crystal system,
    plus (``all``) the MP band gap, formation energy and energy above hull of its mp20 row."""
    from gpsk_materials.models.conditioning import Conditions
    from gpsk_materials.vocabulary import crystal_system_of

    kw = {"composition": cell.composition}
    if which in ("symmetry", "all"):
        sg = int(row["spacegroup.number"])
        kw.update(space_group=sg, crystal_system=crystal_system_of(sg))
    if which == "all":
        kw.update(band_gap=float(row["band_gap"]), formation_energy=float(row["formation_energy_per_atom"]),
                  e_above_hull=float(row["e_above_hull"]))
    return Conditions(**kw)


def nearest(a, b, exclude_self: bool = False):
    """RMS-per-element distance from each row of a (B, D) to its nearest row of b (M, D)."""
    import torch

    d = torch.cdist(a.double(), b.double()) / np.sqrt(a.shape[1])
    if exclude_self:
        d.fill_diagonal_(float("inf"))
    return d.min(1).values.numpy()


def main(argv=None) -> int:
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from gpsk_materials.models.conditioning import Conditions
    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.models.rectified_flow import guided_velocity, interpolate, predict_x0
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    p = generation_parser(__doc__)
    p.add_argument("--n", type=int, default=40, help="first N rows of mp20/test.csv")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-decode", action="store_true", help="latent statistics only")
    p.add_argument("--t-start", type=float, default=1.0,
                   help="start the samples from the data latents noised to this time (1 = pure noise)")
    p.add_argument("--conditions", choices=("composition", "symmetry", "all"), default="composition",
                   help="what each sample is asked: the cell content (what CSP asks), plus the target's space group "
                        "and crystal system, or plus its band gap, formation energy and energy above hull too (the "
                        "labels the flow is trained with)")
    p.add_argument("--probe-times", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9],
                   help="times at which the one-step data estimate is scored (the denoising section)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    model = load_model_folder(args.model, device=args.device)
    structures, table, cells, grids = mp20_test_grids(args.n, args.device, args.workers)
    with torch.no_grad():
        z_data = torch.cat([model.vae.encode(grids[i : i + 32]).mean for i in range(0, len(grids), 32)])
        data = model.normalize_latents(z_data).float().cpu()
        conds = [target_conditions(c, row, args.conditions) for c, (_, row) in zip(cells, table.iterrows())]
        gen = torch.Generator(device="cpu").manual_seed(args.seed)
        shape = (len(conds), *z_data.shape[1:])
        noise = torch.randn(shape, generator=gen)
        start = noise if args.t_start >= 1.0 else interpolate(data, noise, torch.full((len(data),), args.t_start))
        z_samp = model.sample_latents(conds, args.steps, args.guidance, noise=start.to(args.device),
                                      t_start=args.t_start)
        samples = model.normalize_latents(z_samp).float().cpu()
        batch = model.condition_batch(conds)
        # the same estimate without the condition (guidance 0: the unconditional branch) and with every row given
        # the next row's cell content: a flow that uses its condition does worse in both
        shuffled = model.condition_batch([conds[(i + 1) % len(conds)] for i in range(len(conds))])
        denoising = []
        for t_probe in args.probe_times:
            t = torch.full((len(data),), float(t_probe))
            x_t = interpolate(data, noise, t)
            trivial = (x_t - data).pow(2).mean().sqrt().item()
            row_t = {"t": t_probe, "trivial_rms_error": trivial}
            for key, cond, g in (("", batch, args.guidance), ("_unconditional", batch, 0.0),
                                 ("_shuffled_conditions", shuffled, args.guidance)):
                v = guided_velocity(model.mmdit, x_t.to(args.device), t.to(args.device), cond, g)
                err = (predict_x0(x_t, v.float().cpu(), t) - data).pow(2).mean().sqrt().item()
                row_t[f"rms_error{key}"] = err
                row_t[f"relative_to_trivial{key}"] = err / trivial
            denoising.append(row_t)

    row = {"n": len(structures), "model": str(args.model), "vae_index_sha256": vae_digest(args.model),
           "conditions": args.conditions, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
           "device": args.device,
           "t_start": args.t_start, "data": latent_summary(data), "samples": latent_summary(samples),
           "denoising": denoising}
    a, b = samples.flatten(1), data.flatten(1)
    row["distance"] = {
        "sample_to_nearest_data_median": float(np.median(nearest(a, b))),
        "sample_to_own_target_median": float(np.median(((a - b) ** 2).mean(1).sqrt().numpy())),
        "data_to_nearest_other_data_median": float(np.median(nearest(b, b, exclude_self=True))),
    }
    if not args.no_decode:
        dec = ReciprocalGridDecoder(device=args.device)
        sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
        comps = [c.composition for c in cells]
        with torch.no_grad():
            g_data = model.vae.decode(z_data).float()
            g_samp = model.vae.decode(z_samp).float()
        for key, g in (("data", g_data), ("samples", g_samp)):
            decoded = dec.decode_many(g, comps, ignore_errors=True, exact_counts=True)
            row[key]["decoded"] = int(sum(d is not None for d in decoded))
            row[key]["matched"] = int(sum(d is not None and sm.fit(s, d) for s, d in zip(structures, decoded)))
            row[key]["shell_power_ratio"] = [
                {"s_lo": r["s_lo"], "s_hi": r["s_hi"], "power_ratio": r["power_ratio"]}
                for r in shell_profile(grids.cpu(), g.cpu())]
    row["seconds"] = time.perf_counter() - t0
    for key in ("data", "samples"):
        s = row[key]
        print(f"{key:>8s}: mean {s['mean']:+.3f} std {s['std']:.3f} kurtosis {s['excess_kurtosis']:+.2f} "
              f"power by |k| {np.round(s['spatial_power_share_by_k'], 3).tolist()} "
              f"decoded {s.get('decoded')} matched {s.get('matched')}")
    print(row["distance"])
    print("one-step x0 error relative to x_t's (own condition / none / another row's):",
          ", ".join(f"t={d['t']:g} {d['relative_to_trivial']:.3f} / {d['relative_to_trivial_unconditional']:.3f} / "
                    f"{d['relative_to_trivial_shuffled_conditions']:.3f}" for d in denoising))
    write_summary(args.out, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
