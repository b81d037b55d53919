"""FitNet-style full-map feature imitation: the baseline ICD is measured against.

Every token of every distilled level is imitated equally: a shared 1x1 adapter maps the student's
FPN width to the teacher's, and the loss is the mean squared error over all valid (unpadded)
positions and channels, averaged over levels, times one weight.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from icdistill.distill.inputs import DistillInputs
from icdistill.distill.method import DistillMethod, MethodOptim


def full_map_imitation_loss(
    teacher_levels: Sequence[Tensor], adapted_student_levels: Sequence[Tensor], valid_masks: Sequence[Tensor]
) -> Tensor:
    """Mean over levels of the MSE over valid positions and channels.

    Args:
        teacher_levels: per level float Tensor[B, C_t, H_l, W_l] (not differentiated).
        adapted_student_levels: the student's levels mapped to C_t channels, same shapes.
        valid_masks: per level bool Tensor[B, H_l, W_l], False on padding.
    Returns:
        A scalar tensor.
    """
    per_level = []
    for t, s, valid in zip(teacher_levels, adapted_student_levels, valid_masks):
        err = (s - t.detach()).pow(2).mean(dim=1)  # [B, H_l, W_l]
        per_level.append((err * valid).sum() / valid.sum().clamp_min(1))
    return torch.stack(per_level).mean()


class FitNet(DistillMethod):
    """``distill.method: fitnet``. Args: student_channels C_s, teacher_channels C_t,
    loss_weight (the one weight), optim (how the adapter is optimised)."""

    name = "fitnet"

    def __init__(
        self, *, student_channels: int, teacher_channels: int, loss_weight: float = 1.0,
        optim: MethodOptim = MethodOptim(),
    ) -> None:
        super().__init__(optim)
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        self.loss_weight = loss_weight

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/fitnet/feature"}; {} without student features (nothing to warm up)."""
        if not inputs.has_student:
            return {}
        adapted = [self.adapter(s) for s in inputs.student_levels]
        loss = full_map_imitation_loss(inputs.teacher_levels, adapted, inputs.valid_masks)
        return {"distill/fitnet/feature": self.loss_weight * loss}
