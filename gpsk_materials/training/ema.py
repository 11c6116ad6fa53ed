"""Exponential moving average of model weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpsk_materials.errors import ConfigError


class EMA:
    """Shadow copy of a module's floating-point state, ``ema = d * ema + (1 - d) * live`` with warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not dominated by the init."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One averaging step: a single multi-tensor lerp over every float32 tensor (no per-tensor launches)."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = module.state_dict()
        fast, slow = [], []
        for k, s in self.shadow.items():
            v = live[k].detach()
            if s.is_floating_point() and v.dtype == s.dtype and v.device == s.device:
                fast.append((s, v))
            else:
                slow.append((s, v))
        if fast:
            torch._foreach_lerp_([s for s, _ in fast], [v for _, v in fast], 1.0 - d)
        for s, v in slow:
            if s.is_floating_point():
                s.lerp_(v.float(), 1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module``."""
        own = module.state_dict()
        module.load_state_dict({k: v.to(own[k].dtype) for k, v in self.shadow.items()})

    def state_tensors(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_tensors(self, tensors: dict[str, Tensor], updates: int) -> None:
        for k, s in self.shadow.items():
            s.copy_(tensors[k].to(s.device))
        self.updates = updates
