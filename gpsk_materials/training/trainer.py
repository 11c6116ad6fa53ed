"""The GPSK-300 trainer: GridVAE stage, latent caching, rectified-flow MMDiT stage, export of a model folder.

Runs from an :class:`~gpsk_materials.datasets.cache.ArrayCache` with torch + numpy + safetensors only: grids are
featurised on the fly on the training device with the batched torch featurizer. Every stage is resumable
exactly (weights, EMA, optimizer, scheduler, data order and every rank's RNG are checkpointed), and
``max_minutes`` stops cleanly after a checkpoint so that training can run in time-limited chunks.

Output folder::

    OUT/checkpoints/<stage>-<step>/   resumable state (latest two kept; OUT/latest.json points at the newest)
    OUT/vae/                          model folder with the EMA VAE (after the VAE stage)
    OUT/latents.json + shards         posterior-mean latents of train + val rows (float16), with their statistics
    OUT/model/                        final model folder (EMA VAE + EMA MMDiT + statistics) for sampling
    OUT/export/                       weights-only export of the stage in progress (``export_minutes``): EMA weights
                                      as a model folder, the file a time-limited machine sends back
    OUT/metrics.jsonl, OUT/curves.png metrics log and plot
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from gpsk_materials.atomic_files import write_folder_atomic, write_json_atomic
from gpsk_materials.datasets.cache import ArrayCache
from gpsk_materials.datasets.splits import split_indices
from gpsk_materials.errors import CheckpointError, ConfigError, DataError
from gpsk_materials.models import rectified_flow as rf
from gpsk_materials.models.conditioning import ConditionBatch, ConditionStats, drop_modalities
from gpsk_materials.models.configs import ModelConfig, VAEConfig, check_fields, get_config
from gpsk_materials.models.growth import (
    add_subvoxel,
    can_add_subvoxel,
    can_compress,
    can_deepen,
    channel_pca,
    compress_vae,
    deepen_vae,
)
from gpsk_materials.models.io import (
    load_model_folder,
    load_module_weights,
    load_tensors,
    module_tensors,
    read_json,
    save_model_folder,
    save_tensors,
)
from gpsk_materials.models.mmdit import MMDiT
from gpsk_materials.models.vae import GridVAE
from gpsk_materials.training import distributed as D
from gpsk_materials.training.checkpoint import (
    checkpoint_candidates,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint,
)
from gpsk_materials.training.ema import EMA
from gpsk_materials.training.metrics import MetricsLog, plot_curves
from gpsk_materials.vocabulary import SCALARS

logger = logging.getLogger(__name__)

STAGES = ("vae", "latents", "flow", "done")
#: training rows whose latents set the principal channel directions when a VAE is compressed to fewer channels
COMPRESS_SAMPLE = 2048
#: TrainConfig fields that may change between a checkpoint and its resumption without breaking exactness
MUTABLE = {"log_every", "eval_every", "ckpt_every", "compile", "keep_checkpoints", "val_size", "compact_checkpoints",
           "export_minutes", "channels_last"}


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved with every checkpoint)."""

    model: str = "default"
    vae_steps: int = 20_000
    flow_steps: int = 60_000
    batch_size: int = 64
    flow_batch_size: int | None = None
    vae_lr: float = 2e-4
    flow_lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    cond_dropout: float = 0.1
    cond_drop_all: float = 0.1
    cond_composition_only: float = 0.3
    timestep_schedule: str = "logit_normal"
    val_fraction: float = 0.05
    split_by: str = "material_id"
    seed: int = 0
    precision: str = "auto"
    log_every: int = 20
    eval_every: int = 500
    ckpt_every: int = 1000
    val_size: int = 256
    compile: bool = False
    keep_checkpoints: int = 2
    compact_checkpoints: bool = False
    export_minutes: float | None = None
    channels_last: bool = False
    vae_shell_weight: float = 0.0
    vae_jitter: float = 0.05
    vae_jitter_weight: float = 0.0
    vae_freeze_encoder: bool = False
    anneal_to_deadline: bool = False

    def check(self) -> None:
        """Raise :class:`ConfigError` (a ``ValueError``) naming the first invalid field."""
        check_fields(self)
        get_config(self.model)
        if self.batch_size < 1 or (self.flow_batch_size or 1) < 1 or self.vae_steps < 0 or self.flow_steps < 0:
            raise ConfigError("batch sizes must be >= 1 and step counts >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if not (0.0 <= self.cond_drop_all and 0.0 <= self.cond_composition_only
                and self.cond_drop_all + self.cond_composition_only < 1.0):
            raise ConfigError("cond_drop_all and cond_composition_only must be >= 0 with a sum below 1, got "
                              f"{self.cond_drop_all} and {self.cond_composition_only}")
        if self.export_minutes is not None and not self.export_minutes > 0:
            raise ConfigError(f"export_minutes must be > 0, got {self.export_minutes}")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.vae_jitter > 0 and self.vae_jitter_weight >= 0):
            raise ConfigError(f"vae_jitter must be > 0 and vae_jitter_weight >= 0, got {self.vae_jitter} and "
                              f"{self.vae_jitter_weight}")


def cache_fingerprint(cache: ArrayCache) -> str:
    """SHA-256 over ids and structure arrays: a resumed run must see the same data."""
    h = hashlib.sha256()
    h.update("\n".join(cache.material_id.tolist()).encode())
    for name in ("lattice", "frac_coords", "numbers", "occupancy", "band_gap", "formation_energy", "e_above_hull",
                 "space_group", "magnetic_ordering"):
        h.update(np.ascontiguousarray(getattr(cache, name)).tobytes())
    return h.hexdigest()


def lr_lambda(warmup: int, total: int, progress_floor: Callable[[], float] | None = None):
    """Linear warm-up, then cosine decay to 10% of the peak.

    ``progress_floor`` (optional) returns a fraction in [0, 1] that the decay's progress never falls below: the
    fraction of a time budget already spent, so that a run stopped by its time limit ends annealed.
    """

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if progress_floor is not None:
            progress = max(progress, min(1.0, progress_floor()))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class Trainer:
    """Train GridVAE then MMDiT on an array cache; see the module docstring for the output layout.

    Parameters
    ----------
    cache
        Training data (evaluation materials already removed).
    out
        Output folder.
    config
        Hyper-parameters.
    info
        Rank and device (:func:`gpsk_materials.training.distributed.setup`).
    max_minutes
        Stop cleanly (checkpoint, return ``"time_limit"``) once this much wall time has passed.
    progress
        Show progress bars on rank 0.
    init_vae
        Model folder whose VAE a fresh run adopts (the VAE stage is skipped).
    init_model
        Model folder to fine-tune: its VAE is adopted and the flow stage starts from its MMDiT weights (with a
        fresh optimizer and learning-rate schedule), e.g. to continue training a shipped model in time-limited chunks.
    init_weights
        Model folder or weights-only export (``OUT/export`` of an earlier run) to continue from: every stage with
        steps > 0 starts from the folder's weights for it (VAE stage from its VAE, flow stage from its MMDiT when it
        has one), with a fresh optimizer and ``warmup_steps`` of linear warm-up; with ``vae_steps=0`` its VAE is
        adopted as it is (or, for a config with fewer latent channels, compressed as the VAE stage would start). This is how training continues on a new machine when only an export came back.

    Raises
    ------
    ValueError
        For more than one of ``init_vae``, ``init_model``, ``init_weights``, or an invalid ``config``.
    CheckpointError
        (from :meth:`run`) for an init folder of another model config, or a missing or corrupted one.
    """

    def __init__(self, cache: ArrayCache, out: str | Path, config: TrainConfig, info: D.DistInfo | None = None,
                 max_minutes: float | None = None, progress: bool = True, init_vae: str | Path | None = None,
                 init_model: str | Path | None = None, init_weights: str | Path | None = None):
        config.check()
        if sum(x is not None for x in (init_vae, init_model, init_weights)) > 1:
            raise ConfigError("init_vae, init_model and init_weights exclude each other: give one, not both "
                             "(init_model and init_weights adopt the folder's VAE too)")
        self.init_model = None if init_model is None else Path(init_model)
        self.init_vae = self.init_model if init_vae is None else Path(init_vae)
        self.init_weights = None if init_weights is None else Path(init_weights)
        if self.init_weights is not None and config.vae_steps == 0:
            self.init_vae = self.init_weights  # nothing to train on the VAE: adopt it as it is
        # the folder each stage's weights start from in a fresh run
        self.stage_init = {"vae": self.init_weights if config.vae_steps > 0 else None,
                           "flow": self.init_model or self.init_weights}
        self.cache, self.out, self.cfg = cache, Path(out), config
        self.info = info or D.DistInfo()
        self.model_config: ModelConfig = get_config(config.model)
        self.max_seconds = None if max_minutes is None else 60.0 * max_minutes
        if config.anneal_to_deadline and self.max_seconds is None:
            raise ConfigError("anneal_to_deadline needs a time limit (max_minutes)")
        self._time_progress = 0.0  # fraction of the last stage's time budget spent (anneal_to_deadline)
        self.progress = progress and self.info.is_main
        self.device = self.info.device
        self.t0 = time.monotonic()
        self.log = MetricsLog(self.out / "metrics.jsonl", enabled=self.info.is_main)
        for b in {config.batch_size, config.flow_batch_size or config.batch_size}:
            if b % self.info.world_size:
                raise ConfigError(f"batch size {b} is not divisible by {self.info.world_size} ranks")
        splits = split_indices(cache, {"train": 1 - config.val_fraction, "val": config.val_fraction}, config.seed, config.split_by)
        self.train_idx, self.val_idx = splits["train"], splits["val"][: config.val_size]
        if len(self.train_idx) < max(config.batch_size, config.flow_batch_size or 0):
            raise DataError(f"{len(self.train_idx)} training rows are fewer than the batch size")
        self.fingerprint = cache_fingerprint(cache)
        self.stats = ConditionStats.fit({k: v[self.train_idx] for k, v in cache.labels().items()})
        use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_bf16)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # the whole cache lives on the device; batches are gathered by index and featurised there
        t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt, device=self.device)  # noqa: E731
        self.lattice = t(cache.lattice, torch.float32)
        self.frac = t(cache.frac_coords, torch.float32)
        self.numbers = t(cache.numbers, torch.long)
        self.occupancy = t(cache.occupancy, torch.float32)
        self.space_group = t(cache.space_group, torch.long)
        self.magnetic = t(cache.magnetic_ordering, torch.long)
        self.scalars = t(np.stack([self.stats.normalize(k, getattr(cache, k)) for k in SCALARS], 1), torch.float32)
        self.stage, self.step, self.epoch, self.batch_in_epoch = "vae", 0, 0, 0
        self.gen = torch.Generator(device=self.device).manual_seed(config.seed * 1000 + self.info.rank)
        self.last_export = time.monotonic()
        self._eval_models: dict[str, nn.Module] = {}
        self.rank_checksums: dict[str, list[list[float]]] = {}

    # ------------------------------------------------------------------ data
    def grids(self, idx: Tensor) -> Tensor:
        """Featurise cache rows ``idx`` on the device -> (B, 3, 32, 32, 32)."""
        from gpsk_materials.representations.reciprocal import featurize_batch

        with torch.autocast(self.device.type, enabled=False):  # the featurizer needs full precision
            return featurize_batch(self.lattice[idx], self.frac[idx], self.numbers[idx], self.occupancy[idx])

    def jittered_grids(self, idx: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """The grids of cache rows ``idx`` with every site displaced by ``TrainConfig.vae_jitter`` Å in a random
        direction (drawn from ``gen``, default the trainer's generator) -> (B, 3, 32, 32, 32), the setting held
        fixed."""
        from gpsk_materials.representations.reciprocal import featurize_batch

        lattice, frac = self.lattice[idx], self.frac[idx]
        step = torch.randn(frac.shape, generator=self.gen if gen is None else gen, device=frac.device,
                           dtype=frac.dtype)
        step = self.cfg.vae_jitter * step / step.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # Cartesian rows r = f L, so a Cartesian step d is the fractional step d L^-1
        frac = frac + torch.linalg.solve(lattice.transpose(-1, -2), step.transpose(-1, -2)).transpose(-1, -2)
        with torch.autocast(self.device.type, enabled=False):
            return featurize_batch(lattice, frac, self.numbers[idx], self.occupancy[idx])

    def conditions(self, idx: Tensor) -> ConditionBatch:
        return ConditionBatch.from_labels(
            self.numbers[idx], self.occupancy[idx], self.space_group[idx], self.scalars[idx], self.magnetic[idx],
            self.model_config.mmdit.max_elements,
        )

    def next_batch(self) -> Tensor:
        """This rank's share of the next global batch (deterministic in seed, stage, epoch and position)."""
        b, w, r = self.cfg.batch_size, self.info.world_size, self.info.rank
        if self.stage == "flow" and self.cfg.flow_batch_size:
            b = self.cfg.flow_batch_size  # a flow step on cached latents is ~30x cheaper than a VAE step
        n_batches = len(self.train_idx) // b
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + STAGES.index(self.stage) * 10_007 + self.epoch)
        perm = torch.randperm(len(self.train_idx), generator=g)
        start = self.batch_in_epoch * b + r * (b // w)
        rows = torch.as_tensor(self.train_idx)[perm[start : start + b // w]]
        self.batch_in_epoch += 1
        if self.batch_in_epoch == n_batches:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return rows.to(self.device)

    # ------------------------------------------------------------------ bookkeeping
    def time_is_up(self) -> bool:
        over = self.max_seconds is not None and time.monotonic() - self.t0 > self.max_seconds
        return D.any_flag(over, self.info)

    def _state(self, **extra: Any) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_config": asdict(self.cfg),
            "model_config": self.model_config.to_dict(),
            "data_fingerprint": self.fingerprint,
            "condition_stats": self.stats.to_dict(),
            "world_size": self.info.world_size,
            "time_progress": self._time_progress,
            **extra,
        }

    def checkpoint(self, model: nn.Module | None = None, ema: EMA | None = None,
                   opt: torch.optim.Optimizer | None = None, sched=None) -> None:
        """Save the resumable state of the current stage (collective: every rank must call it)."""
        rng = D.gather_objects(self.gen.get_state(), self.info)
        if model is not None and self.info.enabled:
            D.assert_in_sync(model, self.info)
        if not self.info.is_main:
            D.barrier(self.info)
            return
        sets: dict[str, dict[str, Tensor]] = {"rng": {f"rank{r}": s for r, s in enumerate(rng)}}
        extra: dict[str, Any] = {}
        if model is not None:
            sets["model"] = module_tensors(model)
            sets["ema"] = ema.state_tensors()
            opt_tensors, opt_meta = optimizer_to_tensors(opt, torch.bfloat16 if self.cfg.compact_checkpoints else None)
            sets["optimizer"] = opt_tensors
            sd = sched.state_dict()
            sd.pop("lr_lambdas", None)
            extra = {"optimizer": opt_meta, "scheduler": sd, "ema_updates": ema.updates}
        save_checkpoint(self.out, f"{self.stage}-{self.step:08d}", sets, self._state(**extra), self.cfg.keep_checkpoints)
        plot_curves(self.log.read(), self.out / "curves.png")
        D.barrier(self.info)

    def resume(self) -> dict[str, Any] | None:
        """Load the newest readable checkpoint's position; return its full state (tensors under ``"_sets"``) or None.

        A checkpoint that cannot be read (missing, truncated, a shard whose hash does not match) is passed over,
        with a ``RuntimeWarning``, for the next older kept one (``keep_checkpoints``); once one is read, the main
        rank moves the unreadable ones aside to ``checkpoints/.unreadable-<name>`` (so that they are neither resumed
        nor kept in place of a good one) and points ``latest.json`` at the one resumed.

        Raises
        ------
        CheckpointError
            No kept checkpoint can be read (the message gives each one's reason), or the readable one belongs to
            another model config, other training options, other data or another number of ranks.
        """
        candidates = checkpoint_candidates(self.out)
        if not candidates:
            return None
        reasons = []
        for folder in candidates:
            try:
                if not folder.is_dir():
                    raise CheckpointError(f"{folder} does not exist")
                state, sets = load_checkpoint(folder, device="cpu")
                break
            except CheckpointError as exc:
                reasons.append(f"{folder.name}: {exc}")
        else:  # nothing is moved: the user decides what to do with the folders
            raise CheckpointError(f"no readable checkpoint in {self.out}: " + "; ".join(reasons))
        if state["model_config"] != json.loads(self.model_config.to_json()):
            raise CheckpointError(
                f"{folder} was written for model config {state['model_config'].get('name')!r}, "
                f"not {self.model_config.name!r}"
            )
        saved = state["train_config"]
        now, default = asdict(self.cfg), asdict(TrainConfig())
        # an option added after the checkpoint was written counts as its default
        diff = {k: (saved.get(k, default[k]), now[k]) for k in now
                if k not in MUTABLE and saved.get(k, default[k]) != now[k]}
        if diff:
            raise CheckpointError(f"cannot resume {folder}: training options changed (saved, now): {diff}")
        if state["data_fingerprint"] != self.fingerprint:
            raise CheckpointError(f"cannot resume {folder}: the training data differ from the checkpoint's")
        if state["world_size"] != self.info.world_size:
            raise CheckpointError(f"{folder} was written by {state['world_size']} ranks, not {self.info.world_size}")
        if reasons:
            for unreadable in candidates[: len(reasons)]:
                self._set_aside(unreadable)
            warnings.warn(f"resuming from the older checkpoint {folder.name}: the newer one could not be read "
                          f"({'; '.join(reasons)})", RuntimeWarning, stacklevel=2)
            if self.info.is_main:
                write_json_atomic(self.out / "latest.json", {"checkpoint": f"checkpoints/{folder.name}"})
        self.stage, self.step = state["stage"], state["step"]
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.gen.set_state(sets["rng"][f"rank{self.info.rank}"])
        self.log.truncate_after(list(STAGES), self.stage, self.step)
        state["_sets"] = sets
        return state

    def _set_aside(self, folder: Path) -> None:
        """Move an unreadable checkpoint folder out of the kept ones (main rank; others find it gone)."""
        if not self.info.is_main or not folder.is_dir() or folder.parent.name != "checkpoints":
            return
        try:
            os.replace(folder, folder.parent / f".unreadable-{folder.name}")
        except OSError as exc:
            warnings.warn(f"could not move the unreadable checkpoint {folder} aside: {exc}", RuntimeWarning,
                          stacklevel=3)

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> str:
        """Train every remaining stage; return ``"done"`` or ``"time_limit"``."""
        state = self.resume() if resume else None
        if state is None and latest_checkpoint(self.out) is not None:
            raise CheckpointError(f"{self.out} already holds a run; pass resume=True (--resume) to continue it")
        if state is None and self.init_vae is not None:
            self._adopt_vae(self.init_vae)
        while self.stage != "done":
            if self.stage == "vae":
                status = self._train_stage("vae", state)
            elif self.stage == "latents":
                status = self._cache_latents()
            else:
                status = self._train_stage("flow", state)
            state = None
            if status == "time_limit":
                return status
        if self.info.is_main:
            plot_curves(self.log.read(), self.out / "curves.png")
        return "done"

    def _adopt_vae(self, folder: Path) -> None:
        """Start a fresh run at the latent stage with the VAE of a model folder (a trained VAE can come back from
        a time-limited GPU call as a 10 MB folder, while a whole training state cannot)."""
        start = load_model_folder(folder, "cpu")  # checks sizes and hashes
        vae, extra = start.vae, {"vae_from": str(folder)}
        if start.config.vae != self.model_config.vae and can_compress(start.config.vae, self.model_config.vae):
            # fewer latent channels: the folder's VAE restricted to its top channel directions, untrained further
            vae = self._compressed_vae(start.vae, self.model_config.vae, folder).cpu()
            extra["vae_compressed_from_channels"] = start.config.vae.latent_channels
        elif start.config.vae != self.model_config.vae:
            raise CheckpointError(f"model folder {folder} holds config {start.config.name!r}, whose VAE differs from "
                                  f"config {self.model_config.name!r}'s: it cannot be adopted")
        if self.info.is_main and start.config == self.model_config:
            write_folder_atomic(self.out / "vae", lambda tmp: shutil.copytree(folder, tmp, dirs_exist_ok=True))
        elif self.info.is_main:  # the same (or compressed) VAE under this config: written as this run's VAE folder
            save_model_folder(self.out / "vae", self.model_config, vae, None, self.stats.to_dict(), None, None,
                              extra=extra)
        D.barrier(self.info)
        self._advance("latents")

    def _advance(self, stage: str) -> None:
        self.stage, self.step, self.epoch, self.batch_in_epoch = stage, 0, 0, 0

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _build(self, stage: str) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        cfg = self.model_config
        model = (GridVAE(cfg.vae) if stage == "vae" else MMDiT(cfg.mmdit)).to(self.device)
        if stage == "vae" and self.cfg.vae_freeze_encoder:
            for name, p in model.named_parameters():  # the latent stays what the starting VAE's MMDiT was trained on
                if name.startswith(("enc_in.", "encoder.", "enc_out.", "enc_subvoxel.")):
                    p.requires_grad_(False)
        if stage == "vae" and self.cfg.channels_last:
            for p in model.parameters():  # cuDNN's preferred 3D convolution layout, for the 5-D kernels
                if p.ndim == 5:
                    p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        return model

    def stage_objects(self, stage: str, initial: bool = False) -> tuple[nn.Module, torch.optim.Optimizer, Any, EMA]:
        """Model, optimizer, learning-rate schedule and EMA of a stage, as the training loop uses them; ``initial``
        loads the fresh run's starting weights (``init_weights`` / ``init_model``) first, so the EMA starts there."""
        cfg = self.cfg
        model = self._build(stage)
        if initial:
            self._initial_weights(stage, model)
        lr = cfg.vae_lr if stage == "vae" else cfg.flow_lr
        # one fused kernel for the whole update on CUDA (the unfused loop launches several kernels per tensor)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99),
                                fused=self.device.type == "cuda")
        total = cfg.vae_steps if stage == "vae" else cfg.flow_steps
        floor = (lambda: self._time_progress) if self._anneals_by_time(stage) else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, total, floor))
        return model, opt, sched, EMA(model, cfg.ema_decay)

    def _anneals_by_time(self, stage: str) -> bool:
        """Whether ``stage`` decays its learning rate over the time left (``anneal_to_deadline``): only the last
        stage with steps does, since the time limit cannot say how to split itself between two stages."""
        last = "flow" if self.cfg.flow_steps > 0 else "vae"
        return self.cfg.anneal_to_deadline and stage == last

    def _initial_weights(self, stage: str, model: nn.Module) -> None:
        """Load the stage's starting weights of a fresh run from ``init_weights`` / ``init_model``."""
        folder = self.stage_init[stage]
        if folder is None:
            return
        start = load_model_folder(folder, "cpu")
        source = self._starting_module(stage, start, folder)
        if source is None:
            if self.init_model is not None:
                raise CheckpointError(f"--init-model {folder} holds no MMDiT; use --init-vae for a VAE")
            return  # an export of the VAE stage: the flow starts fresh
        own = model.state_dict()
        model.load_state_dict({k: v.to(device=self.device, dtype=own[k].dtype) for k, v in source.state_dict().items()})
        if self.info.is_main:
            logger.info("%s stage starts from the weights of %s (fresh optimizer, %d warm-up steps)", stage, folder,
                        self.cfg.warmup_steps)

    def _starting_module(self, stage: str, start, folder: Path) -> nn.Module | None:
        """The starting weights of ``stage`` in a loaded init folder: its VAE or MMDiT when the folder holds this
        run's config; for a VAE that differs only in depth (``blocks_per_level``), the folder's VAE grown to it
        (:func:`~gpsk_materials.models.growth.deepen_vae`); the MMDiT whenever the MMDiT configs agree."""
        mine, theirs = self.model_config, start.config
        if stage == "flow" and mine.mmdit == theirs.mmdit:
            return start.mmdit
        if stage == "flow" and self.init_model is None:
            # a wider or deeper MMDiT than the folder's: the VAE is adopted, the flow model starts from scratch
            if self.info.is_main:
                logger.info("the MMDiT of %s (config %r) differs from config %r's: the flow stage starts fresh",
                            folder, theirs.name, mine.name)
            return None
        if stage == "vae" and mine.vae == theirs.vae:
            return start.vae
        if stage == "vae" and can_deepen(theirs.vae, mine.vae):
            if self.info.is_main:
                logger.info("growing the VAE of %s from %d to %d blocks per level (added blocks start as identities)",
                            folder, theirs.vae.blocks_per_level, mine.vae.blocks_per_level)
            return deepen_vae(start.vae, mine.vae)
        if stage == "vae" and can_add_subvoxel(theirs.vae, mine.vae):
            if self.info.is_main:
                logger.info("adding sub-voxel branches to the VAE of %s (they start at zero)", folder)
            return add_subvoxel(start.vae, mine.vae)
        if stage == "vae" and can_compress(theirs.vae, mine.vae):
            return self._compressed_vae(start.vae, mine.vae, folder)
        raise CheckpointError(f"model folder {folder} holds config {theirs.name!r}, which the {stage} stage of "
                              f"config {mine.name!r} cannot start from")

    def _compressed_vae(self, source: GridVAE, config: VAEConfig, folder: Path) -> GridVAE:
        """The folder's VAE restricted to the top principal directions of its latent channels, measured on (up to)
        the first :data:`COMPRESS_SAMPLE` training rows (:func:`~gpsk_materials.models.growth.compress_vae`); the
        same rows on every rank, so every rank builds the same weights."""
        source = source.to(self.device).eval()
        rows = torch.as_tensor(self.train_idx[:COMPRESS_SAMPLE], device=self.device)
        means, logvars = [], []
        with torch.no_grad():
            for i in range(0, len(rows), 64):
                post = source.encode(self.grids(rows[i : i + 64]))
                means.append(post.mean.float())
                logvars.append(post.logvar.float().median())
        mean, vals, vecs = channel_pca(torch.cat(means))
        k = config.latent_channels
        kept = float(vals[:k].sum() / vals.sum())
        if self.info.is_main:
            logger.info("compressing the VAE of %s from %d to %d latent channels: the top %d principal directions "
                        "hold %.4f of the latent variance over %d training structures", folder,
                        source.config.latent_channels, k, k, kept, len(rows))
        return compress_vae(source, config, mean, vecs[:, :k], logvar=float(torch.stack(logvars).median()))

    def _train_stage(self, stage: str, state: dict[str, Any] | None) -> str:
        cfg = self.cfg
        total = cfg.vae_steps if stage == "vae" else cfg.flow_steps
        model, opt, sched, ema = self.stage_objects(stage, initial=state is None and self.step == 0)
        if state is not None and "model" in state["_sets"]:
            sets = state["_sets"]
            load_module_weights(model, sets["model"], "checkpoint model")
            ema.load_state_tensors(sets["ema"], state["ema_updates"])
            optimizer_from_tensors(opt, sets["optimizer"], state["optimizer"])
            sched.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        flow_ctx = self._flow_context() if stage == "flow" else None
        wrapped = self._wrap(model)
        bar = tqdm(total=total, initial=self.step, desc=stage, disable=not self.progress, dynamic_ncols=True)
        acc: dict[str, Tensor] = {}
        n_acc = 0
        by_time = self._anneals_by_time(stage)
        stage_t0 = time.monotonic()
        # the budget of this stage: what the time limit leaves, less a margin for the final export and checkpoint
        budget = max(1.0, 0.98 * (self.max_seconds - (stage_t0 - self.t0)) - 20.0) if by_time else 0.0
        # a resumed stage continues its anneal from the fraction of the budget its checkpoint had spent, over the
        # time this run's limit leaves: the learning rate does not jump back to the peak, and a run resumed with
        # the time its first run had left ends where that run would have (one stopped at its limit stays annealed)
        spent_before = min(1.0, max(0.0, float((state or {}).get("time_progress", 0.0)))) if by_time else 0.0
        self._time_progress = spent_before

        def time_progress() -> float:  # a collective in DDP: every rank applies the same learning rate
            spent = {"t": spent_before + (1.0 - spent_before) * (time.monotonic() - stage_t0) / budget}
            return D.mean_scalars(spent, self.info)["t"]

        while self.step < total:
            parts = self.train_step(stage, model, wrapped, opt, sched, ema, self.next_batch(), flow_ctx)
            self.step += 1
            # metrics stay on the device until the log step: no host sync inside the loop
            for k, v in parts.items():
                acc[k] = acc[k] + v if k in acc else v.clone()
            n_acc += 1
            if self.step % cfg.log_every == 0 or self.step == total:
                keys = sorted(acc)
                values = (torch.stack([acc[k].float() for k in keys]) / n_acc).tolist()
                means = D.mean_scalars(dict(zip(keys, values)), self.info)
                if by_time:
                    self._time_progress = time_progress()
                self.log.write({"stage": stage, "split": "train", "step": self.step, "lr": sched.get_last_lr()[0],
                                "time": round(time.monotonic() - self.t0, 2), **means})
                bar.set_postfix(loss=f"{means['loss']:.4g}")
                acc, n_acc = {}, 0
            if self.step % cfg.eval_every == 0 or self.step == total:
                self._evaluate(stage, ema, flow_ctx)
            bar.update(1)
            if self.step % cfg.log_every == 0 and self._export_due():  # a collective in DDP: not every step
                self.export(stage, ema, flow_ctx)
            last = self.step == total
            if last or self.step % cfg.ckpt_every == 0 or self.time_is_up():
                if by_time:  # the checkpoint records how much of the budget is spent (see spent_before)
                    self._time_progress = time_progress()
                if last:
                    # every rank's own in-memory weights, for the DDP sync report
                    self.rank_checksums[stage] = D.gather_objects(D.parameter_checksum(model), self.info)
                    self._finish_stage(stage, ema, flow_ctx)
                    if cfg.export_minutes is not None:
                        self.export(stage, ema, flow_ctx)
                    self._advance("latents" if stage == "vae" else "done")
                    self.checkpoint()
                else:
                    self.checkpoint(model, ema, opt, sched)
                if last:
                    break
                if self.time_is_up():
                    if cfg.export_minutes is not None:
                        self.export(stage, ema, flow_ctx)
                    bar.close()
                    return "time_limit"
        bar.close()
        if total == 0:
            self._finish_stage(stage, ema, flow_ctx)
            self._advance("latents" if stage == "vae" else "done")
            self.checkpoint()
        return "continue"

    def train_step(self, stage: str, model: nn.Module, wrapped: nn.Module, opt: torch.optim.Optimizer, sched,
                   ema: EMA, idx: Tensor, flow_ctx: dict[str, Any] | None) -> dict[str, Tensor]:
        """One optimizer step on rows ``idx``; returns the step's detached metrics (device tensors, no host sync).

        Used by :meth:`run` and by ``benchmarks/training_speed.py``, so the benchmark times exactly this loop body.
        """
        model.train()
        with torch.autocast(**self.autocast):
            if stage == "vae":
                grid = self.grids(idx)
                jitter = self.cfg.vae_jitter_weight > 0
                if jitter:  # one forward pass over the rows and their displaced copies (one DDP forward per step)
                    grid = torch.cat([grid, self.jittered_grids(idx)])
                if self.cfg.channels_last:
                    grid = grid.contiguous(memory_format=torch.channels_last_3d)
                recon, post = wrapped(grid, self.gen, check_finite=False)
                loss, parts = model.loss_from(grid, recon, post, self.cfg.vae_shell_weight)
                if jitter:
                    parts["jitter"] = jitter_distance(post.mean, len(idx))
                    loss = loss + self.cfg.vae_jitter_weight * parts["jitter"]
                    parts["jitter"] = parts["jitter"].detach()
            else:
                loss, parts = self._flow_loss(wrapped, idx, flow_ctx, dropout=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
        opt.step()
        sched.step()
        ema.update(model)
        return {"loss": loss.detach(), "grad_norm": gnorm.detach(), **parts}

    # ------------------------------------------------------------------ weights-only export
    def _export_due(self) -> bool:
        due = self.cfg.export_minutes is not None and time.monotonic() - self.last_export >= 60 * self.cfg.export_minutes
        return D.any_flag(due, self.info)

    def export(self, stage: str, ema: EMA, flow_ctx: dict[str, Any] | None) -> Path:
        """Write the EMA weights of the stage in progress to ``OUT/export`` (a model folder, atomically replaced).

        A VAE-stage export holds the VAE alone (float32: its output feeds the decoder's least squares); a flow-stage
        export is a complete model folder (the run's VAE, the MMDiT in bf16, the latent statistics) that
        ``load_model_folder`` and ``CrystalGenerator`` read. Either is what ``init_weights`` continues from. About
        10 MB (VAE) and 18 MB (default config), against 30-57 MB for a resumable checkpoint.
        """
        self.last_export = time.monotonic()
        path = self.out / "export"
        if self.info.is_main:
            info = {"stage": stage, "step": self.step, "stage_steps": self.cfg.vae_steps if stage == "vae"
                    else self.cfg.flow_steps, "minutes": round((time.monotonic() - self.t0) / 60, 2),
                    "data_fingerprint": self.fingerprint, "train_config": asdict(self.cfg)}
            if stage == "vae":
                vae = GridVAE(self.model_config.vae)
                ema.copy_to(vae)
                save_model_folder(path, self.model_config, vae, None, self.stats.to_dict(), None, None,
                                  extra={"export": info})
            else:
                mmdit = MMDiT(self.model_config.mmdit)
                ema.copy_to(mmdit)
                save_model_folder(path, self.model_config, flow_ctx["vae"], mmdit, self.stats.to_dict(),
                                  flow_ctx["latent_mean"].cpu(), flow_ctx["latent_std"].cpu(),
                                  extra={"export": info}, mmdit_dtype=torch.bfloat16)
        D.barrier(self.info)
        return path

    # ------------------------------------------------------------------ VAE stage end and latent cache
    def _finish_stage(self, stage: str, ema: EMA, flow_ctx: dict[str, Any] | None) -> None:
        if not self.info.is_main:
            return
        if stage == "vae":
            vae = GridVAE(self.model_config.vae)
            ema.copy_to(vae)
            save_model_folder(self.out / "vae", self.model_config, vae, None, self.stats.to_dict(), None, None)
        else:
            mmdit = MMDiT(self.model_config.mmdit)
            ema.copy_to(mmdit)
            save_model_folder(
                self.out / "model", self.model_config, flow_ctx["vae"], mmdit, self.stats.to_dict(),
                flow_ctx["latent_mean"].cpu(), flow_ctx["latent_std"].cpu(),
                extra={"trained_on": {"rows": len(self.cache), "train": len(self.train_idx),
                                      "max_sites": int(self.cache.frac_coords.shape[1]),
                                      "data_fingerprint": self.fingerprint, "train_config": asdict(self.cfg)}},
            )

    def _vae_digest(self) -> str:
        """Identity of the exported VAE (its index holds the SHA-256 of every shard)."""
        return hashlib.sha256((self.out / "vae" / "vae.json").read_bytes()).hexdigest()

    def _cache_latents(self) -> str:
        """The ``latents`` stage: write the latent cache, then move on to the flow stage."""
        self._write_latents()
        self._advance("flow")
        self.checkpoint()
        return "continue"

    def _write_latents(self) -> None:
        """Encode train + val rows with the EMA VAE (posterior mean) into ``OUT/latents`` (float16); rank 0 writes,
        every rank waits."""
        if self.info.is_main:
            vae = load_model_folder(self.out / "vae", self.device, expect=self.model_config).vae
            rows = np.concatenate([self.train_idx, self.val_idx])
            chunks = []
            with torch.no_grad():
                for start in tqdm(range(0, len(rows), 64), desc="latents", disable=not self.progress):
                    idx = torch.as_tensor(rows[start : start + 64], device=self.device)
                    with torch.autocast(**self.autocast):
                        chunks.append(vae.encode(self.grids(idx)).mean.float().half().cpu())
            z = torch.cat(chunks)
            ztrain = z[: len(self.train_idx)].float()
            mean = ztrain.mean(dim=(0, 2, 3, 4))
            std = ztrain.std(dim=(0, 2, 3, 4)).clamp_min(1e-4)
            save_tensors(self.out, "latents", {"latents": z, "rows": torch.as_tensor(rows), "mean": mean, "std": std},
                         metadata={"vae": self._vae_digest(), "data_fingerprint": self.fingerprint},
                         max_shard_bytes=2**31)
        D.barrier(self.info)

    def _flow_context(self) -> dict[str, Any]:
        """Latents on the device (normalised), the row -> latent index map, and the VAE for export."""
        path = self.out / "latents.json"
        stale = False
        if self.info.is_main:
            stale = not path.exists() or read_json(path)["metadata"].get("vae") != self._vae_digest()
        if D.any_flag(stale, self.info):  # a fresh machine (or a new VAE): rebuild the deterministic cache
            self._write_latents()
        tensors, meta = load_tensors(self.out, "latents")
        if meta.get("data_fingerprint") != self.fingerprint:
            raise CheckpointError(f"{path} was computed on other data")
        lookup = torch.full((len(self.cache),), -1, dtype=torch.long)
        lookup[tensors["rows"]] = torch.arange(len(tensors["rows"]))
        mean, std = tensors["mean"].to(self.device), tensors["std"].to(self.device)
        z = ((tensors["latents"].to(self.device).float() - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1))
        vae = load_model_folder(self.out / "vae", "cpu", expect=self.model_config).vae
        return {"latents": z, "lookup": lookup.to(self.device), "latent_mean": mean, "latent_std": std, "vae": vae}

    def _flow_loss(self, model, idx: Tensor, ctx: dict[str, Any], dropout: bool, gen: torch.Generator | None = None):
        x0 = ctx["latents"][ctx["lookup"][idx]]
        cond = self.conditions(idx)
        gen = gen or self.gen
        if dropout:
            cond = cond.with_present(drop_modalities(cond.present, self.cfg.cond_dropout, gen, self.cfg.cond_drop_all,
                                                     self.cfg.cond_composition_only))
        loss = rf.flow_loss(model, x0, cond, gen, self.cfg.timestep_schedule)
        return loss, {}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def _evaluate(self, stage: str, ema: EMA, flow_ctx: dict[str, Any] | None) -> None:
        """Validation metrics of the EMA weights on a fixed val subset (fixed noise), rank 0 only."""
        if not self.info.is_main or len(self.val_idx) == 0:
            return
        if stage not in self._eval_models:
            self._eval_models[stage] = self._build(stage)
        model = self._eval_models[stage]
        ema.copy_to(model)
        model.eval()
        gen = torch.Generator(device=self.device).manual_seed(12345)
        totals: dict[str, float] = {}
        count = 0
        for start in range(0, len(self.val_idx), 64):
            idx = torch.as_tensor(self.val_idx[start : start + 64], device=self.device)
            with torch.autocast(**self.autocast):
                if stage == "vae":
                    grid = self.grids(idx)
                    post = model.encode(grid)
                    loss, parts = model.loss_from(grid, model.decode(post.mean), post, self.cfg.vae_shell_weight)
                    if self.cfg.vae_jitter_weight > 0:
                        parts["jitter"] = jitter_distance(
                            torch.cat([post.mean, model.encode(self.jittered_grids(idx, gen)).mean]), len(idx))
                        loss = loss + self.cfg.vae_jitter_weight * parts["jitter"]
                else:
                    loss, parts = self._flow_loss(model, idx, flow_ctx, dropout=False, gen=gen)
            n = len(idx)
            for k, v in {"loss": loss, **parts}.items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
        self.log.write({"stage": stage, "split": "val", "step": self.step, **{k: v / count for k, v in totals.items()}})


def jitter_distance(mean: Tensor, n: int) -> Tensor:
    """Mean squared distance between the posterior means of ``n`` rows (``mean[:n]``) and of their displaced copies
    (``mean[n:]``), as a share of the mean squared distance between two different rows' latents (twice their
    per-entry variance over the batch, detached, so the term cannot be lowered by shrinking every latent): 0 = the
    latent ignores a displacement of ``TrainConfig.vae_jitter`` Å, 1 = it moves as far as to another crystal's
    latent (``benchmarks/latent_smoothness.py`` measures the root of the same kind of ratio after training)."""
    clean, moved = mean[:n].float(), mean[n:].float()
    spread = clean.var(dim=0, unbiased=False).mean().detach().clamp_min(1e-12)
    return (moved - clean).pow(2).mean() / (2 * spread)


def config_from_args(args: Any) -> TrainConfig:
    """TrainConfig from an argparse namespace holding any of its fields (others keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
    return TrainConfig(**values)


def describe(cfg: TrainConfig) -> str:
    return json.dumps(asdict(cfg), sort_keys=True)
