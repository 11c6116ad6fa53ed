"""Plots of an evaluation (matplotlib figures written to files; the caller's pyplot backend is never touched)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from gpsk_materials.atomic_files import write_atomic


def _figure(**kw):
    """A bare ``matplotlib.figure.Figure``: drawn and saved without pyplot, so no backend is switched."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def plot_ehull_histogram(e_hull: Sequence[float], path: str | Path, metastable: float = 0.1) -> Path:
    """Histogram of energies above hull (eV/atom), with the stable (0) and metastable thresholds marked."""
    values = np.asarray([e for e in e_hull if e is not None and np.isfinite(e)], dtype=float)
    fig = _figure(figsize=(5, 3.5))
    ax = fig.subplots()
    if len(values):
        hi = max(0.5, float(np.quantile(values, 0.98)))
        ax.hist(np.clip(values, None, hi), bins=np.linspace(min(values.min(), -0.05), hi, 60), color="tab:blue")
    ax.axvline(0.0, color="k", lw=1, label="E_hull = 0")
    ax.axvline(metastable, color="tab:red", lw=1, ls="--", label=f"E_hull = {metastable}")
    ax.set_xlabel("energy above hull (eV/atom)")
    ax.set_ylabel("structures")
    ax.set_title(f"E_hull of {len(values)} relaxed structures")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), ".png")
    return Path(path)


def structure_properties(structures: Sequence[Structure]) -> dict[str, np.ndarray]:
    """Density (g/cm^3), volume per atom (A^3), number of sites and number of elements of each structure."""
    return {
        "density (g/cm^3)": np.array([float(s.density) for s in structures]),
        "volume per atom (A^3)": np.array([s.volume / len(s) for s in structures]),
        "sites per cell": np.array([len(s) for s in structures], dtype=float),
        "number of elements": np.array([len(s.composition.elements) for s in structures], dtype=float),
    }


def plot_property_distributions(
    generated: Sequence[Structure], reference: Sequence[Structure], path: str | Path
) -> Path:
    """Normalised histograms of density, volume per atom, sites and elements: generated vs reference."""
    gen, ref = structure_properties(generated), structure_properties(reference)
    fig = _figure(figsize=(8, 6))
    axes = fig.subplots(2, 2)
    for ax, name in zip(axes.ravel(), gen):
        both = np.concatenate([gen[name], ref[name]])
        both = both[np.isfinite(both)]
        if name in ("sites per cell", "number of elements"):
            bins = np.arange(both.min() - 0.5, both.max() + 1.5) if len(both) else 10
        else:
            bins = np.linspace(*np.quantile(both, [0.005, 0.995]), 40) if len(both) else 10
        ax.hist(ref[name], bins=bins, density=True, alpha=0.5, label=f"reference ({len(reference)})")
        ax.hist(gen[name], bins=bins, density=True, alpha=0.5, label=f"generated ({len(generated)})")
        ax.set_xlabel(name)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), ".png")
    return Path(path)
