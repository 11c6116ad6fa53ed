"""Formula units Z: how many formula units a generated cell of a reduced formula holds.

A composition means what a chemist means. ``"TiO2"`` is a *reduced formula*: rutile holds two formula units in its
primitive cell, anatase two, brookite eight, and the generator chooses Z. ``"Ti2O4"`` (amounts with a common
divisor) or any composition with ``formula_units=Z`` is an *explicit cell content*, generated as given.

The cells the model generates are canonical cells: primitive and Niggli-reduced
(:mod:`gpsk_materials.representations.canonical`). Z counts formula units in that primitive cell: diamond Si has
Z = 2, rock salt NaCl Z = 1, rutile TiO2 Z = 2, wurtzite GaN Z = 2, corundum Fe2O3 Z = 2.

Allowed Z (:func:`allowed_formula_units`)
    ``Z * atoms(reduced formula) <= max_sites`` (the model's cell limit) and, when a space group is requested,
    each element's site count ``Z * n_el`` is a sum of the group's Wyckoff multiplicities *in the primitive cell*
    (:func:`gpsk_materials.checks.symmetry.site_count_compatible` with ``cell="primitive"``: multiplicities of the
    conventional cell divided by the number of centring translations). Si in Fd-3m (227): Z in {2, 4, 6, ...}; Z = 1
    is not allowed. No allowed Z: the request is refused (:class:`~gpsk_materials.errors.ConditioningError`).

The prior (:class:`FormulaUnitPrior`)
    The empirical distribution of Z in the training pool of the shipped model (``gpsk_materials/data/
    formula_units.json.gz``, built by ``benchmarks/build_formula_unit_prior.py``), counted at five levels of
    chemistry, coarse to fine: number of elements, stoichiometry prototype (``AB2``), reduced formula, prototype
    and space group, reduced formula and space group (the space-group levels only when one is requested: the
    structure type that a prototype in a given group implies says more about Z than the same formula in other
    groups).
    Restricted to the allowed Z, each level is smoothed towards the coarser one with a Dirichlet pseudo-count
    ``alpha`` (hierarchical additive smoothing, MacKay & Peto 1995, *Natural Language Engineering* 1, 289):

        p_0(Z) = 1 / |allowed|,    p_L(Z) = (c_L(Z) + alpha * p_{L-1}(Z)) / (N_L + alpha),

    where ``c_L(Z)`` counts the training cells of the request's chemistry at level L with that Z and ``N_L`` their
    sum over the allowed Z. A chemistry seen often follows its data; an unseen one inherits the coarser level; every
    allowed Z keeps some probability.

Sampling (:func:`draw_formula_units`)
    The ``n * best_of`` candidates of a request get their Z by systematic sampling (Kitagawa 1996, *J. Comput.
    Graph. Stat.* 5, 1: one uniform offset, ``K`` equally spaced points through the cumulative distribution), in an
    order shuffled by the same seeded generator: each Z gets ``floor`` or ``ceil`` of ``K p(Z)`` candidates, so a
    batch covers the likely Z values, and a lone candidate gets Z with probability ``p(Z)``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gpsk_materials.errors import ConditioningError, DataError
from gpsk_materials.paths import PACKAGE_DIR
from gpsk_materials.vocabulary import formula_string

#: the table shipped with the package (built by benchmarks/build_formula_unit_prior.py)
PRIOR_FILE = PACKAGE_DIR / "data" / "formula_units.json.gz"
#: Dirichlet pseudo-count pulling each level of the prior towards the coarser one (see the module docstring)
PRIOR_ALPHA = 1.0
#: levels of the prior, coarse to fine; ``*_sg`` levels are used only when a space group is requested. With a space
#: group, the structure type it implies (prototype + space group) says more about Z than the formula in other groups
LEVELS = ("nelements", "prototype", "formula", "prototype_sg", "formula_sg")


# ---------------------------------------------------------------------------------------------- chemistry keys
def formula_key(reduced: Mapping[str, int]) -> str:
    """Key of a reduced formula in the prior: elements in alphabetical order (``{"Ti": 1, "O": 2}`` -> ``"O2Ti"``)."""
    return formula_string({el: int(reduced[el]) for el in sorted(reduced)})


def prototype_key(reduced: Mapping[str, int]) -> str:
    """Stoichiometry prototype (anonymous formula) of a reduced formula: amounts sorted ascending and named A, B, C,
    ... (``TiO2`` -> ``"AB2"``, ``Fe2O3`` -> ``"A2B3"``, ``SrTiO3`` -> ``"ABC3"``)."""
    amounts = sorted(int(v) for v in reduced.values())
    return "".join(f"{string.ascii_uppercase[i]}{'' if a == 1 else a}" for i, a in enumerate(amounts))


def level_keys(reduced: Mapping[str, int], space_group: int | None = None) -> dict[str, str]:
    """The key of a reduced formula at each level of the prior (the ``*_sg`` levels only with a space group)."""
    keys = {"nelements": str(len(reduced)), "prototype": prototype_key(reduced), "formula": formula_key(reduced)}
    if space_group is not None:
        keys["prototype_sg"] = f"{keys['prototype']}|{int(space_group)}"
        keys["formula_sg"] = f"{keys['formula']}|{int(space_group)}"
    return {level: keys[level] for level in LEVELS if level in keys}


# ---------------------------------------------------------------------------------------------- allowed Z
def allowed_formula_units(
    reduced: Mapping[str, int], max_sites: int, space_group: int | None = None
) -> tuple[int, ...]:
    """The Z whose cell ``Z x reduced`` fits ``max_sites`` and, with ``space_group``, whose per-element site counts
    are sums of the group's primitive-cell Wyckoff multiplicities.

    Parameters
    ----------
    reduced : mapping element -> int
        The reduced formula (smallest integer amounts).
    max_sites : int
        Largest cell (atoms) the model generates.
    space_group : int or None
        International number 1..230 of the requested space group.

    Returns
    -------
    tuple of int
        Allowed Z in increasing order; empty when none fits.
    """
    from gpsk_materials.checks.symmetry import site_count_compatible

    n = sum(int(v) for v in reduced.values())
    out = []
    for z in range(1, max_sites // max(n, 1) + 1):
        cell = {el: int(v) * z for el, v in reduced.items()}
        if space_group is None or site_count_compatible(space_group, formula_string(cell), cell="primitive"):
            out.append(z)
    return tuple(out)


# ---------------------------------------------------------------------------------------------- the prior
@dataclass(frozen=True)
class FormulaUnitProbabilities:
    """Distribution of Z over the allowed values for one request: ``probabilities[i]`` of ``allowed[i]``;
    ``levels`` lists ``(level, key, count)`` of the prior's levels that held data for the allowed Z (coarse to
    fine)."""

    allowed: tuple[int, ...]
    probabilities: tuple[float, ...]
    levels: tuple[tuple[str, str, int], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": list(self.allowed),
            "probabilities": {str(z): round(p, 4) for z, p in zip(self.allowed, self.probabilities)},
            "levels": [{"level": lv, "key": k, "count": c} for lv, k, c in self.levels],
        }


class FormulaUnitPrior:
    """Empirical distribution of formula units Z per chemistry, with hierarchical smoothing (module docstring).

    Parameters
    ----------
    counts : mapping level -> key -> {Z: count}
        Training cells counted per level of :data:`LEVELS` (keys from :func:`level_keys`; Z and counts as ints or
        strings of ints).
    alpha : float
        Dirichlet pseudo-count of the smoothing towards the coarser level (default :data:`PRIOR_ALPHA`).
    about : mapping
        Where the counts come from (written into the provenance as ``source``).

    Raises
    ------
    DataError
        A level or a count that is not what the table format says.
    """

    def __init__(self, counts: Mapping[str, Mapping[str, Mapping[Any, Any]]], alpha: float = PRIOR_ALPHA,
                 about: Mapping[str, Any] | None = None) -> None:
        unknown = set(counts) - set(LEVELS)
        if unknown:
            raise DataError(f"formula-unit prior: unknown levels {sorted(unknown)}; expected some of {LEVELS}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ConditioningError(f"alpha must be a positive number, got {alpha!r}")
        self.alpha = float(alpha)
        self.about = dict(about or {})
        self.counts: dict[str, dict[str, dict[int, int]]] = {}
        for level, table in counts.items():
            try:
                self.counts[level] = {str(k): {int(z): int(c) for z, c in v.items()} for k, v in table.items()}
            except (TypeError, ValueError, AttributeError) as exc:
                raise DataError(f"formula-unit prior: level {level!r} holds a malformed entry ({exc})") from exc

    @classmethod
    def from_file(cls, path: str | Path | None = None, alpha: float = PRIOR_ALPHA) -> FormulaUnitPrior:
        """Read a table written by ``benchmarks/build_formula_unit_prior.py`` (JSON, gzipped when the name ends in
        ``.gz``; None: the packaged :data:`PRIOR_FILE`, read once per process).

        Raises
        ------
        DataError
            The file is missing or not such a table.
        """
        if path is None and alpha == PRIOR_ALPHA:
            return _packaged_prior()
        return cls._read(Path(PRIOR_FILE if path is None else path), alpha)

    @classmethod
    def _read(cls, path: Path, alpha: float) -> FormulaUnitPrior:
        try:
            raw = path.read_bytes()
            data = json.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
            counts = data["counts"]
        except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"cannot read the formula-unit prior {path}: {exc}") from exc
        about = {**data.get("about", {}), "file": path.name, "sha256": hashlib.sha256(raw).hexdigest()}
        return cls(counts, alpha, about)

    def source(self) -> dict[str, Any]:
        """Short description of the prior for the provenance: file, hash, what it was counted on, alpha."""
        keys = ("file", "sha256", "counted_on", "made_by")
        return {**{k: self.about[k] for k in keys if k in self.about}, "alpha": self.alpha}

    def probabilities(self, reduced: Mapping[str, int], allowed: Sequence[int],
                      space_group: int | None = None) -> FormulaUnitProbabilities:
        """p(Z) over ``allowed`` for a reduced formula (and requested space group), smoothed level by level.

        Raises
        ------
        ConditioningError
            ``allowed`` is empty.
        """
        allowed = tuple(int(z) for z in allowed)
        if not allowed:
            raise ConditioningError(f"no allowed number of formula units for {formula_string(reduced)}")
        p = np.full(len(allowed), 1.0 / len(allowed))
        used = []
        for level, key in level_keys(reduced, space_group).items():
            seen = self.counts.get(level, {}).get(key, {})
            c = np.array([seen.get(z, 0) for z in allowed], dtype=float)
            total = float(c.sum())
            if total > 0:
                p = (c + self.alpha * p) / (total + self.alpha)
                used.append((level, key, int(total)))
        return FormulaUnitProbabilities(allowed, tuple(float(x) for x in p / p.sum()), tuple(used))


@lru_cache(maxsize=1)
def _packaged_prior() -> FormulaUnitPrior:
    return FormulaUnitPrior._read(PRIOR_FILE, PRIOR_ALPHA)


def draw_formula_units(dist: FormulaUnitProbabilities, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` values of Z by systematic sampling of ``dist`` (Kitagawa 1996), in an order shuffled by ``rng``.

    Each Z gets ``floor(k p)`` or ``ceil(k p)`` of the ``k`` draws; a single draw (k = 1) is an exact sample.

    Parameters
    ----------
    dist : FormulaUnitProbabilities
        The allowed Z and their probabilities.
    k : int
        Draws (the request's ``n * best_of`` candidates).
    rng : numpy.random.Generator
        Source of the offset and the shuffle (the generator seeds it from the request's seed).

    Returns
    -------
    list of int
        ``k`` values of Z, one per candidate.
    """
    cdf = np.cumsum(dist.probabilities)
    cdf[-1] = 1.0
    points = (np.arange(k) + rng.random()) / k
    picks = [dist.allowed[i] for i in np.searchsorted(cdf, points, side="right")]
    return [picks[i] for i in rng.permutation(k)]


__all__ = [
    "LEVELS",
    "PRIOR_ALPHA",
    "PRIOR_FILE",
    "FormulaUnitPrior",
    "FormulaUnitProbabilities",
    "allowed_formula_units",
    "draw_formula_units",
    "formula_key",
    "level_keys",
    "prototype_key",
]
