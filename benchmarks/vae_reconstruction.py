"""VAE reconstruction of the shipped (or any) model on MP-20 test structures, with a failure analysis.

On the first ``--n`` rows of mp20/test.csv (file order, so numbers of different runs are comparable) it reports:

- the per-channel MSE of the reconstructed grids (scaled channels, as trained) and the decoder's relative residual
  ||F_rec - F|| / ||F||;
- the share of reconstructed grids that decode to a StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) match of the
  input, given the reduced formula (formula units read from the reconstructed F(000): ``match_rate``) and given the
  cell content (``match_rate_cell``, as in generation and structure prediction);
- element identity: the first ``--n-formula`` true grids and their reconstructions decoded with no composition;
  how many give the right reduced formula, and the ratio reconstructed / true (issue 13 asks for >= 0.8);
- a failure analysis: per structure the canonical cell's size and chemistry (sites, heaviest element, longest axis,
  volume per atom, elements, crystal system), its relative residual and whether it matched; match rates by bins
  of sites, maximum Z and longest axis (JSON, ``--plot``), the table itself (``--per-structure``);
- per shell of s = sin(theta)/lambda = 1 / (2 d): the power of the true and reconstructed F and the relative error
  (where in reciprocal space the reconstruction loses signal).

The VAE is read from ``--model``, a model folder or a VAE-only folder as the trainer writes to OUT/vae; the JSON
records the SHA-256 of its ``vae.json`` index (which holds the SHA-256 of every shard). The MP-20 test split here
is partial (shared/data/SOURCES.md).

    MPLBACKEND=Agg python benchmarks/vae_reconstruction.py --n 500 --out docs/results/vae_reconstruction_shipped.json \\
        --per-structure docs/results/vae_reconstruction_shipped.csv --plot docs/results/vae_reconstruction_shipped.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import default_model, mp20_test_grids, vae_digest, write_summary  # noqa: E402

#: bins of the failure analysis: column -> (edges, labels); a bin holds edges[i] < x <= edges[i + 1]
BINS = {
    "n_sites": ([0, 4, 8, 12, 20], ["1-4", "5-8", "9-12", "13-20"]),
    "max_z": ([0, 20, 36, 54, 200], ["<=20", "21-36", "37-54", ">54"]),
    "longest_axis": ([0, 6, 10, 15, np.inf], ["<6 A", "6-10 A", "10-15 A", ">15 A"]),
}
#: edges of the shells of s = sin(theta)/lambda = 1/(2d) in 1/Angstrom
SHELL_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, np.inf)


def reconstruct(vae, grids, batch: int = 32, seed: int = 0):
    """Reconstructed grids: one posterior sample per grid (seeded), decoded by the VAE."""
    import torch

    gen = torch.Generator(device=grids.device).manual_seed(seed)
    with torch.no_grad():
        return torch.cat([vae(grids[i : i + batch], gen)[0].float() for i in range(0, len(grids), batch)])


def structure_table(structures, cells, space_groups):
    """Per-structure descriptors of the failure analysis (of the canonical cell, which is what the grid holds).

    Parameters
    ----------
    structures : list of Structure
        Input structures (their reduced formula is the target of composition-free decoding).
    cells : list of Structure
        Canonical cells of ``structures``.
    space_groups : sequence of int
        Space-group numbers of the input structures.

    Returns
    -------
    pandas.DataFrame
        One row per structure: formula, n_sites, max_z, heaviest, longest_axis, volume_per_atom, n_elements,
        crystal_system.
    """
    import pandas as pd
    from pymatgen.symmetry.groups import SpaceGroup

    from gpsk_materials.evaluation.plots import structure_properties

    props = structure_properties(cells)
    heaviest = [max(c.composition.elements, key=lambda e: e.Z) for c in cells]
    return pd.DataFrame({
        "formula": [s.composition.reduced_formula for s in structures],
        "n_sites": props["sites per cell"].astype(int),
        "max_z": [e.Z for e in heaviest],
        "heaviest": [e.symbol for e in heaviest],
        "longest_axis": [max(c.lattice.abc) for c in cells],
        "volume_per_atom": props["volume per atom (A^3)"],
        "n_elements": props["number of elements"].astype(int),
        "crystal_system": [SpaceGroup.from_int_number(int(sg)).crystal_system for sg in space_groups],
    })


def rates_by_bin(table, column: str = "matched_cell") -> dict:
    """Share of ``column`` true per bin of :data:`BINS` and per crystal system: {descriptor: {bin: {n, rate}}}."""
    import pandas as pd

    groups = {name: pd.cut(table[name], edges, labels=labels) for name, (edges, labels) in BINS.items()}
    groups["crystal_system"] = table["crystal_system"]
    out = {}
    for name, key in groups.items():
        g = table[column].groupby(key, observed=False)
        out[name] = {str(k): {"n": int(n), "rate": float(r) if n else None}
                     for k, n, r in zip(g.size().index, g.size(), g.mean())}
    return out


def shell_profile(grids, recon) -> list[dict]:
    """Power of the true and reconstructed structure factor per shell of s = 1/(2d), summed over all grids.

    Returns
    -------
    list of dict
        Per shell of :data:`SHELL_EDGES`: ``s_lo``, ``s_hi``, ``points`` (grid points, all grids),
        ``power_true`` and ``power_recon`` (mean |F|^2, electrons^2), ``power_ratio`` (recon / true),
        ``relative_error`` (sum |F_rec - F|^2 / sum |F|^2) and ``amplitude_correlation`` (Pearson r of |F| and
        |F_rec|).
    """
    from gpsk_materials.representations.grid import Q0

    f_true, f_rec = structure_factor(grids), structure_factor(recon)
    s = (grids[:, 2].double() * Q0).clamp_min(0).sqrt() / 2
    rows = []
    for lo, hi in zip(SHELL_EDGES[:-1], SHELL_EDGES[1:]):
        m = (s > lo) & (s <= hi) if lo > 0 else s <= hi  # the first shell holds F(000)
        a, b = f_true[m], f_rec[m]
        p_true, p_rec = float((a.abs() ** 2).mean()), float((b.abs() ** 2).mean())
        corr = float(np.corrcoef(a.abs().numpy(), b.abs().numpy())[0, 1]) if m.sum() > 1 else float("nan")
        rows.append({"s_lo": lo, "s_hi": hi, "points": int(m.sum()), "power_true": p_true, "power_recon": p_rec,
                     "power_ratio": p_rec / p_true, "relative_error": float(((b - a).abs() ** 2).sum()
                                                                              / (a.abs() ** 2).sum()),
                     "amplitude_correlation": corr})
    return rows


def structure_factor(grids):
    """Complex F(h) in electrons, (B, n, n, n) in grid order, of the structure-factor channels of ``grids``."""
    import torch

    from gpsk_materials.representations.grid import expand_structure_factor

    return torch.complex(*expand_structure_factor(grids[:, 0].double(), grids[:, 1].double()))


def amplitude_scale(grids, recon) -> tuple[np.ndarray, np.ndarray]:
    """Per grid, F_rec(000) / F(000) (the share of the electron count kept) and the least-squares scale k of
    F_rec ~ k F over the whole grid.

    Both are 1 for an unbiased reconstruction; a composition-free decoder reads the elements from the scale of
    each atom's contribution, so k < 1 reads as lighter elements.
    """
    f_true, f_rec = structure_factor(grids), structure_factor(recon)
    c = grids.shape[-1] // 2  # axis index of Miller index 0
    k = (f_true.conj() * f_rec).real.flatten(1).sum(1) / (f_true.abs() ** 2).flatten(1).sum(1)
    return (f_rec[:, c, c, c].real / f_true[:, c, c, c].real).numpy(), k.numpy()


def plot_rates(by_bin: dict, path: Path, title: str) -> Path:
    """Bar charts of the match rate per bin of each descriptor (number of structures above each bar)."""
    import matplotlib.pyplot as plt

    names = [*BINS, "crystal_system"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), sharey=True)
    for ax, name in zip(axes, names):
        bins = by_bin[name]
        labels = list(bins)
        rates = [bins[k]["rate"] or 0.0 for k in labels]
        bars = ax.bar(range(len(labels)), rates, color="tab:blue")
        for bar, k in zip(bars, labels):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02, f"n={bins[k]['n']}", ha="center",
                    fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if name == "crystal_system" else 0, fontsize=8)
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylim(0, 1.1)
    axes[0].set_ylabel("match rate (cell content given)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    import torch
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from gpsk_materials.models.io import load_model_folder
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model(),
                   help="model folder or VAE-only folder (the trainer's OUT/vae); default: the shipped model")
    p.add_argument("--n", type=int, default=200, help="first N rows of mp20/test.csv")
    p.add_argument("--n-formula", type=int, default=40,
                   help="first N of those decoded without a composition (true and reconstructed grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the summary")
    p.add_argument("--per-structure", type=Path, default=None, help="CSV file for the per-structure table")
    p.add_argument("--plot", type=Path, default=None, help="image file for the match rate per bin")
    args = p.parse_args(argv)

    timings = {}
    t0 = time.perf_counter()
    model = load_model_folder(args.model, device=args.device)
    structures, df, cells, grids = mp20_test_grids(args.n, args.device, args.workers)
    timings["load_featurize"] = time.perf_counter() - t0

    t = time.perf_counter()
    recon = reconstruct(model.vae, grids, seed=args.seed)
    timings["vae"] = time.perf_counter() - t
    mse = ((recon - grids) ** 2).mean(dim=(0, 2, 3, 4)).cpu().numpy()
    residual = model.vae.relative_residual(grids, recon).sqrt().cpu().numpy()
    row = {
        "n": len(structures), "mse_re": float(mse[0]), "mse_im": float(mse[1]), "mse_metric": float(mse[2]),
        "median_relative_residual": float(np.median(residual)), "model": str(args.model),
        "vae_index_sha256": vae_digest(args.model),
        "device": args.device, "seed": args.seed,
    }

    table = structure_table(structures, cells, df["spacegroup.number"])
    table["relative_residual"] = residual
    table["f000_ratio"], table["amplitude_scale"] = amplitude_scale(grids.cpu(), recon.cpu())
    row["median_f000_ratio"] = float(table["f000_ratio"].median())
    row["median_amplitude_scale"] = float(table["amplitude_scale"].median())
    dec = ReciprocalGridDecoder(device=args.device)
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    for key, comps, exact in (("", [s.composition.reduced_composition for s in structures], False),
                              ("_cell", [c.composition for c in cells], True)):
        t = time.perf_counter()
        decoded = dec.decode_many(recon, comps, ignore_errors=True, exact_counts=exact)
        table[f"matched{key}"] = [d is not None and sm.fit(s, d) for s, d in zip(structures, decoded)]
        timings[f"decode{key}"] = time.perf_counter() - t
        row[f"decoded{key}"] = int(sum(d is not None for d in decoded))
        row[f"match_rate{key}"] = float(table[f"matched{key}"].mean())

    nf = min(args.n_formula, len(structures))
    for key, g in (("true", grids), ("recon", recon)):
        t = time.perf_counter()
        # the decoder's guess of the formula is what is measured: keep it below min_confidence (marked)
        decoded = ReciprocalGridDecoder(device=args.device, keep_low_confidence=True).decode_many(
            g[:nf], None, ignore_errors=True)
        timings[f"decode_free_{key}"] = time.perf_counter() - t
        formulas = [None if d is None else d.composition.reduced_formula for d in decoded]
        table.loc[: nf - 1, f"free_formula_{key}"] = formulas
        row[f"formula_correct_{key}"] = int(sum(f == s for f, s in zip(formulas, table["formula"])))
    row["n_formula"] = nf
    row["formula_ratio"] = row["formula_correct_recon"] / row["formula_correct_true"] \
        if row["formula_correct_true"] else None

    row["by_bin"] = rates_by_bin(table)
    row["shells"] = shell_profile(grids.cpu(), recon.cpu())
    timings["total"] = time.perf_counter() - t0
    row["timings_s"] = timings
    print(json.dumps({k: v for k, v in row.items() if k not in ("by_bin", "shells")}, indent=1))
    row = write_summary(args.out, row)
    if args.per_structure is not None:
        args.per_structure.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.per_structure, index_label="row", float_format="%.5g")
        print(f"wrote {args.per_structure}")
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_rates(row["by_bin"], args.plot, f"VAE reconstruction, {len(structures)} MP-20 test structures, "
                   f"VAE {row['vae_index_sha256'][:12]}, {row['date']}")
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
