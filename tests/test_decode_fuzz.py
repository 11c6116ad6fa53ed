"""Issue 16: fuzzing the closed-form decoder with random, noisy, NaN, scaled and degenerate grids.

Every batch goes through ``decode_many(..., ignore_errors=True, return_errors=True)``: a failure is the project's
error (:class:`gpsk_materials.errors.GPSKError`), returned as the grid's reason, and any other exception escapes and
fails the test; no batch is lost to one bad grid (the clean grids of every batch decode to their structure); every
returned structure is finite, has its sites >= 0.5 A apart (CDVAE structural validity) and the given composition.

Small by default (``GPSK_FUZZ_N`` = 7 grids: one of each kind); the full run sets the number of grids
(issue 16 asks for 10,000) and, with ``GPSK_FUZZ_REPORT``, writes the counts to a JSON file;
``GPSK_FUZZ_SECONDS`` stops a run after the batch that crosses that many seconds (the count done is reported; the
report is also written every 100 batches, ``"finished": false``, so that a run stopped from outside keeps its
counts). Run a large one under a memory limit (``ulimit -v``), so that a runaway allocation is an exception of the
test rather than the machine's out-of-memory killer::

    ulimit -v 10000000; GPSK_FUZZ_N=10000 GPSK_FUZZ_REPORT=docs/results/decode_fuzz.json \
        python -m pytest tests/test_decode_fuzz.py -s
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Lattice, Structure

from gpsk_materials.checks.validity import structural_validity
from gpsk_materials.representations.decoding import ReciprocalGridDecoder
from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

N_GRIDS = int(os.environ.get("GPSK_FUZZ_N", "7"))
REPORT = os.environ.get("GPSK_FUZZ_REPORT")
#: optional wall-clock budget (s) of a large run: it stops after the batch that crosses it and reports the count done
SECONDS = float(os.environ.get("GPSK_FUZZ_SECONDS", "inf"))
BATCH = 7
KINDS = ("clean", "random", "noisy", "nan", "scaled", "degenerate", "bad_composition")


def _bases() -> list[Structure]:
    return [
        Structure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(Lattice.hexagonal(3.19, 12.3), ["Mo", "S", "S"], [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.12],
                                                                   [2 / 3, 1 / 3, 0.38]]),
        Structure(Lattice.orthorhombic(3.9, 4.1, 5.3), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.45], [0.5, 0.5, 0.05], [0.5, 0.02, 0.5], [0.02, 0.5, 0.5]]),
    ]


def _fuzz_item(k: int, rng: np.random.Generator, grids: np.ndarray, comps: list[Composition]):
    """The k-th fuzz grid: (kind, grid (3, 32, 32, 32) float32, composition or None, base index or None)."""
    kind = KINDS[k % len(KINDS)]
    b = int(rng.integers(len(grids)))
    g = grids[b].copy()
    comp = comps[b]
    if kind == "random":
        g = rng.normal(scale=10 ** rng.uniform(-3, 3), size=g.shape)
        if rng.random() < 0.5:  # a valid metric under a noise structure factor
            g[2] = grids[b][2]
        comp = None if rng.random() < 0.5 else comps[b]
    elif kind == "noisy":
        g = g + 10 ** rng.uniform(-3, 0) * g.std(axis=(1, 2, 3), keepdims=True) * rng.normal(size=g.shape)
    elif kind == "nan":
        m = int(rng.integers(1, 50))
        idx = tuple(rng.integers(0, s, size=m) for s in g.shape)
        g[idx] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == "scaled":
        g[int(rng.integers(3))] *= 10 ** rng.uniform(-6, 6) * rng.choice([1, -1])
    elif kind == "degenerate":
        case = int(rng.integers(5))
        if case == 0:
            g[:] = 0
        elif case == 1:
            g[:] = rng.normal()
        elif case == 2:
            g[2] = 0  # no metric
        elif case == 3:
            g[:2] = 0  # no structure factor
        else:
            g[:2] = 1e30
        comp = None if rng.random() < 0.3 else comps[b]
    elif kind == "bad_composition":
        comp = ["Xx2O", {"Na": -1, "Cl": 1}, "", {"Na": float("nan")}, {"Na": float("inf"), "Cl": 1},
                {"Na": float("nan"), "Cl": 1}, {"Na": "1", "Cl": 1}][int(rng.integers(7))]
    if kind == "clean":
        comp = comps[b] if rng.random() < 0.8 else None
    return kind, g.astype(np.float32), comp, b


#: what a refusal's reason says, by the words that name it (the report's ``reasons`` counts)
REASONS = (("NaN or inf", "non-finite values"), ("positive-definite", "no lattice in the metric channel"),
           ("no atoms found", "no atoms"), ("exceeds max_residual", "residual above max_residual"),
           ("below min_distance=", "sites closer than min_distance"), ("min_confidence", "confidence"),
           ("min_distance_ratio", "implausible distances"), ("composition", "unreadable composition"),
           ("F(000)", "F(000) holds no formula unit"), ("max_sites", "beyond max_sites"),
           ("failed numerically", "numerical failure"))


def _reason(why: str) -> str:
    return next((name for words, name in REASONS if words in why), "other")


def _write_report(done: int, seconds: float, counts: dict, reasons: Counter, finished: bool) -> None:
    if REPORT:
        Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
        Path(REPORT).write_text(json.dumps({
            "grids": done, "asked": N_GRIDS, "batch": BATCH, "seconds": seconds, "finished": finished,
            "counts": {kind: dict(c) for kind, c in counts.items()}, "reasons": dict(reasons.most_common()),
            "date": time.strftime("%Y-%m-%d"), "seed": 2026}, indent=1))


def test_decode_many_survives_fuzzed_grids():
    bases = _bases()
    feat = ReciprocalGridFeaturizer()
    cells = [feat.canonical_structure(s) for s in bases]
    grids = np.stack([feat.featurize(s) for s in bases])
    comps = [s.composition for s in bases]
    # max_sites bounds the peeling of noise grids without a composition (robustness, not capacity, is fuzzed)
    decoder = ReciprocalGridDecoder(max_sites=16)
    rng = np.random.default_rng(2026)
    matcher = StructureMatcher()
    counts: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    reason_counts: Counter = Counter()
    t0 = time.perf_counter()
    done = 0
    for start in range(0, N_GRIDS, BATCH):
        if time.perf_counter() - t0 > SECONDS:
            break
        if start and start % (100 * BATCH) == 0:  # a run stopped from outside keeps what it has counted
            _write_report(done, time.perf_counter() - t0, counts, reason_counts, False)
        items = [_fuzz_item(k, rng, grids, comps) for k in range(start, min(start + BATCH, N_GRIDS))]
        out, reasons = decoder.decode_many(np.stack([it[1] for it in items]), [it[2] for it in items],
                                           ignore_errors=True, return_errors=True, pbar=False)
        assert len(out) == len(reasons) == len(items)
        done += len(items)
        for j, ((kind, _, comp, b), s, why) in enumerate(zip(items, out, reasons)):
            if s is None:
                assert why.startswith(f"grid {j}:") or why.startswith(f"grid {j} "), why
                # a clean grid fails only without its composition, for want of confidence
                assert kind != "clean" or (comp is None and "confidence" in why), why
                counts[kind]["error"] += 1
                reason_counts[_reason(why)] += 1
                continue
            counts[kind]["decoded"] += 1
            assert np.isfinite(s.lattice.matrix).all() and np.isfinite(s.frac_coords).all()
            assert structural_validity(s, min_distance=0.5)
            if comp is not None:
                assert s.composition.reduced_composition.almost_equals(Composition(comp).reduced_composition), (
                    kind, s.composition, comp)
            if kind == "clean" and comp is not None:
                # the clean grids of a batch with bad ones still decode to their structure
                assert matcher.fit(cells[b], s), (s, cells[b])
                counts[kind]["matched"] += 1
    seconds = time.perf_counter() - t0
    summary = {kind: dict(c) for kind, c in counts.items()}
    print(f"\nfuzz: {done} of {N_GRIDS} grids in {seconds:.0f} s: {summary}")
    assert sum(sum(c.values()) - c["matched"] for c in counts.values()) == done
    _write_report(done, seconds, counts, reason_counts, True)
