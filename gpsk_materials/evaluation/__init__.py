"""Evaluation of generated crystals: validity, uniqueness, novelty, CSP, stability and distribution metrics.

Entry points: :func:`evaluate` (every metric, one report), ``gpsk evaluate`` (the command), and the metric
functions of the submodules (:mod:`.matching`, :mod:`.csp`, :mod:`.distribution`, :mod:`.stability`; BAWL hashes
and the MP-20 hash reference in :mod:`.hashing` and :mod:`.references`; the thin-hull warning in
:mod:`.hull_coverage`). The protocol
of each metric is in docs/evaluation.md.
"""

from gpsk_materials.evaluation.csp import CSPResult, csp_metrics
from gpsk_materials.evaluation.distribution import coverage, fingerprints, property_wasserstein
from gpsk_materials.evaluation.evaluate import EvaluationOptions, evaluate, write_report
from gpsk_materials.evaluation.hashing import BAWLHasher
from gpsk_materials.evaluation.hull_coverage import ThinHullCheck
from gpsk_materials.evaluation.io import ReferenceSet, read_structures
from gpsk_materials.evaluation.matching import CSP_TOLERANCES, UN_TOLERANCES, novelty, uniqueness
from gpsk_materials.evaluation.references import BAWLReference

__all__ = [
    "BAWLHasher",
    "BAWLReference",
    "CSP_TOLERANCES",
    "CSPResult",
    "EvaluationOptions",
    "ReferenceSet",
    "ThinHullCheck",
    "UN_TOLERANCES",
    "coverage",
    "csp_metrics",
    "evaluate",
    "fingerprints",
    "novelty",
    "property_wasserstein",
    "read_structures",
    "uniqueness",
    "write_report",
]
