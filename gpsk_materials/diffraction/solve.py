"""Structure solution from a powder pattern: generate candidates of a composition, refine each against the pattern,
rank them by Rwp (``CrystalGenerator.generate(composition, diffraction=...)``, ``gpsk solve``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from gpsk_materials import provenance
from gpsk_materials.checks.post import DEFAULT_CHECKS
from gpsk_materials.defaults import GUIDANCE, SAMPLER_STEPS
from gpsk_materials.diffraction.pattern import PowderPattern
from gpsk_materials.diffraction.refine import POOR_RWP, PatternRefiner, Refinement

logger = logging.getLogger(__name__)


@dataclass
class PowderSolution:
    """Outcome of :func:`solve_pattern`.

    Attributes
    ----------
    structures : list
        The kept candidates, lowest Rwp first, each with the refined lattice (conventional standard cell) and its
        refinement in ``properties["gpsk"]["diffraction"]`` (pymatgen Structures, or ASE Atoms for
        ``output="ase"``).
    refinements : list of Refinement
        Aligned with ``structures`` (Rwp, refined parameters, profiles for plots).
    pattern : PowderPattern
        The pattern as used.
    result : GenerationResult
        The generation run behind it (seed, candidates drawn and decoded, decoding failures).
    refined, failed_refinements : int
        Candidates refined, and candidates whose refinement failed (logged, never returned).
    """

    structures: list
    refinements: list[Refinement]
    pattern: PowderPattern
    result: Any
    refined: int = 0
    failed_refinements: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rwp(self) -> list[float]:
        return [r.rwp for r in self.refinements]

    @property
    def poor(self) -> bool:
        """True when even the best candidate agrees poorly with the pattern (or none was returned)."""
        return not self.refinements or self.refinements[0].poor


def solve_pattern(generator: Any, composition: Any, diffraction: Any, n: int = 1, *, wavelength: Any = None,
                  guidance: float = GUIDANCE, steps: int = SAMPLER_STEPS, seed: int | None = None, best_of: int = 1,
                  checks: Any = DEFAULT_CHECKS, progress: bool | None = None, pattern_guidance: float = 0.0,
                  guidance_terms: Sequence[Any] | None = None, refiner: PatternRefiner | None = None,
                  output: str = "structure", prototypes: int = 0, **conditions: Any) -> PowderSolution:
    """Solve a structure of ``composition`` from a powder pattern.

    Draws ``n * best_of`` candidates with ``generator`` (the same noise as ``generate(composition, n * best_of)``),
    optionally guided toward the pattern (``pattern_guidance`` > 0, :class:`~gpsk_materials.diffraction.guidance.PatternGuidance`),
    refines each decoded candidate against the pattern with ``refiner`` (:class:`PatternRefiner`: scale, zero
    shift, Chebyshev background, Caglioti widths and the lattice under its crystal system's constraints) and keeps
    the ``n`` of lowest Rwp. ``conditions`` are further conditions (``space_group``, ``crystal_system``, ...).
    ``prototypes=K`` adds the K best substituted known crystals of the composition
    (:meth:`CrystalGenerator.prototype_candidates`, :mod:`gpsk_materials.prototypes`) to the candidates refined and
    ranked; a kept one has its ``prototype`` provenance section and ``request.sample_index`` None with
    ``request.prototype_index``.

    Poor agreement (Rwp above :data:`~gpsk_materials.diffraction.refine.POOR_RWP`) is logged as a warning and
    recorded as ``agreement: "poor"`` in each structure's ``properties["gpsk"]["diffraction"]``.

    Raises
    ------
    DiffractionError
        The pattern or wavelength is invalid (before anything is sampled).
    ConditioningError
        The request is invalid.
    """
    from gpsk_materials.diffraction.guidance import PatternGuidance
    from gpsk_materials.pipelines.requests import GenerationRequest, composition_label, resolve_request

    from gpsk_materials.errors import ConditioningError

    if output not in ("structure", "ase"):
        raise ConditioningError(f"output must be 'structure' or 'ase', got {output!r}")
    pattern = PowderPattern.coerce(diffraction, wavelength)
    refiner = refiner or PatternRefiner()
    terms = list(guidance_terms or [])
    if pattern_guidance:
        terms.append(PatternGuidance(generator.model, pattern, scale=pattern_guidance))
    request = GenerationRequest(composition, n, guidance=guidance, steps=steps, best_of=best_of,
                                prototypes=prototypes, **conditions)
    # the request as asked is validated first (its own error, naming n or best_of, before anything is sampled)
    resolved = resolve_request(request, 0, 0, generator.max_sites, generator.model.config.mmdit.max_elements)
    n_int, b_int, k_int = int(n), int(best_of), int(prototypes)
    # every candidate is refined: the checks must not select among them
    wide = GenerationRequest(composition, n_int * b_int, guidance=guidance, steps=steps, best_of=1, **conditions)
    res = generator.run([wide], seed=seed, checks=checks, progress=progress, guidance_terms=terms)[0].raise_for_error()
    candidates = list(res.structures)
    if k_int:
        candidates += generator.prototype_candidates(resolved, k_int)
    fits = refiner.rank(candidates, pattern, progress=bool(progress))
    # (refinement, candidate index): a prototype is candidate len(res.structures) + its prototype index
    pairs = sorted([(f, j) for j, f in enumerate(fits) if f is not None], key=lambda p: p[0].rwp)
    kept = pairs[:n_int]
    structures, refinements = [], []
    for rank, (fit, j) in enumerate(kept):
        cand = candidates[j]
        s = fit.structure
        for section in provenance.SECTIONS:
            value = provenance.read(cand, section)
            if value is not None:
                provenance.write(s, section, value)
        req = dict(provenance.read(s, "request") or {})
        if provenance.read(cand, "prototype") is not None:
            req.update({"composition": composition_label(composition), "sample_index": None,
                        "prototype_index": j - len(res.structures)})
        req.update({"n": n_int, "best_of": b_int, "prototypes": k_int, "rank": rank})
        provenance.write(s, "request", req)
        provenance.write(s, "diffraction", {
            **fit.summary(), "rank": rank, "candidates_refined": len(pairs),
            "wavelength": pattern.wavelength, "two_theta_range": list(pattern.two_theta_range),
            "cell": "conventional standard cell, refined lattice, fractional coordinates of the candidate",
        })
        structures.append(s)
        refinements.append(fit)
    solution = PowderSolution(structures, refinements, pattern, res, refined=len(pairs),
                              failed_refinements=len(fits) - len(pairs))
    if solution.poor:
        best = f"best Rwp {100 * refinements[0].rwp:.1f} %" if refinements else "no candidate could be refined"
        msg = (f"{res.request.to_dict().get('composition')}: poor agreement with the powder pattern ({best}; Rwp above "
               f"{100 * POOR_RWP:.0f} % is flagged): draw more candidates (best_of), give the space group, or use "
               "pattern guidance")
        solution.notes.append(msg)
        logger.warning("%s", msg)
    if output == "ase":
        from pymatgen.io.ase import AseAtomsAdaptor

        solution.structures = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    return solution


__all__ = ["PowderSolution", "solve_pattern"]
