"""The reference pool has one reader (datasets/pool.py) for the hull and the thin-hull check."""

from __future__ import annotations

import pandas as pd
import pytest

from gpsk_materials.datasets.pool import read_pool
from gpsk_materials.errors import DataError


def test_read_pool_columns_ids_and_elements(tmp_path):
    path = tmp_path / "pool.csv"
    pd.DataFrame({"material_id": [1, "mp-2"], "nsites": [2, 8], "reduced_formula": ["NaCl", "Fe2O3"],
                  "e_above_hull": [0.0, None], "cif": ["x", "y"]}).to_csv(path, index=False)
    df = read_pool(str(path), ("nsites",), elements=True)
    assert list(df.columns) == ["material_id", "nsites", "reduced_formula", "elements"]
    assert df["material_id"].tolist() == ["1", "mp-2"]
    assert df["elements"].tolist() == [frozenset({"Na", "Cl"}), frozenset({"Fe", "O"})]
    assert read_pool(str(path), ("nsites",), elements=True) is df  # read once per process
    with pytest.raises(DataError, match="cannot read the reference pool"):
        read_pool(str(path), ("spacegroup",))
    with pytest.raises(DataError, match="cannot read the reference pool"):
        read_pool(str(tmp_path / "missing.csv"), ("nsites",))


def test_the_hull_and_the_thin_hull_check_read_the_pool_through_it(tmp_path, monkeypatch):
    from gpsk_materials.checks import hull
    from gpsk_materials.evaluation import hull_coverage

    path = tmp_path / "pool.csv"
    pd.DataFrame({"material_id": ["a"], "nsites": [2], "reduced_formula": ["NaCl"], "e_above_hull": [0.0],
                  "cif": ["x"]}).to_csv(path, index=False)
    calls = []

    def spy(p, columns, elements=False):
        calls.append((p, columns, elements))
        return read_pool(p, columns, elements)

    monkeypatch.setattr(hull, "read_pool", spy)
    monkeypatch.setattr(hull_coverage, "read_pool", spy)
    ref = hull.ReferenceHull(potential=None, pool_path=path, cache_path=False)
    assert ref.pool_table()["elements"].tolist() == [frozenset({"Na", "Cl"})]
    check = hull_coverage.ThinHullCheck(pool_path=path)
    assert check._pool_rows("NaCl")["material_id"].tolist() == ["a"]
    assert [c[0] for c in calls] == [str(path)] * 2
