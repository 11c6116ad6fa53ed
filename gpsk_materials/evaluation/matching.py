"""Uniqueness and novelty with pymatgen's StructureMatcher, made fast by a lossless composition prefilter.

``StructureMatcher.fit`` (default ``SpeciesComparator``, no subset matching) returns ``False`` unless both structures
have the same reduced formula, so bucketing by reduced formula drops no match. Each structure is reduced once
(Niggli, then primitive cell, as ``StructureMatcher`` does) and compared with ``skip_structure_reduction=True``;
reference structures are parsed and reduced only when a generated structure shares their formula.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from gpsk_materials.evaluation.io import ReferenceSet

#: Tolerances of uniqueness/novelty (MatterGen, Zeni et al. 2025; pymatgen's defaults).
UN_TOLERANCES: dict[str, float] = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}
#: Tolerances of crystal structure prediction (CDVAE/DiffCSP reconstruction and CSP).
CSP_TOLERANCES: dict[str, float] = {"ltol": 0.3, "stol": 0.5, "angle_tol": 10.0}


def make_matcher(ltol: float, stol: float, angle_tol: float) -> StructureMatcher:
    """A StructureMatcher with the given tolerances and pymatgen's other defaults (primitive cell, scaling)."""
    return StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol, primitive_cell=True, scale=True)


def reduce_structure(structure: Structure) -> Structure:
    """Niggli-reduced primitive cell, the form ``StructureMatcher`` compares (done once per structure)."""
    return structure.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()


def _safe_fit(matcher: StructureMatcher, a: Structure, b: Structure) -> bool:
    try:
        return bool(matcher.fit(a, b, skip_structure_reduction=True))
    except Exception:  # pymatgen's lattice search can fail on degenerate cells; such a pair does not match
        return False


@dataclass
class UniquenessResult:
    """Per-structure uniqueness: ``duplicate_of[i]`` is the index of the first structure ``i`` matches, or -1."""

    duplicate_of: list[int]

    @property
    def is_unique(self) -> list[bool]:
        """True for the first member of each group of matching structures."""
        return [d < 0 for d in self.duplicate_of]

    @property
    def n_unique(self) -> int:
        """Number of groups of matching structures."""
        return sum(self.is_unique)

    @property
    def rate(self) -> float:
        """Number of groups over number of structures."""
        return self.n_unique / len(self.duplicate_of) if self.duplicate_of else float("nan")


def _group_bucket(args: tuple[list[int], list[Structure], dict[str, float]]) -> list[tuple[int, int]]:
    indices, reduced, tol = args
    matcher = make_matcher(**tol)
    reps: list[int] = []
    out = []
    for pos, idx in enumerate(indices):
        dup = next((indices[r] for r in reps if _safe_fit(matcher, reduced[pos], reduced[r])), -1)
        if dup < 0:
            reps.append(pos)
        out.append((idx, dup))
    return out


def _map(func, tasks: list, workers: int, desc: str, progress: bool):
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from tqdm(pool.map(func, tasks, chunksize=max(1, len(tasks) // (8 * workers))), total=len(tasks),
                            desc=desc, disable=not progress)
    else:
        yield from (func(t) for t in tqdm(tasks, desc=desc, disable=not progress))


def _reduce_all(structures: Sequence[Structure], workers: int, progress: bool, desc: str) -> list[Structure]:
    return list(_map(reduce_structure, list(structures), workers, desc, progress))


def uniqueness(
    structures: Sequence[Structure],
    tolerances: dict[str, float] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> UniquenessResult:
    """Group matching structures (greedy, in input order, as ``StructureMatcher.group_structures``).

    Parameters
    ----------
    structures
        Structures to compare with each other.
    tolerances
        ``ltol``, ``stol``, ``angle_tol``; default :data:`UN_TOLERANCES`.
    workers
        Processes for the reduction and the matching.
    """
    tol = dict(UN_TOLERANCES if tolerances is None else tolerances)
    buckets: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(structures):
        buckets[s.composition.reduced_formula].append(i)
    need = [i for ids in buckets.values() if len(ids) > 1 for i in ids]
    reduced = dict(zip(need, _reduce_all([structures[i] for i in need], workers, progress, "reduce (uniqueness)")))
    duplicate_of = [-1] * len(structures)
    tasks = [(ids, [reduced[i] for i in ids], tol) for ids in buckets.values() if len(ids) > 1]
    for pairs in _map(_group_bucket, tasks, workers, "uniqueness", progress):
        for idx, dup in pairs:
            duplicate_of[idx] = dup
    return UniquenessResult(duplicate_of=duplicate_of)


def _novel_bucket(args: tuple[list[int], list[Structure], list[int], list[Structure], dict[str, float]]):
    indices, reduced, ref_indices, ref_reduced, tol = args
    matcher = make_matcher(**tol)
    out = []
    for idx, s in zip(indices, reduced):
        hit = next((r for r, ref in zip(ref_indices, ref_reduced) if _safe_fit(matcher, s, ref)), -1)
        out.append((idx, hit))
    return out


def novelty(
    structures: Sequence[Structure],
    reference: ReferenceSet,
    tolerances: dict[str, float] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[int]:
    """Index into ``reference`` of a structure each input matches, or -1 when the input is novel.

    Parameters
    ----------
    structures
        Structures to test.
    reference
        The training (or other) set; only rows sharing a reduced formula with an input are parsed.
    tolerances
        ``ltol``, ``stol``, ``angle_tol``; default :data:`UN_TOLERANCES`.
    workers
        Processes for the reduction and the matching.
    """
    tol = dict(UN_TOLERANCES if tolerances is None else tolerances)
    by_formula: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(structures):
        by_formula[s.composition.reduced_formula].append(i)
    ref_by_formula: dict[str, list[int]] = defaultdict(list)
    for r, f in enumerate(reference.formulas):
        if f in by_formula:
            ref_by_formula[f].append(r)
    ref_need = [r for rows in ref_by_formula.values() for r in rows]
    ref_reduced = dict(zip(ref_need, _reduce_all(reference.structures(ref_need), workers, progress,
                                                 "reduce (references)")))
    need = [i for f, ids in by_formula.items() if f in ref_by_formula for i in ids]
    reduced = dict(zip(need, _reduce_all([structures[i] for i in need], workers, progress, "reduce (novelty)")))
    tasks = [
        (ids, [reduced[i] for i in ids], ref_by_formula[f], [ref_reduced[r] for r in ref_by_formula[f]], tol)
        for f, ids in by_formula.items()
        if f in ref_by_formula
    ]
    matched = [-1] * len(structures)
    for pairs in _map(_novel_bucket, tasks, workers, "novelty", progress):
        for idx, hit in pairs:
            matched[idx] = hit
    return matched
