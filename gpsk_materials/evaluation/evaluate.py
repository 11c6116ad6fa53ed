"""One call that runs every metric on a set of generated structures and assembles the report."""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from gpsk_materials.atomic_files import write_atomic, write_text_atomic
from gpsk_materials.checks.validity import smact_validity, structural_validity
from gpsk_materials.provenance import plain
from gpsk_materials.defaults import EVALUATION_RELAX_STEPS, FMAX, RELAX_BATCH
from gpsk_materials.errors import ConfigError, DataError
from gpsk_materials.evaluation.csp import csp_metrics
from gpsk_materials.evaluation.distribution import COV_CUTOFFS, coverage, fingerprints, property_wasserstein
from gpsk_materials.evaluation.io import ReferenceSet
from gpsk_materials.evaluation.matching import CSP_TOLERANCES, UN_TOLERANCES, novelty, uniqueness
from gpsk_materials.evaluation.references import BAWLReference, small_reference_warning

logger = logging.getLogger(__name__)


@dataclass
class EvaluationOptions:
    """Settings of :func:`evaluate` (defaults are the published protocols where one exists)."""

    un_tolerances: dict[str, float] = field(default_factory=lambda: dict(UN_TOLERANCES))
    csp_tolerances: dict[str, float] = field(default_factory=lambda: dict(CSP_TOLERANCES))
    cov_dataset: str = "mp20"
    #: valid generated structures drawn for the Wasserstein distances (CDVAE: 1000; 0 = all)
    wdist_samples: int = 1000
    #: reference structures fingerprinted for coverage (0 = all; CDVAE uses the whole test set)
    coverage_reference_size: int = 1000
    seed: int = 0
    workers: int = 1
    progress: bool = True
    cache_dir: str | None = None
    stability: bool = False
    #: "self" (default hull from the same potential), "mp-dft" (CHGNet vs MP DFT formation energies), or "both"
    hull_protocol: str = "self"
    potential: str | None = None
    mp_potential: str = "chgnet"
    #: reference energies of the self-consistent hull: "relax" (relaxed with the potential) or "single_point"
    hull_mode: str = "relax"
    hull_max_sites: int | None = None
    #: JSON file of cached reference energies (checks.hull format); None for checks.hull's default location
    reference_energies: str | None = None
    device: str | None = None
    fmax: float = FMAX
    relax_steps: int = EVALUATION_RELAX_STEPS
    #: structures per forward pass of the batched relaxation
    relax_batch: int = RELAX_BATCH


def _is_valid(structure: Structure) -> tuple[bool, bool]:
    struct_ok = structural_validity(structure)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smact warns about noble gases without electronegativity
            comp_ok = bool(structure.is_ordered and smact_validity(structure.composition))
    except Exception:  # non-integer counts etc.: not charge balanced by definition
        comp_ok = False
    return struct_ok, comp_ok


def _cache(options: EvaluationOptions, name: str) -> Path | None:
    if options.cache_dir is None:
        return None
    folder = Path(options.cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


#: why a training set is refused together with CSP targets (rather than silently ignored)
CSP_WITH_TRAIN = (
    "uniqueness and novelty are not computed for crystal structure prediction (csp_targets / --csp-targets): the "
    "predictions of one target are meant to repeat it, so a novelty reference would be ignored; drop the training set "
    "(--train-csv) or the hash reference (--novelty-reference), or evaluate the predictions without the targets for "
    "uniqueness and novelty"
)
#: why a training CSV and a hash reference are refused together (one novelty reference per report)
TWO_NOVELTY_REFERENCES = (
    "two novelty references given: a training set (train / --train-csv, StructureMatcher) and a hash reference "
    "(novelty_reference / --novelty-reference, BAWL hashes); novelty and S.U.N. use one reference, so give one"
)


def _warn(summary: dict, message: str) -> None:
    """Record a warning in the report (``summary["warnings"]``) and the log."""
    logger.warning(message)
    summary.setdefault("warnings", []).append(message)


def evaluate(
    ids: list[str],
    structures: list[Structure],
    train: ReferenceSet | None = None,
    reference: ReferenceSet | None = None,
    csp_targets: tuple[list[str], list[Structure]] | None = None,
    options: EvaluationOptions | None = None,
    novelty_reference: BAWLReference | str | None = None,
) -> dict:
    """Evaluate generated structures.

    Parameters
    ----------
    ids, structures
        The generated structures.
    train
        Training set: novelty (and the novelty part of S.U.N.) by StructureMatcher.
    reference
        Reference distribution (e.g. the test set): Wasserstein distances, coverage, property plots.
    csp_targets
        Target ids and structures for crystal structure prediction; prediction ids name their target
        (``<target>`` or ``<target>__<k>``).
    options
        See :class:`EvaluationOptions`.
    novelty_reference
        Novelty (and the novelty of S.U.N.) by BAWL hash instead of ``train``: a
        :class:`~gpsk_materials.evaluation.references.BAWLReference` or the name of an MP-20 one (``"mp20-bawl"``:
        all 45,229 MP-20 materials; ``"mp20-bawl-train"``). Adds ``bawl_hash``, ``composition_in_reference`` and
        ``chemical_system_in_reference`` per structure and ``uniqueness_bawl``, ``composition_novelty``,
        ``chemical_system_novelty`` to the summary.

    Returns
    -------
    dict
        ``summary`` (metric -> value, with ``protocols`` naming each definition, ``novelty_reference`` and
        ``novelty_reference_size`` naming the novelty reference and its entries, and ``warnings``: a list of
        messages, e.g. a novelty reference under ``defaults.SMALL_NOVELTY_REFERENCE`` entries or a thin reference
        hull), ``per_structure`` (one record per input), ``timings`` (seconds per stage), ``options``.

    Raises
    ------
    ConfigError
        Both ``train`` (or ``novelty_reference``) and ``csp_targets``: CSP computes no uniqueness or novelty, so the
        reference would be silently ignored; or both ``train`` and ``novelty_reference``.
    DataError
        No structures, or ids and structures of different lengths.
    """
    options = options or EvaluationOptions()
    if csp_targets is not None and (train is not None or novelty_reference is not None):
        raise ConfigError(CSP_WITH_TRAIN)
    if train is not None and novelty_reference is not None:
        raise ConfigError(TWO_NOVELTY_REFERENCES)
    if isinstance(novelty_reference, str):
        novelty_reference = BAWLReference.mp20(novelty_reference)
    if len(ids) != len(structures):
        raise DataError("ids and structures differ in length")
    if not structures:
        raise DataError("no structures to evaluate")
    n = len(structures)
    timings: dict[str, float] = {}
    summary: dict[str, object] = {"n_structures": n}
    protocols: dict[str, str] = {}
    per = [{"id": i, "formula": s.composition.reduced_formula, "n_sites": len(s),
            "density": float(s.density), "volume_per_atom": float(s.volume / len(s))}
           for i, s in zip(ids, structures)]

    t = time.perf_counter()
    validity = [_is_valid(s) for s in tqdm(structures, desc="validity", disable=not options.progress)]
    for rec, (sv, cv) in zip(per, validity):
        rec.update(structural_valid=sv, compositional_valid=cv, valid=sv and cv)
    valid = np.array([sv and cv for sv, cv in validity])
    summary.update(
        structural_validity=float(np.mean([v[0] for v in validity])),
        compositional_validity=float(np.mean([v[1] for v in validity])),
        validity=float(valid.mean()),
    )
    protocols["validity"] = ("CDVAE: min interatomic distance >= 0.5 A and volume >= 0.1 A^3; SMACT charge "
                             "neutrality + Pauling test (gpsk_materials.checks.validity)")
    timings["validity"] = time.perf_counter() - t

    if csp_targets is None:
        t = time.perf_counter()
        uniq = uniqueness(structures, options.un_tolerances, workers=options.workers, progress=options.progress)
        for rec, dup in zip(per, uniq.duplicate_of):
            rec.update(unique=dup < 0, duplicate_of=None if dup < 0 else ids[dup])
        summary.update(uniqueness=uniq.rate, n_unique=uniq.n_unique)
        protocols["uniqueness"] = (f"StructureMatcher({options.un_tolerances}) groups among all inputs; "
                                   "rate = groups / inputs (first of each group is unique)")
        timings["uniqueness"] = time.perf_counter() - t
        if train is not None or novelty_reference is not None:
            t = time.perf_counter()
            if novelty_reference is not None:
                novel = _hash_novelty(structures, novelty_reference, per, summary, options)
                ref_name, ref_size = novelty_reference.name, len(novelty_reference)
                protocols["novelty"] = (
                    f"LeMat-GenBench: BAWL hash (EconNN bonding graph, 100 Weisfeiler-Lehman iterations, spglib "
                    f"space group at symprec 0.01, cell formula; gpsk_materials.evaluation.hashing) of the cell as "
                    f"given, else of it with sorted sites or of its primitive cell, not among the "
                    f"{novelty_reference.label}; a structure that cannot be hashed counts as not novel; "
                    "composition/chemical_system_novelty: reduced formula / element set absent from the reference")
            else:
                matched = novelty(structures, train, options.un_tolerances, workers=options.workers,
                                  progress=options.progress)
                for rec, m in zip(per, matched):
                    rec.update(novel=m < 0, matches_train=None if m < 0 else train.ids[m])
                novel = np.array([m < 0 for m in matched])
                ref_name, ref_size = Path(train.source).name or "the given set", len(train)
                summary["n_train"] = len(train)
                protocols["novelty"] = (f"no StructureMatcher({options.un_tolerances}) match among the {len(train)} "
                                        f"training structures of {ref_name}")
            unique = np.array(uniq.is_unique)
            summary.update(
                novelty=float(novel.mean()),
                unique_novel_rate=float((novel & unique).mean()),
                valid_unique_novel_rate=float((novel & unique & valid).mean()),
                novelty_reference=ref_name,
                novelty_reference_size=ref_size,
            )
            small = small_reference_warning(ref_name, ref_size)
            if small:
                _warn(summary, small)
            timings["novelty"] = time.perf_counter() - t

    if reference is not None:
        t = time.perf_counter()
        ref_sample = reference.sample(options.coverage_reference_size, seed=options.seed)
        ref_structures = ref_sample.structures()
        summary.update(property_wasserstein(
            [s for s, v in zip(structures, valid) if v], ref_structures, options.wdist_samples, options.seed))
        protocols["wdist"] = (f"CDVAE: scipy wasserstein_distance of density (g/cm^3) and number of elements, "
                              f"{options.wdist_samples or 'all'} random valid generated vs {len(ref_structures)} "
                              "reference structures")
        gen_s, gen_c = fingerprints(structures, options.workers, _cache(options, "fingerprints.jsonl"),
                                    options.progress)
        ref_s, ref_c = fingerprints(ref_structures, options.workers, _cache(options, "fingerprints.jsonl"),
                                    options.progress)
        ok = [i for i, (a, b) in enumerate(zip(ref_s, ref_c)) if a is not None and b is not None]
        cut = COV_CUTOFFS[options.cov_dataset]
        cov = coverage(gen_s, gen_c, [ref_s[i] for i in ok], [ref_c[i] for i in ok], cut["struc"], cut["comp"])
        for rec, hit in zip(per, cov["precision_hit"]):
            rec["coverage_precision_hit"] = hit
        summary.update(cov_recall=cov["cov_recall"], cov_precision=cov["cov_precision"], n_reference=len(ok))
        protocols["coverage"] = (f"CDVAE COV-R/COV-P: CrystalNN 'ops' site fingerprints averaged over sites "
                                 f"(cutoff {cut['struc']}) and scaled Magpie composition fingerprints (cutoff "
                                 f"{cut['comp']}), against {len(ok)} reference structures")
        timings["distribution"] = time.perf_counter() - t
        summary["_reference_for_plots"] = ref_structures  # removed before writing

    if csp_targets is not None:
        t = time.perf_counter()
        tids, tstructs = csp_targets
        tvalid = [all(_is_valid(s)) for s in tstructs]
        res = csp_metrics(structures, ids, list(valid), tstructs, tids, tvalid, options.csp_tolerances,
                          options.progress)
        summary.update({f"csp_{k}": v for k, v in res.summary().items()})
        protocols["csp"] = (f"DiffCSP: StructureMatcher({options.csp_tolerances}).get_rms_dist; valid prediction "
                            "(and target for one sample); match rate over targets, RMSE (normalised by "
                            "(V/n)^(1/3)) over matched; best of k = smallest RMS of a target's valid samples")
        summary["_csp_per_target"] = [
            {"target": tid, "n_samples": int(k), "rms_first": plain(float(a)), "rms_best": plain(float(b))}
            for tid, k, a, b in zip(res.target_ids, res.n_samples, res.rms_first, res.rms_best)
        ]
        timings["csp"] = time.perf_counter() - t

    if options.stability:
        from gpsk_materials.evaluation.stability import run_stability

        t = time.perf_counter()
        stab_summary, stab_per, stab_protocols = run_stability(
            structures, train if train is not None else novelty_reference, options)
        for message in stab_summary.pop("warnings", []):
            _warn(summary, message)
        summary.update(stab_summary)
        protocols.update(stab_protocols)
        for key, values in stab_per.items():
            for rec, v in zip(per, values):
                rec[key] = v
        timings["stability"] = time.perf_counter() - t

    if "warnings" in summary:  # last, after the metrics, where a reader of the table looks after the numbers
        summary["warnings"] = summary.pop("warnings")
    summary["protocols"] = protocols
    return {"summary": summary, "per_structure": per, "timings": timings, "options": asdict(options)}


def _hash_novelty(structures: list[Structure], reference: BAWLReference, per: list[dict], summary: dict,
                  options: EvaluationOptions) -> np.ndarray:
    """Novelty by BAWL hash (per-structure fields and summary keys); returns the novel mask."""
    hashes, known = reference.hash_and_match(structures, progress=options.progress)
    comp_known = [reference.composition_known(s.composition) for s in structures]
    system_known = [reference.chemical_system_known(s.composition) for s in structures]
    for rec, h, k, ck, sk in zip(per, hashes, known, comp_known, system_known):
        rec.update(novel=k is False, matches_train=h if k else None, bawl_hash=h, composition_in_reference=ck,
                   chemical_system_in_reference=sk)
    hashed = [h for h in hashes if h is not None]
    summary.update(
        uniqueness_bawl=len(set(hashed)) / len(hashed) if hashed else float("nan"),
        n_unhashable=len(hashes) - len(hashed),
        novelty_reference_materials=reference.n_materials,
        composition_novelty=float(np.mean([not c for c in comp_known])),
        chemical_system_novelty=float(np.mean([not c for c in system_known])),
    )
    return np.array([k is False for k in known])


def write_report(report: dict, out_dir: str | Path, structures: list[Structure] | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``metrics.md`` (table), ``per_structure.csv`` and the plots into ``out_dir``."""
    import pandas as pd

    from gpsk_materials.evaluation.plots import plot_ehull_histogram, plot_property_distributions

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(report["summary"])
    ref_structures = summary.pop("_reference_for_plots", None)
    csp_per_target = summary.pop("_csp_per_target", None)
    files: dict[str, Path] = {}
    payload = {**report, "summary": summary}
    if csp_per_target is not None:
        payload["csp_per_target"] = csp_per_target
    files["json"] = out / "report.json"
    write_text_atomic(files["json"], json.dumps(plain(payload), indent=1) + "\n")
    files["table"] = out / "metrics.md"
    write_text_atomic(files["table"], format_table(summary) + "\n")
    files["csv"] = out / "per_structure.csv"
    frame = pd.DataFrame(report["per_structure"])
    write_atomic(files["csv"], lambda tmp: frame.to_csv(tmp, index=False), ".csv")
    if "e_above_hull" in report["per_structure"][0]:
        files["ehull_plot"] = plot_ehull_histogram([r["e_above_hull"] for r in report["per_structure"]],
                                                   out / "e_hull_histogram.png")
    if structures is not None and ref_structures is not None:
        files["property_plot"] = plot_property_distributions(structures, ref_structures,
                                                             out / "property_distributions.png")
    return files


def format_table(summary: dict) -> str:
    """Markdown table of the scalar metrics, then the protocol of each group."""
    rows = ["| metric | value |", "|---|---|"]
    for key, value in summary.items():
        if key in ("protocols", "warnings") or key.startswith("_"):
            continue
        if isinstance(value, float):
            text = "n/a" if not math.isfinite(value) else f"{value:.4f}"
        else:
            text = str(value)
        rows.append(f"| {key} | {text} |")
    rows.append("")
    rows += [f"- **warning**: {w}" for w in summary.get("warnings", [])]
    rows += [f"- **{k}**: {v}" for k, v in summary.get("protocols", {}).items()]
    return "\n".join(rows)
