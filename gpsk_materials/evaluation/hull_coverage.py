"""The thin-hull warning: does the self-consistent reference hull hold the known ground state of a composition?

The default stability protocol builds each chemical system's hull from the structures of ``pool.csv.gz``
(:class:`gpsk_materials.checks.hull.ReferenceHull`). Where the pool lacks the phase that is the ground state of a
generated composition, the hull there is too high and a generated structure that relaxes into that ground state is
reported stable (and, the phase being absent, novel): a CsCl-type CaO relaxes to rock salt, and rock-salt CaO
(mp-2605) is not in the pool, whose only CaO is mp-1079707, 0.21 eV/atom above the Materials Project hull.

Rule, for a composition C (its chemical system S):

1. The known ground state of C is its decomposition on the Materials Project DFT hull of S
   (:func:`gpsk_materials.evaluation.mp_hull.mp_dft_hull`: DFT formation energies of the 34,424 near-hull MP-20
   materials of ``reference/mp20_near_hull_dft.parquet`` and the elements), plus C itself when MP-20 holds a
   phase of C within :data:`gpsk_materials.defaults.NEAR_HULL` (0.025 eV/atom) of the hull.
2. Each compound of that ground state is *represented* in the pool when a pool structure of its reduced formula
   (within the hull's ``max_sites``) is one of those near-hull MP-20 materials, or has a DFT ``e_above_hull`` of
   at most ``NEAR_HULL``, or has no ``e_above_hull`` in the pool (Alexandria, OQMD, JARVIS and WBM rows: unknown,
   given the benefit of the doubt). Elements are not checked: the hull always holds them (pool or prototypes).
3. C is flagged when a compound of its ground state is not represented; the message names it, its MP ids, and what
   the pool holds of that formula.

The check reads DFT data only (no potential), so it costs a table lookup and one small phase diagram per system.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.core import Composition

from gpsk_materials.datasets.pool import default_pool_path, read_pool
from gpsk_materials.defaults import NEAR_HULL
from gpsk_materials.errors import DataError, GPSKError
from gpsk_materials.paths import shared_data

logger = logging.getLogger(__name__)


@lru_cache(maxsize=2)
def _near_hull(path: str) -> dict[str, list[tuple[str, float]]]:
    try:
        df = pd.read_parquet(path, columns=["material_id", "pretty_formula", "e_above_hull"])
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the MP near-hull table {path}: {exc}") from exc
    reduced = {f: Composition(f).reduced_formula for f in df["pretty_formula"].unique()}
    out: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for mid, formula, e in zip(df["material_id"], df["pretty_formula"], df["e_above_hull"]):
        out[reduced[formula]].append((str(mid), float(e)))
    return dict(out)


class ThinHullCheck:
    """Flags compositions whose known ground state is missing from the pool the self-consistent hull is built from.

    Parameters
    ----------
    pool_path
        The pool of the reference hull (``material_id``, ``nsites``, ``reduced_formula``, ``e_above_hull``
        columns); default ``shared/data/pool.csv.gz`` (as ``ReferenceHull``).
    near_hull_table
        Parquet of near-hull MP materials (``material_id``, ``pretty_formula``, ``e_above_hull``); default
        ``shared/data/reference/mp20_near_hull_dft.parquet``.
    max_sites
        The hull's ``max_sites``: pool structures with more sites are not in it.
    window
        eV/atom above the MP hull that still counts as the ground state; default :data:`NEAR_HULL`.

    Examples
    --------
    >>> ThinHullCheck().check("CaO")  # doctest: +SKIP
    'the reference hull of Ca-O holds no phase near the known ground state of CaO: CaO (MP mp-2605 ...'
    """

    def __init__(self, pool_path: str | Path | None = None, near_hull_table: str | Path | None = None,
                 max_sites: int | None = None, window: float = NEAR_HULL) -> None:
        from gpsk_materials.evaluation.mp_hull import DFT_TABLE

        self.pool_path = Path(pool_path) if pool_path is not None else default_pool_path()
        self.near_hull_table = Path(near_hull_table) if near_hull_table is not None else shared_data(DFT_TABLE)
        self.max_sites = max_sites
        self.window = float(window)
        self._memo: dict[str, str | None] = {}

    def _pool_rows(self, formula: str) -> pd.DataFrame:
        pool = read_pool(str(self.pool_path), ("nsites", "reduced_formula", "e_above_hull"))
        rows = pool[pool["reduced_formula"] == formula]
        return rows if self.max_sites is None else rows[rows["nsites"] <= self.max_sites]

    def ground_state(self, composition: Composition | str) -> list[str]:
        """Reduced formulas of the compounds (not elements) of the MP ground state of ``composition``.

        Raises
        ------
        DataError
            The MP DFT hull has no data for an element of the composition.
        """
        from gpsk_materials.evaluation.mp_hull import mp_dft_hull

        comp = Composition(composition)
        near = _near_hull(str(self.near_hull_table))
        hull = mp_dft_hull(str(self.near_hull_table))
        diagram = hull.phase_diagram(el.symbol for el in comp.elements)
        phases = {e.composition.reduced_formula for e in diagram.get_decomposition(comp)}
        if any(e <= self.window for _, e in near.get(comp.reduced_formula, [])):
            phases.add(comp.reduced_formula)
        return sorted(p for p in phases if len(Composition(p).elements) > 1)

    def check(self, composition: Composition | str) -> str | None:
        """A warning when the pool misses a compound of the composition's ground state, else None.

        None also when the MP DFT data cannot judge (an element without MP data); that case is logged at debug
        level.
        """
        comp = Composition(composition)
        key = comp.reduced_formula
        if key in self._memo:
            return self._memo[key]
        try:
            phases = self.ground_state(comp)
        except GPSKError as exc:
            logger.debug("thin-hull check of %s skipped: %s", key, exc)
            self._memo[key] = None
            return None
        near = _near_hull(str(self.near_hull_table))
        missing = []
        for phase in phases:
            mp = sorted(near.get(phase, []), key=lambda item: item[1])
            mp_ids = {mid for mid, _ in mp}
            rows = self._pool_rows(phase)
            ehull = rows["e_above_hull"].to_numpy(dtype=float)
            represented = (rows["material_id"].isin(mp_ids).to_numpy() | ~np.isfinite(ehull)
                           | (np.nan_to_num(ehull, nan=np.inf) <= self.window))
            if represented.any():
                continue
            held = ", ".join(f"{m} (DFT E_hull {e:.3f} eV/atom)" for m, e in zip(rows["material_id"], ehull))
            mp_text = ", ".join(f"{m} E_hull {e:.3f}" for m, e in mp[:3]) or "its decomposition"
            missing.append(f"{phase} (MP {mp_text}; the pool holds {held or 'no structure of it'})")
        system = "-".join(sorted(el.symbol for el in comp.elements))
        message = None
        if missing:
            message = (f"the reference hull of {system} holds no phase near the known ground state of {key}: "
                       f"{'; '.join(missing)}; 'stable' (and 'novel') may be an artifact of the missing reference")
            logger.warning(message)
        self._memo[key] = message
        return message

    def check_all(self, compositions: Iterable[Composition | str | None]) -> list[str | None]:
        """:meth:`check` of each composition (None stays None)."""
        return [None if c is None else self.check(c) for c in compositions]
