"""Helpers shared by the benchmark scripts: reading shared CSVs and timing on CPU/GPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from gpsk_materials.paths import shared_data


def read_structures(relpath: str, limit: int | None = None, workers: int = 1):
    """Structures of a shared/data CSV (``cif`` column) in file order."""
    from multiprocessing import Pool

    import pandas as pd

    path = Path(relpath) if Path(relpath).exists() else shared_data(relpath)
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    df = pd.read_csv(path, nrows=limit)
    with Pool(workers) as pool:
        structures = pool.map(_parse, list(df["cif"]), chunksize=64)
    return structures, df


def mp20_test_grids(n: int, device: str = "cpu", workers: int = 1):
    """The first ``n`` rows of mp20/test.csv: (structures, table, canonical cells, grids (n, 3, 32, 32, 32) on
    ``device``), featurized by the torch featurizer."""
    import torch

    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    structures, df = read_structures("mp20/test.csv", n, workers)
    feat = ReciprocalGridFeaturizer(backend="torch", device=device)
    cells = [feat.canonical_structure(s) for s in structures]
    return structures, df, cells, torch.as_tensor(feat.featurize_many(structures), device=device)


def _parse(cif: str):
    import warnings

    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def timed(fn, *args, device: str = "cpu", repeat: int = 3, **kwargs):
    """Median wall time of ``fn(*args, **kwargs)`` over ``repeat`` runs after one warm-up; returns (time, result)."""
    import torch

    out = fn(*args, **kwargs)
    times = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def benchmark_library():
    """The shipped prototype library without its held-out MP-20 test materials (``PrototypeLibrary.without_holdout``):
    the model's training crystals exactly, so no benchmark on those targets can find the answer itself."""
    from gpsk_materials.prototypes import PrototypeLibrary

    return PrototypeLibrary.load().without_holdout()


def use_benchmark_library(gen) -> None:
    """Point ``gen``'s ``prototypes=`` candidates at :func:`benchmark_library`."""
    from gpsk_materials.prototypes import PrototypeSubstitutor

    gen.prototype_substitutor = PrototypeSubstitutor(benchmark_library())


def default_model() -> str:
    """Folder of the model shipped in the package (the ``--model`` default of the generation benchmarks)."""
    from gpsk_materials.pipelines.generator import default_model_dir

    return str(default_model_dir())


def vae_digest(model: str | Path) -> str:
    """SHA-256 of the ``vae.json`` index of a model or VAE folder (the index holds the SHA-256 of every shard), so
    that a number says which VAE it was measured on."""
    import hashlib

    return hashlib.sha256((Path(model) / "vae.json").read_bytes()).hexdigest()


def generation_parser(doc: str | None):
    """Argument parser with the options every generation benchmark takes: --model, --device, --seed, --out."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model(), help="model folder (default: the shipped model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    return p


def load_generator(args, **kwargs):
    """CrystalGenerator of ``args.model`` on ``args.device``."""
    import logging

    from gpsk_materials import CrystalGenerator

    logging.getLogger("gpsk_materials.pipelines.generator").setLevel(logging.ERROR)  # one warning per failed request
    return CrystalGenerator.from_pretrained(args.model, device=args.device, **kwargs)


def is_valid(structure) -> tuple[bool, bool]:
    """(structural, compositional) validity of the CDVAE protocol (>= 0.5 A, >= 0.1 A^3; SMACT)."""
    from gpsk_materials.checks.validity import smact_validity, structural_validity

    return bool(structural_validity(structure)), bool(smact_validity(structure.composition))


def sample_index(structure, default: int) -> int:
    """Index of the candidate a generated structure came from (its provenance), else ``default``."""
    return int(((structure.properties.get("gpsk") or {}).get("request") or {}).get("sample_index", default))


def write_summary(out: Path | None, summary: dict) -> dict:
    """Add the date and the command to ``summary`` and write it as JSON to ``out`` (when given); returns it."""
    import json
    import math
    import sys

    def plain(x):
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return None if not math.isfinite(float(x)) else float(x)
        if isinstance(x, np.integer):
            return int(x)
        return x

    summary = {**summary, "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv])}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(plain(summary), indent=1))
        print(f"wrote {out}")
    return summary
