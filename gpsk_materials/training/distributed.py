"""torch.distributed helpers: DDP launched by torchrun (gloo on CPU, nccl on GPU), rank checks."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group if launched by torchrun (``WORLD_SIZE`` > 1) and pick this rank's device.

    ``device``: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``. NCCL's NVLink multicast (NVLS) is kept off.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. the time limit reached)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_scalars(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average logged scalars over ranks."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], device=info.device, dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def parameter_checksum(module: nn.Module) -> list[float]:
    """Per-tensor float64 sums and sums of squares: equal on all ranks iff they are (practically) in sync."""
    sums = []
    for p in module.state_dict().values():
        if p.is_floating_point():
            x = p.detach().double()
            sums += [x.sum().item(), x.pow(2).sum().item()]
    return sums


def assert_in_sync(module: nn.Module, info: DistInfo, what: str = "parameters") -> list[list[float]]:
    """Raise ``RuntimeError`` unless every rank holds identical ``module`` weights; return all ranks' checksums."""
    sums = gather_objects(parameter_checksum(module), info)
    if any(s != sums[0] for s in sums[1:]):
        raise RuntimeError(f"DDP ranks out of sync: {what} differ between ranks")
    return sums
