"""Energy above a reference convex hull computed with the same interatomic potential as the candidates.

Protocol
--------
An MLIP's energies are only comparable with energies of the same MLIP (the default TensorNet-MatPES is on the
MatPES PBE scale, CHGNet on the Materials Project scale), so the reference hull is rebuilt from the potential:

1. For a chemical system (the elements of the structure asked about), every reference structure of
   ``shared/data/pool.csv.gz`` whose elements are a subset of the system is taken (optionally only those with at most
   ``max_sites`` sites). Elements with no structure in the pool get the lowest-energy of the fcc, bcc, hcp, simple
   cubic and diamond prototypes, volume-scanned and relaxed with the potential.
2. Each pool structure is evaluated with the potential as a **single point of its DFT-relaxed geometry** (default,
   ``mode="single_point"``) or after a relaxation (``mode="relax"``). Single points are the default because the DFT
   geometry is near the minimum of a potential trained on DFT relaxations (the residual relaxation energy is
   typically a few meV/atom) and they cost ~0.05-0.3 s per structure on a CPU instead of tens of seconds; the price
   is that references sit slightly above their own minimum, so E_hull of relaxed candidates is underestimated by
   that residual. Use ``mode="relax"`` when this matters.
3. The hull is pymatgen's :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` of (composition, total energy)
   entries; E_hull of a new (composition, energy per atom) is its distance to that hull (negative below it).

Energies are cached in a JSON file (atomic writes) keyed by potential name, mode and material_id, so repeated runs
only evaluate new structures. The evaluation suite builds on the same object.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from monty.json import MSONable
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element, Lattice, Structure
from tqdm.auto import tqdm

from gpsk_materials.atomic_files import write_json_atomic
from gpsk_materials.checks._common import as_structure
from gpsk_materials.checks.potentials import Potential, resolve_potential
from gpsk_materials.datasets.pool import default_pool_path, read_pool
from gpsk_materials.defaults import FMAX, REFERENCE_RELAX_STEPS, RELAX_BATCH
from gpsk_materials.errors import DataError, InvalidStructureError

logger = logging.getLogger(__name__)

MODES = ("single_point", "relax")
CACHE_ENV = "GPSK_CACHE_DIR"


def default_cache_path() -> Path:
    """``$GPSK_CACHE_DIR/reference_energies.json`` (default ``~/.cache/gpsk_materials``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gpsk_materials"
    return Path(root).expanduser() / "reference_energies.json"


#: the elemental prototypes of :func:`_prototypes`, in order
_PROTOTYPE_NAMES = ("fcc", "bcc", "hcp", "sc", "diamond")


def _prototypes(element: str) -> dict[str, Structure]:
    """Elemental prototypes at an arbitrary size (the volume scan sets it), keyed as ``_PROTOTYPE_NAMES``."""
    a = 4.0
    return {
        "fcc": Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [element], [[0, 0, 0]]).get_primitive_structure(),
        "bcc": Structure.from_spacegroup("Im-3m", Lattice.cubic(a), [element], [[0, 0, 0]]).get_primitive_structure(),
        "hcp": Structure.from_spacegroup(
            "P6_3/mmc", Lattice.hexagonal(a, a * np.sqrt(8 / 3)), [element], [[1 / 3, 2 / 3, 0.25]]
        ),
        "sc": Structure(Lattice.cubic(a), [element], [[0, 0, 0]]),
        "diamond": Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), [element], [[0, 0, 0]]).get_primitive_structure(),
    }


def _as_pd_entry(item, name: str) -> PDEntry:
    """A fixed reference: a pymatgen entry (its composition, total energy and ``entry_id`` or name) or a
    (composition, energy per atom) pair."""
    if hasattr(item, "composition") and hasattr(item, "energy"):
        label = getattr(item, "entry_id", None) or getattr(item, "name", None) or name
        return PDEntry(item.composition, float(item.energy), name=str(label))
    try:
        comp, e = item
    except (TypeError, ValueError) as exc:
        raise DataError(f"reference {name}: expected a pymatgen entry or a (composition, energy per atom) pair, "
                        f"got {item!r}") from exc
    return ReferenceHull._entry(comp, e, name)


def _chemsys(elements: Iterable[str]) -> frozenset[str]:
    return frozenset(str(e) for e in elements)


class ReferenceHull(MSONable):
    """Convex hulls of reference energies from one potential, built on demand per chemical system.

    MSONable as every check: :meth:`as_dict` names the potential (its ``spec``, loaded again lazily by
    :meth:`from_dict`), the pool and cache files, the settings and the fixed entries; the reference energies
    themselves live in the cache file.

    Parameters
    ----------
    potential
        The potential the candidates are evaluated with (a Potential, a model name, a ``Potential.as_dict()``, or
        None for the default); loaded when first needed.
    pool_path
        CSV(.gz) with ``material_id``, ``nsites``, ``reduced_formula`` and ``cif`` columns; default
        ``shared/data/pool.csv.gz``.
    cache_path
        JSON cache of reference energies; None for :func:`default_cache_path`, False for no cache.
    mode
        ``"single_point"`` (DFT geometry as is) or ``"relax"`` (see module docstring).
    max_sites
        Ignore pool structures with more sites (CPU time); None keeps all.
    relax_steps, fmax
        Relaxation settings for ``mode="relax"`` and the elemental prototypes.
    relax_batch
        Structures per forward pass of the batched relaxation (and at most ``20 * relax_batch`` atoms).
    entries
        Extra fixed references on the potential's scale: (composition, energy per atom) pairs, or pymatgen entries
        (``PDEntry``, ``ComputedEntry``, ``ComputedStructureEntry``: their composition and total ``energy``).
    use_pool
        False to build hulls from ``entries`` only (then nothing is evaluated).
    """

    def __init__(
        self,
        potential: Potential | str | None = None,
        pool_path: str | Path | None = None,
        cache_path: str | Path | None | bool = None,
        mode: str = "single_point",
        max_sites: int | None = None,
        relax_steps: int = REFERENCE_RELAX_STEPS,
        fmax: float = FMAX,
        relax_batch: int = RELAX_BATCH,
        entries: Iterable[tuple[Composition | str, float] | PDEntry] | None = None,
        use_pool: bool = True,
        progress: bool = False,
    ) -> None:
        if mode not in MODES:
            raise DataError(f"mode must be one of {MODES}, got {mode!r}")
        self._potential_arg = potential
        self._potential: Potential | None = potential if isinstance(potential, Potential) else None
        self.pool_path = Path(pool_path) if pool_path is not None else default_pool_path()
        self.cache_path = None if cache_path is False else Path(cache_path) if cache_path not in (None, True) else default_cache_path()
        self.mode = mode
        self.max_sites = max_sites
        self.relax_steps = int(relax_steps)
        self.fmax = float(fmax)
        self.relax_batch = int(relax_batch)
        self.use_pool = use_pool
        self.progress = progress
        self._fixed = [_as_pd_entry(e, f"fixed-{i}") for i, e in enumerate(entries or [])]
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}
        self._energies: dict[str, float] | None = None

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[Composition | str, float] | PDEntry]) -> ReferenceHull:
        """A hull of fixed entries only ((composition, energy per atom) pairs or pymatgen entries); no potential,
        no pool."""
        return cls(potential=None, cache_path=False, entries=list(entries), use_pool=False)

    def as_dict(self) -> dict:
        pot = self._potential.as_dict() if self._potential is not None else self._potential_arg
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "potential": str(pot) if isinstance(pot, Path) else pot,
            "pool_path": str(self.pool_path),
            "cache_path": False if self.cache_path is None else str(self.cache_path),
            "mode": self.mode,
            "max_sites": self.max_sites,
            "relax_steps": self.relax_steps,
            "fmax": self.fmax,
            "relax_batch": self.relax_batch,
            "entries": [e.as_dict() for e in self._fixed],
            "use_pool": self.use_pool,
            "progress": self.progress,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ReferenceHull:
        kw = {k: v for k, v in d.items() if not k.startswith("@")}
        kw["entries"] = [PDEntry.from_dict(e) for e in kw.get("entries") or []]
        return cls(**kw)

    # -- energies -----------------------------------------------------------------------------------------------
    @property
    def potential(self) -> Potential:
        if self._potential is None:
            self._potential = resolve_potential(self._potential_arg)
        return self._potential

    @property
    def cache_key(self) -> str:
        return f"{self.potential.name}|{self.mode}"

    @staticmethod
    def _entry(composition: Composition | str, energy_per_atom: float, name: str) -> PDEntry:
        comp = Composition(composition)
        return PDEntry(comp, float(energy_per_atom) * comp.num_atoms, name=name)

    def _cache(self) -> dict[str, float]:
        if self._energies is None:
            self._energies = dict(self._read_cache().get(self.cache_key, {}))
        return self._energies

    def _read_cache(self) -> dict:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            return json.loads(self.cache_path.read_text()).get("energies", {})
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable reference-energy cache %s: %s", self.cache_path, exc)
            return {}

    def _write_cache(self) -> None:
        if self.cache_path is None:
            return
        allk = self._read_cache()  # merge: another process may have added entries meanwhile
        allk.setdefault(self.cache_key, {}).update(self._cache())
        write_json_atomic(self.cache_path, {"version": 1, "energies": allk}, indent=None)

    def _evaluate(self, ids: list[str], structures: list[Structure]) -> None:
        """Energies per atom of structures not in the cache yet (batched single points or relaxations).

        The cache file is written after every ``relax_batch`` structures (one batch of the potential), so a run
        that is stopped keeps all but the batch in flight and the next run with the same cache file resumes.
        """
        cache = self._cache()
        todo = [(i, s) for i, s in zip(ids, structures) if i not in cache]
        if not todo:
            return
        step = max(self.relax_batch, 1)
        with tqdm(total=len(todo), desc="reference energies", unit="structure",
                  disable=not self.progress or len(todo) <= step) as bar:
            for start in range(0, len(todo), step):
                part = todo[start : start + step]
                ts = [s for _, s in part]
                if self.mode == "single_point":
                    energies = self.potential.energies(ts, on_error="nan", progress=False)
                else:
                    energies = np.array([r.energy_per_atom for r in self.potential.relax(
                        ts, fmax=self.fmax, steps=self.relax_steps, progress=self.progress and len(todo) <= step,
                        batch_size=self.relax_batch, max_atoms=20 * self.relax_batch)])
                for (i, _), e in zip(part, energies):
                    cache[i] = float(e) if np.isfinite(e) else float("nan")
                self._write_cache()
                bar.update(len(part))

    def _element_fallback(self, element: str) -> list[PDEntry]:
        from gpsk_materials.checks.volume_scan import VolumeScan

        ids = [f"prototype-{name}-{element}" for name in _PROTOTYPE_NAMES]
        cache = self._cache()
        if any(i not in cache for i in ids):  # the prototypes are built only then (from_spacegroup is slow)
            protos = _prototypes(element)
            scanned = [r.structure for r in VolumeScan(self.potential, v_min=4.0, v_max=80.0).scan(list(protos.values()))]
            relaxed = self.potential.relax(scanned, fmax=self.fmax, steps=self.relax_steps)
            for i, r in zip(ids, relaxed):
                cache[i] = r.energy_per_atom
            self._write_cache()
        return [self._entry(element, cache[i], i) for i in ids if np.isfinite(cache[i])]

    def pool_table(self) -> pd.DataFrame:
        """The reference pool (``material_id``, ``nsites``, ``reduced_formula``, ``cif``, ``elements``), read once
        per process (:func:`~gpsk_materials.datasets.pool.read_pool`); not to be modified."""
        if not self.pool_path.is_file():
            raise DataError(f"reference pool not found at {self.pool_path}: set $GPSK_SHARED_DIR or pass pool_path")
        return read_pool(str(self.pool_path), ("nsites", "reduced_formula", "cif"), elements=True)

    def _rows(self, systems: list[frozenset[str]]):
        table = self.pool_table()
        rows = table[table["elements"].map(lambda els: any(els <= system for system in systems))]
        if self.max_sites is not None:
            rows = rows[rows["nsites"] <= self.max_sites]
        return rows

    def prepare(self, systems: Iterable[Iterable[str]], chunk: int = 4096) -> int:
        """Evaluate, in large batches, every reference structure that the hulls of ``systems`` need.

        :meth:`entries` evaluates one chemical system at a time; before scoring many structures, one call here
        relaxes the references of all their systems together (a GPU then sees full batches), ``chunk`` CIFs parsed
        at a time, and writes the cache after every batch of the potential, so an interrupted run resumes. Returns the number of structures evaluated.
        """
        wanted = sorted({_chemsys(s) for s in systems}, key=sorted)
        if not self.use_pool or not wanted:
            return 0
        rows = self._rows(wanted)
        cache = self._cache()
        rows = rows[~rows["material_id"].astype(str).isin(cache.keys())]
        for start in range(0, len(rows), chunk):
            part = rows.iloc[start : start + chunk]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structs = [Structure.from_str(c, fmt="cif") for c in part["cif"]]
            self._evaluate(part["material_id"].astype(str).tolist(), structs)
        return len(rows)

    # -- hulls --------------------------------------------------------------------------------------------------
    def entries(self, elements: Iterable[str]) -> list[PDEntry]:
        """Reference entries (total energies) of the chemical system spanned by ``elements``."""
        system = _chemsys(elements)
        out = [e for e in self._fixed if {el.symbol for el in e.composition.elements} <= system]
        if not self.use_pool:
            return out
        rows = self._rows([system])
        ids = rows["material_id"].astype(str).tolist()
        cache = self._cache()
        missing = [k for k, i in enumerate(ids) if i not in cache]
        if missing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                structs = [Structure.from_str(rows["cif"].iloc[k], fmt="cif") for k in missing]
            self._evaluate([ids[k] for k in missing], structs)
        for i, formula in zip(ids, rows["reduced_formula"]):
            e = cache[i]
            if np.isfinite(e):
                comp = Composition(formula)
                out.append(PDEntry(comp, e * comp.num_atoms, name=i))
        present = {el.symbol for e in out if len(e.composition.elements) == 1 for el in e.composition.elements}
        for el in sorted(system - present):
            out.extend(self._element_fallback(el))
        return out

    def phase_diagram(self, elements: Iterable[str]) -> PhaseDiagram:
        """The (cached) PhaseDiagram of the chemical system spanned by ``elements``."""
        system = _chemsys(elements)
        if system not in self._diagrams:
            entries = self.entries(system)
            try:
                self._diagrams[system] = PhaseDiagram(entries, elements=[Element(e) for e in sorted(system)])
            except ValueError as exc:
                raise DataError(f"cannot build the hull of {'-'.join(sorted(system))}: {exc}") from exc
        return self._diagrams[system]

    def e_above_hull(self, structure_or_composition, energy_per_atom: float | None = None) -> float:
        """Energy above the reference hull (eV/atom, negative below it) of a composition at ``energy_per_atom``
        (on this potential's scale).

        Parameters
        ----------
        structure_or_composition
            A pymatgen ``Structure``, ASE ``Atoms``, ``Composition`` or formula (then ``energy_per_atom`` is
            required), or a pymatgen entry (``PDEntry``, ``ComputedEntry``, ``ComputedStructureEntry``) whose
            ``energy_per_atom`` is taken unless one is given.
        energy_per_atom
            eV/atom on this potential's scale.

        Raises
        ------
        InvalidStructureError
            Input of none of these kinds, no energy, or a non-finite energy.
        DataError
            The hull of the chemical system cannot be built.
        """
        if hasattr(structure_or_composition, "composition") and hasattr(structure_or_composition, "energy_per_atom"):
            comp = structure_or_composition.composition  # a pymatgen entry
            if energy_per_atom is None:
                energy_per_atom = float(structure_or_composition.energy_per_atom)
        elif isinstance(structure_or_composition, (Composition, str)):
            comp = Composition(structure_or_composition)
        else:
            try:
                comp = as_structure(structure_or_composition).composition
            except InvalidStructureError as exc:
                raise InvalidStructureError(
                    f"expected a Structure, ASE Atoms, Composition, formula or pymatgen entry, got "
                    f"{type(structure_or_composition).__name__}"
                ) from exc
        if energy_per_atom is None:
            raise InvalidStructureError(f"{comp.reduced_formula}: no energy per atom given")
        if not np.isfinite(energy_per_atom):
            raise InvalidStructureError(f"{comp.reduced_formula}: energy per atom is not finite ({energy_per_atom})")
        pd_ = self.phase_diagram(el.symbol for el in comp.elements)
        entry = PDEntry(comp, float(energy_per_atom) * comp.num_atoms, name="candidate")
        return float(pd_.get_decomp_and_e_above_hull(entry, allow_negative=True)[1])
