"""Saving and loading weights as safetensors shards + JSON (never pickle), with atomic writes and checks.

A *tensor set* ``NAME`` in a folder is ``NAME.json`` (format, config, metadata, and for each shard its file name,
size and SHA-256) plus ``NAME-00001.safetensors, ...`` shards of at most ``max_shard_bytes`` each (a tensor larger
than a shard is split into flat parts). The JSON index is written last, so a set is complete once its index exists;
every file is written to a temporary name and moved into place with ``os.replace``. Loading verifies sizes and
hashes, so a truncated or mixed-up file raises :class:`~gpsk_materials.errors.CheckpointError`.

A *model folder* holds ``config.json`` (model config, condition statistics, latent scaling) and the tensor sets
``vae`` and ``mmdit``; :func:`load_model_folder` returns a :class:`~gpsk_materials.models.generative.GPSKModel`.
Its identity is :func:`folder_hash` (SHA-256 of the JSON indices, which hold every shard's SHA-256); a model held
only in memory is identified by :func:`tensor_hash` of its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from gpsk_materials.atomic_files import (  # noqa: F401 -- umask, write_bytes/json_atomic: public names of models.io
    umask,
    write_bytes_atomic,
    write_folder_atomic,
    write_json_atomic,
)
from gpsk_materials.errors import CheckpointError
from gpsk_materials.models.configs import ModelConfig

FORMAT = "gpsk-tensors/1"
MODEL_FORMAT = "gpsk-model/1"
MAX_SHARD_BYTES = 15 * 2**20
#: bound on the safetensors header bytes: fixed part, and per tensor on top of its name
_HEADER_BASE = 1024
_HEADER_PER_TENSOR = 160
_PART = "@@part"


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, raising :class:`CheckpointError` for a missing or malformed file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"missing checkpoint file {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt or truncated JSON in {path}: {exc}") from exc


def _split_large(tensors: Mapping[str, Tensor], max_bytes: int) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    out, split = {}, {}
    for name, t in tensors.items():
        if _PART in name:
            raise ValueError(f"tensor name {name!r} may not contain {_PART!r}")
        t = t.detach().cpu().contiguous()
        if t.numel() and t.nbytes > max_bytes:
            per = max(1, max_bytes // t.element_size())
            for i, part in enumerate(t.reshape(-1).split(per)):
                out[f"{name}{_PART}{i}"] = part.clone()
            split[name] = list(t.shape)
        else:
            out[name] = t
    return out, split


def save_tensors(
    folder: str | os.PathLike,
    name: str,
    tensors: Mapping[str, Tensor],
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write a tensor set (shards + JSON index) into ``folder``; return the index path."""
    from safetensors.torch import save

    folder = Path(folder)
    # the limit is on the file: the safetensors header (a JSON entry per tensor) counts too
    flat, split = _split_large(tensors, max_shard_bytes - _HEADER_BASE - _HEADER_PER_TENSOR)
    shards: list[dict[str, Tensor]] = [{}]
    size = _HEADER_BASE
    for key in sorted(flat):
        nbytes = flat[key].nbytes + _HEADER_PER_TENSOR + len(key)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = _HEADER_BASE
        shards[-1][key] = flat[key]
        size += nbytes
    entries = []
    for i, shard in enumerate(shards):
        blob = save(shard)
        fname = f"{name}-{i + 1:05d}.safetensors"
        write_bytes_atomic(folder / fname, blob)
        entries.append({"file": fname, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "keys": sorted(shard)})
    index = {"format": FORMAT, "config": config, "metadata": dict(metadata or {}), "split": split, "shards": entries}
    path = folder / f"{name}.json"
    write_json_atomic(path, index)
    return path


def load_tensors(
    folder: str | os.PathLike, name: str, config: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
    defaults: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a tensor set; check shard sizes and hashes and, if given, that it was saved with ``config``.

    ``defaults`` fills the fields a set saved before they existed lacks (the configuration dataclass's defaults,
    which keep the old behaviour), so that adding a field does not orphan every shipped set.

    Returns the tensors and the index's ``metadata``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    index = read_json(folder / f"{name}.json")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{folder / name}.json is not a {FORMAT} index")
    saved = index.get("config")
    if defaults is not None and isinstance(saved, dict):
        saved = {**json.loads(json.dumps(dict(defaults))), **saved}
    if config is not None and saved != json.loads(json.dumps(config)):
        raise CheckpointError(
            f"checkpoint {folder / name} was saved for another configuration:\n  saved:    {saved}\n"
            f"  expected: {dict(config)}"
        )
    flat: dict[str, Tensor] = {}
    for entry in index["shards"]:
        path = folder / entry["file"]
        try:
            blob = path.read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointError(f"missing shard {path}") from exc
        if len(blob) != entry["bytes"]:
            raise CheckpointError(f"shard {path} is truncated or extended ({len(blob)} bytes, expected {entry['bytes']})")
        digest = hashlib.sha256(blob).hexdigest()
        if digest != entry["sha256"]:
            raise CheckpointError(
                f"shard {path} is corrupt: SHA-256 hash mismatch (file {digest[:16]}..., index {entry['sha256'][:16]}...)"
            )
        try:
            flat.update(load(blob))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot read shard {path}: {exc}") from exc
    tensors = {k: v for k, v in flat.items() if _PART not in k}
    for key, shape in index["split"].items():
        parts, i = [], 0
        while f"{key}{_PART}{i}" in flat:
            parts.append(flat[f"{key}{_PART}{i}"])
            i += 1
        tensors[key] = torch.cat(parts).view(shape)
    return {k: v.to(device) for k, v in tensors.items()}, index["metadata"]


def load_module_weights(module: nn.Module, tensors: Mapping[str, Tensor], where: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` that raises :class:`CheckpointError` on any key or shape mismatch."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where} does not fit {type(module).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]} (saved from another config?)"
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


def module_tensors(module: nn.Module, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """State dict of a module (unwrapped from DDP / torch.compile), optionally cast (floating tensors only)."""
    module = unwrap(module)
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach()
        for k, v in module.state_dict().items()
    }


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def save_model_folder(
    path: str | os.PathLike,
    config: ModelConfig,
    vae: nn.Module,
    mmdit: nn.Module | None,
    condition_stats: Mapping[str, Any],
    latent_mean: Tensor | np.ndarray | None,
    latent_std: Tensor | np.ndarray | None,
    dtype: torch.dtype | None = None,
    extra: Mapping[str, Any] | None = None,
    mmdit_dtype: torch.dtype | None = None,
) -> Path:
    """Write a model folder atomically (built beside ``path``, then moved into place).

    ``dtype=torch.bfloat16`` halves release files; training checkpoints keep float32. ``mmdit_dtype`` overrides
    ``dtype`` for the MMDiT alone (the shipped model: bf16 MMDiT, float32 VAE, whose output feeds least squares).
    """
    cfg = config.to_dict()
    as_list = (lambda x: None if x is None else [float(v) for v in np.asarray(torch.as_tensor(x).cpu())])

    def build(tmp: Path) -> None:
        save_tensors(tmp, "vae", module_tensors(vae, dtype), config=cfg["vae"])
        if mmdit is not None:
            save_tensors(tmp, "mmdit", module_tensors(mmdit, mmdit_dtype or dtype), config=cfg["mmdit"])
        write_json_atomic(
            tmp / "config.json",
            {
                "format": MODEL_FORMAT,
                "model": cfg,
                "condition_stats": dict(condition_stats),
                "latent_mean": as_list(latent_mean),
                "latent_std": as_list(latent_std),
                "has_mmdit": mmdit is not None,
                **dict(extra or {}),
            },
        )

    return write_folder_atomic(path, build)


def load_model_folder(
    path: str | os.PathLike, device: str | torch.device = "cpu", expect: ModelConfig | str | None = None
):
    """Load a model folder into a :class:`~gpsk_materials.models.generative.GPSKModel` (eval mode).

    ``expect`` (a config or its name) raises :class:`CheckpointError` if the folder holds another configuration.
    """
    from dataclasses import asdict

    from gpsk_materials.models.configs import MMDiTConfig, VAEConfig, get_config
    from gpsk_materials.models.generative import GPSKModel
    from gpsk_materials.models.mmdit import MMDiT
    from gpsk_materials.models.vae import GridVAE
    from gpsk_materials.models.conditioning import ConditionStats

    path = Path(path)
    meta = read_json(path / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a gpsk model folder (config.json format {MODEL_FORMAT!r})")
    config = ModelConfig.from_dict(meta["model"])
    if expect is not None:
        expect = get_config(expect) if isinstance(expect, str) else expect
        if expect.to_dict() != config.to_dict():
            raise CheckpointError(f"model folder {path} holds config {config.name!r}, expected {expect.name!r}")
    cfg = config.to_dict()
    vae = GridVAE(config.vae)
    load_module_weights(vae, load_tensors(path, "vae", cfg["vae"], defaults=asdict(VAEConfig()))[0], f"{path}/vae")
    mmdit = None
    if meta.get("has_mmdit", True):
        mmdit = MMDiT(config.mmdit)
        load_module_weights(mmdit, load_tensors(path, "mmdit", cfg["mmdit"], defaults=asdict(MMDiTConfig()))[0], f"{path}/mmdit")
    t = lambda x: None if x is None else torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return GPSKModel(
        config=config,
        vae=vae.to(device).eval(),
        mmdit=None if mmdit is None else mmdit.to(device).eval(),
        stats=ConditionStats.from_dict(meta["condition_stats"]),
        latent_mean=t(meta["latent_mean"]),
        latent_std=t(meta["latent_std"]),
    )


def folder_hash(folder: str | os.PathLike) -> str:
    """SHA-256 of a model folder's JSON indices (which hold the SHA-256 of every weight shard)."""
    h = hashlib.sha256()
    for name in ("config.json", "vae.json", "mmdit.json"):
        path = Path(folder) / name
        if path.is_file():
            h.update(name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def tensor_hash(model: nn.Module) -> str:
    """SHA-256 of the weights of a model held in memory (its ``vae`` and ``mmdit``, keys sorted, raw bytes)."""
    h = hashlib.sha256()
    for module in (model.vae, model.mmdit):
        for key, t in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def torch_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, checked: a device torch cannot name or that this machine lacks is refused.

    Raises
    ------
    ConfigError
        An unknown device string, or a CUDA device on a machine (or a torch build) without CUDA, or a CUDA index
        beyond the GPUs present; another accelerator (``mps``, ``xpu``, ...) this torch cannot allocate on; the
        ``meta`` device (no values).
    """
    from gpsk_materials.errors import ConfigError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"not a torch device: {device!r} ({exc})") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(dev)!r} requested, but CUDA is not available to this torch "
                              f"({torch.__version__}); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(dev)!r} requested, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif dev.type == "meta":
        raise ConfigError("device 'meta' holds shapes, not values: a model moved there cannot compute; use "
                          "device='cpu' or a GPU")
    elif dev.type != "cpu":  # mps, xpu, ...: whether this build and machine have it shows only when it is used
        try:
            torch.empty(0, device=dev)
        except Exception as exc:  # torch raises RuntimeError, AssertionError or others, by backend
            raise ConfigError(f"device {str(dev)!r} requested, but this torch ({torch.__version__}) cannot use it "
                              f"({type(exc).__name__}: {exc}); use device='cpu'") from exc
    return dev
