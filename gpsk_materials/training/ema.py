"""Exponential moving average of model weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """Shadow copy of a module's floating-point state, ``ema = d * ema + (1 - d) * live`` with warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early averages are not dominated by the init."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - d)
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
