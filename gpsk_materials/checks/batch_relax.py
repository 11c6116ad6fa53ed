"""Batched FIRE relaxation of positions and cell with a matgl potential, many structures per forward pass.

ASE relaxes one structure at a time: on a GPU most of each step is Python and kernel-launch overhead, so thousands of
small cells (a reference hull, a generated set) take hours. Here a whole batch of structures is one graph: every
step is one forward/backward pass of the potential, and each structure carries its own FIRE state (velocity, time
step, mixing), so a batch behaves as the same number of independent ASE ``FIRE`` runs.

The cell degrees of freedom follow ASE's ``UnitCellFilter``: generalised coordinates are the positions mapped back
through the deformation gradient ``F`` (cell = cell0 Fᵀ) and ``n_atoms * F``; the cell "forces" are the virial
``-V σ`` F⁻ᵀ / n_atoms. Convergence is ASE's: every generalised force row below ``fmax``.

Neighbour lists are built once at ``cutoff + skin`` and re-used while atoms move less than ``skin / 2`` (the
potential's smooth cutoff gives pairs beyond ``cutoff`` zero weight, so the extra pairs change nothing); a structure
whose atoms or cell moved further triggers a rebuild of the batch's graph.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.units import GPa
from pymatgen.core import Lattice, Structure
from torch import Tensor

# ASE FIRE defaults
DT, DT_MAX, MAX_STEP, N_MIN, F_INC, F_DEC, A_START, F_A = 0.1, 1.0, 0.2, 5, 1.1, 0.5, 0.1, 0.99
SKIN = 0.5


def _segment_sum(values: Tensor, seg: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, seg, values)


def _segment_max(values: Tensor, seg: Tensor, n: int) -> Tensor:
    """Per-segment maximum of non-negative values."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).scatter_reduce_(0, seg, values, "amax")


class _Batch:
    """Graph and FIRE state of one batch of structures."""

    def __init__(self, pes, structures: list[Structure], relax_cell: bool, skin: float) -> None:
        self.pes, self.structures, self.relax_cell, self.skin = pes, structures, relax_cell, skin
        inner = pes.model
        self.cutoff = float(inner.cutoff)
        dev = pes.data_mean.device
        self.dtype = pes.data_mean.dtype
        self.device = dev
        self.n = len(structures)
        sizes = [len(s) for s in structures]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.counts = torch.tensor(sizes, device=dev)
        self.atom_seg = torch.repeat_interleave(torch.arange(self.n, device=dev), self.counts)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=self.dtype, device=dev)  # noqa: E731
        self.cell0 = t(np.stack([s.lattice.matrix for s in structures]))
        self.frac = t(np.concatenate([s.frac_coords for s in structures]))
        self.F = torch.eye(3, dtype=self.dtype, device=dev).repeat(self.n, 1, 1)
        self._build()

    # -- geometry -------------------------------------------------------------------------------------------------
    @property
    def cell(self) -> Tensor:
        return self.cell0 @ self.F.transpose(1, 2)

    def current_structures(self) -> list[Structure]:
        """The batch's structures at the current geometry (one device-to-host copy for all)."""
        frac = self.frac.detach().cpu().double().numpy()
        cells = self.cell.detach().cpu().double().numpy()
        out = []
        for i, s in enumerate(self.structures):
            cur = Structure(Lattice(cells[i]), s.species, frac[self.offsets[i] : self.offsets[i + 1]])
            cur.properties = dict(s.properties)
            out.append(cur)
        return out

    def _build(self) -> None:
        from matgl.ext.pymatgen import Structure2Graph

        conv = Structure2Graph(self.pes.model.element_types, self.cutoff + self.skin)
        self.frac = self.frac - torch.floor(self.frac)  # the graph's image offsets refer to wrapped coordinates
        self.graphs, states = [], []
        for current in self.current_structures():
            g, _, state = conv.get_graph(current)
            self.graphs.append(g)
            states.append(torch.as_tensor(np.asarray(state), dtype=self.dtype))
        self.states = torch.stack(states).to(self.device)
        self._batched_for = None
        # geometry at the last build, to know when the neighbour list goes stale
        self.built_cart = self._cartesian().detach().clone()
        self.built_F = self.F.detach().clone()

    def _cartesian(self) -> Tensor:
        return torch.einsum("ni,nij->nj", self.frac, self.cell[self.atom_seg])

    def stale(self) -> bool:
        moved = (self._cartesian() - self.built_cart).norm(dim=1)
        per = _segment_max(moved, self.atom_seg, self.n)
        eye = torch.eye(3, device=self.device, dtype=self.dtype)
        strain = torch.linalg.matrix_norm(self.F @ torch.linalg.inv(self.built_F) - eye, ord=2)
        # a pair at the list's radius changes length by at most strain * radius plus both atoms' moves
        return bool(((2 * per + strain * (self.cutoff + self.skin)) > self.skin).any())

    # -- potential ------------------------------------------------------------------------------------------------
    def evaluate(self, active: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Energies (B,) eV, forces (N, 3) eV/A, stresses (B, 3, 3) eV/A^3 at the current geometry; only the
        ``active`` structures are evaluated (the others get NaN energies and zero forces and stresses)."""
        from torch_geometric.data import Batch

        # structures that stopped leave the graph once a quarter of it has stopped (re-batching costs time too),
        # so the cost follows the work left; the set only shrinks, so the graph always holds every active one
        n_active = int(active.sum())
        if self._batched_for is None or n_active < 0.75 * int(self._batched_for.sum()):
            self._batched_for = active.clone()
            idx = torch.nonzero(active).flatten().tolist()
            self.graph = Batch.from_data_list([self.graphs[i] for i in idx]).to(self.device)
        members = self._batched_for
        atoms = members[self.atom_seg]
        g = self.graph
        g.frac_coords = self.frac[atoms]
        e_m, f_m, s_m = self.pes(g, self.cell[members], self.states[members])[:3]
        e = torch.full((self.n,), float("nan"), dtype=self.dtype, device=self.device)
        e[members] = e_m.detach()
        f = torch.zeros_like(self.frac)
        f[atoms] = f_m.detach()
        s = torch.zeros(self.n, 3, 3, dtype=self.dtype, device=self.device)
        if self.relax_cell:  # without stresses the potential returns a placeholder
            s[members] = s_m.detach().view(-1, 3, 3) * GPa  # GPa -> eV/A^3
        return e, f, s


def fire_relax(
    pes,
    structures: list[Structure],
    fmax: float = 0.05,
    steps: int = 200,
    relax_cell: bool = True,
    skin: float = SKIN,
) -> list[dict]:
    """Relax one batch of structures with ``pes`` (a matgl ``Potential``); one dict per structure with
    ``structure``, ``energy_per_atom``, ``initial_energy_per_atom``, ``converged`` and ``steps``."""
    flags = (pes.calc_forces, pes.calc_stresses)
    pes.calc_forces, pes.calc_stresses = True, relax_cell
    try:
        return _run(_Batch(pes, structures, relax_cell, skin), fmax, steps)
    finally:
        pes.calc_forces, pes.calc_stresses = flags


def _run(b: _Batch, fmax: float, steps: int) -> list[dict]:
    n, dev, dt_ = b.n, b.device, b.dtype
    counts = b.counts.to(dt_)
    rows_seg = torch.cat([b.atom_seg, torch.arange(n, device=dev).repeat_interleave(3)]) if b.relax_cell else b.atom_seg
    n_atom_rows = len(b.atom_seg)
    v = torch.zeros(len(rows_seg), 3, dtype=dt_, device=dev)
    dt = torch.full((n,), DT, dtype=dt_, device=dev)
    a = torch.full((n,), A_START, dtype=dt_, device=dev)
    n_pos = torch.zeros(n, dtype=torch.long, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    converged = torch.zeros(n, dtype=torch.bool, device=dev)
    taken = torch.zeros(n, dtype=torch.long, device=dev)
    energy = torch.full((n,), float("nan"), dtype=dt_, device=dev)
    e0 = None
    inv_cell0 = torch.linalg.inv(b.cell0)
    for it in range(steps + 1):
        if b.stale():
            b._build()
        e, f_cart, stress = b.evaluate(active)
        energy = torch.where(active, e, energy)
        e0 = e.clone() if e0 is None else e0
        # generalised forces (ASE UnitCellFilter)
        F = b.F
        f_atoms = torch.einsum("ni,nij->nj", f_cart, F[b.atom_seg])
        if b.relax_cell:
            vol = torch.linalg.det(b.cell).abs()
            virial = -vol.view(-1, 1, 1) * stress
            virial = virial @ torch.linalg.inv(F).transpose(1, 2)
            f_gen = torch.cat([f_atoms, (virial / counts.view(-1, 1, 1)).reshape(-1, 3)])
        else:
            f_gen = f_atoms
        bad = ~torch.isfinite(f_gen).all(dim=1)
        blew_up = torch.zeros(n, dtype=torch.bool, device=dev).index_fill_(0, rows_seg[bad], True)
        row_max = _segment_max(f_gen.norm(dim=1), rows_seg, n)
        done = active & (row_max < fmax)
        converged |= done
        active &= ~done & ~blew_up
        det = torch.linalg.det(F)
        active &= (det > 0.2) & (det < 5.0)  # collapsing or exploding cells stop (not converged)
        if it == steps or not bool(active.any()):
            break
        # FIRE, per structure
        f_gen = torch.nan_to_num(f_gen)
        vf = _segment_sum((v * f_gen).sum(1), rows_seg, n)
        fn = _segment_sum((f_gen * f_gen).sum(1), rows_seg, n).sqrt()
        vn = _segment_sum((v * v).sum(1), rows_seg, n).sqrt()
        if it > 0:  # as ASE: the first step starts from rest, without the mixing and the time-step update
            up = vf > 0
            mix = a[rows_seg].unsqueeze(1)
            v_mixed = (1 - mix) * v + mix * f_gen / fn.clamp_min(1e-12)[rows_seg].unsqueeze(1) * vn[rows_seg].unsqueeze(1)
            v = torch.where(up[rows_seg].unsqueeze(1), v_mixed, torch.zeros_like(v))
            grow = up & (n_pos > N_MIN)
            dt = torch.where(grow, (dt * F_INC).clamp_max(DT_MAX), torch.where(up, dt, dt * F_DEC))
            a = torch.where(grow, a * F_A, torch.where(up, a, torch.full_like(a, A_START)))
            n_pos = torch.where(up, n_pos + 1, torch.zeros_like(n_pos))
        v = v + dt[rows_seg].unsqueeze(1) * f_gen
        dr = dt[rows_seg].unsqueeze(1) * v
        norm = _segment_sum((dr * dr).sum(1), rows_seg, n).sqrt()
        dr = dr * (MAX_STEP / norm.clamp_min(MAX_STEP))[rows_seg].unsqueeze(1)
        dr = dr * active[rows_seg].unsqueeze(1)
        v = v * active[rows_seg].unsqueeze(1)
        taken += active.long()
        # apply: reference positions r_ref = frac @ cell0, and (optionally) n_atoms * F
        r_ref = torch.einsum("ni,nij->nj", b.frac, b.cell0[b.atom_seg]) + dr[:n_atom_rows]
        b.frac = torch.einsum("ni,nij->nj", r_ref, inv_cell0[b.atom_seg])
        if b.relax_cell:
            b.F = b.F + dr[n_atom_rows:].view(n, 3, 3) / counts.view(-1, 1, 1)
    e_atom, e0_atom = (energy / counts).tolist(), (e0 / counts).tolist()
    conv, taken = converged.tolist(), taken.tolist()
    return [{"structure": s, "energy_per_atom": e_atom[i], "initial_energy_per_atom": e0_atom[i],
             "converged": conv[i], "steps": taken[i]} for i, s in enumerate(b.current_structures())]
