"""Issue 15: the batched decoder equals the reference decoder, and the sampler's hoisted condition work changes
nothing.

* real MP-20 grids: same species, same lattice, positions within 1e-4 A (sites matched by element and periodic
  distance), same provenance numbers (the site order may differ: symmetry-equivalent peaks of equal height);
* noisy grids and inferred compositions: the same grids accepted and rejected, with the same reasons, and the same
  low-confidence flags when kept (reasons compared without the site numbers of the pair they name);
* the torch pair distances of the acceptance checks against pymatgen's (distance matrix, closest contact relative to
  the covalent radii), a skewed cell and a site's own periodic image included;
* the sampler with the condition context computed once equals, bit for bit, the model called at every step.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from scipy.optimize import linear_sum_assignment

from gpsk_materials.errors import ConfigError
from gpsk_materials.representations.decoding import ReciprocalGridDecoder
from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

#: MP-20 test rows (file order) of the real-grid tests, small cells (4 to 8 sites) so that the reference decoder
#: stays quick: GaTe, ScAlRh2, Sm(CoB)2, SbNO, Mg(AlSi)2, CsYbBr3
ROWS = [0, 7, 8, 12, 18, 22]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Both decoders on one thread: on a busy 2-core machine each small parallel operation waits for a time slice,
    which makes the reference path minutes slow (both implementations run under the same setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mp20(shared_data_dir):
    import pandas as pd

    path = shared_data_dir / "mp20" / "test.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frame = pd.read_csv(path, nrows=max(ROWS) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(frame["cif"][i], fmt="cif") for i in ROWS]
    feat = ReciprocalGridFeaturizer(backend="torch")
    grids = torch.as_tensor(feat.featurize_many(structures, pbar=False))
    return grids, [feat.canonical_structure(s).composition for s in structures]


def _both(grids, comps, **kwargs):
    out = {}
    for impl in ("reference", "batched"):
        dec = ReciprocalGridDecoder(implementation=impl, **kwargs)
        out[impl] = dec.decode_many(grids, comps, return_errors=True, pbar=False)
    return out


def _pair_free(reason: str | None) -> str | None:
    """A decode reason without the site numbers and the order of the pair's elements: the two decoders may list the
    sites of a crystal in another order (symmetry-equivalent peaks of equal height), the pair is the same."""
    if reason is None:
        return None
    reason = re.sub(r"\((sites \d+, \d+|site \d+ and its periodic image)\)", "(pair)", reason)
    return re.sub(r"(\w+)-(\w+) distance", lambda m: "-".join(sorted(m.groups())) + " distance", reason)


def _assert_same_structures(a: Structure, b: Structure, tol: float = 1e-4) -> None:
    assert sorted(a.atomic_numbers) == sorted(b.atomic_numbers)
    np.testing.assert_allclose(a.lattice.parameters, b.lattice.parameters, rtol=1e-9, atol=1e-9)
    d = b.lattice.get_all_distances(a.frac_coords, b.frac_coords)
    d = np.where(np.array(a.atomic_numbers)[:, None] == np.array(b.atomic_numbers)[None], d, 1e6)
    r, c = linear_sum_assignment(d)
    assert d[r, c].max() < tol, d[r, c].max()
    pa, pb = a.properties["gpsk"]["decode"], b.properties["gpsk"]["decode"]
    assert [_pair_free(r) for r in pa["low_confidence_reasons"]] == [_pair_free(r) for r in pb["low_confidence_reasons"]]
    for key in ("relative_residual", "confidence", "scale"):
        assert pa[key] == pytest.approx(pb[key], rel=1e-6, abs=1e-9), key
    np.testing.assert_allclose(np.array(a.site_properties["decode_occupancy"])[r],
                               np.array(b.site_properties["decode_occupancy"])[c], atol=2e-6)


def test_batched_equals_reference_on_real_grids(mp20):
    # a strict distance check (ratio 1.0, kept) flags most of these structures: positions, occupancies,
    # confidences and the flags' reasons (pair, distance, ratio) must all agree
    grids, comps = mp20
    out = _both(grids, comps, min_distance_ratio=1.0, keep_low_confidence=True)
    (ref, why_ref), (new, why_new) = out["reference"], out["batched"]
    assert why_ref == why_new == [None] * len(grids)
    for a, b in zip(new, ref):
        _assert_same_structures(a, b)
    assert sum(bool(b.properties["gpsk"]["decode"]["low_confidence"]) for b in ref) >= 2


def test_batched_equals_reference_with_the_free_scale(mp20):
    # the generator's decode: the cell content given exactly, the overall scale of F fitted with the positions
    grids, comps = mp20
    scaled = grids[:2].clone()
    scaled[:, :2] *= 0.8  # a generated grid's F is off by a scale
    out = {impl: ReciprocalGridDecoder(implementation=impl).decode_many(scaled, comps[:2], exact_counts=True,
                                                                          return_errors=True, pbar=False)
           for impl in ("reference", "batched")}
    (ref, why_ref), (new, why_new) = out["reference"], out["batched"]
    assert why_new == why_ref == [None] * 2
    for a, b in zip(new, ref):
        _assert_same_structures(a, b)
        assert a.properties["gpsk"]["decode"]["scale"] != 1.0


def test_same_acceptance_on_noisy_grids_and_inferred_compositions(mp20):
    grids, comps = mp20
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(grids[:, :2].shape, generator=g)
    noisy = grids.clone()
    # 2 % noise keeps most grids; 30 % on the last ones pushes their residual past max_residual
    level = torch.tensor([0.02, 0.02, 0.3, 0.02, 0.3, 0.02])[:, None, None, None, None]
    noisy[:, :2] += level * grids[:, :2].flatten(1).std(1)[:, None, None, None, None] * noise
    batch = torch.cat([noisy, grids[:3]])
    comp_list = list(comps) + [None] * 3  # the clean ones without a composition: confidence decides
    out = _both(batch, comp_list, max_sites=10)  # max_sites bounds the search without a composition
    (ref, why_ref), (new, why_new) = out["reference"], out["batched"]
    assert [_pair_free(w) for w in why_new] == [_pair_free(w) for w in why_ref]
    assert any(w is None for w in why_ref) and any(w is not None for w in why_ref)  # both outcomes exercised
    for a, b in zip(new, ref):
        if b is not None:
            _assert_same_structures(a, b)


def _contacts(structure: Structure):
    from gpsk_materials.representations.batched import covalent_radii_table, pair_contacts

    x = torch.as_tensor(structure.frac_coords)[None]
    valid = torch.ones((1, len(structure)), dtype=torch.bool)
    metric = torch.as_tensor(structure.lattice.matrix @ structure.lattice.matrix.T)[None]
    radii = covalent_radii_table("cpu", torch.float64)[torch.as_tensor(structure.atomic_numbers)][None]
    return [v[0].item() for v in pair_contacts(x, valid, metric, radii, 3)]


@pytest.mark.parametrize("case", ["rocksalt", "skewed", "one_atom"])
def test_torch_pair_distances_match_pymatgen(case):
    from gpsk_materials.checks.validity import closest_contact

    if case == "rocksalt":
        s = Structure(Lattice.cubic(5.64), ["Na", "Cl", "Na", "Cl"], [[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0],
                                                                       [0, 0.5, 0]])
    elif case == "skewed":
        s = Structure(Lattice.from_parameters(3.1, 4.2, 5.0, 62, 71, 118), ["Ti", "O", "O"],
                      [[0.1, 0.2, 0.3], [0.45, 0.9, 0.05], [0.8, 0.55, 0.6]])
    else:
        s = Structure(Lattice.from_parameters(2.2, 5, 5, 90, 90, 90), ["Fe"], [[0.3, 0.3, 0.3]])
    dmin, ratio, i, j, d = _contacts(s)
    ci, cj, cd, cr = closest_contact(s)
    assert ratio == pytest.approx(cr, rel=1e-9) and d == pytest.approx(cd, rel=1e-9)
    assert {int(i), int(j)} == {ci, cj}
    if len(s) > 1:
        assert dmin == pytest.approx(s.distance_matrix[np.triu_indices(len(s), 1)].min(), rel=1e-9)
    else:
        assert dmin == np.inf


def test_implementation_is_validated_and_serialised():
    with pytest.raises(ConfigError, match="implementation"):
        ReciprocalGridDecoder(implementation="fast")
    dec = ReciprocalGridDecoder(implementation="reference")
    assert ReciprocalGridDecoder.from_dict(dec.as_dict()).implementation == "reference"
    assert ReciprocalGridDecoder().implementation == "batched"


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sampler_condition_context_is_bit_for_bit(guidance):
    from gpsk_materials.models import rectified_flow
    from gpsk_materials.models.conditioning import ConditionBatch, Conditions, ConditionStats
    from gpsk_materials.models.configs import CONFIGS
    from gpsk_materials.models.mmdit import MMDiT

    torch.manual_seed(0)
    model = MMDiT(CONFIGS["tiny"].mmdit).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # AdaLN-Zero starts at zero velocity: make the test see something
    cond = ConditionBatch.from_conditions([Conditions("Fe2O3", space_group=167), Conditions("NaCl")],
                                          ConditionStats(), CONFIGS["tiny"].mmdit.max_elements)
    cfg = CONFIGS["tiny"].mmdit
    noise = torch.randn((2, cfg.latent_channels, cfg.latent_size, cfg.latent_size, cfg.latent_size),
                        generator=torch.Generator().manual_seed(0))

    def per_step(x, t, c):  # the model without condition_context: the condition work runs at every step
        return model(x, t, c)

    once = rectified_flow.sample(model, cond, 4, guidance, noise=noise)
    every = rectified_flow.sample(per_step, cond, 4, guidance, noise=noise)
    assert torch.equal(once, every)
    assert once.abs().max() > 0


@pytest.mark.parametrize("shape, p", [((2, 3, 5, 6, 7), 1), ((1, 2, 8, 8, 8), 2)])
def test_periodic_pad_without_autograd_equals_the_concatenation(shape, p):
    from gpsk_materials.models.vae import periodic_pad

    x = torch.randn(shape)
    ref = x
    for dim in (2, 3, 4):
        n = ref.shape[dim]
        ref = torch.cat([ref.narrow(dim, n - p, p), ref, ref.narrow(dim, 0, p)], dim=dim)
    with torch.no_grad():
        assert torch.equal(periodic_pad(x, p), ref)  # the preallocated path of sampling
    assert torch.equal(periodic_pad(x.requires_grad_(True), p), ref)  # the autograd path of training


def test_bf16_sampler_stays_close_to_float32():
    # precision="bf16" (the speed option of the sampler): the same flow under bfloat16 autocast, within bf16 tolerance
    from gpsk_materials.models.configs import CONFIGS
    from gpsk_materials.models.conditioning import ConditionStats
    from gpsk_materials.models.generative import GPSKModel
    from gpsk_materials.models.mmdit import MMDiT
    from gpsk_materials.models.vae import GridVAE

    torch.manual_seed(0)
    cfg = CONFIGS["tiny"]
    model = GPSKModel(cfg, GridVAE(cfg.vae).eval(), MMDiT(cfg.mmdit).eval(), ConditionStats())
    with torch.no_grad():
        for p in model.mmdit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    conds = [{"composition": "Fe2O3"}, {"composition": "NaCl"}]
    c = cfg.mmdit
    noise = torch.randn((2, c.latent_channels, c.latent_size, c.latent_size, c.latent_size),
                        generator=torch.Generator().manual_seed(0))
    fp32 = model.sample_latents(conds, 4, noise=noise)
    bf16 = model.sample_latents(conds, 4, noise=noise, precision="bf16")
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # autocast took effect
    assert ((bf16 - fp32).norm() / fp32.norm()) < 0.02
    grids = model.sample_grids(conds, 2, noise=noise, precision="bf16")
    assert grids.dtype == torch.float32 and torch.isfinite(grids).all()
    with pytest.raises(ConfigError, match="precision"):
        model.sample_latents(conds, 1, noise=noise, precision="fp16")


def test_compiled_sampler_equals_eager_within_bf16_tolerance():
    # compile_mode (issue 15): the Euler step through torch.compile (one graph, both CFG branches in one batched
    # forward) gives the eager flow up to float rounding, in float32 and under bfloat16 autocast
    import shutil

    from gpsk_materials.models import rectified_flow
    from gpsk_materials.models.conditioning import ConditionBatch, Conditions, ConditionStats
    from gpsk_materials.models.configs import CONFIGS
    from gpsk_materials.models.mmdit import MMDiT

    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("torch.compile on the CPU needs a C compiler (cc, gcc or clang) on PATH; none found")
    torch.manual_seed(0)
    cfg = CONFIGS["tiny"].mmdit
    model = MMDiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cond = ConditionBatch.from_conditions([Conditions("Fe2O3", space_group=167), Conditions("NaCl")],
                                          ConditionStats(), cfg.max_elements)
    noise = torch.randn((2, cfg.latent_channels, cfg.latent_size, cfg.latent_size, cfg.latent_size),
                        generator=torch.Generator().manual_seed(0))
    eager = rectified_flow.sample(model, cond, 4, 2.0, noise=noise)
    comp = rectified_flow.sample(model, cond, 4, 2.0, noise=noise, compile_mode="default")
    assert eager.abs().max() > 0
    assert ((comp - eager).norm() / eager.norm()) < 1e-5  # float32: rounding only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager16 = rectified_flow.sample(model, cond, 4, 2.0, noise=noise)
        comp16 = rectified_flow.sample(model, cond, 4, 2.0, noise=noise, compile_mode="default")
    assert ((comp16 - eager16).norm() / eager16.norm()) < 0.02  # bf16 tolerance, as test_bf16_sampler_...
    with pytest.raises(ConfigError, match="compile_mode"):
        rectified_flow.sample(model, cond, 1, noise=noise, compile_mode="fast")
