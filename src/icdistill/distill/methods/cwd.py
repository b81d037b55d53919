"""CWD (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for Dense Prediction"):
each channel of a feature map as a distribution over its positions, matched with KL.

Per distilled level, with τ the temperature and φ(y_c) = softmax over the H·W positions of y_c/τ:

    L = loss_weight · Σ_levels  τ² / (C·B) · Σ_{b,c} KL( φ(t_{b,c}) ‖ φ(s_{b,c}) ),

C the teacher's channels, B the batch (MMRazor's ``ChannelWiseDivergence``: the KL summed over
positions, averaged over channels and images). The softmax runs over space per channel, not over
classes as in classic KD.

Defaults: τ = 1; RetinaNet / FCOS p3–p6 at weight 5 per level (pppppM/mmdetection-distiller's
RetinaNet config, the one FPN setting with a reported COCO number); Faster / Mask / Cascade R-CNN
p2–p6 at weight 10 (MMRazor's Faster R-CNN config); C4 / DC5 the one map at weight 10. MMRazor's
RetinaNet setting (every level, weight 10) is ``distill.levels: [p3, p4, p5, p6, p7]``,
``distill.cwd.loss_weight: 10``.

This project's choices, named [ADAPT] in docs/method.md: padded positions are left out of both
distributions (logits set to −∞, 0·log 0 = 0; ``faithful_padding: true`` softmaxes over the whole
padded map as the originals do); a 1x1 adapter when the widths differ (as pppppM and
PaddleDetection).

``location: cls_head`` (RetinaNet, FCOS, CondInst: the heads with dense class logits) distils the
classification head's logits instead of the FPN (MMRazor 0.x's GFL config, PaddleDetection's
RetinaNet and GFL configs): per level torchvision's logits of A anchors × (C + 1) classes, the
unused background slot dropped, are an [B, A·C, H, W] map; every level of the head at weight 5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import Tensor

from icdistill.detectors.extras import DENSE, DenseOutputs
from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._fpn_parts import (
    ADAPTER_CHOICES, LevelWeight, adapt, build_adapters, choose_levels, levels_on_family,
    per_family, require_choice,
    require_positive,
)
from icdistill.distill.methods._parts import LevelAdapters, zero_loss
from icdistill.errors import ConfigError

NAME = "cwd"
FPN, CLS_HEAD = "fpn", "cls_head"
LOCATIONS = (FPN, CLS_HEAD)
# The classification-head configs (MMRazor 0.x's GFL, PaddleDetection's RetinaNet / GFL): every
# level of the head, weight 5.
HEAD_LOSS_WEIGHT = 5.0
PAPER = "Shu et al., ICCV 2021"
# FPN features only: every detector kind, no extra from the adapters.
NEEDS = {ONE_STAGE: frozenset(), TWO_STAGE: frozenset()}
# MMRazor's FPN configs (RetinaNet, Faster R-CNN) and pppppM's RetinaNet; Mask and Cascade R-CNN
# have the same neck. FCOS, CondInst and C4/DC5 are this project's adaptation.
NATIVE = frozenset({"retinanet", "faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn"})


CWDDefaults = LevelWeight  # the original's per-family setting: the weight of every level and the levels

FAMILY_DEFAULTS: dict[str, CWDDefaults] = per_family(
    CWDDefaults(5.0, ("p3", "p4", "p5", "p6")),
    CWDDefaults(10.0, ("p2", "p3", "p4", "p5", "p6")),
    lambda facts, d: replace(d, levels=levels_on_family(d.levels, facts)),
)


@dataclass(frozen=True)
class CWDConfig:
    """``distill.cwd`` (``distill.method: cwd``). Nulls take the student family's default.

    ``location``: ``fpn`` (the FPN features) or ``cls_head`` (the one-stage classification
    head's logits, background dropped; every head level, weight 5);
    ``loss_weight``: the weight of every level (5 one-stage, 10 two-stage); the levels are
    p3–p6 one-stage, p2–p6 two-stage unless ``distill.levels`` is given; ``temperature``: τ (1);
    ``faithful_padding``: softmax over the whole padded map, as the originals do (default: valid
    positions only [ADAPT]); ``adapter``: ``auto`` (a 1x1 conv only when the widths differ),
    ``1x1`` or ``none``."""

    location: str = FPN
    loss_weight: Optional[float] = None
    temperature: float = 1.0
    faithful_padding: bool = False
    adapter: str = "auto"

    def __post_init__(self) -> None:
        require_positive(NAME, "loss_weight", self.loss_weight)
        require_positive(NAME, "temperature", self.temperature)
        require_choice(NAME, "location", self.location, LOCATIONS)
        require_choice(NAME, "adapter", self.adapter, ADAPTER_CHOICES)


def channel_wise_divergence(teacher: Tensor, student: Tensor, valid: Tensor | None, temperature: float = 1.0
                            ) -> Tensor:
    """One level's CWD term: τ²/(C·B) · Σ_{b,c} KL(φ(t_{b,c}) ‖ φ(s_{b,c})).

    Args:
        teacher: float Tensor[B, C, H, W] (not differentiated).
        student: float Tensor[B, C, H, W] (already mapped to the teacher's width).
        valid: bool Tensor[B, H, W], the positions the distributions live on (False: padding);
            None: every cell (the original).
        temperature: τ > 0.
    Returns:
        A scalar tensor.
    """
    batch, channels = teacher.shape[:2]
    # float32 softmaxes under mixed precision.
    t = teacher.detach().float().flatten(2) / temperature  # [B, C, HW]
    s = student.float().flatten(2) / temperature
    if valid is not None:
        keep = valid.flatten(1).unsqueeze(1)  # [B, 1, HW]
        t = t.masked_fill(~keep, float("-inf"))
        s = s.masked_fill(~keep, float("-inf"))
    log_p_t = torch.log_softmax(t, dim=-1)
    log_p_s = torch.log_softmax(s, dim=-1)
    p_t = log_p_t.exp()  # 0 on padding
    if valid is not None:
        # 0·log 0 = 0: zero the −∞ log-probabilities so padding adds nothing, to value or gradient.
        log_p_t = log_p_t.masked_fill(~keep, 0.0)
        log_p_s = log_p_s.masked_fill(~keep, 0.0)
    kl = (p_t * (log_p_t - log_p_s)).sum()
    return kl * temperature**2 / (channels * batch)


def head_class_maps(dense: DenseOutputs, level_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """A one-stage head's class logits as one map per level, the background slot dropped.

    Args:
        dense: ``cls_logits`` float[B, N, C + 1] over all anchors (levels finest first, each
            location-major then anchor), ``num_anchors_per_level`` = H_l·W_l·A.
        level_shapes: (H_l, W_l) of each level of the head.
    Returns:
        Per level float Tensor[B, A·C, H_l, W_l], channels anchor-major then class.
    """
    maps = []
    for logits, (height, width) in zip(dense.cls_logits.split(dense.num_anchors_per_level, dim=1), level_shapes):
        batch, count, slots = logits.shape
        per_location = count // (height * width)
        objects = logits.view(batch, height, width, per_location, slots)[..., 1:]
        maps.append(objects.permute(0, 3, 4, 1, 2).reshape(batch, per_location * (slots - 1), height, width))
    return maps


class CWD(DistillMethod):
    """``distill.method: cwd``.

    Args:
        levels: the level names it distils (a subset of the distiller's, finest first).
        loss_weight: the weight of each level's term (already times ``distill.weight_scale``).
        temperature: τ.
        location: ``fpn`` or ``cls_head``.
        faithful_padding: distributions over every cell, padding included.
        adapters: 1x1 convs student -> teacher width, or None (equal widths).
    """

    name = NAME

    def __init__(self, *, levels: Sequence[str], loss_weight: float, temperature: float = 1.0,
                 location: str = FPN, faithful_padding: bool = False, adapters: LevelAdapters | None = None) -> None:
        # An adapter, when there is one, is a module of the student: its SGD trains it.
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.location = location
        # The head variant reads both detectors' dense outputs (the student's from its own forward).
        self.requires = frozenset({DENSE}) if location == CLS_HEAD else frozenset()
        self.levels = tuple(levels)
        self.loss_weight = loss_weight
        self.temperature = temperature
        self.faithful_padding = faithful_padding
        self.adapters = adapters

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/cwd/kl"}: the weighted sum over levels; {} without a student."""
        if not inputs.has_student:
            return {}
        index = [inputs.levels.index(name) for name in self.levels]
        if self.location == CLS_HEAD:
            teacher, student = self._head_maps(inputs)
        else:
            teacher = [inputs.teacher_levels[i] for i in index]
            student = adapt(self.adapters, [inputs.student_levels[i] for i in index])
        total = zero_loss(student)
        for i, t, s in zip(index, teacher, student):
            valid = None if self.faithful_padding else inputs.valid_masks[i]
            total = total + channel_wise_divergence(t, s, valid, self.temperature)
        return {"distill/cwd/kl": self.loss_weight * total}

    def _head_maps(self, inputs: DistillInputs) -> tuple[list[Tensor], list[Tensor]]:
        """The teacher's and the student's class maps at ``self.levels`` (float[B, A·C, H, W])."""
        names = inputs.student.level_names
        shapes = [tuple(inputs.all_student_features[n].shape[-2:]) for n in names]
        teacher = head_class_maps(inputs.extra(TEACHER, DENSE), shapes)
        student = head_class_maps(inputs.extra(STUDENT, DENSE), shapes)
        if teacher[0].shape[1] != student[0].shape[1]:
            raise ValueError(f"distill.cwd.location 'cls_head' needs the same anchors per location and classes in "
                             f"teacher and student; their class maps have {teacher[0].shape[1]} and "
                             f"{student[0].shape[1]} channels")
        picked = [names.index(n) for n in self.levels]
        return [teacher[i] for i in picked], [student[i] for i in picked]


def build_cwd(section: CWDConfig, ctx: MethodContext) -> CWD:
    """CWD from its ``distill.cwd`` section: nulls take the student family's defaults."""
    if section.location == CLS_HEAD:
        return build_head_cwd(section, ctx)
    defaults = FAMILY_DEFAULTS[family_facts(ctx.student.family).name]
    levels = choose_levels(defaults.levels, ctx.levels, ctx.levels_configured)
    weight = section.loss_weight if section.loss_weight is not None else defaults.loss_weight
    adapters = build_adapters(NAME, section.adapter, ctx.student.out_channels, ctx.teacher.out_channels, len(levels))
    return CWD(levels=levels, loss_weight=weight * ctx.weight_scale,
               temperature=section.temperature, faithful_padding=section.faithful_padding, adapters=adapters)


def build_head_cwd(section: CWDConfig, ctx: MethodContext) -> CWD:
    """CWD on the classification head's logits: both detectors need a dense one-stage head."""
    for role, detector in (("student", ctx.student), ("teacher", ctx.teacher)):
        if DENSE not in detector.supported_extras:
            raise ConfigError(
                f"config key 'distill.cwd.location' is 'cls_head', which needs one-stage detectors with dense class "
                f"logits (retinanet, fcos, condinst); the {role} is {detector.family}: use location 'fpn'"
            )
    weight = section.loss_weight if section.loss_weight is not None else HEAD_LOSS_WEIGHT
    return CWD(levels=ctx.levels, loss_weight=weight * ctx.weight_scale,
               temperature=section.temperature, location=CLS_HEAD, faithful_padding=section.faithful_padding)


SPEC = register_method(MethodSpec(name=NAME, section=CWDConfig, build=build_cwd, needs=NEEDS, native=NATIVE,
                                  paper=PAPER))
