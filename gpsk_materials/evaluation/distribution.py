"""Distribution metrics of CDVAE: Wasserstein distances of density and number of elements, and coverage.

Definitions (Xie et al. 2022, code txie-93/cdvae ``scripts/compute_metrics.py``, reused by DiffCSP and FlowMM):

* ``wdist_density`` / ``wdist_num_elems``: ``scipy.stats.wasserstein_distance`` between the densities (g/cm^3)
  and the numbers of distinct elements of valid generated structures and of the reference structures. CDVAE draws
  1,000 valid samples; ``n_samples`` does the same (all valid ones when fewer).
* ``cov_recall`` (COV-R): fraction of references within both cutoffs (structure-fingerprint distance <= 0.4,
  scaled composition-fingerprint distance <= 10 for MP-20) of some generated structure; ``cov_precision``
  (COV-P): number of generated structures within both cutoffs of some reference, over all generated structures.
  Every generated structure whose fingerprint can be computed takes part (CDVAE does not filter by validity
  here); one whose fingerprint fails counts in the denominator of COV-P only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance
from tqdm.auto import tqdm

from gpsk_materials.evaluation._cache import CacheWriter, content_key, read_cache
from gpsk_materials.evaluation.fingerprints import (
    composition_fingerprint,
    scale_composition_fingerprints,
    structure_fingerprint,
)

#: CDVAE's coverage cutoffs per dataset (structure fingerprint, scaled composition fingerprint).
COV_CUTOFFS: dict[str, dict[str, float]] = {
    "mp20": {"struc": 0.4, "comp": 10.0},
    "carbon": {"struc": 0.2, "comp": 4.0},
    "perovskite": {"struc": 0.2, "comp": 4.0},
}


def _fingerprints_one(structure: Structure) -> tuple[list[float] | None, list[float] | None]:
    try:
        return structure_fingerprint(structure).tolist(), composition_fingerprint(structure.composition).tolist()
    except Exception:  # CDVAE counts a structure whose CrystalNN fingerprint fails as having none
        return None, None


def fingerprints(
    structures: Sequence[Structure],
    workers: int = 1,
    cache: str | Path | None = None,
    progress: bool = True,
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Structure and (unscaled) composition fingerprints; ``None`` where CrystalNN fails.

    Parameters
    ----------
    structures
        Structures to featurise.
    workers
        Processes.
    cache
        JSON-lines file of fingerprints keyed by a hash of the structure; read before and appended to while
        computing, so an interrupted run resumes.
    """
    keys = [content_key(s) for s in structures]
    known = {k: (r["struct_fp"], r["comp_fp"]) for k, r in read_cache(cache).items()}
    todo = [i for i, k in enumerate(keys) if k not in known]
    with CacheWriter(cache) as writer:
        if workers > 1 and len(todo) > 1:
            pool = ProcessPoolExecutor(max_workers=workers)
            results = pool.map(_fingerprints_one, [structures[i] for i in todo], chunksize=4)
        else:
            pool, results = None, map(_fingerprints_one, [structures[i] for i in todo])
        for i, (sfp, cfp) in zip(todo, tqdm(results, total=len(todo), desc="fingerprints", disable=not progress)):
            known[keys[i]] = (sfp, cfp)
            writer.write(keys[i], struct_fp=sfp, comp_fp=cfp)
        if pool is not None:
            pool.shutdown()
    sfps = [None if known[k][0] is None else np.asarray(known[k][0]) for k in keys]
    cfps = [None if known[k][1] is None else np.asarray(known[k][1], dtype=float) for k in keys]
    return sfps, cfps


def coverage(
    gen_struct_fps: Sequence[np.ndarray | None],
    gen_comp_fps: Sequence[np.ndarray | None],
    ref_struct_fps: Sequence[np.ndarray],
    ref_comp_fps: Sequence[np.ndarray],
    struc_cutoff: float = 0.4,
    comp_cutoff: float = 10.0,
) -> dict[str, object]:
    """COV-R and COV-P (CDVAE); composition fingerprints are unscaled and scaled here.

    Returns
    -------
    dict
        ``cov_recall``, ``cov_precision``, and per generated structure ``precision_hit`` (bool or None).
    """
    keep = [i for i, (s, c) in enumerate(zip(gen_struct_fps, gen_comp_fps)) if s is not None and c is not None]
    n_gen = len(gen_struct_fps)
    precision_hit: list[bool | None] = [None] * n_gen
    if not keep or len(ref_struct_fps) == 0:
        return {"cov_recall": 0.0 if len(ref_struct_fps) else float("nan"),
                "cov_precision": 0.0 if n_gen else float("nan"), "precision_hit": precision_hit}
    gs = np.array([gen_struct_fps[i] for i in keep])
    gc = scale_composition_fingerprints(np.array([gen_comp_fps[i] for i in keep]))
    rs = np.asarray(ref_struct_fps, dtype=float)
    rc = scale_composition_fingerprints(np.asarray(ref_comp_fps, dtype=float))
    struc_d = cdist(gs, rs)
    comp_d = cdist(gc, rc)
    recall = np.logical_and(struc_d.min(axis=0) <= struc_cutoff, comp_d.min(axis=0) <= comp_cutoff)
    precision = np.logical_and(struc_d.min(axis=1) <= struc_cutoff, comp_d.min(axis=1) <= comp_cutoff)
    for j, i in enumerate(keep):
        precision_hit[i] = bool(precision[j])
    return {"cov_recall": float(recall.mean()), "cov_precision": float(precision.sum() / n_gen),
            "precision_hit": precision_hit}


def property_wasserstein(
    generated: Sequence[Structure],
    reference: Sequence[Structure],
    n_samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Wasserstein distances of density and number of elements (pass valid generated structures only).

    Parameters
    ----------
    generated
        Valid generated structures; ``n_samples`` of them are drawn at random (all when fewer, or when 0).
    reference
        Reference structures (all are used).
    """
    gen = list(generated)
    if n_samples and len(gen) > n_samples:
        rng = np.random.default_rng(seed)
        gen = [gen[i] for i in rng.choice(len(gen), size=n_samples, replace=False)]
    if not gen or not reference:
        return {"wdist_density": float("nan"), "wdist_num_elems": float("nan"), "n_generated_used": len(gen)}
    return {
        "wdist_density": float(wasserstein_distance([s.density for s in gen], [s.density for s in reference])),
        "wdist_num_elems": float(wasserstein_distance([len(s.composition.elements) for s in gen],
                                                      [len(s.composition.elements) for s in reference])),
        "n_generated_used": len(gen),
    }
