"""Realistic synthetic powder patterns: what a laboratory measurement adds to an ideal simulated profile.

Used by the benchmark (``benchmarks/powder_solve.py``), the tutorial and the tests, so that all three test the
solver against the same defects: a zero shift, angle-dependent (Caglioti) broadening, a smooth background,
counting (Poisson) noise, a missing low-angle range and a few impurity peaks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gpsk_materials.diffraction.pattern import (DEFAULT_ETA, PowderPattern, caglioti_fwhm, render_profile,
                                                resolve_wavelength, structure_sticks)


@dataclass
class MeasurementModel:
    """The defects added by :func:`simulate_measurement` (the defaults are those of the benchmark).

    Attributes
    ----------
    two_theta_min, two_theta_max, step : float
        Measured range and step, degrees; the range below ``two_theta_min`` is missing (beam stop / knife edge).
    zero_shift_max : float
        The zero shift is drawn uniformly in +-zero_shift_max degrees.
    caglioti : (U, V, W)
        Instrumental + sample broadening, deg^2 (H^2 = U tan^2 theta + V tan theta + W).
    eta : float
        Pseudo-Voigt Lorentzian fraction.
    peak_counts : float
        Counts at the strongest peak maximum (sets the Poisson noise).
    background_counts : float
        Background level, counts (a decaying exponential plus a constant, amorphous-hump free).
    impurity_peaks : int
        Extra peaks at random angles, each with ``impurity_fraction`` (uniform in 1-5 % of the strongest peak's
        height).
    """

    two_theta_min: float = 10.0
    two_theta_max: float = 80.0
    step: float = 0.02
    zero_shift_max: float = 0.1
    caglioti: tuple[float, float, float] = (0.02, -0.01, 0.01)
    eta: float = DEFAULT_ETA
    peak_counts: float = 5000.0
    background_counts: float = 100.0
    impurity_peaks: int = 2
    impurity_fraction: tuple[float, float] = (0.01, 0.05)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def simulate_measurement(structure: Any, wavelength: str | float | None = None, seed: int = 0,
                         model: MeasurementModel | None = None) -> tuple[PowderPattern, dict[str, Any]]:
    """A noisy laboratory-like powder pattern of ``structure``.

    Returns the :class:`PowderPattern` and the truth of what was added (``zero_shift``, ``impurities`` as
    (2theta, relative height) pairs, the model's settings).
    """
    m = model or MeasurementModel()
    lam = resolve_wavelength(wavelength)
    rng = np.random.default_rng(seed)
    axis = np.arange(m.two_theta_min, m.two_theta_max + m.step / 2, m.step)
    tt, inten = structure_sticks(structure, lam, (max(m.two_theta_min - 2.0, 1.0), m.two_theta_max + 2.0))
    zero = float(rng.uniform(-m.zero_shift_max, m.zero_shift_max))
    t_tt = torch.as_tensor(tt)
    fw = caglioti_fwhm(t_tt, *m.caglioti)
    prof = render_profile(torch.as_tensor(axis), (t_tt + zero)[None], torch.as_tensor(inten)[None], fw[None],
                          m.eta)[0].numpy()
    prof = prof / prof.max()
    impurities = []
    if m.impurity_peaks:
        pos = rng.uniform(axis[0] + 2.0, axis[-1] - 2.0, m.impurity_peaks)
        height = rng.uniform(*m.impurity_fraction, m.impurity_peaks)
        fw_i = caglioti_fwhm(torch.as_tensor(pos), *m.caglioti)
        one = render_profile(torch.as_tensor(axis), torch.as_tensor(pos)[:, None], torch.ones(len(pos), 1, dtype=torch.float64),
                             fw_i[:, None], m.eta).numpy()
        prof = prof + (height[:, None] * one / one.max(axis=1, keepdims=True)).sum(0)
        impurities = [(float(p), float(h)) for p, h in zip(pos, height)]
    background = m.background_counts * (0.5 + np.exp(-(axis - axis[0]) / 20.0))
    expected = m.peak_counts * prof + background
    counts = rng.poisson(expected).astype(float)
    truth = {"zero_shift": zero, "impurities": impurities, "model": m.as_dict(), "seed": seed}
    return PowderPattern(axis, counts, lam), truth


__all__ = ["MeasurementModel", "simulate_measurement"]
