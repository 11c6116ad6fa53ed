"""Generation requests: what a user asks for, checked against what a model can deliver.

A :class:`GenerationRequest` holds a :class:`~gpsk_materials.models.conditioning.Conditions` (one composition or
none, and the other six conditions), the number of formula units (``formula_units``) and the sampling settings.
:func:`resolve_request` validates it for a model (elements, site count, space group against the composition's
Wyckoff-compatible cells, value ranges) and returns a :class:`ResolvedRequest` with the integer cell content each
candidate is conditioned on; every problem is a :class:`~gpsk_materials.errors.ConditioningError` that names the
request.

Reduced formula or cell content (:mod:`gpsk_materials.pipelines.formula_units`):

- a *reduced formula* (integer amounts without a common divisor, or fractional amounts: ``"TiO2"``,
  ``{"Ti": 1, "O": 2}``, ``"Li0.5CoO2"`` = LiCo2O4) with ``formula_units=None`` lets the generator choose the
  number of formula units Z of each candidate from the training prior, among the Z its space group allows;
- a composition whose integer amounts share a divisor (``"Ti2O4"``, ``Composition("Na4Cl4")``) is the cell content,
  as given;
- ``formula_units=Z`` (an int) asks for Z formula units of the composition's reduced formula (``"Si"``,
  ``formula_units=1`` is the one-atom cell); with an explicit cell content it must agree with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np

from gpsk_materials.defaults import GUIDANCE, PROJECTION_TIME, SAMPLER_STEPS
from gpsk_materials.errors import ConditioningError
from gpsk_materials.models.conditioning import Conditions
from gpsk_materials.pipelines.formula_units import FormulaUnitPrior, allowed_formula_units, draw_formula_units
from gpsk_materials.vocabulary import (
    MODALITIES,
    composition_amounts,
    formula_string,
    integer_cell,
    integer_counts,
    reduced_formula,
)

__all__ = [
    "SAMPLING_FIELDS", "GenerationRequest", "ResolvedRequest", "composition_label", "integer_cell", "resolve_request",
]


#: what a request adds to its :class:`~gpsk_materials.models.conditioning.Conditions`
SAMPLING_FIELDS = ("n", "guidance", "steps", "best_of", "seed", "formula_units", "projection", "prototypes")


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
        choose the composition (the decoder then infers it). A reduced formula (``"TiO2"``; fractional amounts are
        scaled to the smallest integer multiple) leaves the number of formula units to the generator; amounts with
        a common divisor (``"Ti2O4"``) are the cell content, as given.
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
        Seed of this request's noise (and of its draw of formula units); None takes the run's seed plus the request
        index.
    formula_units
        Formula units Z of the composition's reduced formula in the generated (primitive) cell; None: the cell
        content as given when its amounts share a divisor, else Z drawn per candidate from the training prior
        (:mod:`gpsk_materials.pipelines.formula_units`).
    projection
        Flow time t (0 <= t < 1; 0 = off) at which each sample, projected onto the nearest arrangement of the requested atoms
        by the decoder and re-encoded, re-enters the flow for ``round(steps * t)`` more steps; 0 (the default,
        :data:`gpsk_materials.defaults.PROJECTION_TIME`) samples once (docs/generator.md, "Projection").
    prototypes
        Candidates substituted from the nearest known crystals (:class:`gpsk_materials.prototypes.PrototypeSubstitutor`:
        the same stoichiometry, elements replaced along Pettifor's chemical scale) added to the model's
        ``n * best_of``; they go through the same checks and ranking, and carry a ``prototype`` provenance section
        instead of ``decode`` (0, the default, adds none; needs a composition; docs/generator.md, "Prototypes").
    """

    conditions: Conditions
    n: int = 1
    guidance: float = GUIDANCE
    steps: int = SAMPLER_STEPS
    best_of: int = 1
    seed: int | None = None
    formula_units: int | None = None
    projection: float = PROJECTION_TIME
    prototypes: int = 0

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
        formula_units: int | None = None,
        projection: float = PROJECTION_TIME,
        prototypes: int = 0,
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
                            ("steps", steps), ("best_of", best_of), ("seed", seed),
                            ("formula_units", formula_units), ("projection", projection),
                            ("prototypes", prototypes)):
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
    """A validated request.

    ``conditions`` are the validated model conditions with the composition as the request gives it (the reduced
    formula when Z is drawn, the cell content otherwise); ``candidate_conditions(j)`` are those candidate ``j`` is
    conditioned on (its cell content). ``reduced`` is the smallest integer formula (None: free composition),
    ``formula_units`` the Z of each of the ``n * best_of`` candidates (None: free composition) and ``cell_choice``
    how they were chosen (written into the provenance as ``request.cell``).
    """

    index: int
    request: GenerationRequest
    conditions: Conditions
    reduced: dict[str, int] | None
    seed: int
    formula_units: tuple[int, ...] | None = None
    cell_choice: dict[str, Any] | None = None

    @property
    def candidates(self) -> int:
        return self.request.n * self.request.best_of

    @property
    def formula(self) -> str:
        """Reduced formula, or ``"free"`` for a request without composition."""
        return "free" if self.reduced is None else formula_string(self.reduced)

    def cell(self, j: int) -> dict[str, int] | None:
        """Integer cell content of candidate ``j`` (None: free composition)."""
        if self.reduced is None or self.formula_units is None:
            return None
        z = self.formula_units[j]
        return {el: v * z for el, v in self.reduced.items()}

    def candidate_conditions(self, j: int) -> Conditions:
        """The validated conditions of candidate ``j``: the request's, with its cell content."""
        cell = self.cell(j)
        if cell is None:
            return self.conditions
        # in the validated order (atomic number), as Conditions.validated gives it
        return replace(self.conditions, composition={el: float(cell[el]) for el in self.conditions.composition})


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ConditioningError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def resolve_request(
    request: GenerationRequest, index: int, base_seed: int, max_sites: int, max_elements: int,
    prior: FormulaUnitPrior | None = None,
) -> ResolvedRequest:
    """Validate ``request`` for a model with ``max_sites`` and ``max_elements`` and choose the formula units of its
    candidates (``prior``: None uses the packaged :class:`~gpsk_materials.pipelines.formula_units.FormulaUnitPrior`).

    Raises
    ------
    ConditioningError
        Prefixed with the request's index and composition: a bad field, an unknown element, a cell beyond
        ``max_sites``, a space group that no allowed number of formula units fits, ``formula_units`` contradicting
        an explicit cell content.
    """
    try:
        return _resolve(request, index, base_seed, max_sites, max_elements, prior)
    except ConditioningError as exc:
        raise ConditioningError(f"request {index} ({composition_label(request.composition)}): {exc}") from exc


def _resolve(request: GenerationRequest, index: int, base_seed: int, max_sites: int, max_elements: int,
             prior: FormulaUnitPrior | None) -> ResolvedRequest:
    _check_int("n", request.n, 1)
    _check_int("best_of", request.best_of, 1)
    _check_int("steps", request.steps, 1)
    g = request.guidance
    if isinstance(g, bool) or not isinstance(g, (int, float, np.number)) or not math.isfinite(g):
        raise ConditioningError(f"guidance must be a finite number, got {g!r}")
    p = request.projection
    if isinstance(p, bool) or not isinstance(p, (int, float, np.number)) or not 0.0 <= p < 1.0:
        raise ConditioningError(f"projection must be a flow time in [0, 1) (0 = off), got {p!r}")
    _check_int("prototypes", request.prototypes, 0)
    seed = base_seed + index if request.seed is None else _check_int("seed", request.seed, 0)
    asked_z = None if request.formula_units is None else _check_int("formula_units", request.formula_units, 1)
    request = replace(request, seed=seed)
    if request.composition is None:
        if asked_z is not None:
            raise ConditioningError("formula_units needs a composition")
        if request.prototypes:
            raise ConditioningError("prototypes needs a composition")
        conditions = request.conditions.validated(max_elements)
        return ResolvedRequest(index, request, conditions, None, seed)
    amounts = composition_amounts(request.composition)
    # element names, amounts and the element count are checked by Conditions before any arithmetic
    Conditions(composition=amounts).validated(max_elements)
    given = integer_cell(amounts, max_sites)
    reduced = reduced_formula(given)
    given_z = integer_counts(given)[1]
    n_reduced = sum(reduced.values())
    formula = formula_string(reduced)
    if n_reduced > max_sites:
        raise ConditioningError(
            f"its smallest formula unit has {n_reduced} atoms; the model generates cells of at most {max_sites} sites"
        )
    if given_z > 1 and asked_z is not None and asked_z != given_z:
        raise ConditioningError(
            f"the cell content {formula_string(given)} holds {given_z} formula units of {formula}, but formula_units="
            f"{asked_z} was asked (give the reduced formula {formula} with formula_units, or the cell content alone)"
        )
    conditions = replace(request.conditions, composition=given).validated(max_elements)
    sg = conditions.space_group
    fixed_z = asked_z if asked_z is not None else given_z if given_z > 1 else None
    if fixed_z is not None:
        how = "formula_units" if asked_z is not None else "explicit cell content"
        cell = {el: v * fixed_z for el, v in reduced.items()}
        if sum(cell.values()) > max_sites:
            raise ConditioningError(
                f"the requested cell {formula_string(cell)} holds {sum(cell.values())} atoms; the model generates "
                f"cells of at most {max_sites} sites (give the reduced formula {formula} to let the generator choose)"
            )
        if sg is not None:
            allowed = allowed_formula_units(reduced, max_sites, sg)
            if fixed_z not in allowed:
                raise ConditioningError(
                    f"space group {sg} cannot hold the cell content {formula_string(cell)}: in its primitive cell (the "
                    f"cells the model generates) the site counts are not sums of Wyckoff multiplicities; "
                    + (f"it holds {formula} with Z in {list(allowed)}" if allowed else
                       f"no cell of {formula} of at most {max_sites} sites fits")
                )
        choice = {"chosen_by": how}
        zs = (fixed_z,) * request.n * request.best_of
        conditions = replace(
            conditions, composition={el: v * fixed_z / given_z for el, v in conditions.composition.items()})
    else:
        allowed = allowed_formula_units(reduced, max_sites, sg)
        if not allowed:
            raise ConditioningError(
                f"space group {sg} cannot hold {formula} in any cell of at most {max_sites} sites: for no number of "
                "formula units are the site counts sums of its Wyckoff multiplicities in the primitive cell"
            )
        prior = FormulaUnitPrior.from_file() if prior is None else prior
        dist = prior.probabilities(reduced, allowed, sg)
        zs = tuple(draw_formula_units(dist, request.n * request.best_of, np.random.default_rng([seed, _Z_STREAM])))
        choice = {"chosen_by": "prior", **dist.as_dict(), "prior": prior.source()}
    return ResolvedRequest(index, request, conditions, reduced, seed, zs, choice)


#: second word of the seed of the formula-unit draw (the noise uses ``torch.Generator().manual_seed(seed)``)
_Z_STREAM = 0x5A
