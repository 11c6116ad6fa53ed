"""Volume scan (GPSK-05): fix a structure's shape, find its absolute size from an interatomic potential.

Fractional coordinates, axis ratios and angles are held; the cell is scaled isotropically over a geometric grid of
volumes per atom (8-40 A^3 by default) and the lowest-energy volume is kept. With ``refine`` a second, finer grid
brackets the coarse minimum and a parabola through the lowest fine points (least squares in V) gives the final
volume. Every (structure, volume) pair of a stage goes through the potential in one batched call.

The scan corrects the systematic lattice compression of generated ionic crystals (GPSK-300 rock salts come out
25-30 % small); the correction factor ``a_new / a_old = (V_new / V_old)^(1/3)`` is reported for each structure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from monty.json import MSONable
from pymatgen.core import Structure

from gpsk_materials.checks._common import as_structures
from gpsk_materials.checks.potentials import Potential, resolve_potential
from gpsk_materials.checks.validity import distance_ratios
from gpsk_materials.errors import ConditioningError

log = logging.getLogger(__name__)


@dataclass
class VolumeScanResult(MSONable):
    """Outcome of the scan of one structure.

    ``scale_factor`` is a_new / a_old; ``success`` is False (and the structure unchanged) when no grid volume was
    admissible; ``at_boundary`` flags a minimum at an end of the scanned range (the true minimum may lie outside,
    beyond the potential's reach); ``applied`` says whether ``structure`` was rescaled: a boundary minimum is not
    applied unless the scan was asked to (``apply_at_boundary``), and ``scale_factor`` is then 1 while
    ``volume_per_atom`` and ``energy_per_atom`` stay those of the boundary point found.
    """

    structure: Structure
    scale_factor: float
    initial_volume_per_atom: float
    volume_per_atom: float
    energy_per_atom: float
    volumes: list[float]
    energies: list[float]
    at_boundary: bool
    success: bool
    applied: bool = True

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["structure"] = self.structure.as_dict()
        return {"@module": type(self).__module__, "@class": type(self).__name__, **d}

    @classmethod
    def from_dict(cls, d: dict) -> VolumeScanResult:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["structure"] = Structure.from_dict(d["structure"])
        return cls(**kw)


def _scaled(structure: Structure, volume_per_atom: float) -> Structure:
    out = structure.copy()
    out.scale_lattice(volume_per_atom * len(structure))
    return out


class VolumeScan(MSONable):
    """Scan the volume per atom of structures at fixed shape with an interatomic potential.

    Parameters
    ----------
    potential
        A :class:`~gpsk_materials.checks.potentials.Potential`, a model name, or None for the default TensorNet.
    v_min, v_max
        Scanned range of volume per atom (A^3).
    n_points
        Points of the coarse geometric grid (25 gives steps of 2.3 % in lattice constant over 8-40 A^3).
    refine
        Refine around the coarse minimum (finer grid + parabola).
    n_refine
        Points of the fine grid spanning the two coarse intervals around the minimum.
    min_distance_ratio
        Skip volumes where two atoms would be closer than this fraction of their covalent-radii sum (short distances
        are outside the potential's training data and can give spurious minima); 0 disables.
    batch_size
        Structures per batched energy call.
    apply_at_boundary
        Apply a minimum found at an end of the range too (default False: such a structure is returned as given and
        flagged, since the true minimum may lie outside the range, where the potential was not asked).
    """

    def __init__(
        self,
        potential: Potential | str | None = None,
        v_min: float = 8.0,
        v_max: float = 40.0,
        n_points: int = 25,
        refine: bool = True,
        n_refine: int = 7,
        min_distance_ratio: float = 0.5,
        batch_size: int = 128,
        progress: bool = False,
        apply_at_boundary: bool = False,
    ) -> None:
        if not (np.isfinite(v_min) and np.isfinite(v_max) and 0 < v_min < v_max):
            raise ConditioningError(f"volume range must satisfy 0 < v_min < v_max, got [{v_min}, {v_max}]")
        if int(n_points) < 3 or int(n_refine) < 3:
            raise ConditioningError(f"n_points and n_refine must be >= 3, got {n_points}, {n_refine}")
        if min_distance_ratio < 0:
            raise ConditioningError(f"min_distance_ratio must be >= 0, got {min_distance_ratio}")
        self.potential = resolve_potential(potential)
        self.v_min = float(v_min)
        self.v_max = float(v_max)
        self.n_points = int(n_points)
        self.refine = bool(refine)
        self.n_refine = int(n_refine)
        self.min_distance_ratio = float(min_distance_ratio)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.apply_at_boundary = bool(apply_at_boundary)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("v_min", "v_max", "n_points", "refine", "n_refine", "min_distance_ratio",
                                           "batch_size", "apply_at_boundary")}
        return {"@module": type(self).__module__, "@class": type(self).__name__, "potential": self.potential.as_dict(), **d}

    @classmethod
    def from_dict(cls, d: dict) -> VolumeScan:
        kw = {k: v for k, v in d.items() if not k.startswith("@")}
        kw["potential"] = Potential.from_dict(kw["potential"])
        return cls(**kw)

    def _evaluate(self, structures: list[Structure], grids: list[np.ndarray]) -> list[np.ndarray]:
        """Energies (eV/atom) of every structure at every volume of its grid, in one batched call."""
        jobs = [_scaled(s, v) for s, grid in zip(structures, grids) for v in grid]
        flat = (
            self.potential.energies(jobs, batch_size=self.batch_size, on_error="nan", progress=self.progress)
            if jobs
            else np.array([])
        )
        return np.split(flat, np.cumsum([len(g) for g in grids])[:-1])

    def scan(self, structures: Structure | list[Structure]) -> list[VolumeScanResult]:
        """Scan each structure; return the rescaled structures with their correction factors.

        A minimum at an end of the scanned range is not applied (the structure is returned as given, with
        ``at_boundary`` and ``applied=False`` and a logged warning) unless ``apply_at_boundary``.

        Raises
        ------
        InvalidStructureError, DisorderError, UnknownElementError
            A structure the potential cannot take (see :func:`~gpsk_materials.checks._common.as_structure`).
        """
        structures = as_structures(structures, ordered=True)
        v0 = np.array([s.volume / len(s) for s in structures])
        # admissible volumes: distance ratios scale as (V / V0)^(1/3)
        ratio0 = np.array([float(distance_ratios(s).min()) for s in structures])
        v_floor = np.where(
            np.isfinite(ratio0) & (self.min_distance_ratio > 0), v0 * (self.min_distance_ratio / ratio0) ** 3, 0.0
        )
        coarse = np.geomspace(self.v_min, self.v_max, self.n_points)
        grids = [coarse[coarse >= vf] for vf in v_floor]
        energies = self._evaluate(structures, grids)

        fine_grids, brackets = [], []
        for grid, e in zip(grids, energies):
            if len(grid) == 0 or not np.isfinite(e).any():
                fine_grids.append(np.array([]))
                brackets.append(None)
                continue
            i = int(np.nanargmin(e))
            lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
            brackets.append((lo, hi, i in (0, len(grid) - 1)))
            fine_grids.append(np.geomspace(lo, hi, self.n_refine) if self.refine and hi > lo else np.array([]))
        fine_energies = self._evaluate(structures, fine_grids)

        best_v = np.full(len(structures), np.nan)
        for k, (grid, e, fgrid, fe, br) in enumerate(zip(grids, energies, fine_grids, fine_energies, brackets)):
            if br is None:
                continue
            vs, es = np.concatenate([grid, fgrid]), np.concatenate([e, fe])
            best_v[k] = vs[np.nanargmin(es)]
            if self.refine and not br[2]:
                best_v[k] = _parabola_minimum(vs, es, br[0], br[1], fallback=best_v[k])
        final = [_scaled(s, v) if np.isfinite(v) else s.copy() for s, v in zip(structures, best_v)]
        ok = np.isfinite(best_v)
        final_e = np.full(len(structures), np.nan)
        if ok.any():
            final_e[ok] = self.potential.energies(
                [final[k] for k in np.flatnonzero(ok)], batch_size=self.batch_size, on_error="nan"
            )

        results = []
        for k, s in enumerate(final):
            vs, es = np.concatenate([grids[k], fine_grids[k]]), np.concatenate([energies[k], fine_energies[k]])
            order = np.argsort(vs)
            at_boundary = bool(brackets[k][2]) if brackets[k] else False
            applied = bool(ok[k]) and (self.apply_at_boundary or not at_boundary)
            if ok[k] and not applied:
                # the minimum lies at an end of the range: outside what the scan (and the potential) can vouch for
                s = structures[k].copy()
                log.warning("volume scan of %s: minimum at the %s end of [%g, %g] A^3/atom, not applied",
                            s.composition.reduced_formula, "lower" if best_v[k] <= vs.min() * 1.0001 else "upper",
                            self.v_min, self.v_max)
            s.properties = dict(structures[k].properties)
            results.append(
                VolumeScanResult(
                    structure=s,
                    scale_factor=float((best_v[k] / v0[k]) ** (1 / 3)) if applied else 1.0,
                    initial_volume_per_atom=float(v0[k]),
                    volume_per_atom=float(best_v[k]) if ok[k] else float(v0[k]),
                    energy_per_atom=float(final_e[k]),
                    volumes=vs[order].tolist(),
                    energies=es[order].tolist(),
                    at_boundary=at_boundary,
                    success=bool(ok[k]),
                    applied=applied,
                )
            )
        return results


def _parabola_minimum(vs: np.ndarray, es: np.ndarray, lo: float, hi: float, fallback: float) -> float:
    """Vertex of the least-squares parabola through the 5 lowest points in [lo, hi]; ``fallback`` if not convex
    or the vertex leaves the bracket."""
    inside = (vs >= lo) & (vs <= hi) & np.isfinite(es)
    v, e = vs[inside], es[inside]
    if len(v) < 3:
        return fallback
    keep = np.argsort(e)[:5]
    a, b, _ = np.polyfit(v[keep], e[keep], 2)
    if a <= 0:
        return fallback
    vertex = -b / (2 * a)
    return float(vertex) if lo <= vertex <= hi else fallback
