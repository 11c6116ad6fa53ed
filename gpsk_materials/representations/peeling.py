"""Reciprocal-space peeling, the site solver of the closed-form decoder (:class:`PeelingSolver`).

Given a grid's structure factors F (on the batched torch engine of :mod:`gpsk_materials.representations.solver`)
and the cell content, place the atoms one at a time: the strongest peak of the residual density, refined by Newton
steps on the continuous Fourier series, takes the element whose form-factor curve explains the residual best; its
exact contribution is subtracted and the next atom follows. All positions are then polished jointly (Gauss-Newton,
with the overall scale of F free for a given cell content: variable projection, Golub & Pereyra, SIAM J. Numer.
Anal. 10, 413 (1973)) and pairs of sites try swapping elements. ``_peaks`` is the GPSK-300 blog's baseline (peaks of
the inverse FFT, brightest peak to heaviest element).

The solver is a mixin of :class:`~gpsk_materials.representations.decoding.ReciprocalGridDecoder`, which assembles
the result (lattice, acceptance, provenance); it reads the decoder's settings ``newton_steps``, ``polish_steps``,
``swap_rounds``, ``interim_polish`` and ``min_gain``.
"""

from __future__ import annotations

import numpy as np

from gpsk_materials.errors import DecodingError

#: largest factor by which the refinement rescales F of a grid with a given cell content (``exact_counts``)
MAX_SCALE = 3.0


class PeelingSolver:
    """Site solver methods of the decoder (see the module docstring); all work on batched torch tensors."""

    # -- blog baseline --------------------------------------------------
    def _peaks(self, eng, F, pal, cnt, known):
        """Peaks of the inverse FFT, brightest peak -> heaviest element (the GPSK-300 blog decoder)."""
        import torch
        import torch.nn.functional as Fn

        if not bool(known.all()):
            raise DecodingError("the 'peaks' baseline needs a composition for every grid")
        n = eng.n
        rho = eng.density(F)
        # local maxima with periodic wrap-around
        padded = torch.cat([rho[:, -1:], rho, rho[:, :1]], 1)
        padded = torch.cat([padded[:, :, -1:], padded, padded[:, :, :1]], 2)
        padded = torch.cat([padded[..., -1:], padded, padded[..., :1]], 3)
        is_max = rho >= Fn.max_pool3d(padded[:, None], 3, stride=1)[:, 0]
        score = torch.where(is_max, rho, torch.full_like(rho, -torch.inf)).reshape(len(F), -1)
        total = int(cnt.sum(1).max())
        B = len(F)
        x = torch.zeros((B, total, 3), dtype=eng.dtype, device=eng.device)
        p = torch.full((B, total), -1, dtype=torch.long, device=eng.device)
        top = torch.topk(score, min(total, score.shape[1]), dim=1).indices
        for b in range(B):
            # elements sorted heaviest first, each repeated by its count
            order = torch.argsort(pal[b], descending=True)
            labels = torch.repeat_interleave(order, cnt[b, order].long())
            m = len(labels)
            idx = top[b, :m]
            coords = torch.stack([idx // (n * n), (idx // n) % n, idx % n], -1).to(eng.dtype) / n
            x[b, :m] = coords
            p[b, :m] = labels
        return x, p, p >= 0

    # -- principled decoder ----------------------------------------------
    def _peel(self, eng, F, gstar, pal, cnt, known, free=None, scale=None):
        """Residual peeling, then the joint polish and element swaps; returns ``x, p, valid`` and the data ``F``
        and its overall ``scale`` as the refinement left them (fitted where ``free``)."""
        import torch

        B, M = F.shape
        s2 = eng.s2(gstar)
        f = eng.form_factors(pal, s2)  # (B, P, M)
        norm2 = (f * f * eng.w).sum(-1)  # ||T_p||^2
        cnt = cnt.clone()
        nmax = int(torch.where(known, cnt.sum(1), torch.full_like(cnt[:, 0], self.max_sites)).max().item())
        nmax = max(nmax, 1)
        x = torch.zeros((B, nmax, 3), dtype=eng.dtype, device=eng.device)
        p = torch.full((B, nmax), -1, dtype=torch.long, device=eng.device)
        R = F.clone()
        active = cnt.sum(1) > 0
        ar = torch.arange(B, device=eng.device)
        n = eng.n
        metric = torch.linalg.inv(gstar)  # real-space metric, for distances on the voxel mesh
        mesh = torch.stack(torch.meshgrid(*[torch.arange(n, device=eng.device, dtype=eng.dtype) / n] * 3,
                                          indexing="ij"), -1).reshape(-1, 3)
        blocked = torch.zeros((B, n**3), dtype=torch.bool, device=eng.device)
        for step in range(nmax):
            if not bool(active.any()):
                break
            a = ar[active]
            Ra = R[a]
            rho = eng.density(Ra).reshape(len(a), -1)
            # a voxel closer than min_distance to a placed atom cannot host another one: truncation ripples
            # of heavy atoms would otherwise outshine light atoms (e.g. H beside Ir)
            rho = torch.where(blocked[a], torch.full_like(rho, -torch.inf), rho)
            idx = rho.argmax(1)
            x0 = torch.stack([idx // (n * n), (idx // n) % n, idx % n], -1).to(eng.dtype) / n
            xa = eng.newton(Ra, x0, None, self.newton_steps)
            gain, best = self._element_gain(eng, Ra, xa, f[a], norm2[a], cnt[a])
            fa = f[a, best]
            xa = eng.newton(Ra, xa, fa, self.newton_steps)
            gain, best2 = self._element_gain(eng, Ra, xa, f[a], norm2[a], cnt[a])
            fa = f[a, best2]
            take = gain > self.min_gain * norm2[a, best2]
            take = take | known[a]  # with a given composition every count must be placed
            take = take & torch.isfinite(gain)
            retry = torch.zeros_like(take)
            if step > 0:
                # refinement can slide a weak candidate onto a placed atom (a ghost beside a heavy atom):
                # without a composition, skip it and search elsewhere
                dxp = x[a, :step] - xa[:, None, :]
                dxp = dxp - torch.round(dxp)
                d2p = torch.einsum("bji,bik,bjk->bj", dxp, metric[a], dxp)
                clash = ((d2p < self.min_distance**2) & (p[a, :step] >= 0)).any(1)
                retry = clash & take & ~known[a]
                take = take & ~retry
            T = fa * eng.phases(xa)
            R[a] = Ra - T * take[:, None]
            x[a, step] = torch.where(take[:, None], xa, x[a, step])
            p[a, step] = torch.where(take, best2, p[a, step])
            cnt[a, best2] -= take.to(cnt.dtype)
            if self.interim_polish and step > 0:
                # re-fit the placed atoms so that their errors do not leave peaks that outshine light atoms
                sub = slice(0, step + 1)
                xs, _ = self._polish(eng, F[a], f[a], x[a, sub], p[a, sub], p[a, sub] >= 0, self.interim_polish)
                x[a, sub] = xs
                R[a] = F[a] - (self._site_factors(f[a], p[a, sub], p[a, sub] >= 0) * eng.phases(xs)).sum(1)
                xa = xs[:, step]
            dx = mesh[None] - xa[:, None, :]
            dx = dx - torch.round(dx)
            d2 = torch.einsum("bvi,bij,bvj->bv", dx, metric[a], dx)
            blocked[a] |= (d2 < self.min_distance**2) & take[:, None]
            dx0 = mesh[None] - x0[:, None, :]
            dx0 = dx0 - torch.round(dx0)
            d20 = torch.einsum("bvi,bij,bvj->bv", dx0, metric[a], dx0)
            blocked[a] |= (d20 < (0.5 * self.min_distance) ** 2) & retry[:, None]
            done = (~take & ~retry) | (cnt[a].sum(1) <= 0)
            active[a[done]] = False
        valid = p >= 0
        if scale is None:
            scale = torch.ones(B, device=F.device, dtype=F.real.dtype)
        if free is None or not bool(free.any()):
            free = None
        x, p, F, scale = self._polish(eng, F, f, x, p, valid, free=free, scale=scale)
        if self.swap_rounds:
            x, p, F, scale = self._swap(eng, F, f, x, p, valid, free=free, scale=scale)
        return x, p, valid, F, scale

    @staticmethod
    def _element_gain(eng, R, x, f, norm2, cnt):
        """Residual reduction 2 C_p - ||T_p||^2 of placing each palette element at x; best allowed element."""
        import torch

        proj = (R * eng.phases(x).conj()).real * eng.w  # (b, M)
        C = torch.einsum("bm,bpm->bp", proj, f)
        gain = 2 * C - norm2
        gain = torch.where(cnt > 0, gain, torch.full_like(gain, -torch.inf))
        best = gain.argmax(1)
        return gain.gather(1, best[:, None])[:, 0], best

    def _site_factors(self, f, p, valid):
        import torch

        idx = p.clamp(min=0)
        fj = torch.gather(f, 1, idx[:, :, None].expand(-1, -1, f.shape[-1]))
        return fj * valid[:, :, None]

    def _model_residual(self, eng, F, f, x, p, valid):
        fj = self._site_factors(f, p, valid)
        E = eng.phases(x)
        return F - (fj * E).sum(1), fj, E

    def _polish(self, eng, F, f, x, p, valid, steps: int | None = None, free=None, scale=None):
        """Refine all positions against the full residual, elements fixed.

        Gauss-Newton with the atom-diagonal blocks of J^H W J: the block of atom j, (2 pi)^2 sum w f_j^2 h h^T,
        does not depend on its position, and the off-diagonal blocks (template overlaps of resolved atoms)
        are small, so the iteration converges in a few steps at O(N M) cost instead of O(N^2 M).

        With ``scale`` (B,) given, the overall scale is a parameter of the same iteration (the residual is linear
        in it, so it is projected out: variable projection, Golub & Pereyra, SIAM J. Numer. Anal. 10, 413 (1973)):
        each step first sets k = Re<F_model, F>_w / ||F_model||_w^2, the least-squares
        scale of ||F - k F_model||, for the grids marked ``free`` and brings the data to it (F <- F / k, the
        cumulative factor kept within [1 / MAX_SCALE, MAX_SCALE]); then returns ``x, p, F, scale``.
        """
        import torch

        B, N, _ = x.shape
        steps = self.polish_steps if steps is None else steps
        if steps == 0 or N == 0:
            return (x, p) if scale is None else (x, p, F, scale)
        fj = self._site_factors(f, p, valid)
        block = (2 * np.pi) ** 2 * torch.einsum("bjm,mi,mk->bjik", fj * fj * eng.w, eng.hkl, eng.hkl)
        eye = torch.eye(3, device=x.device, dtype=x.dtype)
        block = torch.where(valid[:, :, None, None], block, eye)
        inv_block = torch.linalg.inv(block)
        hkl = eng.hkl.to(F.dtype)
        for _ in range(steps):
            T = fj * eng.phases(x)
            model = T.sum(1)
            if free is not None:
                k = (model.conj() * F * eng.w).sum(1).real / (model.abs() ** 2 * eng.w).sum(1).clamp(min=1e-30)
                new = torch.where(free & torch.isfinite(k) & (k > 0), scale / k, scale)
                new = new.clamp(1 / MAX_SCALE, MAX_SCALE)
                F = F * (new / scale)[:, None]
                scale = new
            R = F - model
            g = 2 * np.pi * ((T.conj() * (R * eng.w)[:, None, :]) @ hkl).imag  # (B, N, 3)
            step = torch.einsum("bjik,bjk->bji", inv_block, g) * valid[:, :, None]
            x = (x + step.clamp(-0.5 / eng.n, 0.5 / eng.n)) % 1.0
            if float(step.abs().max()) < 1e-9:
                break
        return (x, p) if scale is None else (x, p, F, scale)

    def _swap(self, eng, F, f, x, p, valid, free=None, scale=None):
        """Greedy element swaps between sites while they lower the residual (fixes similar-Z mix-ups); each swap is
        followed by the polish (with the free scale: returns ``x, p, F, scale``)."""
        import torch

        B, N, _ = x.shape
        if N < 2:
            return x, p, F, scale
        for _ in range(self.swap_rounds):
            R, fj, E = self._model_residual(eng, F, f, x, p, valid)
            w = eng.w
            e = E
            # cost change of swapping the elements of sites i and j: R' = R + (f_i - f_j)(e_i - e_j)
            a = torch.bmm((R.conj() * w)[:, None, :] * fj, e.transpose(1, 2)).real  # a_ij = Re sum conj(R) f_i e_j
            lin = torch.diagonal(a, dim1=1, dim2=2)
            lin = lin[:, :, None] + lin[:, None, :] - a - a.transpose(1, 2)
            P = torch.bmm(fj * w, fj.transpose(1, 2))  # sum w f_i f_j
            dP = torch.diagonal(P, dim1=1, dim2=2)
            Q = torch.bmm((fj * fj * w).to(e.dtype) * e, e.conj().transpose(1, 2))  # sum w f_i^2 e_i conj e_j
            S = torch.bmm((fj * w).to(e.dtype) * e, (fj.to(e.dtype) * e.conj()).transpose(1, 2))
            quad = 2 * (dP[:, :, None] + dP[:, None, :] - 2 * P) - 2 * (Q + Q.transpose(1, 2).conj() - 2 * S).real
            delta = 2 * lin + quad
            differ = (p[:, :, None] != p[:, None, :]) & valid[:, :, None] & valid[:, None, :]
            delta = torch.where(differ, delta, torch.full_like(delta, torch.inf))
            flat = delta.reshape(B, -1)
            best = flat.argmin(1)
            improve = flat.gather(1, best[:, None])[:, 0] < -1e-9 * (F.abs() ** 2 * w).sum(1)
            if not bool(improve.any()):
                break
            i, j = best // N, best % N
            b = torch.arange(B, device=x.device)[improve]
            pi, pj = p[b, i[improve]].clone(), p[b, j[improve]].clone()
            p[b, i[improve]], p[b, j[improve]] = pj, pi
            x[b], p[b], F[b], scale[b] = self._polish(eng, F[b], f[b], x[b], p[b], valid[b], free=free if free is None
                                                      else free[b], scale=scale[b])
        return x, p, F, scale
