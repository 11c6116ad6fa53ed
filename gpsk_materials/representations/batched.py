"""Batched tensor path of the closed-form decoder: the peeling solver of :mod:`.peeling` rewritten so that every
step is a few tensor operations over the whole batch (CPU or CUDA), with the same arithmetic.

Layout. The reference engine (:mod:`.solver`) stores F on the Friedel half of the symmetric block
[-L, L]^3 (L = n/2 - 1) as a flat list of Miller indices with weights 2 (1 at h = 0). Here F lives on the
*half block* H = {-L..L} x {-L..L} x {0..L}, an (A, A, L + 1) array (A = 2L + 1) with weight W(l) = 2 for l > 0 and
1 on the plane l = 0 (which holds both h and -h). For a Friedel-symmetric integrand g (g(-h) = conj g(h)) the real
quantities the solver needs, Re sum_h g(h) and Im sum_h g(h) h, summed over the whole block, equal their W-weighted
sums over H, exactly as the reference's weighted half-space sums do: the two layouts compute the same numbers
(to the last bits of the summation order).

Separable phases. On H a site's phase factor is an outer product,
e^{2 pi i h.x} = u_x(h) u_y(k) u_z(l) with u_a(m) = e^{2 pi i m x_a}, so:

* the phase factor of a site costs 3 (2L + 1) complex exponentials instead of (2L + 1)^3 (``torch.polar`` of
  every Miller index was the largest single cost of the reference);
* a moment sum_h Q(h) conj(e^{2 pi i h.x}) h^a k^b l^c (Newton steps, gradients of the polish, element gains) is
  three small contractions of Q with the tables conj(u) m^a, one matrix product over l and two over k and h;
* the model structure factor sum_j f_{p_j}(h) e^{2 pi i h.x_j} is one batched matrix product per grid, grouping
  the sites by element: S_p(h, k, l) = sum_{j: p_j = p} [u_x u_y]_j(h, k) u_z,j(l), F_model = sum_p f_p S_p (the
  partial structure factors of the featurizer, :func:`.reciprocal._featurize_chunk`).

Per-site sums over all Miller indices are avoided where the reference has them: the polish's gradient and the
element overlaps of the swaps contract every element slot's W f_u R with the sites' (h, k) tables in one matrix
product (inner dimension (2L + 1)^2), and Gram matrices that only enter through their real part are real matrix
products over (Re, Im) pairs. The density of the residual (peak search) is one real-output inverse FFT of the half
block (``torch.fft.irfftn``). Pair distances of the acceptance checks (``min_distance``, ``min_distance_ratio``)
are computed in torch over the periodic images that can lie within the checks' reach (:func:`pair_contacts`).

Control flow follows the reference step for step (same peeling order, Newton steps, element choice, interim and
final Gauss-Newton polish, free scale, element swaps). Grids that finish early are masked instead of removed from
the batch. Values read back to the host: the number of peeling steps (once per chunk), whether any grid still
places atoms (every ``ACTIVE_EVERY`` steps), the polish's convergence test (every ``CONVERGENCE_EVERY``
iterations), which grids swapped (once per swap round), the element-slot count of a polish without a given
composition, and at the end of a chunk whether a linear system was singular and what the distance checks need.
Linear solves use ``torch.linalg.solve_ex`` / ``inv_ex`` and the Newton step's negative-definiteness test is
Sylvester's criterion, none of which reads back on a GPU.

Differences from the reference, all at the level of rounding: the summation order of every sum; the polish's
convergence test every ``CONVERGENCE_EVERY`` iterations instead of every one (a converged polish moves by less than
1e-9 per further iteration); Sylvester's criterion instead of the largest eigenvalue (the same matrices in exact
arithmetic). Symmetry-equivalent peaks of exactly equal height may be taken in another order, so the sites of a
structure can come out in another order. tests/test_decoder_speed_paths.py holds the two to the same structures
(positions within 1e-4 A) and the same acceptance; docs/benchmarks.md has the measured agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from gpsk_materials.representations.form_factors import torch_coefficient_table
from gpsk_materials.representations.peeling import MAX_SCALE

TWO_PI = 2 * math.pi
#: the polish tests its convergence (largest step < 1e-9, the reference's test) every this many iterations
CONVERGENCE_EVERY = 4
#: the peeling tests whether any grid still places atoms every this many steps
ACTIVE_EVERY = 2
#: most periodic images per axis of the torch pair distances; a cell that needs more for the checks' reach (a
#: needle-like cell) is judged by the reference's pymatgen neighbour list
MAX_IMAGES = 3
#: palettes up to this size are used directly as the element slots of the model's matrix product; larger ones
#: (an inferred composition searches all 98 elements) are compacted to the elements placed
DIRECT_PALETTE = 8


@dataclass
class HalfBlock:
    """Device-resident constants of the half-block layout for grid size ``n`` (see the module docstring).

    Attributes
    ----------
    L, A : int
        Largest |Miller index| of the symmetric block (n/2 - 1) and the length 2L + 1 of the h and k axes.
    W : Tensor (L + 1,)
        Weight of each l plane: 1 for l = 0, 2 otherwise.
    pow_hk, pow_l : Tensor (3, A), (3, L + 1)
        Powers m^0, m^1, m^2 of the Miller indices along h (and k) and along l.
    """

    n: int
    device: torch.device
    dtype: torch.dtype

    def __post_init__(self):
        n, dev, dt = self.n, self.device, self.dtype
        self.L = n // 2 - 1
        self.A = 2 * self.L + 1
        self.cdtype = torch.complex128 if dt == torch.float64 else torch.complex64
        self.hv = torch.arange(-self.L, self.L + 1, device=dev, dtype=dt)
        self.lv = torch.arange(0, self.L + 1, device=dev, dtype=dt)
        self.W = torch.where(self.lv > 0, 2.0, 1.0).to(dt)
        self.pow_hk = torch.stack([torch.ones_like(self.hv), self.hv, self.hv**2])
        self.pow_l = torch.stack([torch.ones_like(self.lv), self.lv, self.lv**2])
        self.fft_hk = torch.remainder(torch.arange(-self.L, self.L + 1, device=dev), n)  # FFT-order index of h
        self.table = torch_coefficient_table(dev, dt)
        self.mesh = torch.arange(n, device=dev, dtype=dt) / n  # fractional coordinate of voxel m along an axis

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.A, self.A, self.L + 1)

    # ----------------------------------------------------------------- data
    def half_block(self, Ffull: torch.Tensor) -> torch.Tensor:
        """F on H from a full grid (B, n, n, n) in grid order (axis index i <-> Miller index i - n/2), Friedel
        symmetrised as the reference does: F(h) <- (F(h) + conj F(-h)) / 2."""
        h = self.n // 2
        direct = Ffull[:, 1:, 1:, h:]
        mirror = Ffull[:, 1:, 1:, 1 : h + 1].flip(1, 2, 3)
        return 0.5 * (direct + mirror.conj())

    def s2(self, gstar: torch.Tensor) -> torch.Tensor:
        """(sin theta / lambda)^2 = h^T G* h / 4 on H, (B, A, A, L + 1), for reciprocal metrics G* (B, 3, 3)."""
        h = self.hv[:, None, None]
        k = self.hv[None, :, None]
        l = self.lv[None, None, :]
        g = gstar[:, :, :, None, None, None]
        q = (g[:, 0, 0] * h * h + g[:, 1, 1] * k * k + g[:, 2, 2] * l * l
             + 2 * (g[:, 0, 1] * h * k + g[:, 0, 2] * h * l + g[:, 1, 2] * k * l))
        return q / 4.0

    def form_factors(self, z: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Waasmaier-Kirfel f_z(s) (:mod:`.form_factors`) of atomic numbers z (B, P) on H -> (B, P, A, A, L + 1)."""
        coef = self.table[z][:, :, :, None, None, None]  # (B, P, 11, 1, 1, 1)
        s2 = s2[:, None]
        f = coef[:, :, 10].expand(*z.shape, *self.shape).clone()
        for g in range(5):
            f += coef[:, :, g] * torch.exp(-coef[:, :, 5 + g] * s2)
        return f

    def wsum(self, v: torch.Tensor) -> torch.Tensor:
        """W-weighted sum over the three trailing H axes."""
        return (v * self.W).sum((-3, -2, -1))

    def curvature_blocks(self, fWf: torch.Tensor) -> torch.Tensor:
        """(2 pi)^2 sum_H W f^2 h h^T per element, (B, P, 3, 3), from fWf = W f^2 (B, P, A, A, L + 1): the
        atom-diagonal blocks of the polish's J^H W J (the reference builds them per polish call)."""
        hv, lv = self.hv, self.lv
        s_h = fWf.sum((-2, -1))  # (B, P, A) sums over k, l
        s_k = fWf.sum((-3, -1))
        s_l = fWf.sum((-3, -2))
        hh = (s_h * hv * hv).sum(-1)
        kk = (s_k * hv * hv).sum(-1)
        ll = (s_l * lv * lv).sum(-1)
        hk = ((fWf.sum(-1) * hv[:, None]) * hv[None, :]).sum((-2, -1))
        hl = ((fWf.sum(-2) * hv[:, None]) * lv[None, :]).sum((-2, -1))
        kl = ((fWf.sum(-3) * hv[:, None]) * lv[None, :]).sum((-2, -1))
        block = torch.stack([torch.stack([hh, hk, hl], -1), torch.stack([hk, kk, kl], -1),
                             torch.stack([hl, kl, ll], -1)], -2)
        return TWO_PI**2 * block

    # ----------------------------------------------------------------- phases
    def tables(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """1-D phase tables u_a(m) = e^{2 pi i m x_a} of positions x (..., 3): (..., A), (..., A), (..., L + 1)."""
        ang_x = TWO_PI * x[..., 0, None] * self.hv
        ang_y = TWO_PI * x[..., 1, None] * self.hv
        ang_z = TWO_PI * x[..., 2, None] * self.lv
        one = torch.ones((), device=x.device, dtype=x.dtype)
        return (torch.polar(one.expand_as(ang_x), ang_x), torch.polar(one.expand_as(ang_y), ang_y),
                torch.polar(one.expand_as(ang_z), ang_z))

    def phase(self, x: torch.Tensor) -> torch.Tensor:
        """e^{2 pi i h.x} on H for positions x (..., 3) -> (..., A, A, L + 1)."""
        ux, uy, uz = self.tables(x)
        return (ux[..., :, None] * uy[..., None, :])[..., None] * uz[..., None, None, :]

    def moments(self, Q: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
        """M[a, b, c] = sum_H Q(h) conj(e^{2 pi i h.x}) h^a k^b l^c for a, b, c <= ``order``.

        Q (..., A, A, L + 1) holds the weights W already; x (..., 3) one position per leading index.
        Returns (..., order + 1, order + 1, order + 1).
        """
        ux, uy, uz = self.tables(x)
        r = order + 1
        cz = uz.conj()[..., None, :] * self.pow_l[:r]  # (..., r, L+1)
        cy = uy.conj()[..., None, :] * self.pow_hk[:r]  # (..., r, A)
        cx = ux.conj()[..., None, :] * self.pow_hk[:r]
        lead = Q.shape[:-3]
        A, Lp = self.A, self.L + 1
        t1 = torch.matmul(Q.reshape(-1, A * A, Lp), cz.reshape(-1, r, Lp).transpose(1, 2))  # (*, A*A, r)
        t1 = t1.reshape(-1, A, A, r)
        t2 = torch.matmul(cy.reshape(-1, 1, r, A), t1)  # (*, A, r_k, r_l)
        t3 = torch.matmul(cx.reshape(-1, r, A), t2.reshape(-1, A, r * r))  # (*, r_h, r_k * r_l)
        return t3.reshape(*lead, r, r, r)

    def model(self, x: torch.Tensor, onehot: torch.Tensor, f_slots: torch.Tensor) -> torch.Tensor:
        """F_model(h) = sum_j f_{p_j}(h) e^{2 pi i h.x_j} on H, (B, A, A, L + 1).

        x (B, S, 3) positions; onehot (B, S, U) (complex) the element slot of each site, zero for sites that are not
        placed; f_slots (B, A * A, U, L + 1) (complex) the form factors of the slots. One batched matrix product
        builds the partial structure factors S_u of every slot.
        """
        B, S, U = onehot.shape
        A, Lp = self.A, self.L + 1
        ux, uy, uz = self.tables(x)
        exy = (ux[..., :, None] * uy[..., None, :]).reshape(B, S, A * A)
        wz = (onehot[..., None] * uz[:, :, None, :]).reshape(B, S, U * Lp)
        partial = torch.matmul(exy.transpose(1, 2), wz).reshape(B, A * A, U, Lp)
        return (partial * f_slots).sum(2).reshape(B, A, A, Lp)

    # ----------------------------------------------------------------- real space
    def density(self, R: torch.Tensor) -> torch.Tensor:
        """Density rho(x) = sum_h F(h) e^{-2 pi i h.x} (B, n, n, n) of a half-block structure factor R, as
        :meth:`.solver.Engine.density`: a real-output inverse FFT of conj(R) without normalisation."""
        B = R.shape[0]
        n, Lp = self.n, self.L + 1
        X = torch.zeros((B, n, n, n // 2 + 1), dtype=R.dtype, device=R.device)
        X[:, self.fft_hk[:, None], self.fft_hk[None, :], :Lp] = R.conj()
        return torch.fft.irfftn(X, s=(n, n, n), dim=(1, 2, 3), norm="forward")

    def mesh_d2(self, x: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
        """Squared minimum-image distance (A^2) of every voxel of the fractional n^3 mesh to x (B, 3) under the
        real-space metric (B, 3, 3) -> (B, n, n, n)."""
        dx = self.mesh - x[:, :, None]  # (B, 3, n)
        dx = dx - torch.round(dx)
        a, b, c = dx[:, 0, :, None, None], dx[:, 1, None, :, None], dx[:, 2, None, None, :]
        g = metric[:, :, :, None, None, None]
        return (g[:, 0, 0] * a * a + g[:, 1, 1] * b * b + g[:, 2, 2] * c * c
                + 2 * (g[:, 0, 1] * a * b + g[:, 0, 2] * a * c + g[:, 1, 2] * b * c))


@lru_cache(maxsize=8)
def half_block(n: int, device: str, dtype: str) -> HalfBlock:
    """Cached :class:`HalfBlock` of one grid size, device and dtype."""
    return HalfBlock(n, torch.device(device), getattr(torch, dtype))


class Palette:
    """Form factors of a chunk's palettes on H and what the solver derives from them once per chunk.

    Parameters
    ----------
    hb : HalfBlock
    pal : Tensor (B, P)
        Atomic numbers of each grid's palette (0 = padding).
    gstar : Tensor (B, 3, 3)
        Reciprocal metrics, 1/A^2.

    Attributes
    ----------
    f, fW : Tensor (B, P, A, A, L + 1)
        Form factors f_p on H and W f_p.
    norm2 : Tensor (B, P)
        ||f_p||_W^2 = sum_H W f_p^2 (the squared norm of one atom's contribution, any position).
    blocks : Tensor (B, P, 3, 3)
        :meth:`HalfBlock.curvature_blocks`.
    singular : Tensor (B,) bool
        Grids with a singular linear solve so far (:meth:`failed`).
    """

    def __init__(self, hb: HalfBlock, pal: torch.Tensor | None = None, gstar: torch.Tensor | None = None):
        self.hb = hb
        if pal is None:
            return
        self.f = hb.form_factors(pal, hb.s2(gstar))
        self.fW = self.f * hb.W
        fWf = self.f * self.fW
        self.norm2 = fWf.sum((-3, -2, -1))
        self.blocks = hb.curvature_blocks(fWf)
        self._direct = self._slot_layout(self.f) if self.f.shape[1] <= DIRECT_PALETTE else None
        self.singular = torch.zeros(pal.shape[0], dtype=torch.bool, device=pal.device)

    def merge(self) -> None:
        """Carry the singular solves recorded on a :meth:`rows` subset back to the palette it came from."""
        parent = getattr(self, "_parent", None)
        if parent is not None:
            parent.singular = parent.singular.index_put((self._rows,), self.singular)

    def failed(self, bad: torch.Tensor) -> None:
        """Record grids (B,) whose linear solve was singular (``torch.linalg.*_ex`` info), without a read-back; the
        solver raises ``LinAlgError`` for them at the end of the chunk, as the reference's ``torch.linalg`` calls
        raise at once (:meth:`~.decoding.ReciprocalGridDecoder._safe_chunk` then decodes the chunk grid by grid)."""
        self.singular = self.singular | bad

    def _slot_layout(self, f: torch.Tensor) -> torch.Tensor:
        B, U = f.shape[:2]
        hb = self.hb
        return f.permute(0, 2, 3, 1, 4).reshape(B, hb.A * hb.A, U, hb.L + 1).to(hb.cdtype)

    def rows(self, b: torch.Tensor) -> "Palette":
        """The palettes of grids ``b`` (an index tensor)."""
        out = Palette(self.hb)
        out.f, out.fW, out.norm2, out.blocks = self.f[b], self.fW[b], self.norm2[b], self.blocks[b]
        out._direct = None if self._direct is None else self._direct[b]
        out.singular = self.singular[b]
        out._parent, out._rows = self, b
        return out

    def slots(self, p: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Element slots of the model's matrix product (:meth:`HalfBlock.model`) and of the polish's gradient
        (:func:`gradient`) for sites with palette indices p (B, S): ``(onehot (B, S, U) complex, f_slots (B, A * A,
        U, L + 1) complex, slot (B, S) long)``. A small palette (a given composition) is its own slot list; a large
        one (an inferred composition searches all 98 elements) is compacted to the elements that some site holds
        (one read-back of the slot count)."""
        hb, f = self.hb, self.f
        B, P = f.shape[:2]
        idx = p.clamp(min=0)
        if self._direct is not None:
            slot, U, f_slots = idx, P, self._direct
        else:
            present = torch.zeros((B, P + 1), dtype=torch.bool, device=p.device)
            present.scatter_(1, torch.where(valid, idx, P), True)  # sites not placed land in the dropped column P
            present = present[:, :P]
            U = max(int(present.sum(1).max()), 1)
            rank = torch.cumsum(present.to(torch.long), 1) - 1
            slot = rank.gather(1, idx).clamp(min=0)
            elem = torch.argsort((~present).to(torch.int8), dim=1, stable=True)[:, :U]  # present ones first
            f_slots = self._slot_layout(f.gather(1, elem[:, :, None, None, None].expand(-1, -1, *f.shape[2:])))
        onehot = ((slot[..., None] == torch.arange(U, device=p.device)) & valid[..., None]).to(hb.cdtype)
        return onehot, f_slots, slot


def gather_sites(f: torch.Tensor, p: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Form factor of each site's element, (B, S, A, A, L + 1), zero where not ``valid`` (the reference's
    ``_site_factors``)."""
    idx = p.clamp(min=0)
    fj = f.gather(1, idx[:, :, None, None, None].expand(-1, -1, *f.shape[2:]))
    return fj * valid[:, :, None, None, None]


def rmul(real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """real * z for a real tensor and a complex one (broadcast), without promoting ``real`` to complex."""
    return torch.view_as_complex((torch.view_as_real(z) * real[..., None]).contiguous())


def re_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Re(a conj(b)^T) of complex (..., N, M) and (..., K, M) -> (..., N, K): one real matrix product over
    (Re, Im) pairs, Re(a_i conj b_j) = a_r b_r + a_i b_i (half the work of the complex product)."""
    ar = torch.view_as_real(a.contiguous()).flatten(-2)
    br = torch.view_as_real(b.contiguous()).flatten(-2)
    return torch.matmul(ar, br.transpose(-1, -2))


#: number of |q| shells of :func:`radial_misfit` (of equal width)
RADIAL_SHELLS = 8


def radial_misfit(y: torch.Tensor, fj: torch.Tensor, w: torch.Tensor, s2: torch.Tensor,
                  shells: int = RADIAL_SHELLS) -> torch.Tensor:
    """The part of each site's scattering that no single element explains, in units of its form factor's ||f||^2.

    A site's observed amplitude is ``f_j + y`` on every reflection, with ``y = Re(R conj E_j)`` the residual
    projected on the site's phases. An atom's form factor depends on |q| alone, so a site whose scatterer is not the
    assigned element (a disordered Cu0.5Au0.5 site read as one Ba atom) leaves a misfit that is a smooth function of
    |q|, while noise, or a position error (which projects on the imaginary part), spreads over the reflections. The
    misfit is ``y`` with its best multiple of ``f_j`` removed (an occupancy, judged separately), averaged in
    ``shells`` shells of |q| of equal width up to the grid's largest |q| (the same shells whatever the order or
    layout of the reflections); the radial energy sum_k W_k m_k^2 less what noise of the same within-shell variance
    would give ((shells - 1) times the per-reflection variance), clipped at 0, over
    ||f_j||_W^2. This is in the units of the element margin (the gain of the assigned element over the best other
    one, also over ||f_j||^2), which the decoder's confidence takes it from.

    Parameters
    ----------
    y, fj : Tensor (B, N, M)
        Residual projected on each site and each site's form factor, on the same M reflections.
    w : Tensor (M,) or (B, 1, M)
        Weights of the reflections (Friedel multiplicity).
    s2 : Tensor (B, M)
        (sin theta / lambda)^2 of the reflections, to sort them into shells.
    shells : int
        Number of shells.

    Returns
    -------
    Tensor (B, N)
        Radial misfit, >= 0; 0 where ``fj`` is zero (padding).
    """
    B, N, M = y.shape
    w = w.expand(B, 1, M)
    q = torch.sqrt(s2.clamp(min=0))
    shell = (q * (shells / q.amax(1, keepdim=True).clamp(min=1e-30))).long().clamp(max=shells - 1)
    shell = shell[:, None, :].expand(B, N, M)
    fw = fj * w
    norm2 = (fw * fj).sum(-1)
    r = y - ((fw * y).sum(-1) / norm2.clamp(min=1e-30))[..., None] * fj
    wr = (w * r).expand(B, N, M)
    ws = torch.zeros((B, N, shells), dtype=y.dtype, device=y.device).scatter_add_(2, shell, w.expand(B, N, M))
    sums = torch.zeros_like(ws).scatter_add_(2, shell, wr)
    between = (sums**2 / ws.clamp(min=1e-30)).sum(-1)
    within = ((wr * r).sum(-1) - between).clamp(min=0)
    count = w.sum(-1)  # reflections counted with their weights (both layouts weigh to the same set)
    excess = (between - (shells - 1) * within / (count - shells).clamp(min=1)).clamp(min=0)
    return torch.where(norm2 > 0, excess / norm2.clamp(min=1e-30), torch.zeros_like(excess))


def covalent_radii_table(device, dtype) -> torch.Tensor:
    """Covalent radius (Angstrom) by atomic number, (MAX_Z + 1,), as
    :func:`gpsk_materials.checks.validity._covalent_radius` reads it (Cordero et al., Dalton Trans. 2008, 2832;
    pymatgen's ``atomic_radius`` beyond the table; row 0 unused)."""
    return torch.as_tensor(_radii_numpy(), device=device, dtype=dtype)


@lru_cache(maxsize=1)
def _radii_numpy() -> np.ndarray:
    from pymatgen.core import Element

    from gpsk_materials.checks.validity import _covalent_radius
    from gpsk_materials.vocabulary import MAX_Z

    out = np.zeros(MAX_Z + 1)
    for z in range(1, MAX_Z + 1):
        out[z] = _covalent_radius(Element.from_Z(z).symbol)
    return out


def image_range(gstar: np.ndarray, reach) -> np.ndarray:
    """Per grid, the number K of periodic images along each axis within which every pair closer than ``reach``
    (Angstrom; a number or one per grid) lies, given the reciprocal metrics (B, 3, 3) and minimum-image fractional
    differences in [-1/2, 1/2]: a vector of length <= r has |fractional component a| <= r |b*_a|, so
    |image_a| <= r |b*_a| + 1/2. Returns (B,) integers (a large number for a metric that is not finite)."""
    bstar = np.sqrt(np.clip(np.diagonal(gstar, axis1=1, axis2=2), 0, None))  # |b*_a|, 1/A
    with np.errstate(invalid="ignore"):
        K = np.floor(np.asarray(reach, dtype=float).reshape(-1, 1) * bstar + 0.5).max(1)
    return np.where(np.isfinite(K), K, np.iinfo(np.int32).max).astype(np.int64)


def pair_contacts(x: torch.Tensor, valid: torch.Tensor, metric: torch.Tensor, radii: torch.Tensor, K: int):
    """Closest pairs of the decoded sites over the periodic images -K..K along each axis, in torch.

    Parameters
    ----------
    x : Tensor (B, S, 3)
        Fractional positions.
    valid : Tensor (B, S)
        Sites that exist.
    metric : Tensor (B, 3, 3)
        Real-space metric tensor G = L L^T (A^2).
    radii : Tensor (B, S)
        Covalent radius of each site's element (A).
    K : int
        Images per axis (from :func:`image_range`).

    Returns
    -------
    dmin : Tensor (B,)
        Smallest distance between two different sites (the reference's ``Structure.distance_matrix`` minimum);
        inf with fewer than two sites.
    ratio, i, j, d : Tensor (B,)
        Smallest d_ij / (r_i + r_j) over all pairs, a site and its own images included (the reference's
        :func:`gpsk_materials.checks.validity.closest_contact`), its two sites (first in (i, j) order among
        equal ratios) and their distance.
    """
    B, S, _ = x.shape
    rng = torch.arange(-K, K + 1, device=x.device, dtype=x.dtype)
    images = torch.stack(torch.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)  # (I, 3)
    d = x[:, None, :, :] - x[:, :, None, :]  # (B, i, j, 3): x_j - x_i
    d = d - torch.round(d)
    # |d + n|^2 = d.G.d + 2 n.G.d + n.G.n over the images n, without forming the (B, S, S, I, 3) vectors
    Gd = torch.einsum("bxy,bijy->bijx", metric, d)
    d2 = ((d * Gd).sum(-1)[..., None] + 2 * torch.matmul(Gd, images.T)
          + torch.einsum("kx,bxy,ky->bk", images, metric, images)[:, None, None, :])
    dist = torch.sqrt(d2.clamp(min=0))
    same = torch.eye(S, dtype=torch.bool, device=x.device)[None, :, :, None]
    zero_image = (images.abs().sum(-1) == 0)[None, None, None, :]
    pair_ok = (valid[:, :, None] & valid[:, None, :])[..., None]
    dist = torch.where(pair_ok & ~(same & zero_image), dist, torch.full_like(dist, torch.inf))
    best = dist.amin(-1)  # (B, S, S) shortest image of each pair
    off = torch.where(torch.eye(S, dtype=torch.bool, device=x.device)[None], torch.full_like(best, torch.inf), best)
    dmin = off.flatten(1).amin(1)
    ratio_all = best / (radii[:, :, None] + radii[:, None, :]).clamp(min=1e-12)
    flat = ratio_all.flatten(1)
    k = flat.argmin(1)  # first minimum: smallest i, then j
    ratio = flat.gather(1, k[:, None])[:, 0]
    i, j = k // S, k % S
    dist_ij = best.flatten(1).gather(1, k[:, None])[:, 0]
    return dmin, ratio, i, j, dist_ij


def polish(hb: HalfBlock, F, pal: Palette, x, p, valid, steps: int, free=None, scale=None, slots=None,
           model=None):
    """Joint Gauss-Newton polish of all positions, elements fixed (the reference's ``PeelingSolver._polish``):
    atom-diagonal blocks of J^H W J, steps clamped to half a voxel, and with ``scale`` the overall scale of F
    projected out at each step for the grids marked ``free`` (variable projection, Golub & Pereyra, SIAM J.
    Numer. Anal. 10, 413 (1973)).

    Parameters
    ----------
    F : Tensor (B, A, A, L + 1) complex
        Data on H.
    pal : Palette
    x, p, valid : Tensor (B, S, 3), (B, S), (B, S)
        Positions (fractional), palette indices and placed sites.
    steps : int
        Gauss-Newton iterations (the convergence test, largest step < 1e-9, every ``CONVERGENCE_EVERY``).
    slots : optional
        :meth:`Palette.slots` of ``p`` when the caller holds them.
    model : Tensor (B, A, A, L + 1), optional
        F_model at ``x`` when the caller holds it (saves the first evaluation).

    Returns
    -------
    ``x`` or, with ``scale``, ``(x, F, scale)``.
    """
    B, S, _ = x.shape
    if steps == 0 or S == 0:
        return x if scale is None else (x, F, scale)
    onehot, f_slots, slot = pal.slots(p, valid) if slots is None else slots
    block = pal.blocks.gather(1, p.clamp(min=0)[:, :, None, None].expand(-1, -1, 3, 3))
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    inv_block, info = torch.linalg.inv_ex(torch.where(valid[:, :, None, None], block, eye))
    pal.failed(info.flatten(1).any(1))
    lim = 0.5 / hb.n
    for it in range(steps):
        if model is None or it > 0:
            model = hb.model(x, onehot, f_slots)
        if free is not None:
            k = hb.wsum(model.conj() * F).real / hb.wsum(model.real**2 + model.imag**2).clamp(min=1e-30)
            new = torch.where(free & torch.isfinite(k) & (k > 0), scale / k, scale)
            new = new.clamp(1 / MAX_SCALE, MAX_SCALE)
            F = F * (new / scale)[:, None, None, None]
            scale = new
        g = gradient(hb, f_slots * ((F - model) * hb.W).reshape(B, hb.A * hb.A, 1, hb.L + 1), slot, x)
        step = torch.einsum("bjik,bjk->bji", inv_block, g) * valid[:, :, None]
        x = (x + step.clamp(-lim, lim)) % 1.0
        if (it + 1) % CONVERGENCE_EVERY == 0 and it + 1 < steps and float(step.abs().max()) < 1e-9:
            break
    return x if scale is None else (x, F, scale)


def gradient(hb: HalfBlock, G: torch.Tensor, slot: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """2 pi Im sum_H W f_j(h) R(h) conj(e^{2 pi i h.x_j}) h for sites j, the gradient of the polish.

    G (B, A * A, U, L + 1) holds W f_u R for each element slot u (:meth:`Palette.slots`), slot (B, S) each site's
    slot, x (B, S, 3) the positions; returns (B, S, 3). One matrix product over the (h, k) plane contracts the
    sites' tables conj(u_x u_y) {1, h, k} with every slot's l columns (the slots share G: no product over all
    Miller indices per site), then each site takes its slot and contracts l with conj(u_z) {1, l}.
    """
    B, S = x.shape[:2]
    A, Lp = hb.A, hb.L + 1
    U = G.shape[2]
    ux, uy, uz = hb.tables(x)
    cxy = (ux.conj()[..., :, None] * uy.conj()[..., None, :])  # (B, S, A_h, A_k)
    tab = torch.stack([cxy, cxy * hb.hv[:, None], cxy * hb.hv[None, :]], 2).reshape(B, S * 3, A * A)
    y = torch.matmul(tab, G.reshape(B, A * A, U * Lp)).reshape(B, S, 3, U, Lp)
    y = y.gather(3, slot[:, :, None, None, None].expand(-1, -1, 3, 1, Lp))[:, :, :, 0]  # (B, S, 3, L+1)
    cz = uz.conj()
    g = torch.stack([(y[:, :, 1] * cz).sum(-1), (y[:, :, 2] * cz).sum(-1), (y[:, :, 0] * cz * hb.lv).sum(-1)], -1)
    return TWO_PI * g.imag


def slot_overlaps(hb: HalfBlock, G: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """C[b, u, j] = sum_H G_u(h) conj(e^{2 pi i h.x_j}) for every slot u and site j: G (B, A * A, U, L + 1) (e.g.
    W f_u R), x (B, N, 3); returns (B, U, N). One matrix product over the (h, k) plane, then l."""
    B, N = x.shape[:2]
    A, Lp = hb.A, hb.L + 1
    U = G.shape[2]
    ux, uy, uz = hb.tables(x)
    cxy = (ux.conj()[..., :, None] * uy.conj()[..., None, :]).reshape(B, N, A * A)
    y = torch.matmul(cxy, G.reshape(B, A * A, U * Lp)).reshape(B, N, U, Lp)
    return (y * uz.conj()[:, :, None, :]).sum(-1).transpose(1, 2)


class BatchedPeelingSolver:
    """The batched twin of :class:`.peeling.PeelingSolver` (mixin of
    :class:`~gpsk_materials.representations.decoding.ReciprocalGridDecoder`, selected by its
    ``implementation="batched"``): the same residual peeling, Newton refinement, form-factor element choice, joint
    polish with the free scale and element swaps, on the half-block layout of :class:`HalfBlock`. It reads the
    decoder's settings ``newton_steps``, ``polish_steps``, ``swap_rounds``, ``interim_polish``, ``min_gain``,
    ``min_distance`` and ``max_sites``.
    """

    # -- peeling ---------------------------------------------------------
    def _peel_batched(self, hb: HalfBlock, F, gstar, pal, cnt, known, free=None, scale=None):
        """Residual peeling, then the joint polish and element swaps, over the whole batch.

        Parameters
        ----------
        F : Tensor (B, A, A, L + 1) complex
            Structure factor on H, already multiplied by the starting scale.
        gstar : Tensor (B, 3, 3)
            Reciprocal metric (1/A^2), positive definite.
        pal, cnt, known : Tensor (B, P), (B, P), (B,)
            Palette (atomic numbers, 0 = padding), counts still to place (inf: any number) and whether the
            composition is given.
        free, scale : Tensor (B,), optional
            Grids whose overall scale the polish fits, and their current scale.

        Returns
        -------
        x (B, N, 3), p (B, N), valid (B, N), F and scale as the refinement left them, and the :class:`Palette`.
        """
        B = F.shape[0]
        n = hb.n
        dev, dt = F.device, F.real.dtype
        palette = Palette(hb, pal, gstar)
        f, norm2 = palette.f, palette.norm2
        cnt = cnt.clone()
        nmax = int(torch.where(known, cnt.sum(1), torch.full_like(cnt[:, 0], self.max_sites)).max())
        nmax = max(nmax, 1)
        x = torch.zeros((B, nmax, 3), dtype=dt, device=dev)
        p = torch.full((B, nmax), -1, dtype=torch.long, device=dev)
        R = F.clone()
        active = cnt.sum(1) > 0
        ar = torch.arange(B, device=dev)
        metric = torch.linalg.inv(gstar)  # real-space metric, for distances on the voxel mesh
        blocked = torch.zeros((B, n, n, n), dtype=torch.bool, device=dev)
        md2 = self.min_distance**2
        cells = (slice(None), None, None, None)  # (B,) -> (B, 1, 1, 1)
        for step in range(nmax):
            if step % ACTIVE_EVERY == 0 and not bool(active.any()):
                break
            rho = hb.density(R)
            # a voxel closer than min_distance to a placed atom cannot host another one (truncation ripples of
            # heavy atoms would otherwise outshine light atoms)
            rho = torch.where(blocked, torch.full_like(rho, -torch.inf), rho)
            idx = rho.reshape(B, -1).argmax(1)
            x0 = torch.stack([idx // (n * n), (idx // n) % n, idx % n], -1).to(dt) / n
            xa = self._newton_batched(hb, R * hb.W, x0, palette)
            gain, best = self._gain_batched(hb, R, xa, f, norm2, cnt)
            xa = self._newton_batched(hb, R * palette.fW[ar, best], xa, palette)
            gain, best2 = self._gain_batched(hb, R, xa, f, norm2, cnt)
            take = (gain > self.min_gain * norm2[ar, best2]) | known  # a given composition places every count
            take = take & torch.isfinite(gain) & active
            retry = torch.zeros_like(take)
            if step > 0:
                # refinement can slide a weak candidate onto a placed atom: without a composition, skip it
                dxp = x[:, :step] - xa[:, None, :]
                dxp = dxp - torch.round(dxp)
                d2p = torch.einsum("bji,bik,bjk->bj", dxp, metric, dxp)
                clash = ((d2p < md2) & (p[:, :step] >= 0)).any(1)
                retry = clash & take & ~known
                take = take & ~retry
            R = R - (f[ar, best2] * hb.phase(xa)) * take[cells]
            x[:, step] = torch.where(take[:, None], xa, x[:, step])
            p[:, step] = torch.where(take, best2, p[:, step])
            cnt[ar, best2] -= take.to(cnt.dtype)
            if self.interim_polish and step > 0:
                # re-fit the placed atoms so that their errors do not leave peaks that outshine light atoms
                sub = slice(0, step + 1)
                ps, vs = p[:, sub], p[:, sub] >= 0
                slots = palette.slots(ps, vs)
                xs = polish(hb, F, palette, x[:, sub], ps, vs, self.interim_polish, slots=slots, model=F - R)
                xs = torch.where(active[:, None, None], xs, x[:, sub])
                x[:, sub] = xs
                R = torch.where(active[cells], F - hb.model(xs, *slots[:2]), R)
                xa = xs[:, step]
            blocked |= (hb.mesh_d2(xa, metric) < md2) & take[cells]
            blocked |= (hb.mesh_d2(x0, metric) < (0.5 * self.min_distance) ** 2) & retry[cells]
            done = (~take & ~retry) | (cnt.sum(1) <= 0)
            active = active & ~done
        valid = p >= 0
        if scale is None:
            scale = torch.ones(B, device=dev, dtype=dt)
        if free is None or not bool(free.any()):
            free = None
        x, F, scale = polish(hb, F, palette, x, p, valid, self.polish_steps, free=free, scale=scale)
        if self.swap_rounds:
            x, p, F, scale = self._swap_batched(hb, F, palette, x, p, valid, free, scale)
        if bool(palette.singular.any()):
            raise torch.linalg.LinAlgError("a linear system of the Newton steps or the polish is singular")
        return x, p, valid, F, scale, palette

    def _newton_batched(self, hb: HalfBlock, Q, x, palette: Palette | None = None):
        """Maximise c(x) = Re sum_H Q(h) e^{-2 pi i h.x} (Q = W R, or W f R) from x (B, 3) by Newton steps, as
        :meth:`.solver.Engine.newton`: gradient and Hessian from the moments of order 1 and 2, a short gradient
        step where the Hessian is not negative definite, steps clamped to half a voxel."""
        lim = 0.5 / hb.n
        eye = torch.eye(3, device=x.device, dtype=x.dtype)
        for _ in range(self.newton_steps):
            m = hb.moments(Q, x, 2)
            grad = TWO_PI * torch.stack([m[:, 1, 0, 0], m[:, 0, 1, 0], m[:, 0, 0, 1]], -1).imag
            hess = -(TWO_PI**2) * torch.stack([
                torch.stack([m[:, 2, 0, 0], m[:, 1, 1, 0], m[:, 1, 0, 1]], -1),
                torch.stack([m[:, 1, 1, 0], m[:, 0, 2, 0], m[:, 0, 1, 1]], -1),
                torch.stack([m[:, 1, 0, 1], m[:, 0, 1, 1], m[:, 0, 0, 2]], -1)], -2).real
            # at a maximum the Hessian is negative definite (Sylvester's criterion on -H: its leading principal
            # minors are positive; the reference asks for its largest eigenvalue < 0, the same set of matrices, and
            # this test needs no read-back on a GPU); otherwise fall back to a short gradient step
            ok = ((hess[:, 0, 0] < 0) & (hess[:, 0, 0] * hess[:, 1, 1] - hess[:, 0, 1] * hess[:, 1, 0] > 0)
                  & (torch.linalg.det(hess) < 0))[:, None, None]
            safe = torch.where(ok, hess, -eye * (hess.abs().amax((1, 2), keepdim=True) + 1e-12))
            sol, info = torch.linalg.solve_ex(safe, grad[..., None])
            if palette is not None:
                palette.failed(info > 0)
            step = -sol[..., 0]
            x = x + step.clamp(-lim, lim)
        return x % 1.0

    @staticmethod
    def _gain_batched(hb: HalfBlock, R, x, f, norm2, cnt):
        """Residual reduction 2 C_p - ||T_p||^2 of placing each palette element at x (B, 3), C_p =
        Re sum_H W f_p R conj(e^{2 pi i h.x}); the best allowed element and its gain."""
        B, P = f.shape[:2]
        proj = (R * hb.phase(x).conj()).real * hb.W
        C = torch.matmul(f.reshape(B, P, -1), proj.reshape(B, -1, 1))[..., 0]
        gain = 2 * C - norm2
        gain = torch.where(cnt > 0, gain, torch.full_like(gain, -torch.inf))
        best = gain.argmax(1)
        return gain.gather(1, best[:, None])[:, 0], best

    # -- swaps -----------------------------------------------------------
    def _swap_batched(self, hb: HalfBlock, F, pal: Palette, x, p, valid, free, scale):
        """Greedy element swaps between sites while they lower the residual, each followed by the polish (the
        reference's ``_swap``). A grid that does not swap in a round keeps its state, so it cannot swap in the
        next one: only the grids that swapped are evaluated again."""
        B, N, _ = x.shape
        if N < 2:
            return x, p, F, scale
        Wf = hb.W.expand(hb.shape).reshape(-1)
        b = torch.arange(B, device=x.device)
        for _ in range(self.swap_rounds):
            xb, pb, vb, Fb = x[b], p[b], valid[b], F[b]
            nb = len(b)
            fj = gather_sites(pal.f[b], pb, vb).reshape(nb, N, -1)  # real (nb, N, M)
            e = hb.phase(xb).reshape(nb, N, -1)
            fe = rmul(fj, e)
            R = Fb.reshape(nb, -1) - fe.sum(1)
            fjW = fj * Wf
            # cost change of swapping the elements of sites i and j: R' = R + (f_i - f_j)(e_i - e_j)
            _, f_slots, slot = pal.rows(b).slots(pb, vb)
            C = slot_overlaps(hb, f_slots * (R * Wf).reshape(nb, hb.A * hb.A, 1, hb.L + 1), xb).real
            a = C.gather(1, slot[:, :, None].expand(-1, -1, N))  # a_ij = Re sum W f_i R conj(e_j)
            lin = torch.diagonal(a, dim1=1, dim2=2)
            lin = lin[:, :, None] + lin[:, None, :] - a - a.transpose(1, 2)
            Pm = torch.matmul(fjW, fj.transpose(1, 2))  # sum W f_i f_j
            dP = torch.diagonal(Pm, dim1=1, dim2=2)
            Q = re_inner(rmul(fjW, fe), e)  # Re sum W f_i^2 e_i conj e_j
            # Re sum W f_i e_i f_j conj e_j: W = 2 off the plane l = 0, 1 on it
            plane = fe.reshape(nb, N, hb.A * hb.A, hb.L + 1)[..., 0]
            S = 2 * re_inner(fe, fe) - re_inner(plane, plane)
            quad = 2 * (dP[:, :, None] + dP[:, None, :] - 2 * Pm) - 2 * (Q + Q.transpose(1, 2) - 2 * S)
            delta = 2 * lin + quad
            differ = (pb[:, :, None] != pb[:, None, :]) & vb[:, :, None] & vb[:, None, :]
            delta = torch.where(differ, delta, torch.full_like(delta, torch.inf))
            flat = delta.reshape(nb, -1)
            best = flat.argmin(1)
            improve = flat.gather(1, best[:, None])[:, 0] < -1e-9 * hb.wsum(Fb.real**2 + Fb.imag**2)
            sel = torch.nonzero(improve)[:, 0]  # one read-back per round
            if len(sel) == 0:
                break
            b = b[sel]
            i, j = best[sel] // N, best[sel] % N
            pg = p[b].clone()
            rows = torch.arange(len(b), device=x.device)
            pi, pj = pg[rows, i].clone(), pg[rows, j].clone()
            pg[rows, i], pg[rows, j] = pj, pi
            p[b] = pg
            sub = pal.rows(b)
            x[b], F[b], scale[b] = polish(hb, F[b], sub, x[b], pg, valid[b], self.polish_steps,
                                          free=None if free is None else free[b], scale=scale[b])
            sub.merge()
        return x, p, F, scale

    # -- result ------------------------------------------------------------
    def _site_statistics(self, hb: HalfBlock, F, palette: Palette, pal, x, p, valid, gstar):
        """Per grid and site, what the decoder reports: relative residual ||F - F_model||_W / ||F||_W (B,),
        occupancies alpha (B, N) of the per-site amplitude fit Re(T^H W T) alpha = Re(T^H W F) (relative ridge
        1e-9), element margins (B, N): gain of the assigned element over the best other one with the site
        removed, over its ||f||^2, clamped to [-1e3, 1e3], and radial misfits (B, N) (:func:`radial_misfit`;
        the reference's ``_reference_statistics``). ``gstar`` (B, 3, 3): the reciprocal metrics."""
        B, N, _ = x.shape
        f = palette.f
        P = f.shape[1]
        Wf = hb.W.expand(hb.shape).reshape(-1)
        fj = gather_sites(f, p, valid).reshape(B, N, -1)
        E = hb.phase(x).reshape(B, N, -1)
        T = rmul(fj, E)
        Fm = F.reshape(B, -1)
        R = Fm - T.sum(1)
        norm_F = torch.sqrt(((Fm.real**2 + Fm.imag**2) * Wf).sum(1))
        rel = torch.sqrt(((R.real**2 + R.imag**2) * Wf).sum(1)) / norm_F.clamp(min=1e-12)
        # per-site amplitude (occupancy) fit: Re(T^H W T) alpha = Re(T^H W F)
        TW = rmul(Wf, T)
        A = re_inner(TW, T)
        rhs = re_inner(TW, Fm[:, None, :])[..., 0]
        eye = torch.eye(N, device=A.device, dtype=A.dtype)
        A = torch.where(valid[:, :, None] & valid[:, None, :], A, eye.expand_as(A))
        # relative ridge: two sites on the same spot (a generated grid) make A exactly singular
        ridge = 1e-9 * A.diagonal(dim1=1, dim2=2).abs().mean(-1).clamp(min=1e-12)[:, None, None]
        alpha = torch.linalg.solve(A + ridge * eye, rhs * valid)
        fl = f.reshape(B, P, -1)
        norm2 = palette.norm2
        # the residual with site j removed, projected on site j: Re((R + T_j) conj E_j) W = (Re(R conj E_j) + f_j) W
        proj = (E.real * R.real[:, None] + E.imag * R.imag[:, None] + fj) * Wf
        gain = 2 * torch.matmul(proj, fl.transpose(1, 2)) - norm2[:, None, :]  # (B, N, P)
        gain = torch.where(pal[:, None, :] > 0, gain, torch.full_like(gain, -torch.inf))
        pj = p.clamp(min=0)[..., None]
        own = gain.gather(2, pj)[..., 0]
        other = gain.scatter(2, pj, -torch.inf).amax(2)
        denom = norm2.gather(1, pj[..., 0])
        margins = ((own - other) / denom.clamp(min=1e-12)).clamp(-1e3, 1e3)
        y = E.real * R.real[:, None] + E.imag * R.imag[:, None]
        misfit = radial_misfit(y, fj, Wf, hb.s2(gstar).reshape(B, -1))
        return rel, alpha, margins, misfit
