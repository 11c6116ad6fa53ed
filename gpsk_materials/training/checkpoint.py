"""Resumable training checkpoints: safetensors shards + JSON, one folder per checkpoint, written atomically.

``OUT/checkpoints/<stage>-<step>/`` holds the tensor sets ``model`` (live weights), ``ema``, ``optimizer`` (its
tensors flattened to ``<param index>.<key>``) and ``rng`` (every rank's generator state), plus ``state.json``
(stage, step, data order, scheduler, optimizer hyper-parameters, configs). A folder is built under a temporary
name and renamed into place; ``OUT/latest.json`` then points at it (atomic replace) and older folders are pruned.
No file is ever unpickled.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from gpsk_materials.atomic_files import write_folder_atomic, write_json_atomic
from gpsk_materials.errors import CheckpointError
from gpsk_materials.models.io import load_tensors, read_json, save_tensors

STATE_FORMAT = "gpsk-train-state/1"


def optimizer_to_tensors(
    optimizer: torch.optim.Optimizer, moment_dtype: torch.dtype | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()`` into tensors and a JSON-able remainder.

    ``moment_dtype`` (e.g. ``torch.bfloat16``) stores the per-parameter moments in a smaller type: the checkpoint
    shrinks by a third and a resumed run continues from moments rounded to that type (``load_state_dict`` casts
    them back to the parameters' type), so it is no longer bit-identical to an uninterrupted one.
    """
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                if moment_dtype is not None and value.ndim and value.is_floating_point():
                    value = value.to(moment_dtype)
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_tensors` (raises :class:`CheckpointError` if it does not fit)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, st in state.items():
        if pid >= len(params):
            raise CheckpointError(f"optimizer state holds parameter {pid}; the model has {len(params)}")
        for key, value in st.items():
            if torch.is_tensor(value) and value.ndim and value.shape != params[pid].shape:
                raise CheckpointError(
                    f"optimizer state {pid}.{key} has shape {tuple(value.shape)}, the parameter {tuple(params[pid].shape)}"
                )
            if torch.is_tensor(value) and value.ndim:
                # moments take the parameter's memory layout (channels_last_3d weights keep fused updates fast)
                st[key] = torch.empty_like(params[pid], dtype=value.dtype, device=value.device).copy_(value)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from exc


def save_checkpoint(
    out: str | Path, name: str, tensor_sets: Mapping[str, Mapping[str, Tensor]], state: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``OUT/checkpoints/NAME`` atomically, point ``OUT/latest.json`` at it, keep the newest ``keep``."""
    root = Path(out) / "checkpoints"

    def build(tmp: Path) -> None:
        for set_name, tensors in tensor_sets.items():
            save_tensors(tmp, set_name, tensors)
        write_json_atomic(tmp / "state.json", {"format": STATE_FORMAT, **state})

    final = write_folder_atomic(root / name, build)
    write_json_atomic(Path(out) / "latest.json", {"checkpoint": f"checkpoints/{name}"})
    done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=os.path.getmtime)
    for old in done[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint folder named by ``OUT/latest.json``, or None if there is none."""
    pointer = Path(out) / "latest.json"
    if not pointer.exists():
        return None
    folder = Path(out) / read_json(pointer)["checkpoint"]
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} points at {folder}, which does not exist")
    return folder


def checkpoint_candidates(out: str | Path) -> list[Path]:
    """Every kept checkpoint folder of ``OUT``, newest first: the one ``OUT/latest.json`` names (even if it is
    missing, so that a caller can report it), then the others in ``OUT/checkpoints`` by modification time."""
    out = Path(out)
    root = out / "checkpoints"
    kept = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=os.path.getmtime, reverse=True) if root.is_dir() else []
    pointer = out / "latest.json"
    first: list[Path] = []
    if pointer.exists():
        try:
            first = [out / read_json(pointer)["checkpoint"]]
        except (CheckpointError, KeyError, TypeError):
            first = []  # an unreadable pointer: the folders themselves say which is newest
    return first + [p for p in kept if not first or p.resolve() != first[0].resolve()]


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """Read ``state.json`` and every tensor set of a checkpoint folder (hashes checked)."""
    folder = Path(folder)
    state = read_json(folder / "state.json")
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder} is not a training checkpoint ({STATE_FORMAT})")
    sets = {}
    for index in sorted(folder.glob("*.json")):
        if index.name != "state.json":
            sets[index.stem] = load_tensors(folder, index.stem, device=device)[0]
    return state, sets
