"""An exponential moving average (EMA) of the student's weights (``solver.ema``).

A short schedule ends wherever its last SGD steps left the weights; the average of the last few
hundred steps is a steadier end point, the same for every row of a benchmark. Parameters and
floating-point buffers (batch-norm running means and variances) are averaged; integer buffers
(``num_batches_tracked``) are copied. The decay ramps up as in YOLOX's ``ModelEMA`` and timm's
model EMA: ``decay * (1 - exp(-updates / tau))``, so the first updates follow the weights
closely instead of averaging in the random initialisation.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn


class StudentEMA:
    """The averaged state of ``module`` (``module.state_dict()`` keys, same devices and dtypes).

    Args:
        module: the student adapter whose state is averaged.
        decay: the decay the warm-up approaches (e.g. 0.9998).
        tau: the warm-up's time constant in updates (e.g. 2000).
    """

    def __init__(self, module: nn.Module, *, decay: float, tau: float) -> None:
        self.decay, self.tau, self.updates = decay, tau, 0
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def decay_at(self, updates: int) -> float:
        """The decay of update number ``updates`` (1 = the first)."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s current state into the average (call after each student step)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        for key, value in module.state_dict().items():
            kept = self.state[key]
            if kept.dtype.is_floating_point:
                kept.mul_(d).add_(value.detach().to(kept.dtype), alpha=1.0 - d)
            else:
                kept.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "updates": self.updates}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.updates = int(saved["updates"])
        for key, value in saved["state"].items():
            self.state[key].copy_(value)

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[nn.Module]:
        """``module`` with the averaged state inside the block, its own state restored after."""
        own = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.state)
        try:
            yield module
        finally:
            module.load_state_dict(own)
