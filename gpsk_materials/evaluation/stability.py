"""Stability: relax with an interatomic potential, energy above a convex hull, stable/metastable/S.U.N. rates.

Relaxation and energies come from :mod:`gpsk_materials.checks.potentials`; the default hull from
:class:`gpsk_materials.checks.hull.ReferenceHull` (the same potential's energies of the relaxed reference structures
of ``pool.csv.gz``, elements included: a self-consistent hull). The second protocol, against Materials Project DFT
formation energies, lives in :mod:`gpsk_materials.evaluation.mp_hull`.

Rate definitions (denominator: every evaluated structure; a failed relaxation counts as not stable):

* ``stable_rate``: E_hull <= 0 eV/atom within the numerical tolerance ``defaults.HULL_TOLERANCE`` (1 meV/atom:
  a structure on the hull comes out a fraction of a meV above it from the relaxation's force threshold and the
  hull's floating point, e.g. experimental NaCl at +0.00036 eV/atom); ``metastable_rate``: E_hull <= 0.1 eV/atom
  (stable ones included).
* LeMat-GenBench (``lemat_genbench/metrics/sun_metric.py``): ``sun_rate_lemat`` counts structures with
  E_hull <= 0 that are the first of their StructureMatcher group *within the stable set* and novel;
  ``msun_rate_lemat`` the same within the set with 0 < E_hull <= 0.1 (stable ones excluded, as their code does).
* MatterGen (Zeni et al. 2025): ``sun_rate_mattergen`` counts structures with E_hull <= 0.1 that are the first of
  their group among all structures and novel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from gpsk_materials.checks.potentials import RelaxResult
from gpsk_materials.defaults import EVALUATION_RELAX_STEPS, FMAX, HULL_TOLERANCE, RELAX_BATCH
from gpsk_materials.evaluation._cache import CacheWriter, content_key, read_cache
from gpsk_materials.evaluation.io import ReferenceSet
from gpsk_materials.evaluation.matching import novelty, uniqueness
from gpsk_materials.evaluation.references import BAWLReference

STABLE = 0.0
METASTABLE = 0.1


def _relax_one(structure: Structure, potential, fmax: float, steps: int) -> RelaxResult:
    try:
        return potential.relax([structure], fmax=fmax, steps=steps)[0]
    except Exception as exc:  # unknown element, exploding forces...: recorded as failed
        return RelaxResult(None, float("nan"), error=f"{type(exc).__name__}: {exc}")


def relax_structures(
    structures: Sequence[Structure],
    potential,
    fmax: float = FMAX,
    steps: int = EVALUATION_RELAX_STEPS,
    batch_size: int = RELAX_BATCH,
    cache: str | Path | None = None,
    progress: bool = True,
) -> list[RelaxResult]:
    """Relax structures with ``potential`` (a :class:`gpsk_materials.checks.potentials.Potential`), resumably.

    Parameters
    ----------
    fmax, steps
        Force threshold (eV/A) and maximum FIRE steps (cell relaxed too).
    batch_size
        Structures per forward pass of the batched relaxation (a stopped structure makes room for the next).
    cache
        JSON-lines file keyed by a hash of (input structure, potential name, fmax, steps); an interrupted run
        skips what it holds.
    """
    keys = [content_key(s, potential.name, fmax, steps) for s in structures]
    known = {
        k: RelaxResult(None if r["structure"] is None else Structure.from_dict(r["structure"]), r["energy_per_atom"],
                       converged=r["converged"], steps=r["steps"], error=r.get("error", ""))
        for k, r in read_cache(cache).items()
    }
    todo = [i for i, k in enumerate(keys) if k not in known]
    with CacheWriter(cache) as writer, tqdm(total=len(todo), desc=f"relax ({potential.name})",
                                            disable=not progress) as bar:

        def record(i: int, rel: RelaxResult) -> None:
            known[keys[i]] = rel
            writer.write(keys[i], structure=None if rel.structure is None else rel.structure.as_dict(),
                         energy_per_atom=rel.energy_per_atom, converged=rel.converged, steps=rel.steps,
                         error=rel.error)
            bar.update(1)

        # each structure is cached the moment it stops, so an interrupted run loses nothing finished
        try:
            if todo:
                potential.relax([structures[i] for i in todo], fmax=fmax, steps=steps, batch_size=batch_size,
                                callback=lambda j, r: record(todo[j], r))
        except Exception:  # one bad structure must not sink the others: the rest one by one
            for i in todo:
                if keys[i] not in known:
                    record(i, _relax_one(structures[i], potential, fmax, steps))
    return [known[k] for k in keys]


def _first_of_groups(structures: Sequence[Structure], indices: list[int], workers: int) -> set[int]:
    if not indices:
        return set()
    res = uniqueness([structures[i] for i in indices], workers=workers, progress=False)
    return {indices[j] for j, u in enumerate(res.is_unique) if u}


def _novel(structures: list[Structure], reference: ReferenceSet | BAWLReference, workers: int,
           progress: bool) -> list[bool]:
    """Novelty flags against a training set (StructureMatcher) or a hash reference (BAWL; unhashable: not novel)."""
    if isinstance(reference, BAWLReference):
        return [k is False for k in reference.hash_and_match(structures, progress=progress)[1]]
    return [m < 0 for m in novelty(structures, reference, workers=workers, progress=progress)]


def sun_rates(
    e_hull: Sequence[float],
    structures: Sequence[Structure | None],
    reference: ReferenceSet | BAWLReference | None,
    workers: int = 1,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, list]]:
    """Stable, metastable, SUN and MSUN rates (see the module docstring for each definition).

    Parameters
    ----------
    e_hull
        Energy above hull (eV/atom) per structure, NaN where unknown (failed relaxation, element off the hull).
    structures
        The structures uniqueness and novelty are judged on (the relaxed ones), None where relaxation failed.
    reference
        Novelty reference: a training set (StructureMatcher) or a BAWL hash reference; without one, SUN rates are
        not computed.

    Returns
    -------
    summary, per_structure
        Rates, and per-structure flags ``stable``, ``metastable``, ``sun_lemat``, ``msun_lemat``, ``sun_mattergen``.
    """
    e = np.array([np.nan if x is None else float(x) for x in e_hull])
    n = len(e)
    ok = np.isfinite(e)
    stable = ok & (e <= STABLE + HULL_TOLERANCE)
    meta = ok & (e <= METASTABLE)
    summary: dict[str, float] = {
        "n": n, "n_with_e_hull": int(ok.sum()),
        "stable_rate": float(stable.mean()) if n else float("nan"),
        "metastable_rate": float(meta.mean()) if n else float("nan"),
        "mean_e_hull": float(np.nanmean(e)) if ok.any() else float("nan"),
        "median_e_hull": float(np.nanmedian(e)) if ok.any() else float("nan"),
    }
    per: dict[str, list] = {"stable": stable.tolist(), "metastable": meta.tolist()}
    if reference is None:
        return summary, per
    usable = [i for i in range(n) if ok[i] and structures[i] is not None]
    candidates = [i for i in usable if meta[i]]
    flags = _novel([structures[i] for i in candidates], reference, workers, progress)
    novel = {i for i, f in zip(candidates, flags) if f}
    stable_idx = [i for i in usable if stable[i]]
    meta_only_idx = [i for i in usable if meta[i] and not stable[i]]
    sun_l = _first_of_groups(structures, stable_idx, workers) & novel
    msun_l = _first_of_groups(structures, meta_only_idx, workers) & novel
    unique_all = uniqueness([structures[i] for i in usable], workers=workers, progress=False).is_unique
    first_all = {i for i, u in zip(usable, unique_all) if u}
    sun_m = first_all & novel & set(candidates)
    summary.update(
        sun_rate_lemat=len(sun_l) / n, msun_rate_lemat=len(msun_l) / n, sun_rate_mattergen=len(sun_m) / n,
    )
    tested = set(candidates)
    per.update(
        novel_relaxed=[(i in novel) if i in tested else None for i in range(n)],
        sun_lemat=[i in sun_l for i in range(n)],
        msun_lemat=[i in msun_l for i in range(n)],
        sun_mattergen=[i in sun_m for i in range(n)],
    )
    return summary, per


def _e_hull(hull, relaxed: list[RelaxResult], to_hull_energy) -> list[float]:
    from gpsk_materials.errors import GPSKError

    out = []
    for r in relaxed:
        if r.structure is None or not np.isfinite(r.energy_per_atom):
            out.append(float("nan"))
            continue
        try:
            out.append(hull.e_above_hull(r.structure.composition, to_hull_energy(r)))
        except GPSKError:  # an element outside the reference data: no E_hull
            out.append(float("nan"))
    return out


def thin_hull_flags(structures: Sequence[Structure], stable: Sequence[bool], pool_path=None,
                    max_sites: int | None = None, near_hull_table=None) -> tuple[dict, dict[str, list], list[str]]:
    """The thin-hull check (:mod:`gpsk_materials.evaluation.hull_coverage`) of each structure's composition.

    Parameters
    ----------
    structures, stable
        The evaluated structures and their stable verdicts.
    pool_path, max_sites, near_hull_table
        Those of :class:`~gpsk_materials.evaluation.hull_coverage.ThinHullCheck` (None: its defaults).

    Returns
    -------
    summary, per_structure, warnings
        ``n_thin_hull`` and ``n_stable_thin_hull``; per structure ``thin_hull`` (bool) and ``thin_hull_warning``
        (the message or None); one report-level warning naming the flagged formulas (none when nothing is flagged;
        a warning that the check could not run when its data are missing).
    """
    from gpsk_materials.errors import DataError
    from gpsk_materials.evaluation.hull_coverage import ThinHullCheck

    try:
        messages = ThinHullCheck(pool_path=pool_path, near_hull_table=near_hull_table, max_sites=max_sites).check_all(
            s.composition for s in structures)
    except DataError as exc:
        return {}, {}, [f"thin-hull check not run: {exc}"]
    flagged = [m is not None for m in messages]
    n_stable = sum(f and s for f, s in zip(flagged, stable))
    summary = {"n_thin_hull": sum(flagged), "n_stable_thin_hull": n_stable}
    per = {"thin_hull": flagged, "thin_hull_warning": messages}
    warn = []
    if any(flagged):
        formulas = sorted({s.composition.reduced_formula for s, f in zip(structures, flagged) if f})
        warn.append(f"{sum(flagged)} structure(s), {n_stable} of them 'stable', have a thin reference hull (the "
                    f"pool lacks a phase of their known Materials Project ground state): {', '.join(formulas[:20])}"
                    f"{' ...' if len(formulas) > 20 else ''}; their stable/S.U.N. verdicts may be artifacts "
                    "(per structure: thin_hull_warning)")
    return summary, per, warn


def run_stability(structures: Sequence[Structure], train: ReferenceSet | BAWLReference | None,
                  options) -> tuple[dict, dict, dict]:
    """Relax, compute E_hull with the protocol(s) of ``options.hull_protocol``, and the rates.

    Parameters
    ----------
    train
        Novelty reference of the S.U.N. rates (a training set or a BAWL hash reference), or None.

    Returns
    -------
    summary, per_structure, protocols
        Keys of the MP-DFT protocol are prefixed ``mp_``; with the self-consistent hull, the thin-hull check's keys
        (:func:`thin_hull_flags`) and ``summary["warnings"]`` (a list) where it flags something.
    """
    from gpsk_materials.checks.hull import ReferenceHull
    from gpsk_materials.checks.potentials import load_potential, resolve_potential
    from gpsk_materials.evaluation.mp_hull import check_mp_scale, formation_energy, mp_dft_hull

    summary: dict = {}
    per: dict[str, list] = {}
    protocols: dict[str, str] = {}
    cache_dir = Path(options.cache_dir) if options.cache_dir else None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)

    def relax(pot) -> list[RelaxResult]:
        if options.device:
            pot.to(options.device)
        name = pot.name.replace(":", "_").replace("/", "_")
        return relax_structures(structures, pot, options.fmax, options.relax_steps, options.relax_batch,
                                None if cache_dir is None else cache_dir / f"relax_{name}.jsonl", options.progress)

    def record(prefix: str, relaxed: list[RelaxResult], e_hull: list[float]) -> None:
        s, p = sun_rates(e_hull, [r.structure for r in relaxed], train, options.workers, options.progress)
        s["relax_converged_rate"] = float(np.mean([r.converged for r in relaxed]))
        s["relax_failed"] = sum(r.structure is None for r in relaxed)
        summary.update({prefix + k: v for k, v in s.items()})
        per[prefix + "e_above_hull"] = e_hull
        per[prefix + "energy_per_atom"] = [r.energy_per_atom for r in relaxed]
        per[prefix + "relax_converged"] = [r.converged for r in relaxed]
        per[prefix + "relax_error"] = [r.error for r in relaxed]
        per.update({prefix + k: v for k, v in p.items()})

    if options.hull_protocol in ("self", "both"):
        pot = resolve_potential(options.potential)
        hull = ReferenceHull(pot, cache_path=options.reference_energies, mode=options.hull_mode,
                             max_sites=options.hull_max_sites, fmax=options.fmax, progress=options.progress,
                             relax_batch=options.relax_batch)
        relaxed = relax(pot)
        hull.prepare({el.symbol for el in r.structure.composition.elements} for r in relaxed if r.structure is not None)
        record("", relaxed, _e_hull(hull, relaxed, lambda r: r.energy_per_atom))
        thin_summary, thin_per, thin_warn = thin_hull_flags(structures, per["stable"], hull.pool_path,
                                                            options.hull_max_sites)
        summary.update(thin_summary)
        per.update(thin_per)
        if thin_warn:
            summary.setdefault("warnings", []).extend(thin_warn)
        protocols["stability"] = (
            f"self-consistent hull: candidates relaxed with {pot.name} (FIRE, cell free, fmax {options.fmax} eV/A, "
            f"<= {options.relax_steps} steps); hull of the same potential's energies of pool.csv.gz structures "
            f"({options.hull_mode}) of each chemical system, elements included (checks.hull.ReferenceHull). "
            f"stable: E_hull <= 0 (within {HULL_TOLERANCE} eV/atom, the numerical tolerance); metastable: <= 0.1 "
            "eV/atom; sun_rate_lemat / msun_rate_lemat: LeMat-GenBench (SUN E_hull <= 0; MSUN 0 < E_hull <= 0.1, "
            "uniqueness within each set); sun_rate_mattergen: MatterGen "
            "(E_hull <= 0.1, unique among all, novel); all over every input structure; thin_hull: the pool lacks a "
            "phase of the composition's Materials Project ground state (evaluation.hull_coverage)")
    if options.hull_protocol in ("mp-dft", "both"):
        pot = (load_potential(backend="chgnet") if options.mp_potential == "chgnet"
               else resolve_potential(options.mp_potential))
        check_mp_scale(pot)
        hull = mp_dft_hull()
        relaxed = relax(pot)
        e_form = [formation_energy(r.structure.composition, r.energy_per_atom) if r.structure is not None
                  else float("nan") for r in relaxed]
        record("mp_", relaxed, _e_hull(hull, relaxed, lambda r: formation_energy(r.structure.composition,
                                                                                 r.energy_per_atom)))
        per["mp_formation_energy"] = e_form
        protocols["stability_mp_dft"] = (
            f"MP DFT hull: candidates relaxed with {pot.name} (MP2020-compatible energies); formation energy vs MP "
            "elemental references; hull of MP DFT formation energies of near-hull MP-20 materials "
            "(mp20_near_hull_dft.parquet) and the elements; same rate definitions, keys prefixed mp_")
    return summary, per, protocols
