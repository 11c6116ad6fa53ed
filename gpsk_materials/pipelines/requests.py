"""Generation requests: what a user asks for, checked against what a model can deliver.

A :class:`GenerationRequest` holds a :class:`~gpsk_materials.models.conditioning.Conditions` (one composition or
none, and the other six conditions) and the sampling settings.
:func:`resolve_request` validates it for a model (elements, site count, space group against the composition's
Wyckoff-compatible cells, value ranges) and returns a :class:`ResolvedRequest` with the integer cell content the
model is conditioned on; every problem is a :class:`~gpsk_materials.errors.ConditioningError` that names the request.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np

from gpsk_materials.defaults import GUIDANCE, SAMPLER_STEPS
from gpsk_materials.errors import ConditioningError
from gpsk_materials.models.conditioning import MODALITIES, Conditions
from gpsk_materials.vocabulary import composition_amounts, formula_string, integer_cell, reduced_formula

__all__ = [
    "SAMPLING_FIELDS", "GenerationRequest", "ResolvedRequest", "composition_label", "integer_cell", "resolve_request",
]


#: what a request adds to its :class:`~gpsk_materials.models.conditioning.Conditions`
SAMPLING_FIELDS = ("n", "guidance", "steps", "best_of", "seed")


@dataclass(frozen=True, init=False)
class GenerationRequest:
    """One generation request: ``n`` structures under ``conditions``, with the sampling settings.

    ``GenerationRequest("Fe2O3", n=4, space_group=167)`` is ``GenerationRequest(n=4,
    conditions=Conditions("Fe2O3", space_group=167))``: the composition (positional) and the keyword conditions
    fill (or override) the fields of ``conditions``.

    Parameters
    ----------
    composition
        Formula string (``"Fe2O3"``), pymatgen ``Composition`` or mapping element -> amount; None lets the model
        choose the composition (the decoder then infers it). The amounts are the cell content the model is
        conditioned on; fractional amounts are scaled to the smallest integer multiple.
    n
        Structures wanted.
    conditions
        A :class:`~gpsk_materials.models.conditioning.Conditions` (the seven modalities); keyword conditions
        (``crystal_system``, ``space_group``, ``band_gap``, ``formation_energy``, ``e_above_hull``,
        ``magnetic_ordering``) are set on top of it.
    guidance
        Classifier-free guidance scale (1 = conditional prediction only; default
        :data:`gpsk_materials.defaults.GUIDANCE`).
    steps
        Euler steps of the flow sampler (default :data:`gpsk_materials.defaults.SAMPLER_STEPS`).
    best_of
        Candidates drawn per wanted structure; the best ``n`` of ``n * best_of`` are kept.
    seed
        Seed of this request's noise; None takes the run's seed plus the request index.
    """

    conditions: Conditions
    n: int = 1
    guidance: float = GUIDANCE
    steps: int = SAMPLER_STEPS
    best_of: int = 1
    seed: int | None = None

    def __init__(
        self,
        composition: Any = None,
        n: int = 1,
        *,
        conditions: Conditions | None = None,
        guidance: float = GUIDANCE,
        steps: int = SAMPLER_STEPS,
        best_of: int = 1,
        seed: int | None = None,
        **condition_fields: Any,
    ) -> None:
        base = Conditions() if conditions is None else conditions
        if not isinstance(base, Conditions):
            raise ConditioningError(f"conditions must be a Conditions, got {type(base).__name__}")
        unknown = set(condition_fields) - set(MODALITIES)
        if unknown:
            raise ConditioningError(f"unknown request fields {sorted(unknown)}; expected some of {sorted(_NAMES)}")
        if composition is not None:
            condition_fields["composition"] = composition
        for name, value in (("conditions", replace(base, **condition_fields)), ("n", n), ("guidance", guidance),
                            ("steps", steps), ("best_of", best_of), ("seed", seed)):
            object.__setattr__(self, name, value)

    @property
    def composition(self) -> Any:
        """The requested composition (as given; None: free)."""
        return self.conditions.composition

    @classmethod
    def coerce(cls, obj: Any, **defaults: Any) -> GenerationRequest:
        """A request from a GenerationRequest, a mapping of its fields (condition fields included), or a bare
        composition; ``defaults`` fill the fields the object does not set."""
        unknown = set(defaults) - _NAMES
        if unknown:
            raise ConditioningError(f"unknown request fields {sorted(unknown)}; expected some of {sorted(_NAMES)}")
        if isinstance(obj, GenerationRequest):
            return obj
        if isinstance(obj, Mapping) and not _is_amount_mapping(obj):
            unknown = set(obj) - _NAMES
            if unknown:
                raise ConditioningError(f"unknown request fields {sorted(unknown)}; expected some of {sorted(_NAMES)}")
            return cls(**{**defaults, **obj})
        return cls(**{**defaults, "composition": obj})

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly flat fields: the seven conditions (the composition as a formula string), then the
        sampling settings."""
        d = asdict(self.conditions)
        d["composition"] = composition_label(self.composition)
        return {**d, **{name: getattr(self, name) for name in SAMPLING_FIELDS}}


#: every field name a mapping may give for a request
_NAMES = frozenset(MODALITIES) | frozenset(SAMPLING_FIELDS) | {"conditions"}


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
        return formula_string(comp)
    return str(comp)


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
        return "free" if self.reduced is None else formula_string(self.reduced)


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
        amounts = composition_amounts(request.composition)
        # element names, amounts and the element count are checked by Conditions before any arithmetic
        Conditions(composition=amounts).validated(max_elements)
        cell = integer_cell(amounts, max_sites)
        reduced = reduced_formula(cell)
        n_reduced, n_cell = sum(reduced.values()), sum(cell.values())
        if n_reduced > max_sites:
            raise ConditioningError(
                f"its smallest formula unit has {n_reduced} atoms; the model generates cells of at most {max_sites} sites"
            )
        if n_cell > max_sites:
            raise ConditioningError(
                f"the requested cell holds {n_cell} atoms; the model generates cells of at most {max_sites} sites "
                f"(ask for the formula unit {formula_string(reduced)} instead)"
            )
    conditions = (request.conditions if cell is None else replace(request.conditions, composition=cell)).validated(
        max_elements)
    if conditions.space_group is not None and reduced is not None:
        _check_space_group_fits(conditions.space_group, reduced, max_sites)
    return ResolvedRequest(index, replace(request, seed=seed), conditions, cell, reduced, seed)


def _check_space_group_fits(space_group: int, reduced: Mapping[str, int], max_sites: int) -> None:
    from gpsk_materials.checks.symmetry import site_count_compatible

    n_reduced = sum(reduced.values())
    for k in range(1, max_sites // n_reduced + 1):
        if site_count_compatible(space_group, {el: v * k for el, v in reduced.items()}):
            return
    formula = formula_string(reduced)
    raise ConditioningError(
        f"space group {space_group} cannot hold {formula} in any cell of at most {max_sites} sites: the site counts "
        f"of no multiple of the formula are sums of its Wyckoff multiplicities"
    )
