"""Best-of-N selection: score generated candidates with the post-checks and keep the best per request.

Ranking is in two steps: **sound** candidates first, then by score. A candidate is sound when it passes the strict
check, its energy is sane (or was not computed) and no atom is isolated from the potential; the score orders
candidates within each group. CDVAE's 0.5 A rule is the benchmarks' definition of validity, not a physical one: an
SrTiO3 with atoms 0.55 A apart passes it (issue 16, case 9), and a potential's energy of such a structure can be
anything, so no weighted sum alone can be trusted to put it last; the gates do.

Score (higher is better), a weighted sum of

* ``-energy``: the potential's energy per atom (after the optional volume scan), eV/atom;
* ``symmetry``: 1 for a matched requested space group, plus 0.5 for a matched crystal system;
* ``connectivity``: the fraction of atoms with a neighbour within ``connectivity_factor`` x the sum of covalent radii;
* ``validity``: 0 for a CDVAE-valid structure, -1 otherwise (a large weight makes invalid structures lose);
* ``strict``: 0 for a structure that passes the strict check (every distance >= 0.6 x the sum of covalent radii,
  a plausible volume per atom), -1 otherwise; the weight (5) exceeds the symmetry and connectivity terms together
  (at most 1.75 + 1), so the score column separates strictly valid candidates from the others;
* ``energy_sanity``: -1 for an energy that is not sane (with a potential only): a cohesive energy per atom (the
  potential's own free-atom energies, :meth:`~gpsk_materials.checks.potentials.Potential.cohesive_energies`, minus
  the energy) outside :data:`COHESIVE_ENERGY_RANGE`;
* ``isolated``: -1 for a structure with an atom that has no neighbour within the potential's cutoff
  (:meth:`~gpsk_materials.checks.potentials.Potential.isolated_sites`): its energy is the model's free-atom term, not
  an answer about a crystal (with a potential only; same weight as ``strict``).

Without a potential there is no energy: soundness is the strict check alone.

Candidates of one request share a composition, so energies per atom compare directly. :meth:`CandidateScorer.breakdowns`
and :meth:`~CandidateScorer.score_records` return the breakdowns; :meth:`~CandidateScorer.evaluate` also writes them to
``structure.properties["gpsk"]["scores"]`` (:mod:`gpsk_materials.provenance`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monty.json import MSONable
from pymatgen.core import Structure

from gpsk_materials import provenance
from gpsk_materials.checks._common import as_structures
from gpsk_materials.checks.potentials import Potential, resolve_potential
from gpsk_materials.checks.symmetry import SymmetryCheck
from gpsk_materials.checks.validity import ValidityCheck, connectivity, nearest_neighbours
from gpsk_materials.checks.volume_scan import VolumeScan
from gpsk_materials.errors import ConditioningError, InvalidStructureError

DEFAULT_WEIGHTS = {"energy": 1.0, "symmetry": 0.5, "connectivity": 1.0, "validity": 10.0, "strict": 5.0,
                   "energy_sanity": 5.0, "isolated": 5.0}
#: sane cohesive energies per atom (eV/atom; free atoms minus the crystal, both with the scoring potential). The
#: lower bound 0: a solid is bound with respect to its separated atoms. The upper bound 10: above the largest
#: cohesive energy of the elements, 8.90 eV/atom (W; Kittel, Introduction to Solid State Physics, 8th ed., table 3.1); TensorNet-MatPES
#: gives 7.71 for bcc W, 5.93 for cubic SrTiO3, 4.99 for rock-salt CaO (measured 2026-12-02, docs/checks.md).
COHESIVE_ENERGY_RANGE = (0.0, 10.0)
#: the section of ``structure.properties["gpsk"]`` that :meth:`CandidateScorer.evaluate` fills
SCORE_SECTION = "scores"


def _request_value(request: Any, key: str) -> Any:
    if request is None:
        return None
    if isinstance(request, Mapping):
        return request.get(key)
    return getattr(request, key, None)


def energy_sane(cohesive_energy: float | None, bounds: tuple[float, float] = COHESIVE_ENERGY_RANGE) -> bool | None:
    """Whether a cohesive energy per atom (eV/atom) lies within ``bounds``; None when it is unknown (no energy, or
    no free-atom reference)."""
    if cohesive_energy is None or not np.isfinite(cohesive_energy):
        return None
    return bool(bounds[0] <= cohesive_energy <= bounds[1])


def rank_key(breakdown: Mapping[str, Any] | None) -> tuple[bool, float]:
    """Sort key of a score breakdown, larger is better: sound candidates (``breakdown["sound"]``) before the others,
    then the higher ``total``. None (no checks run) ranks as a sound candidate of score 0."""
    breakdown = breakdown or {}
    return bool(breakdown.get("sound", True)), float(breakdown.get("total", 0.0))


class CandidateScorer(MSONable):
    """Score candidates by validity, energy, symmetry match and connectivity.

    Parameters
    ----------
    potential
        Potential for the energy term (Potential, name, None for the default); False drops the energy term.
    volume_scan
        Rescale each candidate with a :class:`VolumeScan` before its energy is taken (True for the default scan
        with ``potential``, or a configured VolumeScan).
    weights
        Overrides of :data:`DEFAULT_WEIGHTS` (keys energy, symmetry, connectivity, validity, strict,
        energy_sanity, isolated).
    connectivity_factor
        Neighbour cutoff as a multiple of the sum of covalent radii.
    cohesive_energy_range
        Sane cohesive energies per atom, eV/atom (default :data:`COHESIVE_ENERGY_RANGE`).
    """

    def __init__(
        self,
        potential: Potential | str | None | bool = None,
        volume_scan: bool | VolumeScan = False,
        symmetry: SymmetryCheck | None = None,
        validity: ValidityCheck | None = None,
        weights: Mapping[str, float] | None = None,
        connectivity_factor: float = 1.3,
        cohesive_energy_range: tuple[float, float] = COHESIVE_ENERGY_RANGE,
    ) -> None:
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConditioningError(f"unknown score weights {sorted(unknown)}; expected {sorted(DEFAULT_WEIGHTS)}")
        self.potential = None if potential is False else resolve_potential(potential)
        if isinstance(volume_scan, VolumeScan):
            self.volume_scan: VolumeScan | None = volume_scan
        elif volume_scan:
            if self.potential is None:
                raise ConditioningError("a volume scan needs a potential")
            self.volume_scan = VolumeScan(self.potential)
        else:
            self.volume_scan = None
        self.symmetry = symmetry or SymmetryCheck()
        self.validity = validity or ValidityCheck()
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.connectivity_factor = float(connectivity_factor)
        lo, hi = cohesive_energy_range
        if not lo < hi:
            raise ConditioningError(f"cohesive_energy_range must satisfy low < high, got {cohesive_energy_range}")
        self.cohesive_energy_range = (float(lo), float(hi))

    def as_dict(self) -> dict:
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "potential": None if self.potential is None else self.potential.as_dict(),
            "volume_scan": None if self.volume_scan is None else self.volume_scan.as_dict(),
            "symmetry": self.symmetry.as_dict(),
            "validity": self.validity.as_dict(),
            "weights": dict(self.weights),
            "connectivity_factor": self.connectivity_factor,
            "cohesive_energy_range": list(self.cohesive_energy_range),
        }

    @classmethod
    def from_dict(cls, d: dict) -> CandidateScorer:
        pot = False if d["potential"] is None else Potential.from_dict(d["potential"])
        vs = VolumeScan.from_dict(d["volume_scan"]) if d.get("volume_scan") else False
        return cls(
            potential=pot,
            volume_scan=vs,
            symmetry=SymmetryCheck.from_dict(d["symmetry"]),
            validity=ValidityCheck.from_dict(d["validity"]),
            weights=d["weights"],
            connectivity_factor=d["connectivity_factor"],
            cohesive_energy_range=tuple(d.get("cohesive_energy_range", COHESIVE_ENERGY_RANGE)),
        )

    def breakdowns(
        self, structures: Sequence[Structure], request: Any = None, energies: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
    ) -> list[dict[str, Any]]:
        """The score breakdown of each structure as it stands (no volume scan, no energy evaluation):
        ``energies`` are the energies per atom to score (None: no energy term), ``scale`` the volume factors
        to record. Writes nothing on the structures."""
        structures = as_structures(structures)
        sg = _request_value(request, "space_group")
        cs = _request_value(request, "crystal_system")
        energies = np.full(len(structures), np.nan) if energies is None else np.asarray(energies, dtype=float)
        scale = np.ones(len(structures)) if scale is None else np.asarray(scale, dtype=float)
        cohesive = (np.full(len(structures), np.nan) if self.potential is None
                    else self.potential.cohesive_energies(structures, energies))
        out = []
        for k, s in enumerate(structures):
            # one neighbour list per structure: the radii checks, connectivity and (with a potential) isolated atoms
            ratios, nearest = nearest_neighbours(s, max(1.5, self.connectivity_factor),
                                                 cutoff=0.0 if self.potential is None else self.potential.cutoff)
            val = self.validity.check(s, ratios=ratios)
            try:
                sym = self.symmetry.check(s, space_group=sg, crystal_system=cs)
                sg_found, sg_match, cs_match = sym.space_group_number, sym.space_group_match, sym.crystal_system_match
            except InvalidStructureError:
                sg_found, sg_match, cs_match = None, (None if sg is None else False), (None if cs is None and sg is None else False)
            conn = connectivity(s, self.connectivity_factor, ratios=ratios)
            sym_term = float(bool(sg_match)) + 0.5 * float(bool(cs_match))
            e = float(energies[k])
            # an energy that could not be computed ranks below any computed one
            e_term = -e if np.isfinite(e) else -1e3
            isolated = None if self.potential is None else self.potential.isolated_in(nearest)
            c = float(cohesive[k])
            sane = energy_sane(c, self.cohesive_energy_range)
            w = self.weights
            total = (
                (w["energy"] * e_term if self.potential is not None else 0.0)
                + w["symmetry"] * sym_term
                + w["connectivity"] * conn
                - w["validity"] * float(not val.valid)
                - w["strict"] * float(not val.strict_valid)
                - w["energy_sanity"] * float(sane is False)
                - w["isolated"] * float(bool(isolated))
            )
            out.append({
                "total": float(total),
                "sound": bool(val.strict_valid and sane is not False and not isolated),
                "energy_per_atom": e if np.isfinite(e) else None,
                "cohesive_energy": c if np.isfinite(c) else None,
                "energy_sane": sane,
                "valid": val.valid,
                "strict_valid": val.strict_valid,
                "strict_reasons": [] if val.strict_valid else list(val.reasons),
                "min_distance": val.min_distance if np.isfinite(val.min_distance) else None,
                "min_distance_ratio": val.min_distance_ratio if np.isfinite(val.min_distance_ratio) else None,
                "space_group": sg_found,
                "space_group_match": sg_match,
                "crystal_system_match": cs_match,
                "connectivity": conn,
                "volume_scale_factor": float(scale[k]),
                "isolated_sites": isolated,
            })
        return out

    def score_records(self, structures: Sequence[Structure], request: Any = None) -> tuple[list[Structure], list[dict]]:
        """Scan (when configured), take energies and score: the structures as scored (volume-scanned copies with
        a scan) and their breakdowns, in order. Writes nothing on the structures."""
        out = [s.copy() for s in as_structures(structures)]
        scale = np.ones(len(out))
        if self.volume_scan is not None:
            scans = self.volume_scan.scan(out)
            out = [r.structure for r in scans]
            scale = np.array([r.scale_factor for r in scans])
        energies = None if self.potential is None else self.potential.energies(out, on_error="nan")
        records = self.breakdowns(out, request, energies, scale)
        if self.volume_scan is not None:
            for rec, r in zip(records, scans):
                rec["volume_scan_at_boundary"] = r.at_boundary  # the scan's minimum was at an end: not applied
        return out, records

    def evaluate(self, structures: Sequence[Structure], request: Any = None) -> list[Structure]:
        """Score ``structures``; return them (volume-scanned copies when a scan is configured) with
        ``properties["gpsk"]["scores"]`` filled in. The inputs get the same scores in their properties."""
        return self._evaluate(structures, request)[0]

    def _evaluate(self, structures: Sequence[Structure], request: Any) -> tuple[list[Structure], list[dict]]:
        """:meth:`evaluate`, also returning the breakdowns (the callers below read them here, not back from the
        structures' properties)."""
        structures = as_structures(structures)
        out, scores = self.score_records(structures, request)
        for orig, s, sc in zip(structures, out, scores):
            provenance.write(s, SCORE_SECTION, sc)
            provenance.write(orig, SCORE_SECTION, sc)
        return out, scores

    def score(self, structures: Sequence[Structure], request: Any = None) -> list[float]:
        """Total scores of ``structures`` for ``request`` (a mapping or object with optional ``space_group`` and
        ``crystal_system``); breakdowns go to ``structure.properties["gpsk"]["scores"]``."""
        return [sc["total"] for sc in self._evaluate(structures, request)[1]]

    def select_best(
        self, candidates_per_request: Sequence[Sequence[Structure]], requests: Sequence[Any] | None = None
    ) -> list[Structure]:
        """The best candidate of each request by :func:`rank_key` (sound first, then the highest score;
        volume-scanned when a scan is configured)."""
        if requests is not None and len(requests) != len(candidates_per_request):
            raise ConditioningError(
                f"{len(requests)} requests for {len(candidates_per_request)} candidate lists"
            )
        best = []
        for k, cands in enumerate(candidates_per_request):
            if len(cands) == 0:
                raise InvalidStructureError(f"request {k} has no candidates")
            scored, scores = self._evaluate(cands, None if requests is None else requests[k])
            best.append(scored[max(range(len(scored)), key=lambda i: rank_key(scores[i]))])
        return best
