"""PKD (Cao et al., NeurIPS 2022, "PKD: General Distillation Framework for Object Detectors via
Pearson Correlation Coefficient"): FPN feature imitation after standardising both maps.

Per distilled level, each channel of the teacher's and of the student's map is standardised to
zero mean and unit variance (statistics pooled over the whole batch and all valid positions,
unbiased std, ``(F - mean) / (std + 1e-6)``, as MMRazor's ``PKDLoss``), then

    L = loss_weight · Σ_levels  mean_{valid tokens, channels} (ŝ − t̂)² / 2,

which per channel is ((n−1)/n)·(1 − r), r the Pearson correlation of the two maps over the n
pooled positions. The loss ignores the features' magnitude (it is invariant to a per-channel
a·x + b, a > 0, of either map), which is why it works between detector families.

Defaults (MMRazor's configs): RetinaNet and FCOS p3–p6 at weight 10 (the originals' first four
neck outputs: p7 is never distilled); Faster / Mask / Cascade R-CNN p2–p5 at weight 6; C4 / DC5 the
one map at weight 6. Levels are summed. Nothing is trained unless the widths differ.

This project's choices, each named [ADAPT] in docs/method.md: statistics and the mean over valid
(unpadded) tokens by default (``faithful_padding: true``: every cell, as MMRazor);
``norm_scope: image`` (per image and channel; ``batch`` is the original); a 1x1 adapter when the
teacher's and student's widths differ (MMRazor asserts equal shapes). Levels pair by stride (the
distiller's alignment), not by index as MMRazor's cross-family configs do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor

from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._fpn_parts import (
    ADAPTER_CHOICES, LevelWeight, adapted_student_levels, build_adapters, choose_levels, levels_on_family,
    per_family, require_choice,
    require_positive,
)
from icdistill.distill.methods._parts import LevelAdapters, zero_loss

NAME = "pkd"
PAPER = "Cao et al., NeurIPS 2022"
NORM_SCOPES = ("batch", "image")
# MMRazor's PKDLoss: the eps added to the std.
STD_EPS = 1e-6
# FPN features only: every detector kind, no extra from the adapters.
NEEDS = {ONE_STAGE: frozenset(), TWO_STAGE: frozenset()}
# MMRazor's configs: RetinaNet (also as the student of FCOS and Mask R-CNN teachers), Faster R-CNN,
# Mask R-CNN (as a teacher); Cascade R-CNN has the same neck. FCOS as a student, C4/DC5 and CondInst
# are this project's adaptation.
NATIVE = frozenset({"retinanet", "faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn"})


PKDDefaults = LevelWeight  # the original's per-family setting: the weight of every level and the levels

FAMILY_DEFAULTS: dict[str, PKDDefaults] = per_family(
    PKDDefaults(10.0, ("p3", "p4", "p5", "p6")),
    PKDDefaults(6.0, ("p2", "p3", "p4", "p5")),
    lambda facts, d: replace(d, levels=levels_on_family(d.levels, facts)),
)


@dataclass(frozen=True)
class PKDConfig:
    """``distill.pkd`` (``distill.method: pkd``). Nulls take the student family's default.

    ``loss_weight``: the weight of every level (10 one-stage, 6 two-stage); the levels are
    p3–p6 one-stage, p2–p5 two-stage unless ``distill.levels`` is given; ``norm_scope``: ``batch`` (the
    original) or ``image`` [ADAPT]; ``faithful_padding``: include padded cells in the statistics
    and the mean, as the original does; ``adapter``: ``auto`` (a 1x1 conv only when the widths
    differ [ADAPT]), ``1x1`` or ``none``."""

    loss_weight: Optional[float] = None
    norm_scope: str = "batch"
    faithful_padding: bool = False
    adapter: str = "auto"

    def __post_init__(self) -> None:
        require_positive(NAME, "loss_weight", self.loss_weight)
        require_choice(NAME, "norm_scope", self.norm_scope, NORM_SCOPES)
        require_choice(NAME, "adapter", self.adapter, ADAPTER_CHOICES)


def standardise(feature: Tensor, valid: Tensor, scope: str = "batch", eps: float = STD_EPS) -> Tensor:
    """Per-channel (F − mean) / (std + eps) over the valid tokens.

    Args:
        feature: float Tensor[B, C, H, W].
        valid: bool Tensor[B, H, W], the tokens the statistics use (True everywhere: all cells).
        scope: ``batch`` (one mean and std per channel, pooled over images and positions) or
            ``image`` (per image and channel).
        eps: added to the unbiased std.
    Returns:
        float Tensor[B, C, H, W]; padded cells are standardised too (the caller masks them out).
    """
    weight = valid.unsqueeze(1).to(feature.dtype)  # [B, 1, H, W]
    dims = (0, 2, 3) if scope == "batch" else (2, 3)
    count = weight.sum(dim=dims, keepdim=True)
    mean = (feature * weight).sum(dim=dims, keepdim=True) / count.clamp_min(1)
    var = ((feature - mean).pow(2) * weight).sum(dim=dims, keepdim=True) / (count - 1).clamp_min(1)
    # clamp: a constant channel would give sqrt's infinite gradient at 0.
    return (feature - mean) / (var.clamp_min(1e-24).sqrt() + eps)


def pearson_imitation_loss(teacher: Tensor, student: Tensor, valid: Tensor, scope: str = "batch") -> Tensor:
    """One level's PKD term: mean over valid tokens and channels of (ŝ − t̂)², halved.

    Args:
        teacher: float Tensor[B, C, H, W] (not differentiated).
        student: float Tensor[B, C, H, W] (already mapped to the teacher's width).
        valid: bool Tensor[B, H, W], False on padding (all True: the original's full map).
        scope: see :func:`standardise`.
    Returns:
        A scalar tensor, ((n−1)/n)·(1 − r) averaged over channels (batch scope).
    """
    # float32 statistics under mixed precision (bf16 means and variances drift).
    with torch.no_grad():
        t_hat = standardise(teacher.detach().float(), valid, scope)
    s_hat = standardise(student.float(), valid, scope)
    weight = valid.unsqueeze(1).to(s_hat.dtype)
    return ((s_hat - t_hat).pow(2) * weight).sum() / (weight.sum() * student.shape[1]).clamp_min(1) / 2


class PKD(DistillMethod):
    """``distill.method: pkd``.

    Args:
        levels: the level names it distils (a subset of the distiller's, finest first).
        loss_weight: the weight of each level's term (already times ``distill.weight_scale``).
        norm_scope: ``batch`` or ``image``.
        faithful_padding: statistics and mean over every cell, padding included.
        adapters: 1x1 convs student -> teacher width, or None (equal widths).
    """

    name = NAME

    def __init__(self, *, levels: Sequence[str], loss_weight: float, norm_scope: str = "batch",
                 faithful_padding: bool = False, adapters: LevelAdapters | None = None) -> None:
        # An adapter, when there is one, is a module of the student: its SGD trains it.
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.levels = tuple(levels)
        self.loss_weight = loss_weight
        self.norm_scope = norm_scope
        self.faithful_padding = faithful_padding
        self.adapters = adapters

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/pkd/pcc"}: the weighted sum over levels; {} without a student."""
        if not inputs.has_student:
            return {}
        index, student = adapted_student_levels(inputs, self.levels, self.adapters)
        total = zero_loss(student)
        for i, s in zip(index, student):
            valid = inputs.valid_masks[i]
            if self.faithful_padding:
                valid = torch.ones_like(valid)
            total = total + pearson_imitation_loss(inputs.teacher_levels[i], s, valid, self.norm_scope)
        return {"distill/pkd/pcc": self.loss_weight * total}


def build_pkd(section: PKDConfig, ctx: MethodContext) -> PKD:
    """PKD from its ``distill.pkd`` section: nulls take the student family's defaults."""
    defaults = FAMILY_DEFAULTS[family_facts(ctx.student.family).name]
    levels = choose_levels(defaults.levels, ctx.levels, ctx.levels_configured)
    weight = section.loss_weight if section.loss_weight is not None else defaults.loss_weight
    adapters = build_adapters(NAME, section.adapter, ctx.student.out_channels, ctx.teacher.out_channels, len(levels))
    return PKD(levels=levels, loss_weight=weight * ctx.weight_scale, norm_scope=section.norm_scope,
               faithful_padding=section.faithful_padding, adapters=adapters)


SPEC = register_method(MethodSpec(name=NAME, section=PKDConfig, build=build_pkd, needs=NEEDS, native=NATIVE,
                                  paper=PAPER))
