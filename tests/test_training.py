"""The training loop on the tiny config: featurize -> VAE -> latents -> flow -> sample -> decode, exact resume,
DDP with two gloo ranks, checkpoint errors, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gpsk_materials.datasets import ArrayCache
from gpsk_materials.errors import CheckpointError, ConfigError
from gpsk_materials.models.io import load_model_folder, load_tensors
from gpsk_materials.training import TrainConfig, Trainer
from gpsk_materials.training.checkpoint import latest_checkpoint, optimizer_from_tensors, optimizer_to_tensors
from gpsk_materials.training.ema import EMA
from gpsk_materials.training.metrics import MetricsLog

from test_datasets import toy_structures  # noqa: E402  (tests/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(toy_cache) -> ArrayCache:
    return toy_cache  # the session's toy cache (conftest.py), built once for these tests and tests/test_datasets.py


@pytest.fixture(scope="module")
def cache_path(cache, tmp_path_factory) -> Path:
    return cache.save(tmp_path_factory.mktemp("data") / "toy.npz")


def _cfg(**kw) -> TrainConfig:
    base = dict(model="tiny", vae_steps=8, flow_steps=6, batch_size=4, vae_lr=2e-3, flow_lr=1e-3, warmup_steps=2,
                log_every=1, eval_every=4, ckpt_every=3, val_fraction=0.2, val_size=4, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def _train_losses(out: Path, stage: str) -> list[float]:
    return [r["loss"] for r in MetricsLog(out / "metrics.jsonl").read() if r["stage"] == stage and r["split"] == "train"]


@pytest.mark.slow
def test_whole_loop_losses_fall_and_samples_decode(cache, tmp_path):
    cfg = _cfg(vae_steps=30, flow_steps=30, batch_size=4, eval_every=15, ckpt_every=15, val_fraction=0.15)
    assert Trainer(cache, tmp_path, cfg, progress=False).run() == "done"
    for stage in ("vae", "flow"):
        losses = _train_losses(tmp_path, stage)
        assert len(losses) == 30
        assert np.mean(losses[-8:]) < 0.75 * np.mean(losses[:8]), (stage, losses)
    val = [r for r in MetricsLog(tmp_path / "metrics.jsonl").read() if r["split"] == "val"]
    assert {r["stage"] for r in val} == {"vae", "flow"} and all("mse_metric" in r for r in val if r["stage"] == "vae")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    model = load_model_folder(tmp_path / "model", expect="tiny")
    assert model.latent_std.shape == (64,) and model.stats.count["band_gap"] > 0
    conds = [{"composition": "NaCl", "space_group": 225}, {"composition": {"Ga": 1, "As": 1}, "band_gap": 1.4}, {}]
    grids = model.sample_grids(conds, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert grids.shape == (3, 3, 32, 32, 32) and torch.isfinite(grids).all()
    from gpsk_materials.representations.decoding import ReciprocalGridDecoder
    from pymatgen.core import Structure

    decoder = ReciprocalGridDecoder()
    out, reasons = decoder.decode_many(grids, ["NaCl", "GaAs", None], return_errors=True)
    assert len(out) == 3 and all(s is None or isinstance(s, Structure) for s in out)
    # an untrained tiny model may not decode: each failure is a DecodingError whose reason is recorded
    assert all((s is None) == isinstance(err, str) and (s is not None or err) for s, err in zip(out, reasons))


def test_resumed_run_matches_uninterrupted(cache, tmp_path):
    cfg = _cfg(vae_steps=5, flow_steps=4, ckpt_every=2, eval_every=2)
    full = tmp_path / "full"
    assert Trainer(cache, full, cfg, progress=False).run() == "done"
    chunked = tmp_path / "chunked"
    status, chunks = "", 0
    while status != "done":  # max_minutes=0: every chunk does one step, checkpoints and stops
        status = Trainer(cache, chunked, cfg, max_minutes=0, progress=False).run(resume=chunks > 0)
        chunks += 1
    assert chunks == cfg.vae_steps + cfg.flow_steps - 1  # a stage's last step runs on into the next stage
    for name in ("vae", "mmdit"):
        a, _ = load_tensors(full / "model", name)
        b, _ = load_tensors(chunked / "model", name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for stage in ("vae", "flow"):
        assert _train_losses(full, stage) == _train_losses(chunked, stage)


def test_time_limit_checkpoint_contents_and_errors(cache, tmp_path):
    cfg = _cfg(vae_steps=4)
    assert Trainer(cache, tmp_path, cfg, max_minutes=0, progress=False).run() == "time_limit"
    folder = latest_checkpoint(tmp_path)
    assert folder.name == "vae-00000001"
    names = sorted(p.name for p in folder.iterdir())
    assert {"model.json", "ema.json", "optimizer.json", "rng.json", "state.json"} <= set(names)
    assert all(p.stat().st_size <= 15 * 2**20 for p in folder.iterdir())
    assert not any(n.endswith((".pt", ".pth", ".pkl")) for n in names)
    state = json.loads((folder / "state.json").read_text())
    assert state["stage"] == "vae" and state["step"] == 1 and state["batch_in_epoch"] == 1
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(cache, tmp_path, cfg, progress=False).run()
    with pytest.raises(CheckpointError, match="model config"):
        Trainer(cache, tmp_path, replace(cfg, model="default"), progress=False).run(resume=True)
    with pytest.raises(CheckpointError, match="options changed"):
        Trainer(cache, tmp_path, replace(cfg, vae_lr=1e-4), progress=False).run(resume=True)
    with pytest.raises(CheckpointError, match="data differ"):
        Trainer(cache.subset(np.arange(len(cache) - 1)), tmp_path, cfg, progress=False).run(resume=True)
    shard = folder / "optimizer-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    with pytest.raises(CheckpointError, match="truncated"):
        Trainer(cache, tmp_path, cfg, progress=False).run(resume=True)


def test_bf16_autocast_run(cache, tmp_path):
    # the CUDA default; on CPU it checks that featurizer, metric head and losses keep full precision
    cfg = _cfg(vae_steps=1, flow_steps=1, precision="bf16", eval_every=1, batch_size=2, val_size=2)
    assert Trainer(cache, tmp_path, cfg, progress=False).run() == "done"
    assert all(np.isfinite(_train_losses(tmp_path, s)).all() for s in ("vae", "flow"))


def test_optimizer_and_ema_state_roundtrip():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    meta = json.loads(json.dumps(meta))
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=5.0)
    optimizer_from_tensors(opt2, tensors, meta)
    assert opt2.param_groups[0]["lr"] == 1e-2
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(CheckpointError):
        optimizer_from_tensors(torch.optim.AdamW(torch.nn.Linear(5, 3).parameters()), tensors, meta)
    ema = EMA(model, decay=0.5)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # warm-up decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], 0.1 * before["weight"] + 0.9 * model.weight)


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=600, **kw)


def test_cli_trains_from_cache_and_from_csv(cache_path, tmp_path):
    from gpsk_materials.cli import main

    out = tmp_path / "run"
    args = ["train", "--data", str(cache_path), "--out", str(out), "--model", "tiny", "--vae-steps", "2",
            "--flow-steps", "2", "--batch-size", "4", "--no-progress", "--exclude-ids", str(tmp_path / "ids.txt")]
    (tmp_path / "ids.txt").write_text("toy-0\ntoy-1\n")
    assert main(args) == 0
    assert load_model_folder(out / "model").mmdit is not None
    assert main(args) == 1  # the folder holds a finished run and --resume was not given
    assert main([*args, "--resume"]) == 0  # nothing left to do
    # CSV source: parsed into OUT/data.npz, evaluation ids removed, then stop
    from test_datasets import _write_csv

    structures, _ = toy_structures(6)
    csv_path = tmp_path / "pool.csv"
    _write_csv(csv_path, structures, [{"band_gap": "1.0"}] * 6)
    eval_csv = tmp_path / "eval.csv"
    _write_csv(eval_csv, structures[:1], [{"band_gap": "1.0"}])
    out2 = tmp_path / "csvrun"
    r = _run([sys.executable, "-m", "gpsk_materials.training", "--data", str(csv_path), "--out", str(out2),
              "--cache-only", "--exclude-csv", str(eval_csv), "--workers", "1", "--no-progress"])
    assert r.returncode == 0, r.stderr
    built = ArrayCache.load(out2 / "data.npz")
    assert len(built) == 5 and "mp-0" not in built.material_id.tolist() and built.meta["excluded"] == 1


@pytest.mark.slow
def test_ddp_two_gloo_ranks_stay_in_sync(cache_path, tmp_path):
    out = tmp_path / "ddp"
    r = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "gpsk_materials.training", "--data", str(cache_path), "--out", str(out), "--model", "tiny",
              "--device", "cpu", "--vae-steps", "4", "--flow-steps", "4", "--batch-size", "4", "--ckpt-every", "2",
              "--warmup-steps", "1", "--no-progress"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sync = json.loads((out / "sync.json").read_text())
    assert sync["world_size"] == 2 and sync["in_sync"]
    for stage in ("vae", "flow"):
        ranks = sync["checksums"][stage]
        assert len(ranks) == 2 and ranks[0] == ranks[1] and len(ranks[0]) > 10
    assert load_model_folder(out / "model").mmdit is not None
    logged = [r["step"] for r in MetricsLog(out / "metrics.jsonl").read() if r["split"] == "train"]
    assert logged == [4, 4]  # rank 0 alone writes the (rank-averaged) log: one record per stage end


def test_init_vae_skips_the_vae_stage_and_ships_that_vae(cache, tmp_path):
    first = tmp_path / "vae_run"
    assert Trainer(cache, first, _cfg(vae_steps=4, flow_steps=2), progress=False).run() == "done"
    second = tmp_path / "flow_run"
    trainer = Trainer(cache, second, _cfg(vae_steps=4, flow_steps=3), progress=False, init_vae=first / "vae")
    assert trainer.run() == "done"
    assert not [r for r in MetricsLog(second / "metrics.jsonl").read() if r["stage"] == "vae"]
    assert len(_train_losses(second, "flow")) == 3
    shipped = json.loads((second / "model" / "vae.json").read_text())
    adopted = json.loads((first / "vae" / "vae.json").read_text())
    assert shipped["shards"] == adopted["shards"]  # the same weights, by SHA-256
    with pytest.raises(CheckpointError):
        Trainer(cache, tmp_path / "bad", _cfg(model="default"), progress=False, init_vae=first / "vae").run()


def test_init_model_fine_tunes_from_the_folders_mmdit(cache, tmp_path):
    first = tmp_path / "base"
    assert Trainer(cache, first, _cfg(vae_steps=4, flow_steps=4), progress=False).run() == "done"
    base = load_model_folder(first / "model")
    # zero steps: the exported flow must be the adopted MMDiT itself (its EMA starts from those weights)
    zero = tmp_path / "zero"
    assert Trainer(cache, zero, _cfg(flow_steps=0), progress=False, init_model=first / "model").run() == "done"
    same = load_model_folder(zero / "model")
    for k, v in base.mmdit.state_dict().items():
        assert torch.equal(same.mmdit.state_dict()[k], v), k
    tuned = tmp_path / "tuned"
    assert Trainer(cache, tuned, _cfg(flow_steps=3), progress=False, init_model=first / "model").run() == "done"
    assert not [r for r in MetricsLog(tuned / "metrics.jsonl").read() if r["stage"] == "vae"]
    moved = load_model_folder(tuned / "model").mmdit.state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in base.mmdit.state_dict().items())
    with pytest.raises(CheckpointError, match="holds no MMDiT"):
        Trainer(cache, tmp_path / "novae", _cfg(flow_steps=1), progress=False, init_model=first / "vae").run()
    with pytest.raises(ValueError, match="not both"):
        Trainer(cache, tmp_path / "both", _cfg(), progress=False, init_vae=first / "vae", init_model=first / "model")


def test_compact_optimizer_state_is_bf16_and_loads_back():
    from gpsk_materials.training.checkpoint import optimizer_from_tensors, optimizer_to_tensors

    model = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt, torch.bfloat16)
    moments = {k: v for k, v in tensors.items() if v.ndim}
    assert moments and all(v.dtype == torch.bfloat16 for v in moments.values())
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    optimizer_from_tensors(fresh, tensors, meta)
    st = fresh.state_dict()["state"][0]
    assert st["exp_avg"].dtype == torch.float32  # cast back to the parameters' type
    torch.testing.assert_close(st["exp_avg"], opt.state_dict()["state"][0]["exp_avg"], rtol=1e-2, atol=1e-6)


def test_export_is_written_at_the_time_limit_and_training_continues_from_it(cache, tmp_path):
    """The time-limited-machine procedure: a run stopped by --max-minutes leaves a weights-only export (EMA weights as
    a model folder); a fresh run on another machine starts each stage from it with a fresh optimizer and warm-up."""
    first = tmp_path / "first"
    stopped = Trainer(cache, first, _cfg(vae_steps=50, export_minutes=30.0), progress=False, max_minutes=1e-9)
    assert stopped.run() == "time_limit"
    export = load_model_folder(first / "export")
    info = json.loads((first / "export" / "config.json").read_text())["export"]
    assert export.mmdit is None and info["stage"] == "vae" and info["step"] == stopped.step == 1
    assert info["data_fingerprint"] == stopped.fingerprint

    # the next run's VAE stage starts from exactly the exported (EMA) weights
    second = tmp_path / "second"
    cfg = _cfg(vae_steps=3, flow_steps=2, warmup_steps=3, export_minutes=30.0)
    resumed = Trainer(cache, second, cfg, progress=False, init_weights=first / "export")
    model, *_ = resumed.stage_objects("vae")
    resumed._initial_weights("vae", model)
    for k, v in export.vae.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert resumed.run() == "done"
    lrs = [r["lr"] for r in MetricsLog(second / "metrics.jsonl").read() if r["split"] == "train" and r["stage"] == "vae"]
    assert lrs[0] == pytest.approx(cfg.vae_lr * 2 / 3)  # fresh schedule: the rate after warm-up step 1 of 3
    # at the end of the flow stage the export is the complete model (bf16 MMDiT), as model/ is (float32)
    final = load_model_folder(second / "export")
    assert json.loads((second / "export" / "config.json").read_text())["export"]["stage"] == "flow"
    for k, v in load_model_folder(second / "model").mmdit.state_dict().items():
        torch.testing.assert_close(final.mmdit.state_dict()[k].float(), v.float(), rtol=1e-2, atol=1e-2)

    # a flow-stage export continues the flow from its MMDiT; with vae_steps=0 its VAE is adopted as it is
    third = tmp_path / "third"
    Trainer(cache, third, _cfg(vae_steps=0, flow_steps=0), progress=False, init_weights=second / "export").run()
    assert json.loads((third / "model" / "vae.json").read_text())["shards"] == \
        json.loads((second / "export" / "vae.json").read_text())["shards"]
    for k, v in final.mmdit.state_dict().items():
        torch.testing.assert_close(load_model_folder(third / "model").mmdit.state_dict()[k], v.float()), k
    with pytest.raises(ValueError, match="not both"):
        Trainer(cache, tmp_path / "x", _cfg(), progress=False, init_vae=first / "export", init_weights=first / "export")


def test_export_every_few_minutes_is_atomic_and_current(cache, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import gpsk_materials.training.trainer as trainer_module

    clock = iter(range(0, 10**6, 61))  # each look at the trainer's clock is 61 s later: an export is due every step
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    trainer = Trainer(cache, tmp_path, _cfg(vae_steps=4, flow_steps=0, export_minutes=1.0), progress=False)
    exported = []
    real_export = trainer.export

    def export(stage, ema, ctx):
        exported.append(trainer.step)
        return real_export(stage, ema, ctx)

    monkeypatch.setattr(trainer, "export", export)
    assert trainer.run() == "done"
    assert exported[:4] == [1, 2, 3, 4]  # due at every step, plus the stage-end export
    info = json.loads((tmp_path / "export" / "config.json").read_text())["export"]
    assert info["stage"] == "vae" and info["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []  # no half-written folder


def test_vae_shell_weight_adds_the_shell_term_and_old_checkpoints_still_resume(cache, tmp_path):
    trainer = Trainer(cache, tmp_path / "shell", _cfg(vae_steps=2, flow_steps=0, vae_shell_weight=1.0), progress=False)
    assert trainer.run() == "done"
    train = [r for r in MetricsLog(tmp_path / "shell" / "metrics.jsonl").read() if r["stage"] == "vae"]
    assert all(r["shell"] >= 0 for r in train) and any(r["split"] == "train" and "shell" in r for r in train)
    # a checkpoint written before an option existed resumes with that option at its default
    out = tmp_path / "old"
    assert Trainer(cache, out, _cfg(vae_steps=6, ckpt_every=3), progress=False, max_minutes=1e-9).run() == "time_limit"
    state_file = latest_checkpoint(out) / "state.json"
    state = json.loads(state_file.read_text())
    del state["train_config"]["vae_shell_weight"]
    state_file.write_text(json.dumps(state))
    assert Trainer(cache, out, _cfg(vae_steps=6, ckpt_every=3), progress=False).run(resume=True) == "done"
    with pytest.raises(CheckpointError, match="vae_shell_weight"):
        Trainer(cache, out, _cfg(vae_steps=6, ckpt_every=3, vae_shell_weight=0.5), progress=False).run(resume=True)


def test_jittered_grids_move_every_site_by_the_set_distance_and_the_jitter_term_trains(cache, tmp_path):
    """--vae-jitter-weight: the displaced copies are the rows' own crystals with every site moved by exactly
    --vae-jitter Å (same lattice), the term is 0 for identical latents and 1 for unrelated ones, and a run with
    it logs the term on train and validation rows."""
    from gpsk_materials.representations.reciprocal import featurize_batch
    from gpsk_materials.training.trainer import jitter_distance

    cfg = _cfg(vae_steps=3, flow_steps=0, vae_jitter=0.2, vae_jitter_weight=1.0)
    trainer = Trainer(cache, tmp_path / "jitter", cfg, progress=False)
    idx = torch.arange(3)
    lattice, frac = trainer.lattice[idx], trainer.frac[idx]
    seen = {}

    def spy(lat, fr, numbers, occupancy):
        seen["frac"] = fr
        return featurize_batch(lat, fr, numbers, occupancy)

    import gpsk_materials.representations.reciprocal as reciprocal

    original = reciprocal.featurize_batch
    reciprocal.featurize_batch = spy
    try:
        moved = trainer.jittered_grids(idx)
    finally:
        reciprocal.featurize_batch = original
    step = torch.einsum("bnf,bfc->bnc", seen["frac"] - frac, lattice)
    real = trainer.occupancy[idx] > 0
    assert torch.allclose(step.norm(dim=-1)[real], torch.full_like(step.norm(dim=-1)[real], 0.2), atol=1e-4)
    clean = trainer.grids(idx)
    assert moved.shape == clean.shape and not torch.allclose(moved[:, :2], clean[:, :2], atol=1e-3)
    assert torch.allclose(moved[:, 2], clean[:, 2])  # the metric channel depends on the lattice alone

    g = torch.Generator().manual_seed(0)
    z, other = torch.randn(2, 64, 8, 4, 4, 4, generator=g)
    assert float(jitter_distance(torch.cat([z, z]), 64)) == 0.0
    assert abs(float(jitter_distance(torch.cat([z, other]), 64)) - 1.0) < 0.05

    assert trainer.run() == "done"
    rows = [r for r in MetricsLog(tmp_path / "jitter" / "metrics.jsonl").read() if r["stage"] == "vae"]
    assert {r["split"] for r in rows if "jitter" in r} == {"train", "val"}
    assert all(np.isfinite(r["jitter"]) and r["jitter"] >= 0 for r in rows if "jitter" in r)
    with pytest.raises(ValueError, match="vae_jitter"):
        _cfg(vae_jitter=0.0, vae_jitter_weight=1.0).check()


def test_a_deeper_vae_grows_from_a_trained_one_and_computes_the_same(cache, tmp_path, monkeypatch):
    """--model with more VAE blocks per level + --init-weights: the grown VAE starts exactly where the trained one
    was (added residual blocks are identities), then trains; any other config change is refused."""
    from dataclasses import replace

    from gpsk_materials.models.configs import CONFIGS
    from gpsk_materials.models.growth import deepen_vae

    first = tmp_path / "first"
    Trainer(cache, first, _cfg(vae_steps=2, flow_steps=1), progress=False).run()
    trained = load_model_folder(first / "model")

    tiny = CONFIGS["tiny"]
    deep = replace(tiny, name="tiny-deep", vae=replace(tiny.vae, blocks_per_level=2))
    monkeypatch.setitem(CONFIGS, "tiny-deep", deep)
    grown = deepen_vae(trained.vae, deep.vae).eval()
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in trained.vae.parameters())
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    grids = torch.as_tensor(ReciprocalGridFeaturizer().featurize_many(toy_structures()[0][:3])).float()
    with torch.no_grad():
        a, b = trained.vae.encode(grids), grown.encode(grids)
        assert torch.allclose(a.mean, b.mean, atol=1e-5) and torch.allclose(a.logvar, b.logvar, atol=1e-5)
        assert torch.allclose(trained.vae.decode(a.mean), grown.decode(a.mean), atol=1e-5)

    second = tmp_path / "second"
    run = Trainer(cache, second, _cfg(model="tiny-deep", vae_steps=2, flow_steps=1), progress=False,
                  init_weights=first / "model")
    model, *_ = run.stage_objects("vae", initial=True)
    with torch.no_grad():
        assert torch.allclose(model.eval().encode(grids).mean, a.mean, atol=1e-5)  # starts where the trained VAE was
    assert run.run() == "done"
    assert load_model_folder(second / "model").config.vae.blocks_per_level == 2

    wider = replace(tiny, name="tiny-wide", vae=replace(tiny.vae, channels=(8, 16, 48)))
    monkeypatch.setitem(CONFIGS, "tiny-wide", wider)
    with pytest.raises(CheckpointError, match="cannot start from"):
        Trainer(cache, tmp_path / "third", _cfg(model="tiny-wide"), progress=False,
                init_weights=first / "model").stage_objects("vae", initial=True)


def test_a_vae_with_fewer_latent_channels_starts_from_the_trained_ones_principal_directions(cache, tmp_path,
                                                                                            monkeypatch):
    """--model with fewer latent channels + --init-weights: the new VAE's code is the trained latent projected onto
    its top principal channel directions, and it decodes that code as the trained VAE decodes the projection; the
    run then trains both stages on the new latent. A compressed code of all but one channel keeps most variance."""
    from dataclasses import replace

    from gpsk_materials.models.configs import CONFIGS
    from gpsk_materials.models.growth import can_compress, channel_pca, compress_vae
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    first = tmp_path / "first"
    Trainer(cache, first, _cfg(vae_steps=2, flow_steps=1), progress=False).run()
    trained = load_model_folder(first / "model").vae.eval()
    tiny = CONFIGS["tiny"]
    k = 8
    small = replace(tiny, name="tiny-compact", vae=replace(tiny.vae, latent_channels=k, kl_weight=1e-4),
                    mmdit=replace(tiny.mmdit, latent_channels=k))
    monkeypatch.setitem(CONFIGS, "tiny-compact", small)
    assert can_compress(trained.config, small.vae) and not can_compress(small.vae, trained.config)

    grids = torch.as_tensor(ReciprocalGridFeaturizer().featurize_many(toy_structures()[0][:3])).float()
    with torch.no_grad():
        z = trained.encode(grids).mean
        mean, vals, vecs = channel_pca(z)
        assert torch.all(vals[:-1] >= vals[1:]) and torch.allclose(vecs.T @ vecs, torch.eye(len(vals), dtype=vecs.dtype),
                                                                    atol=1e-8)
        new = compress_vae(trained, small.vae, mean, vecs[:, :k]).eval()
        y = new.encode(grids).mean
        assert y.shape == (3, k, 8, 8, 8)
        m = mean.float().view(1, -1, 1, 1, 1)
        P = vecs[:, :k].float()
        assert torch.allclose(y, torch.einsum("bc...,ck->bk...", z - m, P), atol=1e-4)
        projected = m + torch.einsum("bk...,ck->bc...", y, P)
        assert torch.allclose(new.decode(y), trained.decode(projected), atol=1e-4)
        assert not torch.allclose(new.decode(y), trained.decode(z), atol=1e-4)  # k < C loses something
    with pytest.raises(CheckpointError, match="only latent_channels may shrink"):
        compress_vae(trained, replace(small.vae, channels=(8, 16, 48)), mean, vecs[:, :k])
    with pytest.raises(CheckpointError, match="needs mean"):
        compress_vae(trained, small.vae, mean, vecs[:, : k + 1])

    second = tmp_path / "second"
    run = Trainer(cache, second, _cfg(model="tiny-compact", vae_steps=2, flow_steps=1), progress=False,
                  init_weights=first / "model")
    model, *_ = run.stage_objects("vae", initial=True)
    with torch.no_grad():
        start = model.eval().encode(grids).mean  # directions from the training rows, so equal up to sign and order
        assert start.shape == (3, k, 8, 8, 8)
        assert torch.isfinite(start).all()
    assert run.run() == "done"
    done = load_model_folder(second / "model")
    assert done.config.vae.latent_channels == k and done.config.vae.kl_weight == 1e-4
    # with no VAE steps the compressed VAE is adopted as it starts, and the flow trains on its latents
    third = tmp_path / "third"
    assert Trainer(cache, third, _cfg(model="tiny-compact", vae_steps=0, flow_steps=1), progress=False,
                   init_weights=first / "model").run() == "done"
    adopted = load_model_folder(third / "model")
    assert adopted.config.vae.latent_channels == k
    with torch.no_grad():  # the same compression as the VAE stage started from (same training rows)
        assert torch.allclose(adopted.vae.eval().encode(grids).mean, start, atol=1e-5)


def test_a_wider_mmdit_adopts_the_folders_vae_and_trains_its_flow_from_scratch(cache, tmp_path, monkeypatch):
    """--model with another MMDiT + --init-weights (no VAE steps): the folder's VAE is adopted unchanged, the flow
    model starts fresh, and the result is a complete folder of the new config; --init-model still refuses."""
    from dataclasses import replace

    from gpsk_materials.models.configs import CONFIGS

    first = tmp_path / "first"
    Trainer(cache, first, _cfg(vae_steps=2, flow_steps=1), progress=False).run()
    tiny = CONFIGS["tiny"]
    wider = replace(tiny, name="tiny-widemmdit", mmdit=replace(tiny.mmdit, hidden=96))
    monkeypatch.setitem(CONFIGS, "tiny-widemmdit", wider)
    second = tmp_path / "second"
    assert Trainer(cache, second, _cfg(model="tiny-widemmdit", vae_steps=0, flow_steps=2), progress=False,
                   init_weights=first / "model").run() == "done"
    old, new = load_model_folder(first / "model"), load_model_folder(second / "model")
    assert new.config.mmdit.hidden == 96
    for (k, a), (_, b) in zip(old.vae.state_dict().items(), new.vae.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match="cannot start from"):
        Trainer(cache, tmp_path / "third", _cfg(model="tiny-widemmdit", vae_steps=0), progress=False,
                init_model=first / "model").run()


def test_anneal_to_deadline_decays_over_the_time_left(cache, tmp_path, monkeypatch):
    """With anneal_to_deadline the last stage's cosine follows the fraction of the time budget spent, so a run that
    its time limit stops ends at the floor learning rate although its step count was far from done."""
    from gpsk_materials.errors import ConfigError
    from gpsk_materials.training.trainer import lr_lambda

    f = lr_lambda(0, 1000, lambda: 1.0)
    assert f(1) == pytest.approx(0.1)
    assert lr_lambda(0, 1000, lambda: 0.0)(1) == pytest.approx(lr_lambda(0, 1000)(1))
    assert lr_lambda(0, 1000, lambda: 0.0)(1000) == pytest.approx(0.1)  # the step count still caps it
    with pytest.raises(ConfigError, match="time limit"):
        Trainer(cache, tmp_path / "x", _cfg(anneal_to_deadline=True), progress=False)

    clock = [0.0]
    monkeypatch.setattr("gpsk_materials.training.trainer.time.monotonic", lambda: clock[0])
    orig = Trainer.train_step

    def step(self, *a, **k):  # every optimizer step takes 3 s of the run's 60 s
        clock[0] += 3.0
        return orig(self, *a, **k)

    monkeypatch.setattr(Trainer, "train_step", step)
    run = Trainer(cache, tmp_path / "run", _cfg(vae_steps=0, flow_steps=10_000, anneal_to_deadline=True,
                                               ckpt_every=10_000, eval_every=10_000), progress=False, max_minutes=1.0)
    assert run.run() == "time_limit"
    lrs = [r["lr"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read()
           if r["stage"] == "flow" and r["split"] == "train"]
    assert 10 < len(lrs) < 25
    assert lrs[-1] < 0.2 * 1e-3 < lrs[2]  # flow_lr 1e-3: from the peak to near the 10 % floor within the budget


def test_anneal_to_deadline_resumes_where_its_budget_stood(cache, tmp_path, monkeypatch):
    """A run stopped early (a lost machine) and resumed with the time its first run had left continues the anneal
    from the fraction of the budget its checkpoint had spent: no jump back to the peak, annealed at the deadline."""
    clock = [0.0]
    monkeypatch.setattr("gpsk_materials.training.trainer.time.monotonic", lambda: clock[0])
    orig = Trainer.train_step

    class Lost(Exception):
        pass

    def step(self, *a, **k):  # 3 s a step; the first run's machine is lost at 24 s
        clock[0] += 3.0
        if lost[0] and clock[0] > 24.0:
            raise Lost
        return orig(self, *a, **k)

    monkeypatch.setattr(Trainer, "train_step", step)
    cfg = _cfg(vae_steps=0, flow_steps=10_000, anneal_to_deadline=True, ckpt_every=5, eval_every=10_000)
    lost = [True]
    with pytest.raises(Lost):
        Trainer(cache, tmp_path / "run", cfg, progress=False, max_minutes=1.0).run()
    first = {r["step"]: r["lr"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read()
             if r["stage"] == "flow" and r["split"] == "train"}
    lost[0], clock[0] = False, 1000.0  # resumed later, with what the first run's limit had left after step 5
    resumed = Trainer(cache, tmp_path / "run", cfg, progress=False, max_minutes=(60.0 - 15.0) / 60)
    assert resumed.run(resume=True) == "time_limit"
    lrs = {r["step"]: r["lr"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read()
           if r["stage"] == "flow" and r["split"] == "train"}
    assert [lrs[s] for s in range(1, 6)] == [first[s] for s in range(1, 6)]  # the log is cut at the checkpoint
    # the resumed steps follow the lost run's rates (a restarted budget would give ~1e-3 again)
    assert lrs[6] == pytest.approx(first[6]) and lrs[7] == pytest.approx(first[7], rel=0.02) and lrs[6] < 0.75e-3
    assert max(lrs[s] for s in lrs if s > 5) <= lrs[5] + 1e-9
    assert lrs[max(lrs)] < 0.2 * 1e-3 and 10 < max(lrs) < 25  # annealed at the original deadline


def test_space_to_depth_and_depth_to_space_are_inverse_and_keep_each_block_together():
    from gpsk_materials.models.vae import depth_to_space, space_to_depth

    x = torch.randn(2, 3, 8, 8, 8)
    y = space_to_depth(x)
    assert y.shape == (2, 24, 4, 4, 4)
    assert torch.equal(depth_to_space(y), x)
    # channel c * 8 + i * 4 + j * 2 + k of block (a, b, d) holds voxel (2a + i, 2b + j, 2d + k)
    assert y[1, 2 * 8 + 1 * 4 + 0 * 2 + 1, 3, 2, 1] == x[1, 2, 7, 4, 3]


def test_subvoxel_branches_grow_from_a_trained_vae_and_a_frozen_encoder_keeps_the_latent(cache, tmp_path,
                                                                                          monkeypatch):
    """--model with subvoxel=True + --init-weights: the VAE starts exactly where the trained one was (the branches
    start at zero); --vae-freeze-encoder trains the decoder and its new head while the encoder stays put."""
    from dataclasses import replace

    from gpsk_materials.models.configs import CONFIGS
    from gpsk_materials.models.growth import add_subvoxel, can_add_subvoxel
    from gpsk_materials.representations.reciprocal import ReciprocalGridFeaturizer

    first = tmp_path / "first"
    Trainer(cache, first, _cfg(vae_steps=2, flow_steps=1), progress=False).run()
    trained = load_model_folder(first / "model")
    tiny = CONFIGS["tiny"]
    sub = replace(tiny, name="tiny-subvoxel", vae=replace(tiny.vae, subvoxel=True))
    monkeypatch.setitem(CONFIGS, "tiny-subvoxel", sub)
    assert can_add_subvoxel(tiny.vae, sub.vae) and not can_add_subvoxel(sub.vae, tiny.vae)
    grown = add_subvoxel(trained.vae, sub.vae).eval()
    grids = torch.as_tensor(ReciprocalGridFeaturizer().featurize_many(toy_structures()[0][:3])).float()
    with torch.no_grad():
        a, b = trained.vae.encode(grids), grown.encode(grids)
        assert torch.allclose(a.mean, b.mean, atol=1e-6)
        assert torch.allclose(trained.vae.decode(a.mean), grown.decode(a.mean), atol=1e-6)
    with pytest.raises(CheckpointError, match="sub-voxel"):
        add_subvoxel(trained.vae, replace(sub.vae, channels=(8, 16, 48)))
    with pytest.raises(ConfigError, match="subvoxel"):
        replace(sub, vae=replace(sub.vae, domain="reciprocal"))

    second = tmp_path / "second"
    run = Trainer(cache, second, _cfg(model="tiny-subvoxel", vae_steps=3, flow_steps=1, vae_freeze_encoder=True),
                  progress=False, init_weights=first / "model")
    assert run.run() == "done"
    after = load_model_folder(second / "model")
    assert after.config.vae.subvoxel and after.mmdit is not None
    with torch.no_grad():
        assert torch.allclose(after.vae.encode(grids).mean, a.mean, atol=1e-6)  # the latent is unchanged
        assert after.vae.dec_subvoxel[-1].weight.abs().sum() > 0  # the new head trained
        assert not torch.allclose(after.vae.decode(a.mean), trained.vae.decode(a.mean), atol=1e-4)
