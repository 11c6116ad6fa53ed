"""Generation requests: what a user asks for, checked against what a model can deliver.

A :class:`GenerationRequest` holds one composition (or none), the other six conditions and the sampling settings.
:func:`resolve_request` validates it for a model (elements, site count, space group against the composition's
Wyckoff-compatible cells, value ranges) and returns a :class:`ResolvedRequest` with the integer cell content the
model is conditioned on; every problem is a :class:`~gpsk_materials.errors.ConditioningError` that names the request.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from functools import reduce
from typing import Any, Mapping

import numpy as np

from gpsk_materials.errors import ConditioningError
from gpsk_materials.models.conditioning import MODALITIES, Conditions, parse_formula

DEFAULT_GUIDANCE = 1.0
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class GenerationRequest:
    """One generation request: ``n`` structures of ``composition`` under the given conditions.

    Parameters
    ----------
    composition
        Formula string (``"Fe2O3"``), pymatgen ``Composition`` or mapping element -> amount; None lets the model
        choose the composition (the decoder then infers it). The amounts are the cell content the model is
        conditioned on; fractional amounts are scaled to the smallest integer multiple.
    n
        Structures wanted.
    crystal_system, space_group, band_gap, formation_energy, e_above_hull, magnetic_ordering
        Optional conditions (see :mod:`gpsk_materials.models.conditioning`).
    guidance
        Classifier-free guidance scale (1 = conditional prediction only).
    steps
        Euler steps of the flow sampler.
    best_of
        Candidates drawn per wanted structure; the best ``n`` of ``n * best_of`` are kept.
    seed
        Seed of this request's noise; None takes the run's seed plus the request index.
    """

    composition: Any = None
    n: int = 1
    crystal_system: str | None = None
    space_group: int | None = None
    band_gap: float | None = None
    formation_energy: float | None = None
    e_above_hull: float | None = None
    magnetic_ordering: str | None = None
    guidance: float = DEFAULT_GUIDANCE
    steps: int = DEFAULT_STEPS
    best_of: int = 1
    seed: int | None = None

    @classmethod
    def coerce(cls, obj: Any, **defaults: Any) -> GenerationRequest:
        """A request from a GenerationRequest, a mapping of its fields, or a bare composition; ``defaults`` fill
        the fields the object does not set."""
        names = {f.name for f in fields(cls)}
        unknown = set(defaults) - names
        if unknown:
            raise ConditioningError(f"unknown request fields {sorted(unknown)}; expected some of {sorted(names)}")
        if isinstance(obj, GenerationRequest):
            return obj
        if isinstance(obj, Mapping) and not _is_amount_mapping(obj):
            unknown = set(obj) - names
            if unknown:
                raise ConditioningError(f"unknown request fields {sorted(unknown)}; expected some of {sorted(names)}")
            return cls(**{**defaults, **obj})
        return cls(**{**defaults, "composition": obj})

    def conditions(self, composition: Mapping[str, float] | None = None) -> Conditions:
        """The model conditions of this request (``composition`` overrides the requested one)."""
        comp = self.composition if composition is None else dict(composition)
        return Conditions(comp, *(getattr(self, m) for m in MODALITIES[1:]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (the composition as a formula string)."""
        d = asdict(self)
        d["composition"] = composition_label(self.composition)
        return d


def _is_amount_mapping(obj: Mapping) -> bool:
    """True for an element -> amount mapping (``{"Fe": 2, "O": 3}``), False for a mapping of request fields."""
    from pymatgen.core import Composition

    if isinstance(obj, Composition):
        return True
    return bool(obj) and all(isinstance(k, str) and k[:1].isupper() for k in obj)


def composition_label(comp: Any) -> str | None:
    """A formula string for any accepted composition form (None stays None)."""
    if comp is None:
        return None
    if isinstance(comp, str):
        return comp.replace(" ", "")
    from pymatgen.core import Composition

    if isinstance(comp, Composition):
        return comp.formula.replace(" ", "")
    if isinstance(comp, Mapping):
        return "".join(f"{el}{_fmt_amount(a)}" for el, a in comp.items())
    return str(comp)


def _fmt_amount(a: Any) -> str:
    try:
        a = float(a)
    except (TypeError, ValueError):
        return str(a)
    return "" if a == 1 else str(int(a)) if a == int(a) else f"{a:g}"


@dataclass(frozen=True)
class ResolvedRequest:
    """A validated request: ``cell`` is the integer cell content conditioned on (None: free composition),
    ``reduced`` its smallest integer formula, ``conditions`` the validated model conditions."""

    index: int
    request: GenerationRequest
    conditions: Conditions
    cell: dict[str, int] | None
    reduced: dict[str, int] | None
    seed: int

    @property
    def candidates(self) -> int:
        return self.request.n * self.request.best_of

    @property
    def formula(self) -> str:
        """Reduced formula, or ``"free"`` for a request without composition."""
        if self.reduced is None:
            return "free"
        return "".join(f"{el}{'' if k == 1 else k}" for el, k in self.reduced.items())


def _amounts(comp: Any) -> dict[str, float]:
    from pymatgen.core import Composition

    if isinstance(comp, str):
        return parse_formula(comp)
    if isinstance(comp, Composition):
        out: dict[str, float] = {}
        for sp, amt in comp.items():
            sym = getattr(sp, "symbol", None) or getattr(getattr(sp, "element", None), "symbol", None)
            if sym is None:
                raise ConditioningError(f"composition {comp} holds {sp}, not an element")
            out[sym] = out.get(sym, 0.0) + float(amt)
        return out
    if isinstance(comp, Mapping):
        return {str(k): v for k, v in comp.items()}
    raise ConditioningError(f"a composition is a formula string, Composition or dict, got {type(comp).__name__}")


def integer_cell(amounts: Mapping[str, float], max_sites: int) -> dict[str, int]:
    """Integer cell content: the amounts as given if they are integers, else their smallest integer multiple."""
    values = np.array([float(v) for v in amounts.values()])
    for k in range(1, max_sites + 1):
        scaled = values * k
        if np.all(np.abs(scaled - np.round(scaled)) < 1e-6 * max(1.0, scaled.max())):
            return {el: int(round(v)) for el, v in zip(amounts, scaled)}
    raise ConditioningError(
        f"amounts {dict(amounts)} are not a ratio of integers small enough for a cell of at most {max_sites} sites"
    )


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ConditioningError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def resolve_request(
    request: GenerationRequest, index: int, base_seed: int, max_sites: int, max_elements: int
) -> ResolvedRequest:
    """Validate ``request`` for a model with ``max_sites`` and ``max_elements``; raise :class:`ConditioningError`
    prefixed with the request's index and composition."""
    try:
        return _resolve(request, index, base_seed, max_sites, max_elements)
    except ConditioningError as exc:
        raise ConditioningError(f"request {index} ({composition_label(request.composition)}): {exc}") from exc


def _resolve(request: GenerationRequest, index: int, base_seed: int, max_sites: int, max_elements: int) -> ResolvedRequest:
    _check_int("n", request.n, 1)
    _check_int("best_of", request.best_of, 1)
    _check_int("steps", request.steps, 1)
    g = request.guidance
    if isinstance(g, bool) or not isinstance(g, (int, float, np.number)) or not math.isfinite(g):
        raise ConditioningError(f"guidance must be a finite number, got {g!r}")
    seed = base_seed + index if request.seed is None else _check_int("seed", request.seed, 0)
    cell = reduced = None
    if request.composition is not None:
        amounts = _amounts(request.composition)
        # element names, amounts and the element count are checked by Conditions before any arithmetic
        Conditions(composition=amounts).validated(max_elements)
        cell = integer_cell(amounts, max_sites)
        gcd = reduce(math.gcd, cell.values())
        reduced = {el: v // gcd for el, v in cell.items()}
        n_reduced, n_cell = sum(reduced.values()), sum(cell.values())
        if n_reduced > max_sites:
            raise ConditioningError(
                f"its smallest formula unit has {n_reduced} atoms; the model generates cells of at most {max_sites} sites"
            )
        if n_cell > max_sites:
            raise ConditioningError(
                f"the requested cell holds {n_cell} atoms; the model generates cells of at most {max_sites} sites "
                f"(ask for the formula unit {''.join(f'{e}{k}' for e, k in reduced.items())} instead)"
            )
    conditions = request.conditions(cell).validated(max_elements)
    if conditions.space_group is not None and reduced is not None:
        _check_space_group_fits(conditions.space_group, reduced, max_sites)
    return ResolvedRequest(index, replace(request, seed=seed), conditions, cell, reduced, seed)


def _check_space_group_fits(space_group: int, reduced: Mapping[str, int], max_sites: int) -> None:
    from gpsk_materials.checks.symmetry import site_count_compatible

    n_reduced = sum(reduced.values())
    for k in range(1, max_sites // n_reduced + 1):
        if site_count_compatible(space_group, {el: v * k for el, v in reduced.items()}):
            return
    formula = "".join(f"{el}{'' if v == 1 else v}" for el, v in reduced.items())
    raise ConditioningError(
        f"space group {space_group} cannot hold {formula} in any cell of at most {max_sites} sites: the site counts "
        f"of no multiple of the formula are sums of its Wyckoff multiplicities"
    )
