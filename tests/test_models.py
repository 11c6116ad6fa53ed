"""Shapes, AdaLN-Zero, conditioning, rectified-flow convention, CFG and checkpoints of gpsk_materials.models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gpsk_materials.errors import CheckpointError, ConditioningError, GridError
from gpsk_materials.models import rectified_flow as rf
from gpsk_materials.models.conditioning import (
    MODALITIES,
    ConditionBatch,
    ConditionEncoder,
    Conditions,
    ConditionStats,
    crystal_system_index,
    drop_modalities,
    parse_formula,
)
from gpsk_materials.models.configs import CONFIGS, ModelConfig, get_config
from gpsk_materials.models.io import load_model_folder, load_tensors, save_model_folder, save_tensors
from gpsk_materials.models.mmdit import MMDiT, DoubleStreamBlock, PatchEmbed3d, SingleStreamBlock
from gpsk_materials.models.vae import GridVAE, PeriodicConv3d, miller_features
from test_generator_helpers import StubConditions

TINY = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def vae() -> GridVAE:
    torch.manual_seed(0)
    return GridVAE(TINY.vae)


@pytest.fixture(scope="module")
def mmdit() -> MMDiT:
    torch.manual_seed(0)
    return MMDiT(TINY.mmdit)


def _cond(n: int = 2) -> ConditionBatch:
    conds = [Conditions("Fe2O3", space_group=167, band_gap=2.0, magnetic_ordering="AFM"), Conditions(composition={"Na": 4, "Cl": 4})]
    return ConditionBatch.from_conditions((conds * n)[:n], ConditionStats())


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))


# ---------------------------------------------------------------- VAE


def test_vae_shapes_and_loss(vae):
    grid = torch.randn(2, 3, 32, 32, 32)
    post = vae.encode(grid)
    assert post.mean.shape == post.logvar.shape == (2, 64, 8, 8, 8)
    assert vae.decode(post.mean).shape == (2, 3, 32, 32, 32)
    loss, parts = vae.loss(grid, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and set(parts) == {"mse_re", "mse_im", "mse_metric", "kl"}
    loss.backward()
    assert all(p.grad is not None for p in vae.parameters())
    vae.zero_grad()


@pytest.mark.parametrize("shape", [(2, 3, 16, 16, 16), (2, 4, 32, 32, 32), (3, 32, 32, 32), (2, 32, 32, 32, 3)])
def test_vae_rejects_wrong_grid_shapes(vae, shape):
    with pytest.raises(GridError, match="shape"):
        vae.encode(torch.zeros(shape))


def test_vae_rejects_bad_grids_and_latents(vae):
    bad = torch.zeros(1, 3, 32, 32, 32)
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(GridError, match="NaN"):
        vae.encode(bad)
    with pytest.raises(GridError, match="floating"):
        vae.encode(torch.zeros(1, 3, 32, 32, 32, dtype=torch.long))
    with pytest.raises(GridError, match="latent"):
        vae.decode(torch.zeros(1, 32, 8, 8, 8))


def test_vae_metric_head_spans_the_quadratic_form():
    # the six quadratic features at the output reproduce Q = D g of grid.py exactly (up to the 1/256 scaling)
    from gpsk_materials.representations.grid import metric_design_matrix

    feats = miller_features(32, dtype=torch.float64)[3:].reshape(6, -1).T.numpy()
    np.testing.assert_allclose(feats * 256.0, metric_design_matrix(32))


def test_shell_log_power_error_measures_amplitude_and_falloff(vae):
    from pymatgen.core import Lattice, Structure

    from gpsk_materials.representations.grid import compress_structure_factor, expand_structure_factor
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    grid = torch.as_tensor(ReciprocalGridFeaturizer().featurize(nacl))[None]
    assert vae.shell_log_power_error(grid, grid).item() == pytest.approx(0.0, abs=1e-10)

    def scaled(factor):  # every amplitude times factor (h-dependent allowed), in the stored compressed channels
        re, im = expand_structure_factor(grid[:, 0].double(), grid[:, 1].double())
        zr, zi = compress_structure_factor(re * factor, im * factor)
        return torch.cat([torch.stack([zr, zi], 1).float(), grid[:, 2:]], 1)

    # 5 % too weak everywhere: (2 ln 0.95)^2 in every shell
    assert vae.shell_log_power_error(grid, scaled(0.95)).item() == pytest.approx((2 * math.log(0.95)) ** 2, rel=1e-3)
    # a fall-off error (weak low orders, strong high orders) is seen although the mean amplitude is right
    radius = vae.coords[:3].pow(2).sum(0).sqrt()
    tilt = 1.0 + 0.1 * (radius / radius.max() - 0.5)
    assert vae.shell_log_power_error(grid, scaled(tilt.double())).item() > 1e-3
    recon = scaled(0.9).requires_grad_(True)
    vae.shell_log_power_error(grid, recon).sum().backward()
    assert torch.isfinite(recon.grad).all() and recon.grad.abs().sum() > 0


def test_vae_density_transform_and_metric_fit_are_exact(vae):
    from gpsk_materials.representations.grid import metric_design_matrix

    torch.manual_seed(0)
    g = torch.randn(2, 6, dtype=torch.float64)
    metric = torch.as_tensor(metric_design_matrix(32)) @ g.T  # exact quadratic forms
    sf = torch.randn(2, 2, 32, 32, 32)
    grid = torch.cat([sf, metric.T.reshape(2, 1, 32, 32, 32).float() / 256.0 * 16], dim=1)
    assert torch.allclose(vae.from_density(vae.to_density(grid)), sf, atol=1e-4)
    fit = vae.metric_coefficients(grid)
    assert torch.allclose(torch.einsum("bk,kxyz->bxyz", fit, vae.coords[3:]), grid[:, 2], atol=1e-4)


def test_reciprocal_domain_vae():
    from dataclasses import replace

    v = GridVAE(replace(TINY.vae, domain="reciprocal"))
    grid = torch.randn(1, 3, 32, 32, 32)
    assert v.decode(v.encode(grid).mean).shape == grid.shape
    assert not any(isinstance(m, PeriodicConv3d) for m in v.modules())
    convs = [m for m in GridVAE(TINY.vae).modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(isinstance(m, PeriodicConv3d) for m in convs)
    with pytest.raises(ValueError, match="domain"):
        GridVAE(replace(TINY.vae, domain="fourier"))


def test_periodic_conv_matches_circular_padding():
    conv = PeriodicConv3d(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 8, 8)
    ref = torch.nn.functional.conv3d(torch.nn.functional.pad(x, (1,) * 6, mode="circular"), conv.weight, conv.bias, stride=2)
    assert torch.allclose(conv(x), ref, atol=1e-6) and conv(x).shape == (1, 3, 4, 4, 4)


def test_vae_parameter_count_matches_blog():
    n = sum(p.numel() for p in GridVAE(CONFIGS["default"].vae).parameters())
    assert 2.2e6 < n < 2.7e6  # "about 2.4M parameters"


# ---------------------------------------------------------------- MMDiT blocks


def test_fresh_double_stream_block_is_identity():
    block = DoubleStreamBlock(32, 4)
    x, ctx, vec = torch.randn(2, 8, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out_x, out_c = block(x, ctx, vec, mask)
    assert out_x.shape == x.shape and out_c.shape == ctx.shape
    assert torch.equal(out_x, x) and torch.equal(out_c, ctx)
    _randomize(block)
    out_x, out_c = block(x, ctx, vec, mask)
    assert not torch.allclose(out_x, x) and not torch.allclose(out_c, ctx)


def test_fresh_single_stream_block_is_identity():
    block = SingleStreamBlock(32, 4)
    x, vec = torch.randn(2, 13, 32), torch.randn(2, 32)
    assert torch.equal(block(x, vec), x)
    _randomize(block)
    assert block(x, vec).shape == x.shape and not torch.allclose(block(x, vec), x)


def test_fresh_mmdit_blocks_are_identity_and_output_zero(mmdit):
    for block in mmdit.double_blocks:
        assert all(torch.count_nonzero(p) == 0 for p in (block.x_stream.mod.linear.weight, block.c_stream.mod.linear.weight))
    for block in mmdit.single_blocks:
        assert torch.count_nonzero(block.mod.linear.weight) == 0
    v = mmdit(torch.randn(2, 64, 8, 8, 8), torch.rand(2), _cond())
    assert v.shape == (2, 64, 8, 8, 8) and torch.count_nonzero(v) == 0


def test_masked_condition_tokens_do_not_matter():
    torch.manual_seed(1)
    block = DoubleStreamBlock(32, 4)
    _randomize(block)
    x, ctx, vec = torch.randn(1, 8, 32), torch.randn(1, 5, 32), torch.randn(1, 32)
    mask = torch.tensor([[1, 1, 0, 0, 0]], dtype=torch.bool)
    ctx2 = ctx.clone()
    ctx2[:, 2:] = 100.0
    assert torch.allclose(block(x, ctx, vec, mask)[0], block(x, ctx2, vec, mask)[0], atol=1e-5)


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_patch_embed_unpatchify_roundtrip(patch):
    c = 64
    emb = PatchEmbed3d(c, 8, patch, c * patch**3)
    with torch.no_grad():  # make the conv the identity on (c, p, p, p)-flattened patches
        emb.proj.weight.copy_(torch.eye(c * patch**3).view(-1, c, patch, patch, patch))
        emb.proj.bias.zero_()
    x = torch.randn(2, c, 8, 8, 8)
    tokens = emb(x)
    assert tokens.shape == (2, (8 // patch) ** 3, c * patch**3)
    assert torch.allclose(emb.unpatchify(tokens), x, atol=1e-5)


def test_mmdit_trained_output_depends_on_inputs(mmdit):
    model = MMDiT(TINY.mmdit)
    _randomize(model)
    x, t, cond = torch.randn(2, 64, 8, 8, 8), torch.tensor([0.3, 0.3]), _cond()
    v = model(x, t, cond)
    assert not torch.allclose(v, model(x, torch.tensor([0.8, 0.8]), cond))
    assert not torch.allclose(v, model(x, t, cond.null()))
    with pytest.raises(GridError):
        model(torch.randn(2, 64, 4, 4, 4), t, cond)
    with pytest.raises(ValueError, match="batch"):
        model(x, torch.rand(3), cond)


def test_named_configs_are_consistent_and_roundtrip():
    assert set(CONFIGS) == {"tiny", "default", "deep", "wide", "fine", "wide512", "compact16", "subvoxel", "gpsk300"}
    for cfg in CONFIGS.values():
        assert ModelConfig.from_dict(json.loads(cfg.to_json())) == cfg
    # the two flow candidates give every token as many dimensions as the latent numbers it carries
    for name in ("fine", "wide512"):
        m = CONFIGS[name].mmdit
        assert m.hidden >= m.latent_channels * m.patch**3, name
        assert CONFIGS[name].vae == CONFIGS["default"].vae  # they adopt a default folder's VAE
    # compact16: the default with 16 latent channels, so a default folder's VAE can be compressed into it
    from gpsk_materials.models.growth import can_compress

    compact, default = CONFIGS["compact16"], CONFIGS["default"]
    assert can_compress(default.vae, compact.vae) and compact.mmdit.latent_channels == compact.vae.latent_channels == 16
    assert compact.mmdit.hidden >= compact.mmdit.latent_channels * compact.mmdit.patch**3
    # subvoxel: the default with the sub-voxel branches, grown onto a default VAE; the same MMDiT (it adopts it)
    from gpsk_materials.models.growth import can_add_subvoxel

    assert can_add_subvoxel(default.vae, CONFIGS["subvoxel"].vae) and CONFIGS["subvoxel"].mmdit == default.mmdit
    with pytest.raises(KeyError, match="named configs"):
        get_config("huge")


# ---------------------------------------------------------------- conditioning


def test_parse_formula():
    assert parse_formula("Fe2O3") == {"Fe": 2.0, "O": 3.0}
    assert parse_formula("Ca(OH)2") == {"Ca": 1.0, "O": 2.0, "H": 2.0}
    assert parse_formula("Li0.5CoO2") == {"Li": 0.5, "Co": 1.0, "O": 2.0}
    for bad in ("", "fe2", "Fe2)", "Fe2O3!"):
        with pytest.raises(ConditioningError):
            parse_formula(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"composition": "Xx2O3"}, "unknown element"),
        ({"composition": {"Fe": -1}}, "positive"),
        ({"composition": {"Fe": float("nan")}}, "positive"),
        ({"composition": "HHeLiBeBCNOFNe"}, "at most"),
        ({"space_group": 0}, "1..230"),
        ({"space_group": 231}, "1..230"),
        ({"space_group": 12.5}, "1..230"),
        ({"crystal_system": "rhombic"}, "crystal system"),
        ({"crystal_system": "cubic", "space_group": 194}, "hexagonal"),
        ({"band_gap": -0.1}, ">= 0"),
        ({"e_above_hull": float("inf")}, "finite"),
        ({"formation_energy": "low"}, "finite"),
        ({"magnetic_ordering": "ferro"}, "magnetic"),
    ],
)
def test_invalid_conditions_raise(kwargs, match):
    with pytest.raises(ConditioningError, match=match):
        ConditionBatch.from_conditions([Conditions(**kwargs)], ConditionStats())


def test_condition_batch_from_user_values():
    stats = ConditionStats(mean={"band_gap": 1.0, "formation_energy": -1.0, "e_above_hull": 0.0},
                           std={"band_gap": 2.0, "formation_energy": 1.0, "e_above_hull": 0.1})
    b = ConditionBatch.from_conditions(
        [Conditions("Fe2O3", space_group=167, band_gap=2.0, magnetic_ordering="afm"), Conditions(magnetic_ordering="unknown")], stats
    )
    assert b.comp_z[0, :2].tolist() == [8, 26] and b.comp_amount[0, :2].tolist() == [3.0, 2.0]
    assert b.space_group.tolist() == [167, -1] and b.crystal_system.tolist() == [4, -1]  # 167 is trigonal
    assert b.scalars[0, 0].item() == pytest.approx(0.5) and math.isnan(b.scalars[0, 1].item())
    assert b.magnetic.tolist() == [3, -1]
    assert b.present.tolist() == [[True, True, True, True, False, False, True], [False] * 7]


def test_condition_batch_from_labels_agrees_with_user_values():
    numbers = torch.tensor([[26, 8, 26, 8, 8, 0], [11, 17, 0, 0, 0, 0]])
    lab = ConditionBatch.from_labels(numbers, None, np.array([167, 0]), np.array([[0.5, np.nan, np.nan], [np.nan] * 3]), np.array([3, -1]))
    user = ConditionBatch.from_conditions(
        [Conditions({"Fe": 2, "O": 3}, space_group=167, band_gap=2.0, magnetic_ordering="AFM"), Conditions({"Na": 1, "Cl": 1})],
        ConditionStats(mean={"band_gap": 1.0, "formation_energy": 0.0, "e_above_hull": 0.0},
                       std={"band_gap": 2.0, "formation_energy": 1.0, "e_above_hull": 1.0}),
    )
    for key in ("comp_z", "comp_amount", "crystal_system", "space_group", "magnetic", "present"):
        assert torch.equal(getattr(lab, key), getattr(user, key)), key
    assert torch.allclose(lab.scalars, user.scalars, equal_nan=True)


def test_crystal_system_boundaries():
    sg = np.array([1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230, 0, 231])
    assert crystal_system_index(sg).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, -1, -1]


def test_conditioning_dropout_rate_and_independence():
    g = torch.Generator().manual_seed(0)
    present = torch.ones(20000, len(MODALITIES), dtype=torch.bool)
    kept = drop_modalities(present, 0.1, g).float()
    assert torch.allclose(1 - kept.mean(0), torch.full((7,), 0.1), atol=0.01)
    # independent: P(both dropped) = 0.01 for each pair
    dropped = 1 - kept
    both = (dropped[:, :, None] * dropped[:, None, :]).mean(0)
    off = both[~torch.eye(7, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 0.01), atol=0.004)
    # absent modalities stay absent
    assert not drop_modalities(torch.zeros(10, 7, dtype=torch.bool), 0.1, g).any()


def test_encoder_uses_null_tokens_for_absent_modalities():
    torch.manual_seed(0)
    enc = ConditionEncoder(32, 8)
    cond = _cond(2)
    tokens, mask, pooled = enc(cond)
    assert tokens.shape == (2, 8 + 6, 32) and mask.shape == (2, 14) and pooled.shape == (2, 32)
    assert mask[0, :2].all() and not mask[0, 2:8].any() and mask[:, 8:].all()
    nulled = cond.null()
    t_null, m_null, _ = enc(nulled)
    assert m_null[:, :8].tolist() == [[True] + [False] * 7] * 2
    # a null batch does not depend on the (hidden) values
    other = ConditionBatch.from_conditions([Conditions("NaCl", space_group=225)] * 2, ConditionStats()).null()
    assert torch.allclose(enc(other)[0], t_null)
    # gradients reach every parameter even when all modalities are present (DDP needs no unused parameters)
    enc(cond)[0].sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


# ---------------------------------------------------------------- rectified flow


def test_flow_convention_endpoints_and_target():
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(rf.interpolate(x0, eps, torch.zeros(3)), x0)
    assert torch.equal(rf.interpolate(x0, eps, torch.ones(3)), eps)
    t, dt = torch.full((3,), 0.4), 1e-3
    fd = (rf.interpolate(x0.double(), eps.double(), t + dt) - rf.interpolate(x0.double(), eps.double(), t)) / dt
    assert torch.allclose(fd.float(), rf.velocity_target(x0, eps), atol=1e-4)
    xt = rf.interpolate(x0, eps, t)
    assert torch.allclose(rf.predict_x0(xt, rf.velocity_target(x0, eps), t), x0, atol=1e-6)


def test_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    for schedule in ("logit_normal", "uniform"):
        t = rf.sample_timesteps(5000, g, schedule=schedule)
        assert ((t > 0) & (t < 1)).all() and abs(t.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError):
        rf.sample_timesteps(3, schedule="cosine")


def test_euler_sampler_follows_the_convention():
    # for a point-mass data distribution at a, the exact velocity is (x_t - a) / t and the flow is a straight line
    a = torch.randn(1, 2, 2, 2, 2)

    def exact(x, t, cond):
        return (x - a) / t.view(-1, 1, 1, 1, 1)

    cond = ConditionBatch.from_conditions([Conditions()] * 3, ConditionStats())
    out = rf.sample(exact, cond, steps=50, guidance=1.0, generator=torch.Generator().manual_seed(0), shape=(2, 2, 2, 2))
    assert torch.allclose(out, a.expand(3, -1, -1, -1, -1), atol=1e-4)
    with pytest.raises(ValueError):
        rf.sample(exact, cond, steps=0)


def test_cfg_scale_one_is_conditional_and_guidance_is_linear():
    model = MMDiT(TINY.mmdit)
    _randomize(model)
    model.eval()
    x, t, cond = torch.randn(2, 64, 8, 8, 8), torch.rand(2), _cond()
    with torch.no_grad():
        v_c, v_u = model(x, t, cond), model(x, t, cond.null())
        assert torch.equal(rf.guided_velocity(model, x, t, cond, 1.0), v_c)
        assert torch.allclose(rf.guided_velocity(model, x, t, cond, 0.0), v_u, atol=1e-5)
        assert torch.allclose(rf.guided_velocity(model, x, t, cond, 3.0), v_u + 3 * (v_c - v_u), atol=1e-4)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        s1 = rf.sample(model, cond, steps=3, guidance=1.0, generator=g1)
        s2 = rf.sample(model, cond, steps=3, guidance=1.0, generator=g2)
    assert torch.equal(s1, s2)


def test_flow_loss_trains_toward_target():
    model = MMDiT(TINY.mmdit)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 64, 8, 8, 8).expand(4, -1, -1, -1, -1).contiguous()
    cond = _cond(4)
    losses = []
    for _ in range(16):
        loss = rf.flow_loss(model, x0, cond, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


# ---------------------------------------------------------------- checkpoints


def test_tensor_set_roundtrip_with_sharding_and_splitting(tmp_path):
    tensors = {"a": torch.randn(100, 100), "b": torch.arange(10), "c": torch.randn(5000), "step": torch.tensor(3.0)}
    save_tensors(tmp_path, "set", tensors, config={"x": 1}, metadata={"m": [1, 2]}, max_shard_bytes=16_000)
    shards = sorted(tmp_path.glob("set-*.safetensors"))
    assert len(shards) > 2 and all(p.stat().st_size < 16_000 + 2_000 for p in shards)
    loaded, meta = load_tensors(tmp_path, "set", config={"x": 1})
    assert meta == {"m": [1, 2]} and set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with pytest.raises(CheckpointError, match="another configuration"):
        load_tensors(tmp_path, "set", config={"x": 2})
    assert not list(tmp_path.glob(".*tmp"))


def test_truncated_or_missing_checkpoint_files_raise(tmp_path):
    save_tensors(tmp_path, "set", {"a": torch.randn(1000)})
    shard = tmp_path / "set-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tensors(tmp_path, "set")
    index = tmp_path / "set.json"
    index.write_text(index.read_text()[:30])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tensors(tmp_path, "set")
    with pytest.raises(CheckpointError, match="missing"):
        load_tensors(tmp_path, "nothing")


def test_model_folder_roundtrip_and_config_check(tmp_path, vae, mmdit):
    model = MMDiT(TINY.mmdit)
    _randomize(model)
    stats = ConditionStats.fit({"band_gap": np.array([0.0, 2.0]), "formation_energy": np.array([-1.0, np.nan, -2.0]), "e_above_hull": np.array([0.0])})
    mean, std = torch.randn(64), torch.rand(64) + 0.5
    save_model_folder(tmp_path / "m", TINY, vae, model, stats.to_dict(), mean, std)
    loaded = load_model_folder(tmp_path / "m", expect="tiny")
    assert loaded.stats == stats and torch.allclose(loaded.latent_std, std)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.mmdit.state_dict()[k], v)
    grids = loaded.sample_grids([{"composition": "NaCl"}, Conditions(space_group=225)], steps=2, generator=torch.Generator().manual_seed(0))
    assert grids.shape == (2, 3, 32, 32, 32) and torch.isfinite(grids).all()
    with pytest.raises(ConditioningError):
        loaded.sample_grids([{"space_group": 300}], steps=1)
    with pytest.raises(CheckpointError, match="expected 'default'"):
        load_model_folder(tmp_path / "m", expect="default")
    # weights of another config under this config's name
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model"] = CONFIGS["default"].to_dict()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="another configuration"):
        load_model_folder(tmp_path / "m")
    with pytest.raises(CheckpointError, match="missing"):
        load_model_folder(tmp_path / "nowhere")


# ---------------------------------------------------------------- CLI and docs


def test_params_command_and_docs(capsys):
    from gpsk_materials.cli import main
    from gpsk_materials.models.cli import params_table

    assert main(["params"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CONFIGS) and "304,127,168" in out
    docs = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    assert params_table(markdown=True) in docs, "docs/models.md is stale: paste `gpsk params --markdown`"


def test_shard_files_respect_the_size_limit_header_included(tmp_path):
    limit = 40_000
    # tensors whose data alone fill a shard exactly: the header must push the last one to the next shard
    tensors = {f"block.{i}.weight": torch.randn(2_500) for i in range(9)}  # 10,000 bytes each
    tensors["big"] = torch.randn(30_000)  # larger than a shard: split into flat parts
    save_tensors(tmp_path, "set", tensors, max_shard_bytes=limit)
    files = sorted(tmp_path.glob("set-*.safetensors"))
    assert len(files) > 3 and all(f.stat().st_size <= limit for f in files)
    loaded, _ = load_tensors(tmp_path, "set")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_sampling_from_an_intermediate_time_follows_the_straight_path():
    """Started at t_start from x_t = (1 - t) a + t eps, the exact velocity (x - a) / t of a single data point a
    carries Euler steps to a exactly, whatever t_start and the step count; the model sees t_start first."""
    from gpsk_materials.errors import ConfigError

    a = torch.full((2, 3, 2, 2, 2), 0.7)
    eps = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    seen = []

    def exact(x, t, cond):
        seen.append(float(t[0]))
        return (x - a) / t.view(-1, 1, 1, 1, 1)

    for t0, steps in ((0.3, 3), (0.7, 5)):
        seen.clear()
        x0 = rf.interpolate(a, eps, torch.full((2,), t0))
        x = rf.sample(exact, StubConditions(2), steps=steps, noise=x0, t_start=t0)
        assert torch.allclose(x, a, atol=1e-5)
        assert seen[0] == pytest.approx(t0) and len(seen) == steps
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="t_start"):
            rf.sample(exact, StubConditions(2), steps=2, noise=eps, t_start=bad)


def test_condition_dropout_shows_the_unconditional_and_composition_only_rows_at_the_asked_shares():
    """Independent dropout at p = 0.1 almost never drops all 7 modalities of a row (the classifier-free guidance
    branch) nor all but the composition (the CSP request); p_all / p_composition_only make them fixed shares, and a
    modality a row lacks is never switched on; shares that cannot be shares are refused."""
    from gpsk_materials.errors import ConfigError
    from gpsk_materials.training.trainer import TrainConfig

    g = torch.Generator().manual_seed(0)
    present = torch.ones(20000, 7, dtype=torch.bool)
    present[::2, 3] = False  # half the rows lack a label
    old = drop_modalities(present, 0.1, g)
    assert (~old.any(1)).float().mean() < 1e-3
    new = drop_modalities(present, 0.1, g, p_all=0.1, p_composition_only=0.3)
    none = ~new.any(1)
    comp_only = new[:, 0] & ~new[:, 1:].any(1)
    assert abs(none.float().mean().item() - 0.1) < 0.01
    assert abs(comp_only.float().mean().item() - 0.3) < 0.015
    assert not (new & ~present).any()
    rest = new[~none & ~comp_only]
    assert abs(rest[:, 1].float().mean().item() - 0.9) < 0.01  # the other rows: independent dropout as before
    TrainConfig(cond_drop_all=0.1, cond_composition_only=0.3).check()
    with pytest.raises(ConfigError, match="cond_drop_all and cond_composition_only"):
        TrainConfig(cond_drop_all=0.6, cond_composition_only=0.5).check()
