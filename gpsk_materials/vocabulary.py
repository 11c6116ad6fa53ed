"""The vocabulary of crystals shared by every sub-package: the names of the conditions (modalities, scalar labels
and their units), elements, space groups and crystal systems, magnetic orderings, chemical formulas and integer cell
contents.

Pure Python and NumPy (no pymatgen, no torch), so the model, the decoder, the checks and the datasets all read one
table. A pymatgen ``Composition`` is accepted wherever a composition is (it is a mapping of elements with a
``symbol``), without importing pymatgen here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from gpsk_materials.errors import ConditioningError

#: Elements with X-ray form factors (Z = 1..98), the composition vocabulary.
ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt "
    "Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf"
).split()
MAX_Z = len(ELEMENTS)
ATOMIC_NUMBER = {s: i + 1 for i, s in enumerate(ELEMENTS)}

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
#: first space-group number of each crystal system (triclinic 1-2, monoclinic 3-15, ...), then 231
SYSTEM_STARTS = np.array([1, 3, 16, 75, 143, 168, 195, 231])
#: labels of magnetic ordering; index 4 ("unknown") is stored as -1 (missing) everywhere
MAGNETIC_ORDERINGS = ("NM", "FM", "FiM", "AFM", "unknown")

#: the conditions a request may give (each optional), in the model's token order
MODALITIES = (
    "composition",
    "crystal_system",
    "space_group",
    "band_gap",
    "formation_energy",
    "e_above_hull",
    "magnetic_ordering",
)
#: the continuous conditions (dataset label columns, normalised with stored statistics in the model)
SCALARS = ("band_gap", "formation_energy", "e_above_hull")
UNITS = {"band_gap": "eV", "formation_energy": "eV/atom", "e_above_hull": "eV/atom"}


# ---------------------------------------------------------------------------------------------- space groups
def check_space_group(space_group: Any) -> int:
    """Return ``space_group`` as an int in 1..230, else raise :class:`ConditioningError` (the one validator)."""
    if isinstance(space_group, bool) or not isinstance(space_group, (int, np.integer)) or not 1 <= int(space_group) <= 230:
        raise ConditioningError(f"space group must be an integer in 1..230, got {space_group!r}")
    return int(space_group)


def crystal_system_index(space_group: np.ndarray | int) -> np.ndarray:
    """Index into :data:`CRYSTAL_SYSTEMS` of space-group numbers (1..230); -1 where the number is missing/invalid."""
    sg = np.asarray(space_group)
    idx = np.searchsorted(SYSTEM_STARTS, sg, side="right") - 1
    return np.where((sg >= 1) & (sg <= 230), idx, -1)


def crystal_system_of(space_group: int) -> str:
    """Crystal system of an international space-group number."""
    return CRYSTAL_SYSTEMS[int(crystal_system_index(check_space_group(space_group)))]


def check_crystal_system(crystal_system: Any) -> str:
    """The crystal system in lower case, else raise :class:`ConditioningError`."""
    cs = str(crystal_system).strip().lower()
    if cs not in CRYSTAL_SYSTEMS:
        raise ConditioningError(f"unknown crystal system {crystal_system!r}; one of {CRYSTAL_SYSTEMS}")
    return cs


def check_magnetic_ordering(ordering: Any) -> str | None:
    """The canonical label of a magnetic ordering (case-insensitive); ``"unknown"`` gives None."""
    lookup = {m.lower(): m for m in MAGNETIC_ORDERINGS}
    label = lookup.get(str(ordering).lower())
    if label is None:
        raise ConditioningError(f"unknown magnetic ordering {ordering!r}; one of {MAGNETIC_ORDERINGS}")
    return None if label == "unknown" else label


# ---------------------------------------------------------------------------------------------- formulas
_FORMULA_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)|(\()|(\))(\d*\.?\d*)")
#: a formula without parentheses: element symbols with optional amounts, read in one pass
_FLAT_FORMULA = re.compile(r"(?:[A-Z][a-z]?\d*\.?\d*)+")
_ELEMENT_AMOUNT = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


def parse_formula(formula: str) -> dict[str, float]:
    """Parse a chemical formula such as ``"Fe2O3"`` or ``"Ca(OH)2"`` into element amounts."""
    text = formula.replace(" ", "")
    if _FLAT_FORMULA.fullmatch(text):  # the common case (every formula of a reference set), without the stack
        flat: dict[str, float] = {}
        for el, amt in _ELEMENT_AMOUNT.findall(text):
            flat[el] = flat.get(el, 0.0) + float(amt or 1)
        return flat
    stack: list[dict[str, float]] = [{}]
    pos = 0
    while pos < len(text):
        m = _FORMULA_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConditioningError(f"cannot parse formula {formula!r} at {text[pos:]!r}")
        pos = m.end()
        if m.group(1):
            el, amt = m.group(1), float(m.group(2) or 1)
            stack[-1][el] = stack[-1].get(el, 0.0) + amt
        elif m.group(3):
            stack.append({})
        else:
            if len(stack) == 1:
                raise ConditioningError(f"unbalanced ')' in formula {formula!r}")
            inner, mult = stack.pop(), float(m.group(5) or 1)
            for el, amt in inner.items():
                stack[-1][el] = stack[-1].get(el, 0.0) + amt * mult
    if len(stack) != 1 or not stack[0]:
        raise ConditioningError(f"cannot parse formula {formula!r}")
    return stack[0]


def _symbol(key: Any) -> str | None:
    """Element symbol of a composition key: a string, a pymatgen Element, or a Species (its element)."""
    if isinstance(key, str):
        return key
    return getattr(key, "symbol", None) or getattr(getattr(key, "element", None), "symbol", None)


def composition_amounts(comp: Any) -> dict[str, float]:
    """Element symbol -> amount of a formula string, a pymatgen ``Composition`` or a mapping (amounts as given;
    element names are checked by :func:`check_composition`)."""
    if isinstance(comp, str):
        return parse_formula(comp)
    if isinstance(comp, Mapping):
        out: dict[str, Any] = {}
        for key, amt in comp.items():
            sym = _symbol(key)
            if sym is None:
                raise ConditioningError(f"composition {comp} holds {key}, not an element")
            out[sym] = out[sym] + amt if sym in out else amt
        return out
    raise ConditioningError(f"a composition is a formula string, Composition or dict, got {type(comp).__name__}")


def check_composition(comp: Any, max_elements: int | None = None) -> dict[str, float]:
    """Validated element -> amount (positive, finite), sorted by atomic number; raise :class:`ConditioningError`."""
    amounts = composition_amounts(comp)
    for el, amt in amounts.items():
        if el not in ATOMIC_NUMBER:
            raise ConditioningError(f"unknown element {el!r} in composition (supported: H..Cf, Z <= {MAX_Z})")
        if not (isinstance(amt, (int, float, np.number)) and math.isfinite(amt) and amt > 0):
            raise ConditioningError(f"amount of {el} must be a positive finite number, got {amt!r}")
    if not amounts:
        raise ConditioningError("composition is empty")
    if max_elements is not None and len(amounts) > max_elements:
        raise ConditioningError(f"composition has {len(amounts)} elements; at most {max_elements} are supported")
    return {el: float(amounts[el]) for el in sorted(amounts, key=ATOMIC_NUMBER.__getitem__)}


def formula_string(amounts: Mapping[str, Any]) -> str:
    """``{"Fe": 2, "O": 3}`` -> ``"Fe2O3"`` (an amount of 1 is left out)."""
    return "".join(f"{el}{_fmt_amount(a)}" for el, a in amounts.items())


def _fmt_amount(a: Any) -> str:
    try:
        a = float(a)
    except (TypeError, ValueError):
        return str(a)
    if not math.isfinite(a):  # a label of an invalid amount (NaN, inf): shown as is, refused by check_composition
        return f"{a:g}"
    return "" if a == 1 else str(int(a)) if a == int(a) else f"{a:g}"


# ---------------------------------------------------------------------------------------------- cell content
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


def integer_counts(amounts: Mapping[Any, float]) -> tuple[dict[Any, int], int]:
    """Amounts that must be whole numbers of atoms as ints, and their greatest common divisor (the number of
    formula units of the smallest integer formula); :class:`ValueError` when one is not an integer."""
    ints: dict[Any, int] = {}
    for key, value in amounts.items():  # plain Python: called per formula on reference sets of 10^5 formulas
        value = float(value)
        whole = round(value)
        if abs(value - whole) > 1e-6:
            raise ValueError(f"composition amounts {[float(v) for v in amounts.values()]} are not integers")
        ints[key] = int(whole)
    return ints, math.gcd(*ints.values())


def reduced_formula(cell: Mapping[Any, int]) -> dict[Any, int]:
    """The smallest integer formula of an integer cell content."""
    ints, g = integer_counts(cell)
    return {k: v // g for k, v in ints.items()} if g else ints


__all__ = [
    "ATOMIC_NUMBER",
    "CRYSTAL_SYSTEMS",
    "ELEMENTS",
    "MAGNETIC_ORDERINGS",
    "MAX_Z",
    "MODALITIES",
    "SCALARS",
    "SYSTEM_STARTS",
    "UNITS",
    "check_composition",
    "check_crystal_system",
    "check_magnetic_ordering",
    "check_space_group",
    "composition_amounts",
    "crystal_system_index",
    "crystal_system_of",
    "formula_string",
    "integer_cell",
    "integer_counts",
    "parse_formula",
    "reduced_formula",
]
