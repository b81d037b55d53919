"""FitNet-style full-map feature imitation (Romero et al., ICLR 2015, as detection papers use it):
the baseline ICD is measured against.

Every token of every distilled level is imitated equally. Variants (``distill.fitnet``):

* ``adapter``: ``1x1`` (one conv shared by all levels: this project's default), ``3x3`` (one per
  level, no ReLU: DeFeat's "all-neck") or ``none`` (UP's neck mimic; needs equal widths);
* ``adapter_init``: ``default`` (PyTorch's) or ``trunc1e-4`` (DeFeat's N(0,1).fmod(2)·1e-4);
* ``normalize``: ``none`` (this project: MSE mean over valid positions and channels),
  ``defeat`` (Σ(A(s) − t)² / max(1, 2·B·H·W·C), padding included) or ``l2_per_image`` (UP:
  each image's level, valid positions, flattened and L2-normalised; Σ_b ‖ŝ_b − t̂_b‖² / B).

Each is averaged over levels and multiplied by one weight (``distill.fitnet.loss_weight``,
default 1) times ``distill.weight_scale``. FitNet needs only the feature maps, so it runs on
every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from icdistill.config import choice
from icdistill.detectors.families import FAMILIES
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._parts import ADAPTER_INITS, ADAPTER_KINDS, LevelAdapters, check_adapter

NORMALIZATIONS = ("none", "defeat", "l2_per_image")
ADAPTER_OPTIMS = ("adamw", STUDENT_SGD)


@dataclass(frozen=True)
class FitNetConfig:
    """``distill.fitnet``. ``adapter``: ``1x1`` (one conv shared by the levels: this project's
    default), ``3x3`` (one per level: DeFeat's all-neck) or ``none`` (UP's neck mimic, equal
    widths); ``adapter_init``: ``default`` or ``trunc1e-4`` (DeFeat's); ``normalize``: ``none``
    (MSE over valid positions), ``defeat`` (Σ/2BHWC, padding included) or ``l2_per_image``
    (UP's); ``adapter_optim``: ``adamw`` (the adapter's own AdamW at ``distill.lr``: this
    project's) or ``student`` (the student's SGD, as the other methods train adapters);
    ``loss_weight``: the one term's weight."""

    adapter: str = choice("1x1", ADAPTER_KINDS)
    adapter_init: str = choice("default", ADAPTER_INITS)
    normalize: str = choice("none", NORMALIZATIONS)
    adapter_optim: str = choice("adamw", ADAPTER_OPTIMS)
    loss_weight: float = 1.0


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


def defeat_full_map_loss(teacher_levels: Sequence[Tensor], adapted_student_levels: Sequence[Tensor]) -> Tensor:
    """DeFeat's all-neck normalisation: per level Σ(A(s) − t)² / max(1, 2·B·H·W·C) over the
    whole (padded) map, mean over levels. Shapes as :func:`full_map_imitation_loss`."""
    per_level = [(s - t.detach()).pow(2).sum() / max(1, 2 * s.numel()) for t, s in zip(teacher_levels, adapted_student_levels)]
    return torch.stack(per_level).mean()


def l2_per_image_loss(
    teacher_levels: Sequence[Tensor], adapted_student_levels: Sequence[Tensor], valid_masks: Sequence[Tensor]
) -> Tensor:
    """UP's neck mimic: per level, each image's map (padding zeroed) flattened and L2-normalised,
    Σ_b ‖ŝ_b − t̂_b‖² / B; mean over levels. Invariant to scaling either side."""
    per_level = []
    for t, s, valid in zip(teacher_levels, adapted_student_levels, valid_masks):
        keep = valid[:, None].to(s.dtype)
        s_hat = F.normalize((s * keep).flatten(1), dim=1)
        t_hat = F.normalize((t.detach() * keep).flatten(1), dim=1)
        per_level.append((s_hat - t_hat).pow(2).sum() / s.shape[0])
    return torch.stack(per_level).mean()


class FitNet(DistillMethod):
    """``distill.method: fitnet``.

    Args:
        student_channels, teacher_channels: C_s and C_t.
        num_levels: distilled levels (per-level adapters for ``3x3``).
        adapter, adapter_init, normalize: the variant (module docstring).
        loss_weight: the one weight.
        optim: how the adapter is optimised (own AdamW by default; ``student`` = the peers').
    """

    name = "fitnet"

    def __init__(
        self, *, student_channels: int, teacher_channels: int, num_levels: int = 1, adapter: str = "1x1",
        adapter_init: str = "default", normalize: str = "none", loss_weight: float = 1.0,
        optim: MethodOptim = MethodOptim(),
    ) -> None:
        super().__init__(optim)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.adapters = LevelAdapters(adapter, student_channels, teacher_channels, num_levels,
                                      shared=adapter == "1x1", init=adapter_init)
        self.normalize = normalize
        self.loss_weight = loss_weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints of earlier versions name the shared 1x1 conv ``adapter``.
        for name in ("weight", "bias"):
            if f"{prefix}adapter.{name}" in state_dict:
                state_dict[f"{prefix}adapters.convs.0.{name}"] = state_dict.pop(f"{prefix}adapter.{name}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def adapter(self):
        """The shared 1x1 conv (``adapter: 1x1``)."""
        return self.adapters.convs[0]

    def loss(self, teacher_levels: Sequence[Tensor], student_levels: Sequence[Tensor], valid_masks: Sequence[Tensor]) -> Tensor:
        """The unweighted loss of the configured variant on float[B, C, H_l, W_l] levels."""
        adapted = self.adapters(student_levels)
        if self.normalize == "defeat":
            return defeat_full_map_loss(teacher_levels, adapted)
        if self.normalize == "l2_per_image":
            return l2_per_image_loss(teacher_levels, adapted, valid_masks)
        return full_map_imitation_loss(teacher_levels, adapted, valid_masks)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/fitnet/feature"}; {} without student features (nothing to warm up)."""
        if not inputs.has_student:
            return {}
        loss = self.loss(inputs.teacher_levels, inputs.student_levels, inputs.valid_masks)
        return {"distill/fitnet/feature": self.loss_weight * loss}


def build_fitnet(cfg: FitNetConfig, ctx: MethodContext) -> FitNet:
    """FitNet from ``distill.fitnet``: an adapter from the student's width to the teacher's."""
    check_adapter("fitnet", cfg.adapter, ctx.student.out_channels, ctx.teacher.out_channels)
    optim = MethodOptim(kind=STUDENT_SGD) if cfg.adapter_optim == STUDENT_SGD else ctx.own_optim
    return FitNet(
        student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        num_levels=len(ctx.levels), adapter=cfg.adapter, adapter_init=cfg.adapter_init,
        normalize=cfg.normalize, loss_weight=cfg.loss_weight * ctx.weight_scale, optim=optim,
    )


SPEC = register_method(MethodSpec(
    name="fitnet", section=FitNetConfig, build=build_fitnet,
    # Only the feature maps: every kind of detector, no extras.
    needs={ONE_STAGE: frozenset(), TWO_STAGE: frozenset()},
    native=frozenset(FAMILIES),
    paper="Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015",
))
