"""The one slot every distillation method fills.

A method is an ``nn.Module`` that

* declares the detector extras it needs (``requires``, names from
  :mod:`icdistill.detectors.extras`), so nothing else is computed;
* maps :class:`~icdistill.distill.core.inputs.DistillInputs` to already weighted losses named
  ``distill/<method>/<term>``;
* says how its own parameters are optimised (:class:`MethodOptim`): with their own AdamW and
  cosine schedule (ICD), or inside the student's SGD parameter groups (the peers' adapters,
  as the originals train them);
* may ask for a method-only stage before the main one (``method_only_iters``: ICD's decoder
  warm-up), in which the student is not run;
* may report numbers of its own at every evaluation (:meth:`evaluate`, keys ``<name>/...``)
  with plain-sentence warnings about them (:meth:`warnings`), and write pictures of what it
  attended to at the end of a run (:meth:`save_pictures`).

The engine sums whatever a method returns; it never names one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from icdistill.distill.core.inputs import DistillInputs

OWN_ADAMW, STUDENT_SGD = "adamw", "student"


@dataclass(frozen=True)
class MethodOptim:
    """How a method's parameters are optimised.

    Attributes:
        kind: ``adamw`` (own AdamW, cosine decay from ``lr`` to 0 over all iterations, L2-norm
            clipping at ``clip_norm``) or ``student`` (added to the student's SGD with its LR,
            schedule and clipping).
        lr, weight_decay, clip_norm: for ``adamw`` only.
        stage_lr: ``adamw`` only: the LR during the method-only stage (None: ``lr``); the
            cosine schedule is the same, scaled by ``stage_lr / lr`` in that stage.
    """

    kind: str = OWN_ADAMW
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip_norm: float | None = None
    stage_lr: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in (OWN_ADAMW, STUDENT_SGD):
            raise ValueError(f"MethodOptim.kind must be {OWN_ADAMW!r} or {STUDENT_SGD!r}, got {self.kind!r}")


class DistillMethod(nn.Module, ABC):
    """Base class of the distillation methods (see the module docstring)."""

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, optim: MethodOptim, *, method_only_iters: int = 0) -> None:
        super().__init__()
        self.optim = optim
        self.method_only_iters = method_only_iters

    @abstractmethod
    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """Weighted losses ``distill/<name>/<term>`` (scalar tensors). In a method-only stage
        ``inputs.has_student`` is False: return the terms that need no student, or {}."""

    def evaluate(
        self, *, teacher: nn.Module, dataset, levels: Sequence[str], strides: Sequence[int], device: torch.device,
    ) -> dict[str, float]:
        """The method's own numbers on held-out data (keys ``<name>/...``); none by default."""
        return {}

    def warnings(self, metrics: dict[str, float]) -> list[str]:
        """Sentences about :meth:`evaluate`'s numbers that a user must read; none by default."""
        return []

    def save_pictures(
        self, *, teacher: nn.Module, dataset, levels: Sequence[str], strides: Sequence[int],
        out_dir: Path, count: int, device: torch.device,
    ) -> list[Path]:
        """PNGs of what the method attends to on the first ``count`` test images; none by default."""
        return []
