"""Batched FIRE relaxation of positions and cell, many structures per forward pass of the potential.

ASE relaxes one structure at a time: on a GPU most of each step is Python and kernel-launch overhead, so thousands of
small cells (a reference hull, a generated set) take hours. Here a batch of structures is one graph: every step is
one forward/backward pass of the potential, and each structure carries its own FIRE state (velocity, time step,
mixing, step count), so a batch behaves as the same number of independent ASE ``FIRE`` runs.

The batch is a stream: a structure that converges (or runs out of steps) leaves it, and waiting structures take its
place, so the potential always sees a full batch. Without that, a batch would run until its slowest member stopped
(most structures converge in tens of steps, a few take hundreds). Members leave and join in groups, once a quarter of
the batch has stopped, because re-forming the batch (collating its graph) costs time too.

The cell degrees of freedom follow ASE's ``UnitCellFilter``: generalised coordinates are the positions mapped back
through the deformation gradient ``F`` (cell = cell0 Fᵀ) and ``n_atoms * F``; the cell "forces" are the virial
``-V σ`` F⁻ᵀ / n_atoms. Convergence is ASE's: every generalised force row below ``fmax``.

Two force fields: a matgl ``Potential`` (:class:`MatGLForces`: each structure's neighbour list is built at
``cutoff + skin`` and re-used until its atoms or cell moved enough that a pair may have crossed that radius, and only
such structures' lists are rebuilt; the potential's smooth cutoff gives pairs beyond ``cutoff`` zero weight, so the
extra pairs change nothing) and the ``chgnet`` package's CHGNet (:class:`CHGNetForces`, graphs rebuilt each step
by CHGNet's own converter).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
from ase.units import GPa
from pymatgen.core import Lattice, Structure
from torch import Tensor
from tqdm.auto import tqdm

from gpsk_materials.defaults import FMAX, RELAX_STEPS

# ASE FIRE defaults
DT, DT_MAX, MAX_STEP, N_MIN, F_INC, F_DEC, A_START, F_A = 0.1, 1.0, 0.2, 5, 1.1, 0.5, 0.1, 0.99
SKIN = 0.5
#: a batch is re-formed once this fraction of its members has stopped
REFILL_FRACTION = 0.25


def _segment_sum(values: Tensor, seg: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, seg, values)


def _segment_max(values: Tensor, seg: Tensor, n: int) -> Tensor:
    """Per-segment maximum of non-negative values."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).scatter_reduce_(0, seg, values, "amax")


class _Members:
    """Geometry and FIRE state of the structures in the batch, concatenated (atoms) or stacked (structures)."""

    STRUCT = ("cell0", "F", "v_cell", "dt", "a", "n_pos", "taken", "e0", "energy", "converged", "stopped", "cell_inv0",
              "built_F")
    ATOM = ("frac", "v_atoms", "built_cart")

    def __init__(self, structures: list[Structure], ids: list[int], dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self.ids = list(ids)
        self.species = [list(s.species) for s in structures]
        self.properties = [dict(s.properties) for s in structures]
        n = len(structures)
        # a force field's per-structure neighbour graph and the geometry it was built at (NaN positions: none yet)
        self.graphs: list = [None] * n
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        full = lambda v: torch.full((n,), v, dtype=dtype, device=device)  # noqa: E731
        self.counts = torch.tensor([len(s) for s in structures], device=device, dtype=torch.long)
        self.cell0 = t(np.stack([s.lattice.matrix for s in structures])) if n else torch.zeros(0, 3, 3, dtype=dtype, device=device)
        self.cell_inv0 = torch.linalg.inv(self.cell0)
        self.frac = t(np.concatenate([s.frac_coords for s in structures])) if n else torch.zeros(0, 3, dtype=dtype, device=device)
        self.F = torch.eye(3, dtype=dtype, device=device).repeat(n, 1, 1)
        self.v_atoms = torch.zeros_like(self.frac)
        self.v_cell = torch.zeros_like(self.F)
        self.dt, self.a = full(DT), full(A_START)
        self.e0, self.energy = full(float("nan")), full(float("nan"))
        self.n_pos = torch.zeros(n, dtype=torch.long, device=device)
        self.taken = torch.zeros(n, dtype=torch.long, device=device)
        self.converged = torch.zeros(n, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=device)
        self.built_cart = torch.full_like(self.frac, float("nan"))
        self.built_F = self.F.clone()
        self._index()

    def _index(self) -> None:
        self.n = len(self.ids)
        self.atom_seg = torch.repeat_interleave(torch.arange(self.n, device=self.device), self.counts)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts.cpu().numpy())]).astype(int)

    @property
    def n_atoms(self) -> int:
        return int(self.offsets[-1])

    @property
    def cell(self) -> Tensor:
        return self.cell0 @ self.F.transpose(1, 2)

    def cartesian(self) -> Tensor:
        return torch.einsum("ni,nij->nj", self.frac, self.cell[self.atom_seg])

    def structures(self, which: list[int] | None = None) -> list[Structure]:
        """Members (all, or those at positions ``which``) at the current geometry (one device-to-host copy)."""
        frac = self.frac.detach().cpu().double().numpy()
        cells = self.cell.detach().cpu().double().numpy()
        out = []
        for i in range(self.n) if which is None else which:
            s = Structure(Lattice(cells[i]), self.species[i], frac[self.offsets[i] : self.offsets[i + 1]])
            s.properties = dict(self.properties[i])
            out.append(s)
        return out

    def keep(self, mask: Tensor) -> None:
        """Drop the members where ``mask`` is False."""
        keep = mask.nonzero().flatten().tolist()
        atoms = mask[self.atom_seg]
        for name in self.STRUCT:
            setattr(self, name, getattr(self, name)[mask])
        for name in self.ATOM:
            setattr(self, name, getattr(self, name)[atoms])
        self.counts = self.counts[mask]
        self.ids = [self.ids[i] for i in keep]
        self.species = [self.species[i] for i in keep]
        self.properties = [self.properties[i] for i in keep]
        self.graphs = [self.graphs[i] for i in keep]
        self._index()

    def extend(self, other: _Members) -> None:
        for name in self.STRUCT + self.ATOM + ("counts",):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        self.ids += other.ids
        self.species += other.species
        self.properties += other.properties
        self.graphs += other.graphs
        self._index()


class MatGLForces:
    """Energies, forces and stresses of a batch from a matgl ``Potential``, on a re-used neighbour list."""

    def __init__(self, pes, relax_cell: bool, skin: float = SKIN) -> None:
        self.pes, self.relax_cell, self.skin = pes, relax_cell, skin
        self.cutoff = float(pes.model.cutoff)
        self.dtype, self.device = pes.data_mean.dtype, pes.data_mean.device

    def __enter__(self) -> MatGLForces:
        self._flags = (self.pes.calc_forces, self.pes.calc_stresses)
        self.pes.calc_forces, self.pes.calc_stresses = True, self.relax_cell
        return self

    def __exit__(self, *exc) -> None:
        self.pes.calc_forces, self.pes.calc_stresses = self._flags

    def reset(self, m: _Members) -> None:
        """The members changed: the batch graph is collated again before the next evaluation."""
        self.graph = None

    def _stale(self, m: _Members) -> Tensor:
        """Per structure: no graph yet, or atoms/cell moved enough that a pair may have crossed the list's radius."""
        moved = (m.cartesian() - m.built_cart).norm(dim=1)
        per = _segment_max(torch.nan_to_num(moved, nan=math.inf), m.atom_seg, m.n)
        eye = torch.eye(3, device=self.device, dtype=self.dtype)
        strain = torch.linalg.matrix_norm(m.F @ torch.linalg.inv(m.built_F) - eye, ord=2)
        # a pair at the list's radius changes length by at most strain * radius plus both atoms' moves
        return 2 * per + strain * (self.cutoff + self.skin) > self.skin

    def _rebuild(self, m: _Members, which: Tensor) -> None:
        from matgl.ext.pymatgen import Structure2Graph

        conv = Structure2Graph(self.pes.model.element_types, self.cutoff + self.skin)
        atoms = which[m.atom_seg].unsqueeze(1)
        m.frac = torch.where(atoms, m.frac - torch.floor(m.frac), m.frac)  # image offsets refer to wrapped coordinates
        idx = which.nonzero().flatten().tolist()
        for i, s in zip(idx, m.structures(idx)):
            g, _, state = conv.get_graph(s)
            m.graphs[i] = (g, torch.as_tensor(np.asarray(state), dtype=self.dtype))
        m.built_cart = torch.where(atoms, m.cartesian().detach(), m.built_cart)
        m.built_F = torch.where(which.view(-1, 1, 1), m.F.detach(), m.built_F)
        self.graph = None

    def __call__(self, m: _Members) -> tuple[Tensor, Tensor, Tensor]:
        """Energies (B,) eV, forces (N, 3) eV/A and stresses (B, 3, 3) eV/A^3 at the members' geometry."""
        from torch_geometric.data import Batch

        stale = self._stale(m)
        if bool(stale.any()):  # only the stale structures' graphs are rebuilt (on the CPU)
            self._rebuild(m, stale)
        if self.graph is None:
            self.graph = Batch.from_data_list([g for g, _ in m.graphs]).to(self.device)
            self.states = torch.stack([s for _, s in m.graphs]).to(self.device)
        self.graph.frac_coords = m.frac
        e, f, s = self.pes(self.graph, m.cell, self.states)[:3]
        stress = s.detach().view(-1, 3, 3) * GPa if self.relax_cell else torch.zeros_like(m.F)  # GPa -> eV/A^3
        return e.detach(), f.detach(), stress


class CHGNetForces:
    """Energies, forces and stresses of a batch from the ``chgnet`` package's CHGNet (graphs rebuilt every step)."""

    def __init__(self, model, relax_cell: bool) -> None:
        self.model, self.relax_cell = model, relax_cell
        p = next(model.parameters())
        self.dtype, self.device = p.dtype, p.device

    def __enter__(self) -> CHGNetForces:
        conv = self.model.graph_converter
        self._response = conv.on_isolated_atoms
        conv.set_isolated_atom_response("error")  # raise, so that structure stops instead of printing a warning
        return self

    def __exit__(self, *exc) -> None:
        self.model.graph_converter.set_isolated_atom_response(self._response)

    def reset(self, m: _Members) -> None:
        pass

    def _efs(self, graphs: list) -> tuple[Tensor, Tensor, Tensor]:
        """Total energies (eV), forces (eV/A) and stresses (eV/A^3, ASE's sign) of CHGNet graphs.

        CHGNet's own ``forward`` differentiates twice with ``create_graph=True`` (it is written for training on
        forces); at inference one first-order gradient with respect to positions and strains together gives the
        same numbers several times faster.
        """
        from chgnet.model.model import BatchedGraph

        model = self.model
        g = BatchedGraph.from_graphs(graphs, bond_basis_expansion=model.bond_basis_expansion,
                                     angle_basis_expansion=model.angle_basis_expansion,
                                     compute_stress=self.relax_cell)
        e = model._compute(g, compute_force=False, compute_stress=False)["e"]  # per atom if the model is intensive
        counts = torch.tensor([len(p) for p in g.atom_positions], device=self.device, dtype=self.dtype)
        total = e * counts if model.is_intensive else e
        wrt = list(g.atom_positions) + (list(g.strains) if self.relax_cell else [])
        grads = torch.autograd.grad(total.sum(), wrt)
        forces = -torch.cat(grads[: len(graphs)])
        stress = (torch.stack(grads[len(graphs):]) / torch.stack(list(g.volumes)).view(-1, 1, 1)
                  if self.relax_cell else None)
        if model.composition_model is not None:  # elemental offsets, on the same basis as e; no forces
            e = e + model.composition_model(graphs)
        total = e * counts if model.is_intensive else e
        return total.detach(), forces.detach(), None if stress is None else stress.detach()

    def __call__(self, m: _Members) -> tuple[Tensor, Tensor, Tensor]:
        e = torch.full((m.n,), float("nan"), dtype=self.dtype, device=self.device)
        f = torch.full_like(m.frac, float("nan"))
        s = torch.zeros_like(m.F)
        graphs, ok = [], []
        for i, st in enumerate(m.structures()):
            try:  # an atom without neighbours within 6 A cannot be evaluated: that structure stops, unconverged
                graphs.append(self.model.graph_converter(st, graph_id=str(i)).to(self.device))
                ok.append(i)
            except (ValueError, RuntimeError):
                continue
        if not graphs:
            return e, f, s
        e_ok, f_ok, s_ok = self._efs(graphs)
        idx = torch.tensor(ok, device=self.device)
        e[idx] = e_ok
        atoms = torch.cat([torch.arange(m.offsets[i], m.offsets[i + 1], device=self.device) for i in ok])
        f[atoms] = f_ok
        if self.relax_cell:
            s[idx] = s_ok
        return e, f, s


def fire_relax(
    model,
    structures: list[Structure],
    fmax: float = FMAX,
    steps: int = RELAX_STEPS,
    relax_cell: bool = True,
    skin: float = SKIN,
    batch_size: int | None = None,
    max_atoms: int | None = None,
    progress: bool = False,
    callback: Callable[[int, dict], None] | None = None,
    backend: str = "matgl",
) -> list[dict]:
    """Relax ``structures`` with ``model`` (``backend="matgl"``: a matgl ``Potential``, neighbour lists with
    ``skin``; ``"chgnet"``: the ``chgnet`` package's CHGNet), ``batch_size`` structures and at most ``max_atoms``
    atoms at a time (all at once by default).

    Returns one dict per structure, in order, with ``structure``, ``energy_per_atom``, ``initial_energy_per_atom``,
    ``converged`` and ``steps``. ``callback(index, result)`` is called as soon as a structure stops (for caching).
    """
    forces = CHGNetForces(model, relax_cell) if backend == "chgnet" else MatGLForces(model, relax_cell, skin)
    with forces:
        return _run(forces, structures, fmax, steps, relax_cell, batch_size or len(structures),
                    max_atoms or math.inf, progress, callback)


def _run(forces, structures: list[Structure], fmax: float, steps: int, relax_cell: bool, batch_size: int,
         max_atoms: float, progress: bool, callback: Callable[[int, dict], None] | None) -> list[dict]:
    dev, dt_ = forces.device, forces.dtype
    results: list[dict | None] = [None] * len(structures)
    queue = deque(range(len(structures)))
    m = _Members([], [], dt_, dev)
    bar = tqdm(total=len(structures), desc="relax (batched FIRE)", disable=not progress or len(structures) < 2)
    with bar:
        while queue or m.n:
            n_stopped = int(m.stopped.sum())
            if m.n == 0 or n_stopped == m.n or (n_stopped and n_stopped >= REFILL_FRACTION * m.n):
                _finish(m, results, callback)
                bar.update(n_stopped)
                _refill(m, queue, structures, batch_size, max_atoms)
                if m.n == 0:
                    break
                forces.reset(m)
            _step(m, forces, fmax, steps, relax_cell)
    return results


def _finish(m: _Members, results: list, callback: Callable[[int, dict], None] | None) -> None:
    """Record and drop the stopped members."""
    if not bool(m.stopped.any()):
        return
    which = m.stopped.nonzero().flatten().tolist()
    counts = m.counts.to(m.dtype)
    e, e0 = (m.energy / counts).tolist(), (m.e0 / counts).tolist()
    conv, taken = m.converged.tolist(), m.taken.tolist()
    for i, s in zip(which, m.structures(which)):
        results[m.ids[i]] = {"structure": s, "energy_per_atom": e[i], "initial_energy_per_atom": e0[i],
                             "converged": conv[i], "steps": taken[i]}
        if callback is not None:
            callback(m.ids[i], results[m.ids[i]])
    m.keep(~m.stopped)


def _refill(m: _Members, queue: deque, structures: list[Structure], batch_size: int, max_atoms: float) -> None:
    new, atoms = [], m.n_atoms
    # a structure larger than max_atoms still runs, alone
    while queue and m.n + len(new) < batch_size and (atoms + len(structures[queue[0]]) <= max_atoms or m.n + len(new) == 0):
        atoms += len(structures[queue[0]])
        new.append(queue.popleft())
    if new:
        m.extend(_Members([structures[i] for i in new], new, m.dtype, m.device))


def _step(m: _Members, forces, fmax: float, steps: int, relax_cell: bool) -> None:
    """Evaluate every member; stop the converged, broken and exhausted ones; one FIRE step for the others."""
    n, seg = m.n, m.atom_seg
    live = ~m.stopped
    e, f_cart, stress = forces(m)
    m.energy = torch.where(live, e, m.energy)
    m.e0 = torch.where(torch.isnan(m.e0), e, m.e0)
    counts = m.counts.to(m.dtype)
    # generalised forces (ASE UnitCellFilter)
    f_atoms = torch.einsum("ni,nij->nj", f_cart, m.F[seg])
    rows_seg = torch.cat([seg, torch.arange(n, device=m.device).repeat_interleave(3)]) if relax_cell else seg
    if relax_cell:
        vol = torch.linalg.det(m.cell).abs()
        virial = (-vol.view(-1, 1, 1) * stress) @ torch.linalg.inv(m.F).transpose(1, 2)
        f_gen = torch.cat([f_atoms, (virial / counts.view(-1, 1, 1)).reshape(-1, 3)])
        v = torch.cat([m.v_atoms, m.v_cell.reshape(-1, 3)])
    else:
        f_gen, v = f_atoms, m.v_atoms
    bad = ~torch.isfinite(f_gen).all(dim=1)
    blew_up = torch.zeros(n, dtype=torch.bool, device=m.device).index_fill_(0, rows_seg[bad], True)
    row_max = _segment_max(torch.nan_to_num(f_gen, nan=0.0).norm(dim=1), rows_seg, n)
    done = live & (row_max < fmax) & ~blew_up
    m.converged |= done
    det = torch.linalg.det(m.F)
    # collapsing or exploding cells and structures out of steps stop (not converged)
    m.stopped |= done | blew_up | (det < 0.2) | (det > 5.0) | (m.taken >= steps)
    active = ~m.stopped
    # FIRE, per structure
    f_gen = torch.nan_to_num(f_gen)
    vf = _segment_sum((v * f_gen).sum(1), rows_seg, n)
    fn = _segment_sum((f_gen * f_gen).sum(1), rows_seg, n).sqrt()
    vn = _segment_sum((v * v).sum(1), rows_seg, n).sqrt()
    # as ASE: the first step starts from rest, without the mixing and the time-step update
    started = m.taken > 0
    up = vf > 0
    mix = m.a[rows_seg].unsqueeze(1)
    v_mixed = (1 - mix) * v + mix * f_gen / fn.clamp_min(1e-12)[rows_seg].unsqueeze(1) * vn[rows_seg].unsqueeze(1)
    v = torch.where(started[rows_seg].unsqueeze(1), torch.where(up[rows_seg].unsqueeze(1), v_mixed, torch.zeros_like(v)), v)
    grow = up & (m.n_pos > N_MIN)
    m.dt = torch.where(started, torch.where(grow, (m.dt * F_INC).clamp_max(DT_MAX), torch.where(up, m.dt, m.dt * F_DEC)), m.dt)
    m.a = torch.where(started, torch.where(grow, m.a * F_A, torch.where(up, m.a, torch.full_like(m.a, A_START))), m.a)
    m.n_pos = torch.where(started, torch.where(up, m.n_pos + 1, torch.zeros_like(m.n_pos)), m.n_pos)
    v = v + m.dt[rows_seg].unsqueeze(1) * f_gen
    dr = m.dt[rows_seg].unsqueeze(1) * v
    norm = _segment_sum((dr * dr).sum(1), rows_seg, n).sqrt()
    dr = dr * (MAX_STEP / norm.clamp_min(MAX_STEP))[rows_seg].unsqueeze(1)
    on = active[rows_seg].unsqueeze(1)
    dr, v = dr * on, v * on
    m.taken += active.long()
    n_atoms = len(seg)
    m.v_atoms = v[:n_atoms]
    # apply: reference positions r_ref = frac @ cell0, and (optionally) n_atoms * F
    r_ref = torch.einsum("ni,nij->nj", m.frac, m.cell0[seg]) + dr[:n_atoms]
    m.frac = torch.einsum("ni,nij->nj", r_ref, m.cell_inv0[seg])
    if relax_cell:
        m.v_cell = v[n_atoms:].view(n, 3, 3)
        m.F = m.F + dr[n_atoms:].view(n, 3, 3) / counts.view(-1, 1, 1)
