"""Conditioning of the MMDiT: the seven modalities, their validation, normalisation and token encoding.

Modalities (each may be given or left out, independently):

============== ===================================================================================
composition    element tokens with amounts (atoms in the cell), at most ``max_elements`` elements
crystal_system one of :data:`CRYSTAL_SYSTEMS`
space_group    international number 1..230 (must agree with ``crystal_system`` when both are given)
band_gap       eV, >= 0 (normalised with stored statistics)
formation_energy  eV/atom (normalised with stored statistics)
e_above_hull   eV/atom, >= 0 (normalised with stored statistics)
magnetic_ordering  one of NM, FM, FiM, AFM; ``"unknown"`` means "not given"
============== ===================================================================================

A missing or dropped modality is replaced by a learned null token of that modality, so the token sequence keeps
its shape and classifier-free guidance is "all modalities null" versus the given ones. In training every modality
is dropped independently with probability ``p`` (10% by default) on top of the labels the data lacks.

A requested scalar must lie within ``defaults.CONDITION_MAX_SIGMA`` standard deviations of the training labels'
mean (:meth:`ConditionStats.check_range`); the model has seen nothing beyond, so its answer there would be noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from gpsk_materials.defaults import CONDITION_MAX_SIGMA
from gpsk_materials.errors import ConditioningError
from gpsk_materials.vocabulary import (  # noqa: F401 -- the vocabulary, re-exported where the model reads it
    ATOMIC_NUMBER,
    CRYSTAL_SYSTEMS,
    ELEMENTS,
    MAGNETIC_ORDERINGS,
    MAX_Z,
    MODALITIES,
    SCALARS,
    SYSTEM_STARTS,
    UNITS,
    check_composition,
    check_crystal_system,
    check_magnetic_ordering,
    check_space_group,
    crystal_system_index,
    parse_formula,
)



@dataclass(frozen=True)
class Conditions:
    """Conditions of one generation request; every field is optional.

    ``composition`` is a formula string (``"Fe2O3"``) or a mapping element -> atoms in the cell. Call
    :meth:`validated` to check the values and get a normalised copy (composition as a sorted dict).
    """

    composition: str | Mapping[str, float] | None = None
    crystal_system: str | None = None
    space_group: int | None = None
    band_gap: float | None = None
    formation_energy: float | None = None
    e_above_hull: float | None = None
    magnetic_ordering: str | None = None

    def validated(self, max_elements: int = 8) -> Conditions:
        """Return a checked copy; raise :class:`ConditioningError` naming the offending value."""
        comp = None if self.composition is None else check_composition(self.composition, max_elements)
        system = None if self.crystal_system is None else check_crystal_system(self.crystal_system)
        sg = None if self.space_group is None else check_space_group(self.space_group)
        if sg is not None:
            implied = CRYSTAL_SYSTEMS[int(crystal_system_index(sg))]
            if system is not None and system != implied:
                raise ConditioningError(f"space group {sg} is {implied}, not {system}")
        values: dict[str, float | None] = {}
        for name in SCALARS:
            v = getattr(self, name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v):
                    raise ConditioningError(f"{name} must be a finite number, got {v!r}")
                if name in ("band_gap", "e_above_hull") and v < 0:
                    raise ConditioningError(f"{name} must be >= 0 eV, got {v}")
                v = float(v)
            values[name] = v
        mag = None if self.magnetic_ordering is None else check_magnetic_ordering(self.magnetic_ordering)
        return Conditions(comp, system, sg, values["band_gap"], values["formation_energy"], values["e_above_hull"], mag)

    def given(self) -> list[str]:
        """Names of the modalities that are set."""
        return [m for m in MODALITIES if getattr(self, m) is not None]


@dataclass
class ConditionStats:
    """Mean and standard deviation of the continuous conditions, fitted on training labels."""

    mean: dict[str, float] = field(default_factory=lambda: {"band_gap": 0.0, "formation_energy": 0.0, "e_above_hull": 0.0})
    std: dict[str, float] = field(default_factory=lambda: {"band_gap": 1.0, "formation_energy": 1.0, "e_above_hull": 1.0})
    count: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, labels: Mapping[str, np.ndarray]) -> ConditionStats:
        """Fit on arrays with NaN for missing values (keys of :data:`SCALARS`)."""
        mean, std, count = {}, {}, {}
        for name in SCALARS:
            x = np.asarray(labels[name], dtype=float)
            x = x[np.isfinite(x)]
            count[name] = int(x.size)
            mean[name] = float(x.mean()) if x.size else 0.0
            std[name] = float(max(x.std(), 1e-3)) if x.size > 1 else 1.0
        return cls(mean, std, count)

    def normalize(self, name: str, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=float) - self.mean[name]) / self.std[name]

    def check_range(self, name: str, value: float, max_sigma: float = CONDITION_MAX_SIGMA) -> None:
        """Refuse a requested value of ``name`` that lies outside what the training labels support.

        Parameters
        ----------
        name : str
            One of :data:`SCALARS`.
        value : float
            The requested value (eV or eV/atom).
        max_sigma : float
            Widest accepted distance from the training mean, in training standard deviations.

        Raises
        ------
        ConditioningError
            ``value`` is more than ``max_sigma`` standard deviations from the training mean; the message gives
            the training mean, standard deviation and the accepted range.
        """
        mean, std = self.mean[name], self.std[name]
        low, high = mean - max_sigma * std, mean + max_sigma * std
        if not low <= value <= high:
            unit = UNITS.get(name, "")
            raise ConditioningError(
                f"{name} = {value:g} {unit} is {abs(value - mean) / std:.3g} standard deviations from the training "
                f"labels ({mean:.3g} +- {std:.3g} {unit}): outside the accepted range [{low:.3g}, {high:.3g}] {unit} "
                f"({max_sigma:g} standard deviations, defaults.CONDITION_MAX_SIGMA), the model has seen nothing there"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionStats:
        return cls(dict(data["mean"]), dict(data["std"]), dict(data.get("count", {})))


@dataclass
class ConditionBatch:
    """Tensors of a batch of conditions; ``present`` (B, 7) marks the modalities given, in :data:`MODALITIES` order.

    ``comp_z`` (B, E) atomic numbers (0 = padding), ``comp_amount`` (B, E) atoms in the cell, ``crystal_system``,
    ``space_group`` and ``magnetic`` (B,) indices (-1 = missing; space group 1..230), ``scalars`` (B, 3) normalised
    values of :data:`SCALARS` (NaN = missing).
    """

    comp_z: Tensor
    comp_amount: Tensor
    crystal_system: Tensor
    space_group: Tensor
    scalars: Tensor
    magnetic: Tensor
    present: Tensor

    def __len__(self) -> int:
        return self.comp_z.shape[0]

    def to(self, device) -> ConditionBatch:
        return ConditionBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def index(self, idx) -> ConditionBatch:
        return ConditionBatch(**{k: v[idx] for k, v in self.__dict__.items()})

    def with_present(self, present: Tensor) -> ConditionBatch:
        return ConditionBatch(**{**self.__dict__, "present": present})

    def null(self) -> ConditionBatch:
        """The same batch with every modality absent (the unconditional branch of CFG)."""
        return self.with_present(torch.zeros_like(self.present))

    @classmethod
    def from_conditions(
        cls, conditions: Sequence[Conditions], stats: ConditionStats, max_elements: int = 8
    ) -> ConditionBatch:
        """Validate and tensorise user conditions.

        Raises
        ------
        ConditioningError
            An invalid condition, or a scalar outside the range of the training labels
            (:meth:`ConditionStats.check_range`).
        """
        conds = [c.validated(max_elements) for c in conditions]
        b = len(conds)
        z = np.zeros((b, max_elements), dtype=np.int64)
        amt = np.zeros((b, max_elements), dtype=np.float32)
        system = np.full(b, -1, dtype=np.int64)
        sg = np.full(b, -1, dtype=np.int64)
        mag = np.full(b, -1, dtype=np.int64)
        scalars = np.full((b, len(SCALARS)), np.nan, dtype=np.float32)
        for i, c in enumerate(conds):
            if c.composition:
                for j, (el, a) in enumerate(c.composition.items()):
                    z[i, j], amt[i, j] = ATOMIC_NUMBER[el], a
            if c.crystal_system is not None:
                system[i] = CRYSTAL_SYSTEMS.index(c.crystal_system)
            if c.space_group is not None:
                sg[i] = c.space_group
                system[i] = crystal_system_index(c.space_group)
            if c.magnetic_ordering is not None:
                mag[i] = MAGNETIC_ORDERINGS.index(c.magnetic_ordering)
            for k, name in enumerate(SCALARS):
                v = getattr(c, name)
                if v is not None:
                    stats.check_range(name, v)
                    scalars[i, k] = stats.normalize(name, v)
        present = np.stack(
            [
                [c.composition is not None for c in conds],
                [c.crystal_system is not None or c.space_group is not None for c in conds],
                [c.space_group is not None for c in conds],
                *[[getattr(c, name) is not None for c in conds] for name in SCALARS],
                [c.magnetic_ordering is not None for c in conds],
            ],
            axis=1,
        ).reshape(b, len(MODALITIES))
        return cls._make(z, amt, system, sg, scalars, mag, present)

    @classmethod
    def from_labels(
        cls,
        numbers: np.ndarray | Tensor,
        occupancy: np.ndarray | Tensor | None,
        space_group: np.ndarray | Tensor,
        scalars: np.ndarray | Tensor,
        magnetic: np.ndarray | Tensor,
        max_elements: int = 8,
    ) -> ConditionBatch:
        """Vectorised batch from training arrays (see :mod:`gpsk_materials.datasets`).

        ``numbers`` (B, N) padded atomic numbers, ``occupancy`` (B, N) or None, ``space_group`` (B,) with -1 for
        missing, ``scalars`` (B, 3) already-normalised values with NaN for missing, ``magnetic`` (B,) with -1 for
        missing. Compositions with more than ``max_elements`` elements are marked absent. Runs on the device of
        ``numbers``.
        """
        numbers = torch.as_tensor(numbers).long()
        device = numbers.device
        occ = torch.ones_like(numbers, dtype=torch.float32) if occupancy is None else torch.as_tensor(occupancy, device=device).float()
        counts = torch.zeros(numbers.shape[0], MAX_Z + 1, device=device).scatter_add_(1, numbers, occ * (numbers > 0))
        counts[:, 0] = 0
        n_el = (counts > 0).sum(1)
        # the k present elements in increasing Z: sort by (absent, Z)
        order = torch.argsort((counts <= 0).float() * (MAX_Z + 1) + torch.arange(MAX_Z + 1, device=device), dim=1, stable=True)
        z = order[:, :max_elements]
        amt = counts.gather(1, z)
        z = torch.where(amt > 0, z, torch.zeros_like(z))
        sg = torch.as_tensor(space_group, device=device).long()
        sg = torch.where((sg >= 1) & (sg <= 230), sg, torch.full_like(sg, -1))
        starts = torch.as_tensor(SYSTEM_STARTS, device=device)
        system = torch.where(sg > 0, torch.searchsorted(starts, sg, right=True) - 1, torch.full_like(sg, -1))
        scal = torch.as_tensor(scalars, device=device).float().reshape(len(sg), len(SCALARS))
        mag = torch.as_tensor(magnetic, device=device).long()
        mag = torch.where((mag >= 0) & (mag < 4), mag, torch.full_like(mag, -1))
        present = torch.cat(
            [
                ((n_el > 0) & (n_el <= max_elements))[:, None],
                (system >= 0)[:, None],
                (sg >= 1)[:, None],
                torch.isfinite(scal),
                (mag >= 0)[:, None],
            ],
            dim=1,
        )
        return cls(z, amt.float(), system, sg, scal, mag, present)

    @classmethod
    def _make(cls, z, amt, system, sg, scalars, mag, present) -> ConditionBatch:
        t = torch.as_tensor
        return cls(t(z), t(amt), t(system), t(sg), t(scalars), t(mag), t(present, dtype=torch.bool))


def drop_modalities(present: Tensor, p: float, generator: torch.Generator | None = None, p_all: float = 0.0,
                    p_composition_only: float = 0.0) -> Tensor:
    """Condition dropout of a training batch: which modalities each row keeps.

    Parameters
    ----------
    present : Tensor (B, M) bool
        The modalities each row has (column 0 is the composition, :data:`MODALITIES` order).
    p : float
        Each given modality of a row is dropped independently with this probability ...
    p_all : float
        ... except that a row drops every modality with this probability: the unconditional branch of
        classifier-free guidance (Ho & Salimans, "Classifier-free diffusion guidance", 2022, trains it on a fixed
        share of rows; independent dropout alone shows it with probability p^M, almost never) ...
    p_composition_only : float
        ... and keeps its composition alone with this probability: the request of crystal structure prediction,
        which independent dropout of the other modalities shows with probability p^(M-1).

    Returns
    -------
    Tensor (B, M) bool
    """
    keep = torch.rand(present.shape, generator=generator, device=present.device) >= p
    if p_all or p_composition_only:
        u = torch.rand(present.shape[:1], generator=generator, device=present.device)[:, None]
        only_comp = torch.arange(present.shape[1], device=present.device)[None] == 0
        keep = torch.where(u < p_all, False, torch.where(u < p_all + p_composition_only, only_comp, keep))
    return present & keep


def fourier_features(x: Tensor, num: int = 8, max_freq: float = 8.0) -> Tensor:
    """sin/cos features of a (B, ...) tensor at log-spaced frequencies -> (B, ..., 2 num + 1)."""
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), num, device=x.device, dtype=x.dtype)) * math.pi
    ang = x[..., None] * freqs
    return torch.cat([x[..., None], ang.sin(), ang.cos()], dim=-1)


class ConditionEncoder(nn.Module):
    """Turn a :class:`ConditionBatch` into tokens (B, E + 6, d), a key mask (B, E + 6) and a pooled vector (B, d).

    Token order: ``max_elements`` composition slots, then crystal system, space group, the three scalars and the
    magnetic ordering. An absent modality shows its learned null token (composition: in slot 0, other slots masked).
    Every parameter takes part in every forward pass (``torch.where`` rather than indexing), which keeps DDP happy
    without ``find_unused_parameters``.
    """

    def __init__(self, hidden: int, max_elements: int = 8, fourier: int = 8):
        super().__init__()
        self.max_elements = max_elements
        self.fourier = fourier
        nf = 2 * fourier + 1
        self.element = nn.Embedding(MAX_Z + 1, hidden)
        self.amount = nn.Sequential(nn.Linear(2 * nf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.crystal_system = nn.Embedding(len(CRYSTAL_SYSTEMS), hidden)
        self.space_group = nn.Embedding(231, hidden)
        self.scalars = nn.ModuleList(
            nn.Sequential(nn.Linear(nf, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in SCALARS
        )
        self.magnetic = nn.Embedding(4, hidden)
        self.null = nn.Parameter(torch.randn(len(MODALITIES), hidden) * 0.02)
        self.modality = nn.Parameter(torch.randn(len(MODALITIES), hidden) * 0.02)
        self.norm = nn.LayerNorm(hidden)

    @property
    def num_tokens(self) -> int:
        return self.max_elements + len(MODALITIES) - 1

    def forward(self, cond: ConditionBatch) -> tuple[Tensor, Tensor, Tensor]:
        e = self.max_elements
        if cond.comp_z.shape[1] != e:
            raise ValueError(f"condition batch has {cond.comp_z.shape[1]} composition slots, the encoder {e}")
        present = cond.present
        # composition: element embedding + amount features (log atoms in cell, atomic fraction)
        z = cond.comp_z.clamp(0, MAX_Z)
        amt = cond.comp_amount.float()
        frac = amt / amt.sum(1, keepdim=True).clamp_min(1e-6)
        feats = torch.cat([fourier_features(torch.log1p(amt) / 3.0, self.fourier), fourier_features(frac, self.fourier)], -1)
        comp = self.element(z) + self.amount(feats) + self.modality[0]
        slot_valid = z > 0
        null_comp = torch.zeros_like(comp)
        null_comp[:, 0] = self.null[0] + self.modality[0]
        has_comp = present[:, 0:1]
        comp = torch.where(has_comp[..., None], comp, null_comp)
        comp_mask = torch.where(has_comp, slot_valid, torch.arange(e, device=z.device)[None] == 0)

        scal = torch.nan_to_num(cond.scalars.float(), nan=0.0).clamp(-10.0, 10.0)
        singles = [
            self.crystal_system(cond.crystal_system.clamp(0, len(CRYSTAL_SYSTEMS) - 1)),
            self.space_group(cond.space_group.clamp(0, 230)),
            *[mlp(fourier_features(scal[:, k] / 4.0, self.fourier)) for k, mlp in enumerate(self.scalars)],
            self.magnetic(cond.magnetic.clamp(0, 3)),
        ]
        singles = torch.stack(singles, dim=1)  # (B, 6, d)
        singles = torch.where(present[:, 1:, None], singles, self.null[1:]) + self.modality[1:]
        tokens = self.norm(torch.cat([comp, singles], dim=1))
        mask = torch.cat([comp_mask, torch.ones_like(present[:, 1:])], dim=1)
        w = mask.float()[..., None]
        pooled = (tokens * w).sum(1) / w.sum(1)
        return tokens, mask, pooled
