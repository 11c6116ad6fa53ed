"""Fixtures of the generator tests: a tiny untrained model folder, and a VAE decode that lands near rock salt.

The tiny model is freshly initialised and then perturbed (a fresh MMDiT is the identity with zero output, so its
samples would not depend on the conditions). Its grids almost never decode; :func:`rock_salt_decode` replaces
``GridVAE.decode`` by the NaCl grid plus a perturbation made from the real decoded output, so that the decode,
check and selection stages see real, sample-dependent structures: small perturbations decode, large ones (about
half the latents) fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpsk_materials.models import CONFIGS, ConditionStats, GridVAE, MMDiT, save_model_folder


def make_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a perturbed, untrained ``tiny`` model folder to ``path``."""
    torch.manual_seed(seed)
    cfg = CONFIGS["tiny"]
    vae, mmdit = GridVAE(cfg.vae), MMDiT(cfg.mmdit)
    with torch.no_grad():
        for p in [*vae.parameters(), *mmdit.parameters()]:
            p.add_(0.02 * torch.randn_like(p))
    stats = ConditionStats(mean={"band_gap": 1.0, "formation_energy": -1.5, "e_above_hull": 0.05},
                           std={"band_gap": 1.5, "formation_energy": 1.0, "e_above_hull": 0.1})
    return save_model_folder(path, cfg, vae, mmdit, stats.to_dict(), torch.zeros(64), torch.ones(64))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("gen") / "tiny")


def rock_salt_grid() -> torch.Tensor:
    from pymatgen.core import Lattice, Structure

    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    s = Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return torch.tensor(ReciprocalGridFeaturizer().featurize(s.get_primitive_structure()))


@pytest.fixture
def rock_salt_decode(monkeypatch):
    """Patch ``GridVAE.decode``: NaCl grid + (0.03 or 3) x the normalised real output, per latent."""
    base = rock_salt_grid()
    original = GridVAE.decode

    def decode(self, latent):
        out = original(self, latent)
        junk = (out - out.mean(dim=(2, 3, 4), keepdim=True)) / out.flatten(2).std(-1)[..., None, None, None]
        # a per-latent pseudo-random choice (the fractional part of its L1 norm), blind to the conditions' bias
        amp = torch.where(torch.frac(latent.flatten(1).abs().sum(1)) > 0.5, 0.03, 3.0)[:, None, None, None, None]
        return base.to(out)[None] + amp * junk * torch.tensor([0.15, 0.15, 0.002], device=out.device).view(1, 3, 1, 1, 1)

    monkeypatch.setattr(GridVAE, "decode", decode)
    return base


class StubConditions:
    """What the flow sampler reads of a ConditionBatch (its length, ``present``, ``to``), for velocity fields in
    tests that ignore the conditions."""

    def __init__(self, n: int) -> None:
        self.present = torch.ones(n, 1)

    def to(self, device):
        return self

    def __len__(self) -> int:
        return len(self.present)
