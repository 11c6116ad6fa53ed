"""The model shipped inside the package is the one docs/model_card.md describes."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import torch

from gpsk_materials.paths import PACKAGE_DIR, REPO_DIR

WEIGHTS = PACKAGE_DIR / "weights" / "default"


def _card_hashes() -> dict[str, str]:
    text = (REPO_DIR / "docs" / "model_card.md").read_text()
    return dict(re.findall(r"`([\w.-]+\.safetensors)`\s*\|\s*`([0-9a-f]{64})`", text))


def test_weights_match_the_model_card():
    card = _card_hashes()
    files = sorted(p.name for p in WEIGHTS.glob("*.safetensors"))
    assert files and sorted(card) == files
    for name in files:
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == card[name], name
        assert (WEIGHTS / name).stat().st_size <= 15 * 2**20


def test_shipped_model_loads_and_samples_finite_grids():
    from gpsk_materials.models.io import load_model_folder

    model = load_model_folder(WEIGHTS)
    assert model.config.name == "default"
    from gpsk_materials import CrystalGenerator

    gen = CrystalGenerator.from_pretrained()
    grids = gen.sample_grids([{"composition": "NaCl", "n": 2}], seed=0)[0]
    assert grids.shape == (2, 3, 32, 32, 32) and torch.isfinite(grids).all()
    # the metric channel of a generated grid is a positive-definite quadratic form: the lattice always decodes
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder

    lattice = ReciprocalGridDecoder().fit_lattice(grids[0].numpy())
    assert 1.0 < lattice.volume < 2000.0 and np.all(np.array(lattice.abc) > 1.0)


def test_generated_grids_decode_to_valid_structures():
    """Generated grids of the shipped model decode to valid structures of the requested formula, with the number of
    formula units their provenance records."""
    from pymatgen.core import Composition

    from gpsk_materials import CrystalGenerator
    from gpsk_materials.checks.validity import structural_validity

    torch.set_num_threads(1)
    gen = CrystalGenerator.from_pretrained()
    requests = [{"composition": c, "n": 1, "best_of": 8} for c in ("NaCl", "CaO", "SrTiO3")]
    results = gen.run(requests, seed=0, checks="basic")
    for r, c in zip(results, ("NaCl", "CaO", "SrTiO3")):
        assert r.ok and r.decoded >= 1, (c, r.failures)
        s = r.structures[0]
        z = s.properties["gpsk"]["request"]["cell"]["formula_units"]
        assert s.composition == Composition(c) * z
        assert structural_validity(s), c
        assert s.properties["gpsk"]["decode"]["relative_residual"] <= gen.decoder.max_residual
