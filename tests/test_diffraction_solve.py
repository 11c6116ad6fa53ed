"""Solving from a powder pattern end to end: ``generate(diffraction=...)`` and ``gpsk solve`` on the tiny model whose
VAE decode is patched to land near rock salt (fast), and pattern guidance with the shipped model (slow)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gpsk_materials import provenance
from gpsk_materials.cli import main
from gpsk_materials.diffraction import POOR_RWP, simulate_measurement
from gpsk_materials.diffraction.solve import solve_pattern
from gpsk_materials.errors import DiffractionError
from gpsk_materials.pipelines.generator import CrystalGenerator
from test_generator_helpers import StubConditions, rock_salt_decode, tiny_model_dir  # noqa: F401


def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def pattern():
    return simulate_measurement(_nacl(), "CuKa", seed=1)[0]


@pytest.mark.slow  # about a minute on two idle cores (the refinements)
def test_generate_with_diffraction_ranks_by_rwp(tiny_model_dir, rock_salt_decode, pattern):  # noqa: F811
    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    structures = gen.generate("NaCl", 2, best_of=2, steps=3, seed=2, checks="none", diffraction=pattern)
    assert len(structures) == 2
    rwp = [provenance.read(s, "diffraction")["rwp"] for s in structures]
    assert rwp == sorted(rwp)
    best = structures[0]
    d = provenance.read(best, "diffraction")
    assert d["rank"] == 0 and d["agreement"] == "good" and d["candidates_refined"] >= 2
    assert d["rwp"] < POOR_RWP and d["zero_shift"] == pytest.approx(d["zero_shift"])
    assert max(best.lattice.abc) == pytest.approx(5.64, rel=0.01)  # the refined conventional cell of rock salt
    req = provenance.read(best, "request")
    assert req["n"] == 2 and req["best_of"] == 2 and provenance.read(best, "model")["name"]


@pytest.mark.slow
def test_poor_agreement_is_flagged(tiny_model_dir, rock_salt_decode, caplog):  # noqa: F811
    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    rutile = Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                       [[0, 0, 0], [0.3049, 0.3049, 0]])
    other = simulate_measurement(rutile, "CuKa", seed=0)[0]  # a pattern the rock-salt candidates cannot explain
    sol = solve_pattern(gen, "NaCl", other, 1, best_of=2, steps=3, seed=2, checks="none")
    assert sol.poor and provenance.read(sol.structures[0], "diffraction")["agreement"] == "poor"
    assert "poor agreement with the powder pattern" in caplog.text


def test_bad_pattern_fails_before_sampling(tiny_model_dir):  # noqa: F811
    gen = CrystalGenerator.from_pretrained(tiny_model_dir, batch_size=4)
    x = np.linspace(10, 80, 50)
    with pytest.raises(DiffractionError, match="same length"):
        gen.generate("NaCl", diffraction=(x, np.ones(49)))
    with pytest.raises(DiffractionError, match="unknown wavelength"):
        gen.generate("NaCl", diffraction=(x, np.ones(50)), wavelength="CuKz")
    with pytest.raises(DiffractionError, match="outside the X-ray range"):
        gen.generate("NaCl", diffraction=(x, np.ones(50), 12.0))


@pytest.mark.slow
def test_gpsk_solve_writes_cifs_plots_and_summary(tmp_path, tiny_model_dir, rock_salt_decode, pattern, capsys):  # noqa: F811
    xy = tmp_path / "nacl.xy"
    pattern.write(xy)
    out = tmp_path / "solved"
    code = main(["solve", str(xy), "--composition", "NaCl", "-n", "2", "--best-of", "2", "--steps", "3", "--seed",
                 "2", "--model", str(tiny_model_dir), "--out", str(out), "--no-progress", "--checks", "none"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with open(out / "solve_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and [float(r["rwp"]) for r in rows] == sorted(float(r["rwp"]) for r in rows)
    for r in rows:
        assert (out / r["file"]).stat().st_size > 0 and (out / r["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert "Rwp" in captured.out and "NaCl_0.cif" in captured.out


def test_gpsk_solve_rejects_bad_input(tmp_path, capsys):
    bad = tmp_path / "neg.xy"
    bad.write_text("\n".join(f"{10 + i * 0.1} {-1 if i == 3 else 5}" for i in range(40)))
    assert main(["solve", str(bad), "--composition", "NaCl"]) == 1
    assert "intensity is negative at index 3" in capsys.readouterr().err
    assert main(["solve", str(tmp_path / "missing.xy"), "--composition", "NaCl"]) == 1
    assert "does not exist" in capsys.readouterr().err
    good = tmp_path / "ok.xy"
    good.write_text("\n".join(f"{10 + i * 0.1} 5" for i in range(40)))
    assert main(["solve", str(good), "--composition", "NaCl", "--wavelength", "CuKz"]) == 1
    assert "unknown wavelength 'CuKz'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_pattern_guidance_lowers_the_pattern_distance():
    """Shipped model (c6), four fixed seeds, 8 steps: guided (scale 0.3) samples have a lower pattern distance than
    the unguided samples from the same noise, on average and seed by seed (measured 2026-12-02: 0.956, 0.930, 0.724,
    0.854 against 0.989, 0.941, 0.901, 0.930 at the final 0.5-degree width; every seed lower). The scale that helps
    depends on the weights: with c6, scale 1 raised the distance (docs/diffraction.md), so a new release re-measures
    it."""
    import torch

    from gpsk_materials.diffraction.guidance import PatternGuidance
    from gpsk_materials.models.conditioning import Conditions
    from gpsk_materials.pipelines.generator import default_model_dir

    if not (default_model_dir() / "config.json").is_file():
        pytest.skip("the shipped model is not installed")
    gen = CrystalGenerator.from_pretrained()
    m = gen.model
    cfg = m.config.mmdit
    noise = torch.randn((4, cfg.latent_channels, cfg.latent_size, cfg.latent_size, cfg.latent_size),
                        generator=torch.Generator().manual_seed(1))
    conds = [Conditions("Na4Cl4")] * 4
    term = PatternGuidance(m, simulate_measurement(_nacl(), "CuKa", seed=0)[0], scale=0.3)
    plain = m.sample_grids(conds, 8, 1.0, noise=noise)
    guided = m.sample_grids(conds, 8, 1.0, noise=noise, guidance_terms=[term])
    with torch.no_grad():
        d0, d1 = term.distance(plain), term.distance(guided)
    assert float(d1.mean()) < float(d0.mean()) - 0.03, (d0, d1)
    assert int((d1 < d0).sum()) >= 3, (d0, d1)


def test_volume_guidance_reads_the_cell_volume(tiny_model_dir):  # noqa: F811
    import torch

    from gpsk_materials.diffraction.guidance import VolumeGuidance
    from gpsk_materials.errors import ConditioningError
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    gen = CrystalGenerator.from_pretrained(tiny_model_dir)
    term = VolumeGuidance(gen.model, 40.0, scale=0.5)
    prim = _nacl().get_primitive_structure()
    grid = torch.as_tensor(ReciprocalGridFeaturizer().featurize(prim))[None]
    assert float(term.volumes(grid)[0]) == pytest.approx(prim.volume, rel=1e-4)
    with pytest.raises(ConditioningError, match="target volume"):
        VolumeGuidance(gen.model, -1.0)
    with pytest.raises(ConditioningError, match="guidance scale"):
        VolumeGuidance(gen.model, 40.0, scale=-1)


def test_guidance_hook_descends_the_loss_of_the_clean_estimate():
    """With a zero-velocity model the unguided sampler returns its noise; a guidance term with a quadratic loss
    pulls the result toward the loss's minimum, more strongly with a larger scale."""
    import torch

    from gpsk_materials.diffraction.guidance import GuidanceTerm
    from gpsk_materials.models import rectified_flow

    class ToTarget(GuidanceTerm):
        def loss(self, x0, t):
            return (x0 - 2.0).pow(2).flatten(1).sum(1)

    noise = torch.randn(3, 2, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    dist = []
    for scale in (0.0, 0.5, 2.0):
        terms = [ToTarget(scale, interval=(0.0, 1.0))] if scale else None
        x = rectified_flow.sample(zero, StubConditions(3), steps=10, noise=noise, guidance_terms=terms)
        dist.append(float((x - 2.0).pow(2).mean()))
    assert dist[0] == pytest.approx(float((noise - 2.0).pow(2).mean()))
    assert dist[2] < dist[1] < dist[0]
