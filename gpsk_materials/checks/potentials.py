"""Machine-learned interatomic potentials behind one interface: batched energies and batched relaxations.

Backends
--------
``matgl``
    Any matgl ``Potential`` (``matgl.load_model``). The default is the TensorNet-MatPES-PBE-v2025.1-PES folder in
    ``shared/models/matgl`` (stock matgl 4.1.2, offline); its energies are on the MatPES PBE scale.
``chgnet``
    The ``chgnet`` package's own CHGNet weights (shipped with the package, offline); Materials Project scale.

Energies of different potentials are on different scales: compare or build hulls only with one potential.

CPU note: relaxations with ASE's FrechetCellFilter call SciPy's matrix exponential/logarithm on 3x3 matrices at every
step; on a loaded machine OpenBLAS threads make these 3-15x slower. Set ``OPENBLAS_NUM_THREADS=1`` (and, for graphs of
a few atoms, ``torch.set_num_threads(1)``) when relaxing many small cells on a shared CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monty.json import MSONable
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from gpsk_materials.checks._common import as_structures
from gpsk_materials.checks.batch_relax import fire_relax
from gpsk_materials.checks.validity import nearest_neighbours
from gpsk_materials.defaults import FMAX, RELAX_BATCH, RELAX_STEPS
from gpsk_materials.errors import InvalidStructureError, PotentialError
from gpsk_materials.paths import SHARED_ENV, shared_model

DEFAULT_MATGL_MODEL = "TensorNet-MatPES-PBE-v2025.1-PES"
BACKENDS = ("matgl", "chgnet")

logger = logging.getLogger(__name__)


@dataclass
class RelaxResult(MSONable):
    """Outcome of one relaxation: final structure, its energy (eV/atom), convergence and optimizer steps taken.

    A relaxation that failed (as recorded by :func:`gpsk_materials.evaluation.stability.relax_structures`) has
    ``structure`` None, a NaN energy and the reason in ``error``.
    """

    structure: Structure | None
    energy_per_atom: float
    initial_energy_per_atom: float = float("nan")
    converged: bool = False
    steps: int = 0
    error: str = ""

    def as_dict(self) -> dict:
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "structure": None if self.structure is None else self.structure.as_dict(),
            "energy_per_atom": self.energy_per_atom,
            "initial_energy_per_atom": self.initial_energy_per_atom,
            "converged": self.converged,
            "steps": self.steps,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RelaxResult:
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["structure"] = None if d.get("structure") is None else Structure.from_dict(d["structure"])
        return cls(**kw)


class Potential(MSONable):
    """An interatomic potential: batched energies, relaxations, device placement.

    Build it with :func:`load_potential`. ``name`` identifies the model (used as a cache key, e.g. by
    :class:`~gpsk_materials.checks.hull.ReferenceHull`); ``spec`` is the ``load_potential`` keyword arguments that
    rebuild it. MSONable as every check: :meth:`as_dict` holds ``spec`` (the weights are named, not copied, and
    the device is left to the reader), :meth:`from_dict` loads the potential again with :func:`load_potential`.
    """

    backend: str = ""

    def __init__(self, model: torch.nn.Module, name: str, spec: dict) -> None:
        self.model = model
        self.name = name
        self.spec = spec
        #: element -> energy (eV) of the lone atom, filled by :meth:`free_atom_energies` (not part of :meth:`as_dict`)
        self._free_atoms: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device})"

    def as_dict(self) -> dict:
        """``{"@module", "@class", **spec}``: the :func:`load_potential` keywords that rebuild this potential."""
        return {"@module": Potential.__module__, "@class": Potential.__name__, **self.spec}

    @classmethod
    def from_dict(cls, d: dict) -> Potential:
        """The potential of :meth:`as_dict` (or of a bare ``spec`` dictionary), loaded with :func:`load_potential`.

        Raises
        ------
        PotentialError
            Unknown backend or model, or weights that are missing or unreadable.
        """
        return load_potential(**{k: v for k, v in d.items() if not k.startswith("@")})

    # -- to implement per backend -----------------------------------------------------------------------------
    @property
    def element_types(self) -> frozenset[str]:
        raise NotImplementedError

    def _energies_batch(self, structures: list[Structure]) -> np.ndarray:
        """Total energies (eV) of one batch."""
        raise NotImplementedError

    def calculator(self):
        """An ASE calculator (energies in eV, stresses in eV/A^3) for this potential."""
        raise NotImplementedError

    @property
    def cutoff(self) -> float:
        """Radius (Angstrom) of the potential's neighbour graph: atoms farther apart do not interact."""
        raise NotImplementedError

    # -- common --------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> Potential:
        """Move the model to ``device`` (in place) and return self."""
        self.model.to(device)
        return self

    def isolated_sites(self, structures: Structure | list[Structure]) -> list[list[int]]:
        """Per structure, the indices of the sites with no other atom (periodic images included) within
        :attr:`cutoff`.

        The potential sees such an atom alone: its energy is the model's free-atom term, which says nothing about
        the crystal, so energies, volume scans and relaxations of the structure are answers from outside the
        potential's reach (issue 16, case 8). A Ne atom alone in a 10 A cubic cell is one.
        """
        return [self.isolated_in(nearest_neighbours(s, cutoff=self.cutoff)[1])
                for s in as_structures(structures, ordered=True)]

    def isolated_in(self, nearest: np.ndarray) -> list[int]:
        """The sites whose nearest neighbour lies beyond :attr:`cutoff`, from the per-site nearest-neighbour
        distances of :func:`~gpsk_materials.checks.validity.nearest_neighbours` (built with a ``cutoff`` of at least
        this potential's): a caller that holds that neighbour list needs no second one."""
        return [int(i) for i in np.flatnonzero(~(np.asarray(nearest) <= self.cutoff))]

    def free_atom_energies(self, elements: Iterable[str]) -> dict[str, float]:
        """The potential's energy (eV) of one atom of each element alone: the atom in a cube whose edge exceeds
        :attr:`cutoff` by 1 A, so that nothing, not even its own image, lies within reach (the model's free-atom
        term, see :meth:`isolated_sites`). NaN for an element the potential cannot evaluate alone (CHGNet refuses
        atoms without neighbours) or lacks. Cached on the potential."""
        elements = [str(el) for el in elements]
        cache = self._free_atoms
        todo = sorted(set(elements) - set(cache))
        if todo:
            edge = self.cutoff + 1.0
            lone = [Structure(Lattice.cubic(edge), [el], [[0.0, 0.0, 0.0]]) for el in todo]
            cache.update(zip(todo, (float(e) for e in self.energies(lone, on_error="nan"))))
        return {el: cache[el] for el in elements}

    def cohesive_energies(self, structures: Structure | list[Structure], energies: Iterable[float]) -> np.ndarray:
        """Cohesive energy per atom (eV/atom) of each structure at the given energies per atom: the
        composition-weighted :meth:`free_atom_energies` minus the energy. Positive for a solid bound with respect to
        its separated atoms; NaN where an energy or a free-atom energy is missing."""
        structures = as_structures(structures)
        out = []
        for s, e in zip(structures, energies):
            amounts = s.composition.fractional_composition.get_el_amt_dict()
            free = self.free_atom_energies(amounts)
            out.append(sum(free[el] * x for el, x in amounts.items()) - float(e))
        return np.array(out, dtype=float)

    def _unsupported(self, structure: Structure) -> list[str]:
        return sorted({el.symbol for el in structure.composition.elements} - self.element_types)

    def _check_elements(self, structures: list[Structure]) -> None:
        for s in structures:
            if missing := self._unsupported(s):
                raise InvalidStructureError(f"{s.formula}: {self.name} has no parameters for {missing}")

    def energies(
        self,
        structures: Structure | list[Structure],
        batch_size: int = 64,
        max_atoms: int = 2048,
        on_error: str = "raise",
        progress: bool = False,
    ) -> np.ndarray:
        """Single-point energies in eV/atom, evaluated in batches.

        Parameters
        ----------
        batch_size, max_atoms
            A batch holds at most ``batch_size`` structures and ``max_atoms`` atoms (memory grows with both).
        on_error
            ``"raise"``: an InvalidStructureError for a structure the potential cannot evaluate (an element it
            lacks, an isolated atom for CHGNet, ...); ``"nan"``: NaN for that structure, the others evaluated.
        """
        if on_error not in ("raise", "nan"):
            raise PotentialError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
        structures = as_structures(structures, ordered=True)
        if on_error == "raise":
            self._check_elements(structures)
        out = np.full(len(structures), np.nan)
        todo = [i for i, s in enumerate(structures) if not self._unsupported(s)]
        batches = _batches([len(structures[i]) for i in todo], batch_size, max_atoms)
        for idx in tqdm([[todo[j] for j in b] for b in batches], desc=f"energies ({self.name})", disable=not progress or len(batches) < 2):
            batch = [structures[i] for i in idx]
            try:
                out[idx] = self._energies_batch(batch) / np.array([len(s) for s in batch])
            except (ValueError, RuntimeError, KeyError) as exc:
                if on_error == "raise":
                    raise InvalidStructureError(f"{self.name} cannot evaluate this batch: {exc}") from exc
                if len(batch) > 1:  # find the culprit(s): one by one
                    out[idx] = [self.energies(s, on_error="nan")[0] for s in batch]
        return out

    def relax(
        self,
        structures: Structure | list[Structure],
        fmax: float = FMAX,
        steps: int = RELAX_STEPS,
        relax_cell: bool = True,
        optimizer: str = "FIRE",
        progress: bool = False,
        batch_size: int = RELAX_BATCH,
        max_atoms: int = 4096,
        batched: bool = True,
        callback: Callable[[int, RelaxResult], None] | None = None,
    ) -> list[RelaxResult]:
        """Relax positions (and the cell) until every force (and cell force) is below ``fmax`` eV/A.

        With ``optimizer="FIRE"`` (either backend) the structures are relaxed together, ``batch_size`` structures
        (at most ``max_atoms`` atoms) per forward pass, by :mod:`gpsk_materials.checks.batch_relax`: the same FIRE
        as ASE's, with the cell handled as ASE's UnitCellFilter; a structure that stops makes room for the next.
        Otherwise each structure runs through ASE (``optimizer`` and FrechetCellFilter).

        Parameters
        ----------
        steps
            Maximum optimizer steps; ``converged`` is False if they ran out.
        optimizer
            An ``ase.optimize`` class name (FIRE, BFGS, LBFGS, ...).
        batched
            False forces the one-structure-at-a-time ASE path (the baseline of ``benchmarks/evaluation_speed.py``).
        callback
            ``callback(index, result)`` as soon as each structure is done (e.g. to write a cache as the run goes).
        """
        structures = as_structures(structures, ordered=True)
        self._check_elements(structures)
        if optimizer == "FIRE" and batched:
            hook = None if callback is None else (lambda i, r: callback(i, RelaxResult(**r)))
            out = fire_relax(self.model, structures, fmax=fmax, steps=steps, relax_cell=relax_cell,
                             batch_size=batch_size, max_atoms=max_atoms, progress=progress, callback=hook,
                             backend=self.backend)
            return [RelaxResult(**r) for r in out]
        import ase.optimize
        from ase.filters import FrechetCellFilter

        try:
            opt_cls = getattr(ase.optimize, optimizer)
        except AttributeError as exc:
            raise PotentialError(f"unknown ASE optimizer {optimizer!r}") from exc
        calc = self.calculator()
        results = []
        for s in tqdm(structures, desc=f"relax ({self.name})", disable=not progress or len(structures) < 2):
            atoms = AseAtomsAdaptor.get_atoms(s)
            atoms.calc = calc
            e0 = float(atoms.get_potential_energy()) / len(atoms)
            target = FrechetCellFilter(atoms) if relax_cell else atoms
            with contextlib.redirect_stdout(io.StringIO()):
                opt = opt_cls(target, logfile=None)
                converged = bool(opt.run(fmax=fmax, steps=steps))
            final = AseAtomsAdaptor.get_structure(atoms)
            final.properties = dict(s.properties)
            results.append(
                RelaxResult(
                    structure=final,
                    energy_per_atom=float(atoms.get_potential_energy()) / len(atoms),
                    initial_energy_per_atom=e0,
                    converged=converged,
                    steps=int(opt.nsteps),
                )
            )
            if callback is not None:
                callback(len(results) - 1, results[-1])
        return results


class MatGLPotential(Potential):
    """A matgl ``Potential`` (TensorNet, M3GNet, CHGNet, ... in matgl's format)."""

    backend = "matgl"

    @property
    def element_types(self) -> frozenset[str]:
        return frozenset(self.model.model.element_types)

    @property
    def cutoff(self) -> float:
        return float(self.model.model.cutoff)

    def _energies_batch(self, structures: list[Structure]) -> np.ndarray:
        from matgl.ext.pymatgen import Structure2Graph
        from torch_geometric.data import Batch

        inner = self.model.model
        conv = Structure2Graph(inner.element_types, inner.cutoff)
        graphs, lats, states = [], [], []
        for s in structures:
            g, lat, state = conv.get_graph(s)
            graphs.append(g)
            lats.append(lat.reshape(1, 3, 3))
            states.append(torch.as_tensor(np.asarray(state), dtype=lat.dtype))
        flags = (self.model.calc_forces, self.model.calc_stresses, self.model.calc_hessian)
        # energies only: switching the derivatives off lets the forward pass run without autograd
        self.model.calc_forces = self.model.calc_stresses = self.model.calc_hessian = False
        try:
            with torch.no_grad():
                energy = self.model(Batch.from_data_list(graphs), torch.cat(lats), torch.stack(states))[0]
        finally:
            self.model.calc_forces, self.model.calc_stresses, self.model.calc_hessian = flags
        return energy.detach().cpu().double().numpy().reshape(-1)

    def calculator(self):
        from matgl.ext.ase import PESCalculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PESCalculator(self.model, stress_unit="eV/A3")


class CHGNetPotential(Potential):
    """The ``chgnet`` package's CHGNet (its own weights, Materials Project energy scale)."""

    backend = "chgnet"

    @property
    def element_types(self) -> frozenset[str]:
        from pymatgen.core import Element

        # CHGNet embeds atomic numbers 1..94
        return frozenset(Element.from_Z(z).symbol for z in range(1, 95))

    @property
    def cutoff(self) -> float:
        return float(self.model.graph_converter.atom_graph_cutoff)

    def _energies_batch(self, structures: list[Structure]) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = self.model.predict_structure(structures, task="e", batch_size=len(structures))
        if isinstance(preds, dict):
            preds = [preds]
        return np.array([float(p["e"]) * len(s) for p, s in zip(preds, structures)])

    def calculator(self):
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device
            return CHGNetCalculator(self.model, use_device=str(self.device), on_isolated_atoms="ignore")


def _batches(sizes: list[int], batch_size: int, max_atoms: int) -> list[list[int]]:
    """Consecutive groups of indices into ``sizes`` with at most ``batch_size`` items and ``max_atoms`` atoms
    (a larger structure gets a group of its own)."""
    batches: list[list[int]] = []
    atoms = 0
    for i, n in enumerate(sizes):
        if not batches or len(batches[-1]) >= batch_size or atoms + n > max_atoms:
            batches.append([])
            atoms = 0
        batches[-1].append(i)
        atoms += n
    return batches


def _load_matgl(model: str | Path | None) -> MatGLPotential:
    import matgl
    from matgl.apps.pes import Potential as MatGLPES

    if model is None:
        path = shared_model("matgl", DEFAULT_MATGL_MODEL)
        if not (path / "model.json").is_file():
            raise PotentialError(
                f"default potential {DEFAULT_MATGL_MODEL} not found at {path}: set ${SHARED_ENV} to the shared folder "
                "holding models/matgl, or pass a matgl model name or path"
            )
        source, name = path, DEFAULT_MATGL_MODEL
    else:
        given = Path(model).expanduser()
        in_shared = shared_model("matgl", str(model))
        if given.is_dir():
            if not (given / "model.json").is_file():
                raise PotentialError(f"{given} is not a matgl model folder (model.json, model.pt, state.pt)")
            source, name = given.resolve(), given.name
        elif in_shared.is_dir():
            source, name = in_shared, str(model)
        elif given.exists():
            raise PotentialError(f"{given} is not a matgl model folder (model.json, model.pt, state.pt)")
        else:
            source, name = str(model), str(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pot = matgl.load_model(source)
    except Exception as exc:  # matgl wraps every failure in ValueError/RuntimeError
        raise PotentialError(
            f"cannot load matgl model {model!r} (not a folder, not in {shared_model('matgl')}, and not "
            f"available from matgl's hub or cache): {exc}"
        ) from exc
    if not isinstance(pot, MatGLPES):
        raise PotentialError(f"matgl model {model!r} is a {type(pot).__name__}, not an interatomic potential")
    pot.eval()
    return MatGLPotential(pot, name=f"matgl:{name}", spec={"backend": "matgl", "model": None if model is None else str(model)})


def _load_chgnet(model: str | Path | None) -> CHGNetPotential:
    from chgnet.model import CHGNet

    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if model is not None and Path(model).expanduser().is_file():
                net = CHGNet.from_file(str(Path(model).expanduser()))
                name = Path(model).stem
            else:
                version = "0.3.0" if model is None else str(model)
                net = CHGNet.load(model_name=version, use_device="cpu", verbose=False)
                name = version
    except Exception as exc:
        raise PotentialError(f"cannot load CHGNet model {model!r}: {exc}") from exc
    net.eval()
    return CHGNetPotential(net, name=f"chgnet:{name}", spec={"backend": "chgnet", "model": None if model is None else str(model)})


def load_potential(
    model: str | Path | None = None, backend: str = "matgl", device: str | torch.device | None = None
) -> Potential:
    """Load an interatomic potential.

    Parameters
    ----------
    model
        ``backend="matgl"``: None for the shared TensorNet-MatPES folder, a folder path, a folder name inside
        ``shared/models/matgl``, or a matgl pretrained-model name (hub/cache; set ``HF_HUB_OFFLINE=1`` offline).
        ``backend="chgnet"``: None (CHGNet 0.3.0 shipped with the package), a CHGNet version name, or a
        checkpoint file.
    backend
        ``"matgl"`` or ``"chgnet"``.
    device
        Torch device; CPU by default.

    Raises
    ------
    PotentialError
        Unknown backend or model, weights that are missing or unreadable, or the backend's package (or one it
        needs) not installed.
    """
    if backend not in BACKENDS:
        raise PotentialError(f"unknown potential backend {backend!r}; expected one of {BACKENDS}")
    try:
        pot = _load_matgl(model) if backend == "matgl" else _load_chgnet(model)
    except ModuleNotFoundError as exc:  # the backend's package (or one it needs) is not installed here
        raise PotentialError(f"the {backend} potential needs the Python package {exc.name!r}, which is not installed "
                             f"(pip install {backend}; or use the other backend: {BACKENDS})") from exc
    if device is not None:
        pot.to(device)
    return pot


def resolve_potential(potential: Potential | str | Path | None) -> Potential:
    """A Potential as given; None for the default; a :meth:`Potential.as_dict` dictionary; or a string:
    ``"chgnet"``, ``"chgnet:<version or file>"``, ``"matgl:<name or path>"`` or a bare matgl model name/path."""
    if isinstance(potential, Potential):
        return potential
    if potential is None:
        return load_potential()
    if isinstance(potential, Path):
        return load_potential(potential)
    if isinstance(potential, dict):
        return Potential.from_dict(potential)
    if isinstance(potential, str):
        backend, sep, rest = potential.partition(":")
        if backend in BACKENDS and (sep or backend == "chgnet"):
            return load_potential(rest or None, backend=backend)
        return load_potential(potential)
    raise PotentialError(f"expected a Potential, a model name or None, got {type(potential).__name__}")
