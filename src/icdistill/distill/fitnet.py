"""FitNet-style full-map feature imitation: the baseline ICD is measured against.

Every token of every distilled level is imitated equally: a shared 1x1 adapter maps the student's
FPN width to the teacher's, and the loss is the mean squared error over all valid (unpadded)
positions and channels, averaged over levels, times one weight.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from icdistill.distill.icd import valid_token_mask


class FitNetModule(nn.Module):
    """Args: student_channels C_s, teacher_channels C_t, loss_weight (the one weight)."""

    def __init__(self, *, student_channels: int, teacher_channels: int, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.adapter = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
        self.loss_weight = loss_weight

    def forward(
        self,
        teacher_features: Sequence[Tensor],
        student_features: Sequence[Tensor] | None,
        targets: list[dict[str, Tensor]],
        image_sizes: Sequence[tuple[int, int]],
        strides: Sequence[int],
    ) -> dict[str, Tensor]:
        """teacher/student levels: [B, C_t, H_l, W_l] / [B, C_s, H_l, W_l] -> {"distill/fitnet"}.

        ``targets`` are unused (FitNet imitates everywhere); the signature is the ICD module's.
        Returns {} without student features (there is no decoder to warm up).
        """
        if student_features is None:
            return {}
        shapes = [(t.shape[-2], t.shape[-1]) for t in teacher_features]
        masks = valid_token_mask(shapes, strides, image_sizes, teacher_features[0].device)
        per_level = []
        for t, s, valid in zip(teacher_features, student_features, masks):
            err = (self.adapter(s) - t.detach()).pow(2).mean(dim=1)  # [B, H_l, W_l]
            per_level.append((err * valid).sum() / valid.sum().clamp_min(1))
        return {"distill/fitnet": self.loss_weight * torch.stack(per_level).mean()}
