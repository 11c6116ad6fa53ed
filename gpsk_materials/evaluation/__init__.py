"""Evaluation of generated crystals: validity, uniqueness, novelty, CSP, stability and distribution metrics.

Entry points: :func:`evaluate` (every metric, one report), ``gpsk evaluate`` (the command), and the metric
functions of the submodules (:mod:`.matching`, :mod:`.csp`, :mod:`.distribution`, :mod:`.stability`). The protocol
of each metric is in docs/evaluation.md.
"""

from gpsk_materials.evaluation.csp import CSPResult, csp_metrics
from gpsk_materials.evaluation.distribution import coverage, fingerprints, property_wasserstein
from gpsk_materials.evaluation.evaluate import EvaluationOptions, evaluate, write_report
from gpsk_materials.evaluation.io import ReferenceSet, read_structures
from gpsk_materials.evaluation.matching import CSP_TOLERANCES, UN_TOLERANCES, novelty, uniqueness

__all__ = [
    "CSP_TOLERANCES",
    "CSPResult",
    "EvaluationOptions",
    "ReferenceSet",
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
