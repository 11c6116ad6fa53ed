"""Post-checks of generated candidates, with a plain interface: structures, the request's conditions and the
check flags in; one record per kept structure out (scores, best-of-N choice, relaxation, hull).

``post_checks`` writes nothing on the structures: the caller (e.g. :class:`~gpsk_materials.pipelines.CrystalGenerator`)
decides where the records go. The flags are those of :func:`parse_checks`:

===================== =========================================================================================
``validity_symmetry`` validity, space group found and matched, connectivity (the :class:`CandidateScorer`
                      breakdown; the default; ``basic`` is its old name, still accepted)
``energy``            + the potential's energy per atom (scored)
``volume_scan``       + the volume scan at fixed shape before the energy; **the returned cells are rescaled**
``relax``             + FIRE relaxation of the kept structures, re-checked by the same scorer
``hull``              + energy above a :class:`~gpsk_materials.checks.hull.ReferenceHull`
===================== =========================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpsk_materials.defaults import FMAX, RELAX_STEPS
from gpsk_materials.errors import ConditioningError, GPSKError

#: the checks run without a potential, and the default: validity, symmetry and connectivity of the structure
DEFAULT_CHECKS = "validity_symmetry"
#: check names accepted by ``checks=`` (a name, a comma/plus-separated string, or a list of names)
CHECKS = ("none", DEFAULT_CHECKS, "energy", "volume_scan", "relax", "hull")
#: old names of checks, still accepted
CHECK_ALIASES = {"basic": DEFAULT_CHECKS}
#: the keys of a check record taken from the scorer's breakdown, and those added by the energy-based checks
_BASIC_KEYS = ("sound", "valid", "strict_valid", "strict_reasons", "min_distance", "min_distance_ratio", "space_group",
               "space_group_match", "crystal_system_match", "connectivity")
_ENERGY_KEYS = ("energy_per_atom", "cohesive_energy", "energy_sane", "isolated_sites")


def parse_checks(checks: str | Iterable[str] | None) -> frozenset[str]:
    """Normalise ``checks=``: None -> ``validity_symmetry``; ``"energy"``, ``"volume_scan"``, ``"relax"`` and
    ``"hull"`` imply ``"validity_symmetry"`` and the potential energy; ``"none"`` alone skips every check; ``"basic"``
    is the old name of ``"validity_symmetry"``.

    Raises
    ------
    ConditioningError
        An unknown check name, or ``"none"`` with another check.
    """
    if checks is None:
        return frozenset({DEFAULT_CHECKS})
    names = checks.replace("+", ",").split(",") if isinstance(checks, str) else list(checks)
    flags = {str(c).strip().lower().replace("-", "_") for c in names if str(c).strip()}
    flags = {CHECK_ALIASES.get(f, f) for f in flags}
    unknown = flags - set(CHECKS)
    if unknown or not flags:
        raise ConditioningError(f"unknown checks {sorted(unknown) or checks!r}; choose from {CHECKS}")
    if flags == {"none"}:
        return frozenset()
    if "none" in flags:
        raise ConditioningError(f"checks 'none' cannot be combined with {sorted(flags - {'none'})}")
    if flags & {"volume_scan", "relax", "hull"}:
        flags.add("energy")
    return frozenset(flags | {DEFAULT_CHECKS})


@dataclass
class CheckRecord:
    """One kept structure: ``index`` into the structures given, the ``structure`` as checked (volume-scanned or
    relaxed where those checks ran), the scorer's ``scores`` (None without checks) and the ``checks`` record
    (``sound``, ``valid``, ``strict_valid``, ``strict_reasons``, ``min_distance``, ``min_distance_ratio``,
    ``space_group``, ``space_group_match``, ``crystal_system_match``, ``connectivity``, and ``energy_per_atom``,
    ``cohesive_energy``, ``energy_sane``, ``isolated_sites``, ``volume_scale_factor``, ``relaxed``, ``e_above_hull``
    where run)."""

    index: int
    structure: Any
    scores: dict[str, Any] | None = None
    checks: dict[str, Any] = field(default_factory=dict)


def make_scorer(flags: frozenset[str], potential: Any = None, symprec: float = 0.1):
    """The :class:`~gpsk_materials.checks.scoring.CandidateScorer` that ``flags`` ask for."""
    from gpsk_materials.checks.scoring import CandidateScorer
    from gpsk_materials.checks.symmetry import SymmetryCheck

    return CandidateScorer(
        potential=potential if "energy" in flags else False,
        volume_scan="volume_scan" in flags,
        symmetry=SymmetryCheck(symprec=symprec),
    )


def post_checks(
    structures: Sequence[Any],
    conditions: Any = None,
    flags: frozenset[str] | str | Iterable[str] | None = DEFAULT_CHECKS,
    *,
    keep: int | None = None,
    tie_break: Sequence[float] | None = None,
    scorer: Any = None,
    potential: Any = None,
    hull: Any = None,
    symprec: float = 0.1,
    relax_steps: int = RELAX_STEPS,
    fmax: float = FMAX,
) -> list[CheckRecord]:
    """Check ``structures`` (pymatgen Structures) against ``conditions`` and return the records of the kept ones.

    Parameters
    ----------
    conditions
        Anything with (or a mapping of) ``space_group`` and ``crystal_system``, e.g. the request's validated
        :class:`~gpsk_materials.models.conditioning.Conditions`; None checks nothing against a request.
    flags
        The checks (see :func:`parse_checks`).
    keep
        Best-of-N: keep the best ``keep``, best first: sound candidates before the others, then by the checks'
        total score (:func:`~gpsk_materials.checks.scoring.rank_key`); among equal keys, and without checks, the
        lowest ``tie_break`` first. None keeps every structure in the order given.
    scorer
        A configured CandidateScorer (default: :func:`make_scorer` of ``flags``, ``potential``, ``symprec``).
    potential
        The :class:`~gpsk_materials.checks.potentials.Potential` of the energy-based checks.
    hull
        The :class:`~gpsk_materials.checks.hull.ReferenceHull` of the ``"hull"`` check (on the potential's scale).
    relax_steps, fmax
        Settings of the ``"relax"`` check.
    """
    from gpsk_materials.checks._common import as_structures

    flags = flags if isinstance(flags, frozenset) else parse_checks(flags)
    structures = as_structures(structures)
    if DEFAULT_CHECKS in flags and structures and scorer is None:
        scorer = make_scorer(flags, potential, symprec)
    records = [CheckRecord(j, s) for j, s in enumerate(structures)]
    if DEFAULT_CHECKS in flags and records:
        scored, scores = scorer.score_records(structures, conditions)
        for rec, s, sc in zip(records, scored, scores):
            rec.structure, rec.scores, rec.checks = s, sc, _check_record(sc, flags)
    if keep is not None:
        from gpsk_materials.checks.scoring import rank_key

        ties = [0.0] * len(records) if tie_break is None else list(tie_break)
        order = sorted(range(len(records)), key=lambda i: (*(-x for x in rank_key(records[i].scores)), ties[i]))
        records = [records[i] for i in order][:keep]
    if "relax" in flags and records:
        _relax(records, conditions, scorer, potential, relax_steps, fmax)
    if "hull" in flags:
        for rec in records:
            e = rec.checks.get("energy_per_atom")
            try:
                rec.checks["e_above_hull"] = None if e is None else hull.e_above_hull(rec.structure, e)
            except GPSKError as exc:
                rec.checks["e_above_hull"], rec.checks["e_above_hull_error"] = None, str(exc)
    return records


def _check_record(scores: dict[str, Any], flags: frozenset[str]) -> dict[str, Any]:
    rec = {k: scores.get(k) for k in _BASIC_KEYS}
    if "energy" in flags:
        rec.update({k: scores.get(k) for k in _ENERGY_KEYS})
    if "volume_scan" in flags:
        rec["volume_scale_factor"] = scores.get("volume_scale_factor")
        rec["volume_scan_at_boundary"] = scores.get("volume_scan_at_boundary")
    return rec


def result_flags(checks: dict[str, Any], decode: dict[str, Any] | None = None) -> str | None:
    """What the checks or the decoder could not vouch for, in words (None when nothing): a decode kept below the
    decoder's acceptance (``decode["low_confidence"]``: confidence of an inferred composition, implausibly close
    atoms; issue 16, case 3), a failed strict check with its reasons and an insane energy (case 9), atoms without
    a neighbour within the potential's cutoff, a volume scan whose minimum lay at an end of its range (case 8).
    ``checks`` is a :class:`CheckRecord`'s ``checks``, ``decode`` the structure's ``decode`` provenance."""
    flags = []
    doubts = (decode or {}).get("low_confidence_reasons") or []
    if any(d.startswith("decode confidence") for d in doubts):
        flags.append(f"low decode confidence {decode['confidence']:.2f} (composition inferred)")
    if any("covalent radii" in d for d in doubts) and checks.get("strict_valid") is not False:
        flags.append("decoded atoms closer than their radii allow")  # else the strict check's flag says it
    if checks.get("strict_valid") is False:
        closest = checks.get("min_distance")
        why = ([] if closest is None else [f"closest atoms {closest:.2f} A"]) + list(checks.get("strict_reasons") or [])
        flags.append(f"fails the strict check: {', '.join(why)}")
    if checks.get("energy_sane") is False:
        flags.append(f"energy not sane: cohesive energy {checks['cohesive_energy']:.2f} eV/atom")
    if checks.get("isolated_sites"):
        flags.append(f"isolated atoms {checks['isolated_sites']}")
    if checks.get("volume_scan_at_boundary"):
        flags.append("volume scan minimum at its range's edge (not applied)")
    return "; ".join(flags) or None


def _relax(records: list[CheckRecord], conditions: Any, scorer: Any, potential: Any, steps: int, fmax: float) -> None:
    """Relax the kept structures; the relaxed ones are re-checked by the scorer that chose them."""
    try:
        relaxed = potential.relax([r.structure for r in records], fmax=fmax, steps=steps)
    except GPSKError as exc:
        for rec in records:
            rec.checks.update(relaxed=False, relax_error=str(exc))
        return
    structures = [r.structure for r in relaxed]
    again = scorer.breakdowns(structures, conditions, energies=[r.energy_per_atom for r in relaxed])
    for rec, res, sc in zip(records, relaxed, again):
        rec.structure = res.structure
        rec.checks.update(relaxed=True, relax_converged=res.converged, relax_steps=res.steps,
                          **{k: sc[k] for k in _BASIC_KEYS + _ENERGY_KEYS})


__all__ = ["CHECKS", "CHECK_ALIASES", "DEFAULT_CHECKS", "CheckRecord", "make_scorer", "parse_checks", "post_checks",
           "result_flags"]
