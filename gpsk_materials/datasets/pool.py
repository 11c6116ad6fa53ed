"""The reference pool ``shared/data/pool.csv.gz`` as a table: the one reader behind the hull's reference structures
(:class:`~gpsk_materials.checks.hull.ReferenceHull`) and the thin-hull check
(:class:`~gpsk_materials.evaluation.hull_coverage.ThinHullCheck`).

Each caller names the columns it needs (the ``cif`` column is most of the file), and each (path, columns) table is
read once per process. pandas and pymatgen are imported on the first read only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gpsk_materials.errors import DataError
from gpsk_materials.paths import shared_data

if TYPE_CHECKING:
    import pandas as pd

#: the pool's file name in ``shared/data``
POOL = "pool.csv.gz"


def default_pool_path() -> Path:
    """``shared/data/pool.csv.gz`` (see :func:`gpsk_materials.paths.shared_data`)."""
    return shared_data(POOL)


@lru_cache(maxsize=4)
def read_pool(path: str, columns: tuple[str, ...], elements: bool = False) -> pd.DataFrame:
    """The pool at ``path`` restricted to ``columns`` (``material_id`` always included, as ``str``).

    ``elements`` adds an ``elements`` column (frozenset of the element symbols of ``reduced_formula``). The table
    is cached: callers must not modify it. Raises :class:`DataError` for a missing or unreadable file or a missing
    column.
    """
    import pandas as pd

    wanted = ["material_id", *(c for c in columns if c != "material_id")]
    if elements and "reduced_formula" not in wanted:
        wanted.append("reduced_formula")
    try:
        df = pd.read_csv(path, usecols=wanted)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the reference pool {path}: {exc}") from exc
    df["material_id"] = df["material_id"].astype(str)
    if elements:
        from pymatgen.core import Composition

        symbols = {f: frozenset(el.symbol for el in Composition(f).elements) for f in df["reduced_formula"].unique()}
        df["elements"] = df["reduced_formula"].map(symbols)
    return df


__all__ = ["POOL", "default_pool_path", "read_pool"]
