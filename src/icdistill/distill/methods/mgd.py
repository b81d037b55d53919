"""MGD (Yang et al., ECCV 2022, "Masked Generative Distillation"): the student's randomly masked
feature regenerates the teacher's full feature through a small generation block.

Per distilled level (yzd-v/MGD's ``FeatureLoss``, the same computation as MMRazor's
``MGDConnector`` + ``MGDLoss``):

1. ``aligned`` = A(s), A a 1x1 conv C_s -> C_t only when the widths differ;
2. a fresh random mask M[B, 1, H, W], the same for every channel: a position is dropped (0) where
   a uniform draw exceeds 1 − λ, so a fraction λ (``mask_ratio``) is dropped;
3. G = Conv3x3(C_t -> C_t) -> ReLU -> Conv3x3(C_t -> C_t), one block per level, PyTorch's init;
4. L = loss_weight · Σ_levels Σ_{b,c,h,w} (G(aligned·M) − t)² / B (summed, divided by the batch
   only: α absorbs the C·H·W scale).

The generation blocks and adapters train with the student's SGD and are thrown away after
training. Defaults: RetinaNet α = 2e-5, λ = 0.65 on p3–p7 (yzd-v/MGD and MMRazor); FCOS and
CondInst the same values (the original's anchor-free RepPoints config: [ADAPT], MGD has no FCOS
config); Faster / Mask / Cascade R-CNN α = 5e-7, λ = 0.45 on p2–p5 (the original's, tuned with a
Cascade Mask R-CNN teacher and no inheritance); C4 / DC5 the two-stage values on the one map.
The originals clip the student's gradients at norm 35 and, for RetinaNet, start the student's
neck and head from the teacher's (``distill.inherit``); the shipped recipes say which they use.

This project's choices, named [ADAPT] in docs/method.md: the squared error is summed over valid
(unpadded) tokens only (``faithful_padding: true``: every cell, as the original; the mask is drawn
over the whole map either way); the mask is drawn from the run's torch random stream, which is
seeded from ``solver.seed`` and saved in checkpoints; ``generation_channels`` narrows the
block's hidden width (null: C_t, the original) where its 18·C_t² parameters per level matter
(C4 / DC5: C_t = 1024 or 2048).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._fpn_parts import (
    ADAPTER_CHOICES, adapted_student_levels, build_adapters, choose_levels, levels_on_family,
    per_family, require_choice,
    require_fraction, require_positive,
)
from icdistill.distill.methods._parts import LevelAdapters, zero_loss

NAME = "mgd"
PAPER = "Yang et al., ECCV 2022"
# FPN features only: every detector kind, no extra from the adapters.
NEEDS = {ONE_STAGE: frozenset(), TWO_STAGE: frozenset()}
# yzd-v/MGD's configs: RetinaNet, Faster R-CNN, Mask R-CNN (and a Cascade Mask R-CNN teacher);
# FCOS, CondInst and C4/DC5 are this project's adaptation.
NATIVE = frozenset({"retinanet", "faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn"})


@dataclass(frozen=True)
class MGDDefaults:
    """The original's per-family setting: α (``loss_weight``), λ (``mask_ratio``) and the levels."""

    loss_weight: float
    mask_ratio: float
    levels: tuple[str, ...]


FAMILY_DEFAULTS: dict[str, MGDDefaults] = per_family(
    MGDDefaults(2e-5, 0.65, ("p3", "p4", "p5", "p6", "p7")),
    MGDDefaults(5e-7, 0.45, ("p2", "p3", "p4", "p5")),
    lambda facts, d: replace(d, levels=levels_on_family(d.levels, facts)),
)


@dataclass(frozen=True)
class MGDConfig:
    """``distill.mgd`` (``distill.method: mgd``). Nulls take the student family's default.

    ``loss_weight``: α (2e-5 one-stage, 5e-7 two-stage); ``mask_ratio``: λ, the fraction of
    positions dropped (0.65 one-stage, 0.45 two-stage); the levels are p3–p7 one-stage, p2–p5
    two-stage unless ``distill.levels`` is given; ``generation_channels``: the generation block's hidden
    width (null: the teacher's width, the original's) [ADAPT]; ``faithful_padding``: sum the
    error over padded cells too, as the original does; ``adapter``: ``auto`` (a 1x1 conv only
    when the widths differ, the original's), ``1x1`` or ``none``."""

    loss_weight: Optional[float] = None
    mask_ratio: Optional[float] = None
    generation_channels: Optional[int] = None
    faithful_padding: bool = False
    adapter: str = "auto"

    def __post_init__(self) -> None:
        require_positive(NAME, "loss_weight", self.loss_weight)
        require_fraction(NAME, "mask_ratio", self.mask_ratio)
        require_positive(NAME, "generation_channels", self.generation_channels)
        require_choice(NAME, "adapter", self.adapter, ADAPTER_CHOICES)


def keep_mask(uniform_draw: Tensor, mask_ratio: float) -> Tensor:
    """1 where a position is kept, 0 where it is dropped (the draw exceeds 1 − λ).

    Args:
        uniform_draw: float Tensor[B, 1, H, W] of U(0, 1) values.
        mask_ratio: λ, the expected fraction dropped.
    Returns:
        float Tensor[B, 1, H, W] of 0 and 1.
    """
    return (uniform_draw <= 1.0 - mask_ratio).to(uniform_draw.dtype)


def generation_block(channels: int, hidden: int | None = None) -> nn.Sequential:
    """Conv3x3(C -> hidden) -> ReLU -> Conv3x3(hidden -> C), padding 1, biases, PyTorch's init:
    float[B, C, H, W] -> float[B, C, H, W]."""
    hidden = hidden or channels
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, kernel_size=3, padding=1),
    )


def masked_generation_loss(teacher: Tensor, student: Tensor, keep: Tensor, generation: nn.Module,
                           valid: Tensor | None) -> Tensor:
    """One level's MGD term (unweighted): Σ (G(s·M) − t)² over the counted cells, divided by B.

    Args:
        teacher: float Tensor[B, C, H, W] (not differentiated).
        student: float Tensor[B, C, H, W], already mapped to the teacher's width.
        keep: float Tensor[B, 1, H, W], the mask M (:func:`keep_mask`).
        generation: the level's generation block.
        valid: bool Tensor[B, H, W] of the counted cells (False: padding), or None: every cell.
    Returns:
        A scalar tensor.
    """
    error = (generation(student * keep).float() - teacher.detach().float()).pow(2)
    if valid is not None:
        error = error * valid.unsqueeze(1).to(error.dtype)
    return error.sum() / teacher.shape[0]


class MGD(DistillMethod):
    """``distill.method: mgd``.

    Args:
        levels: the level names it distils (a subset of the distiller's, finest first).
        teacher_channels: C_t, the generation blocks' width.
        loss_weight: α (already times ``distill.weight_scale``).
        mask_ratio: λ.
        generation_channels: the blocks' hidden width (None: C_t).
        faithful_padding: sum over every cell, padding included.
        adapters: 1x1 convs student -> teacher width, or None (equal widths).
    """

    name = NAME

    def __init__(self, *, levels: Sequence[str], teacher_channels: int, loss_weight: float, mask_ratio: float,
                 generation_channels: int | None = None, faithful_padding: bool = False,
                 adapters: LevelAdapters | None = None) -> None:
        # The generation blocks and adapters are modules of the student in the original: its SGD trains them.
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.levels = tuple(levels)
        self.loss_weight = loss_weight
        self.mask_ratio = mask_ratio
        self.faithful_padding = faithful_padding
        self.adapters = adapters
        self.generation = nn.ModuleList(generation_block(teacher_channels, generation_channels) for _ in self.levels)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/mgd/gen"}: the weighted sum over levels; {} without a student."""
        if not inputs.has_student:
            return {}
        index, student = adapted_student_levels(inputs, self.levels, self.adapters)
        total = zero_loss(student)
        for i, s, generation in zip(index, student, self.generation):
            b, _, h, w = s.shape
            # The run's random stream: seeded from solver.seed, saved in checkpoints.
            keep = keep_mask(torch.rand(b, 1, h, w, device=s.device, dtype=s.dtype), self.mask_ratio)
            valid = None if self.faithful_padding else inputs.valid_masks[i]
            total = total + masked_generation_loss(inputs.teacher_levels[i], s, keep, generation, valid)
        return {"distill/mgd/gen": self.loss_weight * total}


def build_mgd(section: MGDConfig, ctx: MethodContext) -> MGD:
    """MGD from its ``distill.mgd`` section: nulls take the student family's defaults."""
    defaults = FAMILY_DEFAULTS[family_facts(ctx.student.family).name]
    levels = choose_levels(defaults.levels, ctx.levels, ctx.levels_configured)
    weight = section.loss_weight if section.loss_weight is not None else defaults.loss_weight
    mask_ratio = section.mask_ratio if section.mask_ratio is not None else defaults.mask_ratio
    adapters = build_adapters(NAME, section.adapter, ctx.student.out_channels, ctx.teacher.out_channels, len(levels))
    return MGD(levels=levels, teacher_channels=ctx.teacher.out_channels,
               loss_weight=weight * ctx.weight_scale, mask_ratio=mask_ratio,
               generation_channels=section.generation_channels, faithful_padding=section.faithful_padding,
               adapters=adapters)


SPEC = register_method(MethodSpec(name=NAME, section=MGDConfig, build=build_mgd, needs=NEEDS, native=NATIVE,
                                  paper=PAPER))
