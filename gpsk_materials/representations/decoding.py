"""Closed-form decoding of reciprocal-space grids back to pymatgen Structures."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
from monty.json import MSONable

from gpsk_materials import provenance
from gpsk_materials.errors import (
    ConditioningError,
    ConfigError,
    DecodingError,
    DeprecatedLastErrors,
    GPSKError,
    GridError,
    UnknownElementError,
    batch_policy,
)
from gpsk_materials.representations import grid as G
from gpsk_materials.representations.batched import BatchedPeelingSolver, radial_misfit
from gpsk_materials.representations.form_factors import form_factor_at_zero
from gpsk_materials.representations.peeling import MAX_SCALE, PeelingSolver
from gpsk_materials.vocabulary import ATOMIC_NUMBER, MAX_Z, composition_amounts, integer_counts

METHODS = ("reciprocal", "peaks")
#: ``implementation`` of the reciprocal decoder: the batched tensor path (:mod:`.batched`, the default) or the
#: reference path it was derived from (:mod:`.peeling`), kept selectable for before/after measurements
IMPLEMENTATIONS = ("batched", "reference")
#: default ``min_confidence`` of a decode with an inferred composition, from ``benchmarks/decode_confidence.py``
#: (docs/results/decode_confidence.json, 2026-12-02): on 16 MP-20 test grids, clean and with 0.1 % and 1 % noise,
#: every wrong decode had confidence 0 and every right one >= 2.7e-4 (false accepts 0/23, false rejects 0/24)
MIN_CONFIDENCE = 1e-4
#: a site whose radial misfit (:func:`.batched.radial_misfit`, the scattering no single element explains, in units
#: of the assigned element's ||f||^2) exceeds this is no single atom, whatever its element margin: its confidence is
#: 0. Right decodes of docs/results/decode_confidence.json (16 MP-20 test grids, clean, 0.1 % and 1 % noise) reach
#: 2.8e-4 at most; a constant grid read as one Be atom has 0.049 (margin 0.056; the 10,000-grid fuzz, docs/errors.md)
MAX_RADIAL_MISFIT = 0.01
#: default ``min_distance_ratio``: smallest interatomic distance of a decoded structure over the sum of the two
#: atoms' covalent radii (the strict check of :func:`gpsk_materials.checks.validity.distance_ratios`)
MIN_DISTANCE_RATIO = 0.6

log = logging.getLogger(__name__)


def as_grid_batch(grids: Any, n: int | None = None) -> np.ndarray | Any:
    """Validate grids of shape (3, n, n, n) or (B, 3, n, n, n); return a batch (NumPy or torch).

    Raises
    ------
    GridError
        Wrong number of dimensions or channels, a non-cubic or too small / odd grid size, or a non-float dtype.
    """
    shape = tuple(getattr(grids, "shape", ()))
    if not hasattr(grids, "shape"):
        grids = np.asarray(grids)
        shape = grids.shape
    if len(shape) == 4:
        grids = grids[None]
        shape = tuple(grids.shape)
    if len(shape) != 5 or shape[1] != 3 or not (shape[2] == shape[3] == shape[4]) or (n and shape[2] != n):
        want = f"(3, {n or 'n'}, {n or 'n'}, {n or 'n'})"
        raise GridError(f"grid must have shape {want} or (B, *{want}), got {shape}")
    G.miller_axis(int(shape[2]))  # GridError for a grid size the Miller layout cannot hold (0, 1, 2, odd)
    kind = str(getattr(grids, "dtype", ""))
    if "float" not in kind:
        raise GridError(f"grid must hold floating-point values, got dtype {kind}")
    return grids


def parse_composition(comp: Any) -> dict[int, float]:
    """Atomic number -> amount from a formula string, pymatgen Composition or dict (read by
    :func:`gpsk_materials.vocabulary.composition_amounts`).

    Raises
    ------
    UnknownElementError
        An unreadable composition, an element outside Z = 1..98, an amount that is not a finite number (NaN, inf,
        a string), a negative amount, or no element with a positive amount.
    """
    try:
        amounts = composition_amounts(comp)
    except ConditioningError as exc:
        raise UnknownElementError(f"cannot read composition {comp!r}: {exc}") from exc
    out: dict[int, float] = {}
    for el, amt in amounts.items():
        if el not in ATOMIC_NUMBER:
            raise UnknownElementError(f"composition {comp!r} holds {el}, outside the supported Z = 1..{MAX_Z}")
        if isinstance(amt, bool) or not isinstance(amt, (int, float, np.number)) or not np.isfinite(amt):
            raise UnknownElementError(f"composition {comp!r}: the amount of {el} must be a finite number, got {amt!r}")
        if amt < 0:
            raise UnknownElementError(f"composition {comp!r} has a negative amount of {el}")
        if amt > 0:
            out[ATOMIC_NUMBER[el]] = out.get(ATOMIC_NUMBER[el], 0.0) + float(amt)
    if not out:
        raise UnknownElementError(f"composition {comp!r} is empty")
    return out


def cell_counts(comp: dict[int, float], f000: float, exact: bool = False) -> tuple[dict[int, int], int]:
    """Integer cell content of ``comp`` scaled to the observed F(000) (number of formula units); with ``exact``
    the amounts are the cell content as they stand (F(000) is ignored)."""
    try:
        ints, g = integer_counts(comp)
    except ValueError as exc:
        raise DecodingError(str(exc)) from exc
    if exact:
        if min(ints.values()) < 1:
            raise DecodingError(f"cell content {list(comp.values())} must hold at least one atom of each element")
        return ints, g
    # reduce to the smallest integer formula, then take as many formula units as F(000) asks for
    reduced = np.array([v // g for v in ints.values()])
    f_unit = float(np.dot(reduced, form_factor_at_zero(np.array(list(comp)))))
    units = int(round(f000 / f_unit)) if np.isfinite(f000) else 0
    # a generated grid may under-shoot F(000); half a formula unit or more still means one unit
    if units < 1 and np.isfinite(f000) and f000 >= 0.5 * f_unit:
        units = 1
    if units < 1:
        raise DecodingError(f"F(000) = {f000:.2f} e cannot hold one formula unit ({f_unit:.2f} e)")
    return {z: int(r) * units for z, r in zip(comp, reduced)}, units


def _given_species(structure, composition):
    """``structure`` with the species of ``composition`` where it gives them (oxidation states: a pymatgen
    ``Composition`` or a mapping with ``Species`` keys): each element of one species in the composition becomes that
    species. An element given in two oxidation states (Fe2+ and Fe3+ of Fe3O4) stays the element: which site holds
    which cannot be read from the grid."""
    from pymatgen.core import Element, Species

    if not isinstance(composition, Mapping):
        return structure
    by_element: dict[Element, set] = {}
    for sp in composition:
        if isinstance(sp, Species):
            by_element.setdefault(sp.element, set()).add(sp)
        elif isinstance(sp, Element):
            by_element.setdefault(sp, set()).add(sp)
    single = {el: next(iter(sps)) for el, sps in by_element.items() if len(sps) == 1}
    mapping = {el: sp for el, sp in single.items() if isinstance(sp, Species)}
    if mapping:
        structure.replace_species(mapping)
    return structure


class ReciprocalGridDecoder(BatchedPeelingSolver, PeelingSolver, DeprecatedLastErrors, MSONable):
    """Grid -> pymatgen ``Structure`` in closed form.

    Parameters
    ----------
    method : {"reciprocal", "peaks"}
        ``"reciprocal"`` (default): residual peeling in reciprocal space with Newton refinement, form-factor
        element choice and a joint least-squares polish. ``"peaks"``: the GPSK-300 blog's baseline, peaks of the
        inverse FFT with the brightest peak given the heaviest element (needs a composition).
    max_residual : float
        Largest accepted relative residual ||F - F_model|| / ||F||; above it decoding raises ``DecodingError``.
    min_distance : float
        Smallest accepted interatomic distance (Angstrom) of a decoded structure.
    min_confidence : float
        Smallest accepted decode confidence (``properties["gpsk"]["decode"]["confidence"]``, the least per-site
        ``decode_confidence`` = clip(element margin - radial misfit, 0, 1) * clip(1 - |occupancy - 1| / 0.5, 0, 1),
        the radial misfit being the site's scattering that no single element explains,
        :func:`.batched.radial_misfit`; 0 where the misfit exceeds ``MAX_RADIAL_MISFIT``) of a grid decoded
        without a composition; below it the result is a ``DecodingError``, or kept and marked with
        ``keep_low_confidence``. The default ``MIN_CONFIDENCE`` and its measured false-accept / false-reject rates:
        docs/errors.md. Not applied with a given composition (the elements are then not guessed).
    min_distance_ratio : float
        Physical plausibility of every decoded structure: the smallest interatomic distance over the sum of the two
        atoms' covalent radii (Cordero et al., Dalton Trans. 2008, 2832; the strict check of
        :func:`gpsk_materials.checks.validity.distance_ratios`, periodic images included) must reach it, else a
        ``DecodingError`` naming the pair and its distance (or kept and marked with ``keep_low_confidence``).
        0 switches the check off.
    keep_low_confidence : bool
        Return a structure that fails ``min_confidence`` or ``min_distance_ratio`` instead of raising: it carries
        ``properties["gpsk"]["decode"]["low_confidence"] = True`` and ``"low_confidence_reasons"``, and
        ``decode_many`` logs a warning naming the grids. A residual above ``max_residual`` or sites closer than
        ``min_distance`` stay errors.
    max_sites : int
        Most sites extracted when the composition is unknown; with a composition, an F(000) asking for more
        formula units than fit in ``max_sites`` is a ``DecodingError``.
    newton_steps, polish_steps, swap_rounds : int
        Iterations of position refinement, joint polish, and element-swap search.
    interim_polish : int
        Polish iterations of the atoms placed so far after each peeling step (0: polish only at the end).
    min_gain : float
        Without a composition, a peak becomes an atom only if it explains this fraction of the atom's own
        ||f||^2 beyond break-even (0 = any improvement).
    device : str
        Torch device ("cpu", "cuda").
    dtype : {"float64", "float32"}
        Precision of the reciprocal engine.
    batch_size : int
        Grids decoded together.
    implementation : {"batched", "reference"}
        ``"batched"`` (default): the peeling solver as batched tensor work on the half-block layout
        (:mod:`gpsk_materials.representations.batched`: separable phase factors, matrix products instead of
        per-Miller-index exponentials, no per-grid Python on the hot path, pair distances of the acceptance
        checks in torch). ``"reference"``: the original implementation (:mod:`.peeling`, pymatgen neighbour lists
        for the checks), the same algorithm, kept for comparisons; both give the same structures (positions within
        1e-4 A, tests/test_decoder_speed_paths.py) and the same acceptance. ``method="peaks"`` always runs the
        reference path.
    """

    def __init__(
        self,
        method: str = "reciprocal",
        max_residual: float = 0.3,
        min_distance: float = 0.5,
        min_confidence: float = MIN_CONFIDENCE,
        min_distance_ratio: float = MIN_DISTANCE_RATIO,
        keep_low_confidence: bool = False,
        max_sites: int = 64,
        newton_steps: int = 4,
        polish_steps: int = 12,
        swap_rounds: int = 4,
        interim_polish: int = 2,
        min_gain: float = 0.5,
        device: str = "cpu",
        dtype: str = "float64",
        batch_size: int = 16,
        implementation: str = "batched",
    ):
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ConfigError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if dtype not in ("float64", "float32"):
            raise ConfigError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        for name, value in (("min_confidence", min_confidence), ("min_distance_ratio", min_distance_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= (
                    1 if name == "min_confidence" else 2):
                raise ConfigError(f"{name} must be a number in [0, {1 if name == 'min_confidence' else 2}], "
                                  f"got {value!r}")
        self.method = method
        self.max_residual = max_residual
        self.min_distance = min_distance
        self.min_confidence = float(min_confidence)
        self.min_distance_ratio = float(min_distance_ratio)
        self.keep_low_confidence = bool(keep_low_confidence)
        self.max_sites = max_sites
        self.newton_steps = newton_steps
        self.polish_steps = polish_steps
        self.swap_rounds = swap_rounds
        self.interim_polish = interim_polish
        self.min_gain = min_gain
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.implementation = implementation
        self._engines: dict = {}


    def to(self, device: str) -> "ReciprocalGridDecoder":
        """Move decoding to ``device``; returns self."""
        self.device = str(device)
        return self

    # ------------------------------------------------------------------ public API
    def decode(self, grid, composition=None):
        """Decode one grid (3, n, n, n); raises :class:`DecodingError` when the grid does not decode cleanly."""
        return self.decode_many(as_grid_batch(grid)[:1], None if composition is None else [composition],
                                pbar=False)[0]

    def decode_many(
        self,
        grids,
        compositions: Sequence[Any] | None = None,
        ignore_errors: bool = False,
        return_errors: bool = False,
        pbar: bool = True,
        exact_counts: bool = False,
        *,
        warn_kept: bool = True,
        errors: str | None = None,
        progress: bool | None = None,
    ) -> list | tuple[list, list]:
        """Decode a batch (B, 3, n, n, n).

        Failures follow matminer's ``featurize_many(entries, ignore_errors, return_errors, pbar)``
        (:func:`gpsk_materials.errors.batch_policy`): one bad grid or composition, or a numerical failure of the
        solver on one grid, never loses the rest of the batch when errors are ignored.

        Parameters
        ----------
        grids : array or tensor, shape (B, 3, n, n, n) or (3, n, n, n)
        compositions : sequence, optional
            One formula / Composition / dict / None per grid (None: infer the composition). Species given are
            species returned: an element given with one oxidation state (``Species("Fe", 3)``, as in the
            ``composition`` of a structure with oxidation states) comes back as that species.
        ignore_errors : bool
            None in place of a grid that does not decode, instead of raising its error.
        return_errors : bool
            Return ``(structures, reasons)``: ``reasons[i]`` is None for a decoded grid, else
            ``"grid <index in the batch>: <why>"``. Implies ``ignore_errors``.
        pbar : bool
            tqdm progress bar over the batches.
        exact_counts : bool
            The compositions are the cell contents (as a generator conditioned on them, or crystal structure
            prediction); otherwise they are scaled to the number of formula units F(000) indicates. With exact
            counts the overall scale of F is a free parameter of the refinement, as the scale factor of
            crystallographic least squares: the peeling starts from F brought to the cell's electron count at F(000)
            (within a factor ``MAX_SCALE``), and the Gauss-Newton polish fits the scale k of ||F - k F_model|| with
            the positions (the scale, linear, is projected out at each step: Golub & Pereyra, SIAM J. Numer. Anal.
            10, 413 (1973)).
            ``properties["gpsk"]["decode"]["scale"]`` is the factor applied to F (1/k).
        warn_kept : bool
            Log a warning naming the structures kept below the acceptance (``keep_low_confidence``); a caller
            that judges every candidate afterwards and flags what it returns (``CrystalGenerator``) turns it off.
        errors, progress
            Deprecated spellings of ``ignore_errors`` (``"none"``) and ``pbar``.

        Returns
        -------
        list of Structure (None for a failure when errors are ignored), or ``(structures, reasons)`` with
        ``return_errors``.

        Raises
        ------
        GridError
            Grids of the wrong shape or dtype, or as many compositions as grids not given (whatever the policy).
        DecodingError, UnknownElementError
            Without ``ignore_errors`` / ``return_errors``, the first grid that does not decode, or whose
            composition cannot be read. A decode below ``min_confidence`` (composition inferred) or with atoms
            closer than ``min_distance_ratio`` of their radii is a ``DecodingError`` unless ``keep_low_confidence``;
            kept, it is marked (``properties["gpsk"]["decode"]["low_confidence"]``) and a warning is logged.
        """
        import torch
        from tqdm.auto import tqdm

        ignore_errors, return_errors, pbar = batch_policy(ignore_errors, return_errors, pbar, errors, progress,
                                                          "ReciprocalGridDecoder.decode_many")
        grids = as_grid_batch(grids)
        B = grids.shape[0]
        if compositions is None:
            compositions = [None] * B
        compositions = list(compositions)
        if len(compositions) != B:
            raise GridError(f"{len(compositions)} compositions given for {B} grids")
        results: list = [None] * B
        reasons: list = [None] * B
        # the batched path decodes grids of similar size together (its chunks are padded to the largest cell);
        # the order of the chunks never changes a result, and errors raised at once keep the batch order
        order = (self._decode_order(grids, compositions, exact_counts)
                 if ignore_errors and self.implementation == "batched" else np.arange(B))
        for start in tqdm(range(0, B, self.batch_size), disable=not pbar, desc="decode", unit="batch"):
            idx = order[start : start + self.batch_size]
            if (np.diff(idx) == 1).all():
                chunk = grids[idx[0] : idx[-1] + 1]
            else:
                chunk = grids[idx if isinstance(grids, np.ndarray) else torch.as_tensor(idx, device=grids.device)]
            out = self._safe_chunk(chunk, [compositions[i] for i in idx], exact_counts)
            for i, item in zip(idx, out):
                if isinstance(item, GPSKError):
                    # chunk-local grid numbers -> the grid's index in the batch
                    item = type(item)(re.sub(r"^grid \d+", f"grid {i}", str(item)))
                    if not ignore_errors:
                        raise item
                    reasons[i] = str(item)
                else:
                    results[i] = _given_species(item, compositions[i])
        self._last_errors = reasons
        low = [f"grid {i}: " + "; ".join(s.properties["gpsk"]["decode"]["low_confidence_reasons"])
               for i, s in enumerate(results) if s is not None and s.properties["gpsk"]["decode"]["low_confidence"]]
        if low and warn_kept:
            log.warning("%d of %d decoded structures kept below the decoder's acceptance (keep_low_confidence; "
                        "marked low_confidence in properties['gpsk']['decode']): %s%s", len(low), B,
                        " | ".join(low[:5]), " | ..." if len(low) > 5 else "")
        return (results, reasons) if return_errors else results

    def _decode_order(self, grids, compositions, exact_counts: bool) -> np.ndarray:
        """Order of the grids for chunking: by the number of sites they will hold (the cell content of a given
        composition, scaled to F(000) as :func:`cell_counts` does; F(000) / 10 e for an inferred one), so that a
        chunk of the batched solver is not padded to a much larger cell than most of its grids."""
        n = grids.shape[-1]
        c = n // 2
        origin = grids[:, :2, c, c, c]
        origin = origin.detach().double().cpu().numpy() if hasattr(origin, "detach") else np.asarray(origin, float)
        f000 = G.expand_structure_factor(origin[:, 0], origin[:, 1])[0]
        key = np.zeros(len(compositions))
        for i, comp in enumerate(compositions):
            try:
                if comp is None:
                    key[i] = f000[i] / 10.0 if np.isfinite(f000[i]) else 0.0
                else:
                    key[i] = sum(cell_counts(parse_composition(comp), f000[i], exact_counts)[0].values())
            except GPSKError:  # the chunk reports it
                key[i] = 0.0
        return np.argsort(key, kind="stable")

    def _safe_chunk(self, grids, compositions, exact_counts: bool) -> list:
        """:meth:`_decode_chunk`, where a numerical failure of the batched solver (torch's ``LinAlgError``: a
        singular solve, an eigendecomposition that does not converge) fails only the grids that cause it: the chunk
        is decoded again one grid at a time."""
        import torch

        try:
            return self._decode_chunk(grids, compositions, exact_counts)
        except torch.linalg.LinAlgError as exc:
            if len(grids) == 1:
                return [DecodingError(f"grid 0: the solver failed numerically ({str(exc).splitlines()[0]}); the "
                                      "metric or structure factor is degenerate")]
            out: list = []
            for i in range(len(grids)):
                item = self._safe_chunk(grids[i : i + 1], compositions[i : i + 1], exact_counts)[0]
                out.append(type(item)(re.sub(r"^grid \d+", f"grid {i}", str(item))) if isinstance(item, GPSKError)
                           else item)
            return out

    def fit_lattice(self, grid):
        """Lattice (pymatgen ``Lattice``) from the metric channel of one grid by linear least squares."""
        from pymatgen.core import Lattice

        g = as_grid_batch(grid)[:1]
        eng = self._engine(g.shape[-1])
        params = self._lattice_params(eng, g)[0]
        if not np.all(np.isfinite(params)):
            raise DecodingError("metric channel is not a positive-definite quadratic form; is this a featurized "
                                 "crystal grid (3, n, n, n), e.g. (3, 32, 32, 32), from gpsk_materials.representations?")
        return Lattice.from_parameters(*params)

    def density(self, grid) -> np.ndarray:
        """Real-space density rho(x) = sum_h F(h) e^{-2 pi i h.x} / V of one grid on the fractional n^3 mesh
        (index m <-> x = m / n), in electrons per A^3."""
        import torch

        g = as_grid_batch(grid)[:1]
        t = torch.as_tensor(np.asarray(g, dtype=np.float64) if isinstance(g, np.ndarray) else g.double().cpu())
        re, im = G.expand_structure_factor(t[:, 0], t[:, 1])
        F = torch.fft.ifftshift(torch.complex(re, im), dim=(1, 2, 3))
        rho = torch.fft.fftn(F, dim=(1, 2, 3)).real[0].numpy()
        volume = self.fit_lattice(grid).volume
        return rho / volume

    # ------------------------------------------------------------------ internals
    def _engine(self, n: int):
        import torch

        from gpsk_materials.representations.solver import Engine

        key = (n, self.device, self.dtype)
        if key not in self._engines:
            self._engines[key] = Engine(n, torch.device(self.device), getattr(torch, self.dtype))
        return self._engines[key]

    def _tensor(self, grids, eng):
        import torch

        t = torch.as_tensor(grids) if not isinstance(grids, torch.Tensor) else grids
        return t.to(device=eng.device, dtype=eng.dtype)

    def _lattice_params(self, eng, grids) -> np.ndarray:
        from gpsk_materials.representations.solver import lattice_parameters

        t = self._tensor(grids, eng)
        gstar = eng.fit_metric(t[:, 2].reshape(len(t), -1).double().to(eng.dtype) * G.Q0)
        return lattice_parameters(gstar.double().cpu().numpy())

    def _decode_chunk(self, grids, compositions, exact_counts: bool = False) -> list:
        import torch

        from gpsk_materials.representations.solver import lattice_parameters

        n = grids.shape[-1]
        eng = self._engine(n)
        t = self._tensor(grids, eng)
        B = len(t)
        fail: dict[int, DecodingError] = {}
        finite = torch.isfinite(t.reshape(B, -1)).all(1).cpu().numpy()
        for i in np.flatnonzero(~finite):
            fail[i] = DecodingError(f"grid {i} holds NaN or inf values")
        t = torch.nan_to_num(t)
        gstar = eng.fit_metric(t[:, 2].reshape(B, -1) * G.Q0)
        params = lattice_parameters(gstar.double().cpu().numpy())
        for i in np.flatnonzero(~np.all(np.isfinite(params), axis=1)):
            fail.setdefault(i, DecodingError(f"grid {i}: metric channel is not a positive-definite quadratic form; "
                                             "is this a featurized crystal grid (3, n, n, n), e.g. (3, 32, 32, 32), "
                                             "from gpsk_materials.representations?"))
        batched = self.implementation == "batched" and self.method == "reciprocal"
        if batched:  # F on the half block of the batched path (gpsk_materials.representations.batched)
            from gpsk_materials.representations.batched import half_block

            hb = half_block(n, self.device, self.dtype)
            F = hb.half_block(torch.complex(*G.expand_structure_factor(t[:, 0], t[:, 1])))
            f000 = F[:, hb.L, hb.L, 0].real.double().cpu().numpy()
        else:
            # structure factor on the Friedel half, symmetrised: F(h) <- (F(h) + conj F(-h)) / 2
            re, im = G.expand_structure_factor(t[:, 0].reshape(B, -1), t[:, 1].reshape(B, -1))
            Ffull = torch.complex(re, im)
            F = 0.5 * (Ffull[:, eng.idx] + Ffull[:, eng.mirror].conj())
            zero_idx = int(torch.nonzero((eng.hkl_int == 0).all(1))[0])
            f000 = F[:, zero_idx].real.double().cpu().numpy()

        pal, counts, known = [], [], []
        scale = np.ones(B)
        free = np.zeros(B, dtype=bool)  # grids whose overall scale the refinement fits
        for i, comp in enumerate(compositions):
            if i in fail:
                pal.append([1]), counts.append([0]), known.append(True)
                continue
            if comp is None:
                pal.append(list(range(1, MAX_Z + 1))), counts.append([np.inf] * MAX_Z), known.append(False)
                continue
            try:
                cnt, units = cell_counts(parse_composition(comp), f000[i], exact_counts)
                if sum(cnt.values()) > self.max_sites:
                    raise DecodingError(f"F(000) = {f000[i]:.1f} e asks for {units} formula units, "
                                        f"{sum(cnt.values())} sites > max_sites={self.max_sites}")
            except GPSKError as exc:  # an unreadable composition fails its grid alone, with its own error type
                fail[i] = type(exc)(f"grid {i}: {exc}")
                pal.append([1]), counts.append([0]), known.append(True)
                continue
            pal.append(list(cnt)), counts.append(list(cnt.values())), known.append(True)
            if exact_counts and f000[i] > 0:
                # a generated grid's overall scale is a nuisance, as in crystallographic refinement: start from F(000)
                # brought to the electron count of the given cell; the polish then fits the scale with the positions
                electrons = float(np.dot(list(cnt.values()), form_factor_at_zero(np.array(list(cnt)))))
                scale[i] = float(np.clip(electrons / f000[i], 1 / MAX_SCALE, MAX_SCALE))
                free[i] = True
        scale_t = torch.as_tensor(scale, device=F.device, dtype=F.real.dtype)
        F = F * scale_t.reshape(-1, *([1] * (F.ndim - 1)))
        P = max(len(p) for p in pal)
        pal_t = torch.zeros((B, P), dtype=torch.long, device=eng.device)
        cnt_t = torch.zeros((B, P), dtype=eng.dtype, device=eng.device)
        for i in range(B):
            pal_t[i, : len(pal[i])] = torch.as_tensor(pal[i])
            cnt_t[i, : len(counts[i])] = torch.as_tensor(np.asarray(counts[i], dtype=float))
        known_t = torch.as_tensor(known, device=eng.device)
        safe_gstar = torch.where(torch.as_tensor(np.all(np.isfinite(params), 1), device=eng.device)[:, None, None],
                                 gstar, torch.eye(3, device=eng.device, dtype=eng.dtype))

        if batched:
            free_t = torch.as_tensor(free, device=eng.device)
            x, p, valid, F, scale_t, f = self._peel_batched(hb, F, safe_gstar, pal_t, cnt_t, known_t, free_t, scale_t)
            stats = [v.cpu().numpy() for v in self._site_statistics(hb, F, f, pal_t, x, p, valid, safe_gstar)]
            return self._finish(eng, F, safe_gstar, params, x, p, valid, pal_t, known, compositions, fail,
                                scale_t.cpu().numpy(), stats, self._contacts_batched(safe_gstar, x, p, valid, pal_t))
        if self.method == "peaks":
            x, p, valid = self._peaks(eng, F, pal_t, cnt_t, known_t)
        else:
            free_t = torch.as_tensor(free, device=eng.device)
            x, p, valid, F, scale_t = self._peel(eng, F, safe_gstar, pal_t, cnt_t, known_t, free_t, scale_t)
        return self._finish(eng, F, safe_gstar, params, x, p, valid, pal_t, known, compositions, fail,
                            scale_t.cpu().numpy())

    # -- assemble --------------------------------------------------------
    def _finish(self, eng, F, gstar, params, x, p, valid, pal, known, compositions, fail, scale=None,
                stats: list | None = None, contacts: dict | None = None) -> list:
        """Structures (or each grid's ``DecodingError``) from the solver's sites, with the acceptance checks.

        ``stats`` ``[rel, alpha, margins, misfits]`` (relative residual (B,), occupancies, element margins and radial
        misfits (B, N)) and
        ``contacts`` (:meth:`_contacts_batched`) come from the batched path; None computes them as the reference
        does (:mod:`.solver` engine, pymatgen distances)."""
        from pymatgen.core import Composition, Element, Lattice, Structure

        B = len(params)
        if stats is None:
            rel, alpha, margins, misfits = self._reference_statistics(eng, F, gstar, x, p, valid, pal)
        else:
            rel, alpha, margins, misfits = stats
        xs, ps, vs = x.cpu().numpy(), p.cpu().numpy(), valid.cpu().numpy()
        xs = np.where(xs >= 1.0, 0.0, xs)  # x % 1.0 of a tiny negative number rounds to 1.0
        pal_np = pal.cpu().numpy()
        out: list = []
        for b in range(B):
            if b in fail:
                out.append(fail[b])
                continue
            keep = vs[b]
            if not keep.any():
                out.append(DecodingError(f"grid {b}: no atoms found; is this a featurized crystal grid (3, n, n, n), "
                                          "e.g. (3, 32, 32, 32), from gpsk_materials.representations?"))
                continue
            numbers = pal_np[b, ps[b, keep]]
            if rel[b] > self.max_residual:  # rejected before any pymatgen object is built for it
                guess = Composition({Element.from_Z(int(z)): int(c)
                                     for z, c in zip(*np.unique(numbers, return_counts=True))}).reduced_formula
                out.append(DecodingError(
                    f"grid {b}: residual {rel[b]:.3f} of |F| exceeds max_residual={self.max_residual} "
                    f"(best guess {guess})"))
                continue
            lattice = Lattice.from_parameters(*params[b])
            margin = np.clip(margins[b, keep], -1, 1)
            misfit = np.clip(misfits[b, keep], 0, 1)
            occ = alpha[b, keep]
            # the element margin net of the scattering no single element explains (a disordered site), times the
            # occupancy's agreement with one atom; no confidence at all past MAX_RADIAL_MISFIT
            confidence = (np.clip(margin - misfit, 0, 1) * np.clip(1 - np.abs(occ - 1) / 0.5, 0, 1)
                          * (misfit <= MAX_RADIAL_MISFIT))
            s = Structure(
                lattice, numbers.tolist(), xs[b, keep],
                site_properties={
                    "decode_occupancy": occ.round(6).tolist(),
                    "decode_element_margin": margin.round(6).tolist(),
                    "decode_radial_misfit": misfit.round(6).tolist(),
                    "decode_confidence": confidence.round(6).tolist(),
                },
            )
            screened = contacts is not None and not contacts["fallback"][b]
            # the torch distances clear a structure; one they flag is named as the reference names it (pymatgen's
            # neighbour list decides which of two equal pairs comes first)
            contact = None
            if screened and not contacts["ratio"][b] < self.min_distance_ratio:
                slot = np.cumsum(keep) - 1  # solver slot -> site of the structure
                i, j = int(contacts["i"][b]), int(contacts["j"][b])
                contact = (int(slot[i]), int(slot[j]), float(contacts["d"][b]), float(contacts["ratio"][b]))
            doubts = self._doubts(s, float(confidence.min()), bool(known[b]), contact)
            provenance.write(s, "decode", {
                "method": self.method,
                "relative_residual": float(rel[b]),
                "composition": "given" if known[b] else "inferred",
                "scale": 1.0 if scale is None else float(scale[b]),
                "confidence": float(confidence.min()),
                "low_confidence": bool(doubts),
                "low_confidence_reasons": doubts,
            })
            if len(s) > 1:
                if screened:
                    dmin = float(contacts["dmin"][b])
                else:
                    dmin = s.distance_matrix[np.triu_indices(len(s), 1)].min()
                if dmin < self.min_distance:
                    out.append(DecodingError(
                        f"grid {b}: decoded sites {dmin:.3f} A apart, below min_distance={self.min_distance}"))
                    continue
            if doubts and not self.keep_low_confidence:
                out.append(DecodingError(f"grid {b}: " + "; ".join(doubts) + " (keep_low_confidence=True keeps such "
                                         "a result, marked low_confidence)"))
                continue
            out.append(s)
        return out

    def _reference_statistics(self, eng, F, gstar, x, p, valid, pal):
        """Relative residual (B,), occupancies, element margins and radial misfits (B, N) of the reference path (the
        batched path's :meth:`~.batched.BatchedPeelingSolver._site_statistics`)."""
        import torch

        s2 = eng.s2(gstar)
        f = eng.form_factors(pal, s2)
        R, fj, E = self._model_residual(eng, F, f, x, p, valid)
        w = eng.w
        norm_F = torch.sqrt((F.abs() ** 2 * w).sum(1))
        rel = (torch.sqrt((R.abs() ** 2 * w).sum(1)) / norm_F.clamp(min=1e-12)).cpu().numpy()
        # per-site amplitude (occupancy) fit: Re(T^H W T) alpha = Re(T^H W F)
        T = fj * E
        A = torch.bmm((T.conj() * w), T.transpose(1, 2)).real
        rhs = torch.bmm((T.conj() * w), F[:, :, None])[..., 0].real
        eye = torch.eye(A.shape[1], device=A.device, dtype=A.dtype)
        A = torch.where(valid[:, :, None] & valid[:, None, :], A, eye.expand_as(A))
        # relative ridge: two sites on the same spot (a generated grid) make A exactly singular
        ridge = 1e-9 * A.diagonal(dim1=1, dim2=2).abs().mean(-1).clamp(min=1e-12)[:, None, None]
        alpha = torch.linalg.solve(A + ridge * eye, rhs * valid).cpu().numpy()
        # element margin: gain of the assigned element over the best other one, with the site removed
        margins = np.zeros(p.shape)
        norm2 = (f * f * w).sum(-1)
        for j in range(x.shape[1]):
            Rj = R + T[:, j]
            proj = (Rj * E[:, j].conj()).real * w
            gain = 2 * torch.einsum("bm,bpm->bp", proj, f) - norm2
            gain = torch.where(pal > 0, gain, torch.full_like(gain, -torch.inf))
            own = gain.gather(1, p[:, j : j + 1].clamp(min=0))[:, 0]
            other = gain.scatter(1, p[:, j : j + 1].clamp(min=0), -torch.inf).amax(1)
            denom = norm2.gather(1, p[:, j : j + 1].clamp(min=0))[:, 0]
            margins[:, j] = ((own - other) / denom.clamp(min=1e-12)).clamp(-1e3, 1e3).cpu().numpy()
        y = (R[:, None, :] * E.conj()).real
        misfits = radial_misfit(y, fj, w.reshape(1, 1, -1), s2).cpu().numpy()
        return rel, alpha, margins, misfits

    def _contacts_batched(self, gstar, x, p, valid, pal) -> dict:
        """Closest contacts of every grid's sites in torch (:func:`.batched.pair_contacts`), over the periodic
        images that can hold a pair closer than the checks look: ``min_distance``, or ``min_distance_ratio`` times
        the largest sum of two covalent radii of the grid (:func:`.batched.image_range`). A grid whose cell would
        need more than ``MAX_IMAGES`` images per axis (a needle-like cell) is marked ``fallback``: the reference's
        pymatgen distances judge it."""
        import torch

        from gpsk_materials.representations.batched import MAX_IMAGES, covalent_radii_table, image_range
        from gpsk_materials.representations.batched import pair_contacts

        z = pal.gather(1, p.clamp(min=0)) * valid
        radii = covalent_radii_table(x.device, x.dtype)[z]
        reach = np.maximum(self.min_distance, self.min_distance_ratio * 2 * radii.amax(1).cpu().numpy())
        K = image_range(gstar.double().cpu().numpy(), reach)
        fallback = K > MAX_IMAGES
        dmin, ratio, i, j, d = pair_contacts(x, valid, torch.linalg.inv(gstar), radii,
                                             int(np.clip(K, 1, MAX_IMAGES).max()))
        return {"dmin": dmin.cpu().numpy(), "ratio": ratio.cpu().numpy(), "i": i.cpu().numpy(),
                "j": j.cpu().numpy(), "d": d.cpu().numpy(), "fallback": fallback}

    def _doubts(self, s, confidence: float, known: bool, contact: tuple | None = None) -> list[str]:
        """Why the decoder cannot vouch for ``s`` (empty when it can): a decode confidence below ``min_confidence``
        with an inferred composition; atoms closer than ``min_distance_ratio`` of the sum of their covalent radii.
        ``contact`` ``(i, j, distance, ratio)``: the closest contact when already known (the batched path's torch
        distances); None computes it with :func:`gpsk_materials.checks.validity.closest_contact`."""
        from gpsk_materials.checks.validity import closest_contact

        doubts = []
        if not known and confidence < self.min_confidence:
            doubts.append(f"decode confidence {confidence:.2g} below min_confidence={self.min_confidence} with an "
                          f"inferred composition (best guess {s.composition.reduced_formula}: give the composition, "
                          "or lower min_confidence)")
        if contact is None and self.min_distance_ratio > 0:
            contact = closest_contact(s)
        if contact is not None and contact[3] < self.min_distance_ratio:
            i, j, d, ratio = contact
            where = f"site {i} and its periodic image" if i == j else f"sites {i}, {j}"
            doubts.append(f"{s[i].species_string}-{s[j].species_string} distance {d:.2f} A ({where}) is "
                          f"{ratio:.2f} of the sum of covalent radii, below min_distance_ratio="
                          f"{self.min_distance_ratio}: not physically plausible")
        return doubts
