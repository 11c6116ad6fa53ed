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
