"""Crystal structure prediction: match rate and RMSE against target structures (CDVAE/DiffCSP protocol).

A prediction counts only when it and its target are valid (structural + SMACT, as DiffCSP's ``Crystal.valid``);
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist`` decides a match and gives the RMS displacement
normalised by ``(V / n) ** (1/3)``. Match rate is over all targets; RMSE is the mean over matched targets.
Best of k takes, per target, the smallest RMS over its k valid predictions (DiffCSP's multi-sample evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Structure
from tqdm.auto import tqdm

from gpsk_materials.errors import DataError
from gpsk_materials.evaluation.matching import CSP_TOLERANCES, make_matcher

#: Separator between a target id and a sample index in a prediction id (``mp-1234__3`` is sample 3 of mp-1234).
SAMPLE_SEPARATOR = "__"


@dataclass
class CSPResult:
    """Per-target RMS of the first sample and best of k (``nan`` when unmatched), and the summary rates."""

    target_ids: list[str]
    rms_first: np.ndarray
    rms_best: np.ndarray
    n_samples: np.ndarray

    def summary(self) -> dict[str, float]:
        """``match_rate`` / ``rmse`` for one sample and best of k (k = the most samples any target has)."""
        def rates(rms: np.ndarray) -> tuple[float, float]:
            hit = np.isfinite(rms)
            return float(hit.mean()) if len(rms) else float("nan"), float(rms[hit].mean()) if hit.any() else float("nan")

        m1, r1 = rates(self.rms_first)
        mk, rk = rates(self.rms_best)
        return {
            "n_targets": len(self.target_ids),
            "k": int(self.n_samples.max()) if len(self.n_samples) else 0,
            "match_rate_1": m1,
            "rmse_1": r1,
            "match_rate_k": mk,
            "rmse_k": rk,
        }


def rms_distance(pred: Structure, target: Structure, tolerances: dict[str, float] | None = None) -> float:
    """Normalised RMS displacement of ``pred`` onto ``target``, ``nan`` when they do not match."""
    matcher = make_matcher(**(CSP_TOLERANCES if tolerances is None else tolerances))
    try:
        out = matcher.get_rms_dist(pred, target)
    except Exception:  # degenerate lattices make pymatgen's lattice search fail: no match
        return float("nan")
    return float("nan") if out is None else float(out[0])


def group_predictions(prediction_ids: Sequence[str], target_ids: Sequence[str]) -> dict[str, list[int]]:
    """Map each target id to the indices of its predictions, in input order.

    A prediction belongs to target ``T`` when its id is ``T`` or ``T__<anything>``.
    """
    targets = set(target_ids)
    groups: dict[str, list[int]] = {t: [] for t in target_ids}
    unknown = []
    for i, pid in enumerate(prediction_ids):
        key = pid if pid in targets else pid.rsplit(SAMPLE_SEPARATOR, 1)[0]
        if key in targets:
            groups[key].append(i)
        else:
            unknown.append(pid)
    if unknown:
        raise DataError(
            f"{len(unknown)} prediction ids name no target (e.g. {unknown[0]!r}); "
            f"use the target id, or '<target id>{SAMPLE_SEPARATOR}<k>' for sample k"
        )
    return groups


def csp_metrics(
    predictions: Sequence[Structure],
    prediction_ids: Sequence[str],
    prediction_valid: Sequence[bool],
    targets: Sequence[Structure],
    target_ids: Sequence[str],
    target_valid: Sequence[bool],
    tolerances: dict[str, float] | None = None,
    progress: bool = True,
) -> CSPResult:
    """Match every prediction with its target.

    Parameters
    ----------
    predictions, prediction_ids, prediction_valid
        Predicted structures, ids (see :func:`group_predictions`), and validity (structural and SMACT).
    targets, target_ids, target_valid
        Target structures, their ids and validity.
    tolerances
        Default :data:`~gpsk_materials.evaluation.matching.CSP_TOLERANCES`.
    """
    if not (len(predictions) == len(prediction_ids) == len(prediction_valid)):
        raise DataError("predictions, prediction_ids and prediction_valid differ in length")
    if not (len(targets) == len(target_ids) == len(target_valid)):
        raise DataError("targets, target_ids and target_valid differ in length")
    groups = group_predictions(prediction_ids, target_ids)
    rms_first = np.full(len(targets), np.nan)
    rms_best = np.full(len(targets), np.nan)
    n_samples = np.zeros(len(targets), dtype=int)
    for t, tid in enumerate(tqdm(target_ids, desc="CSP matching", disable=not progress)):
        idx = groups[tid]
        n_samples[t] = len(idx)
        # DiffCSP: one sample needs a valid prediction and a valid target; best of k checks the predictions
        rms = [rms_distance(predictions[i], targets[t], tolerances) if prediction_valid[i] else np.nan for i in idx]
        if idx and target_valid[t]:
            rms_first[t] = rms[0]
        if np.isfinite(rms).any():
            rms_best[t] = float(np.nanmin(rms))
    return CSPResult(target_ids=list(target_ids), rms_first=rms_first, rms_best=rms_best, n_samples=n_samples)
