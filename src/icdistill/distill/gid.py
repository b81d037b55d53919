"""Dai et al. 2021, GID: "General Instance Distillation for Object Detection" (CVPR 2021).

Per image, GISM picks the K general instances where teacher and student disagree most (their
class scores over every anchor, :mod:`icdistill.distill.gid_select`); on them:

* ``feature``:  Σ (t − A(s))² / (K_batch · 10 · 10) over the instances' 10x10 aligned RoIAlign
  (one FPN level each), A a shared 3x3 conv C_s → C_t on the student's maps (the reproduction's
  squared form; the paper may use a plain norm, docs/method.md);
* ``relation``: smooth-L1 between the students' and the teacher's mean-normalised pairwise
  instance distances (per image by default, ``relation_scope: batch`` as the reproduction);
* ``response_cls`` / ``response_reg``: BCE(z_s, σ(z_t)) over the classes and L1 between the
  regression outputs, on the anchors the detector's own matcher gives the GI boxes, ÷ their count.

Detectors: one-stage ones on the dense head's scores (a head whose anchors are points, FCOS's,
takes the points inside a GI box as its response mask); two-stage ones as the paper describes
Faster R-CNN (secondary summary): GISM on the RPN's objectness and decoded boxes, the response on
the RPN (IoU 0.7 matcher), pooling from p2–p5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icdistill.config import choice, require_number
from icdistill.detectors.assign import assign
from icdistill.detectors.extras import DENSE, RPN
from icdistill.detectors.families import family_facts
from icdistill.distill.gid_select import (
    gi_boxes, gi_scores, inside_any, pool_instances, relation_loss, select_instances,
)
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._parts import anchors_are_points, pooled_levels
from icdistill.errors import ConfigError, ModelMismatchError


@dataclass(frozen=True)
class GIDConfig:
    """``distill.gid`` (defaults: the first author's reproduction, unverified against the paper).
    ``gi_score``: ``paper`` (max_c |P_t - P_s|) or ``repro`` (|max_c P_t - max_c P_s|); GISM
    keeps ``top_k`` boxes per image after ``pre_nms_top_k``, dropping sides <= ``min_box_size``
    px, NMS at ``nms_iou``; ``relation_scope``: ``image`` or ``batch`` (the reproduction's);
    ``adapter``: the shared 3x3 conv on the student's maps (false needs equal FPN widths); the
    four ``*_weight`` are the terms' weights. On two-stage detectors GISM runs on the RPN (the
    paper's description, from a secondary summary; the RPN response and p2-p5 pooling are this
    project's adaptation [ADAPT])."""

    gi_score: str = choice("paper", ("paper", "repro"))
    top_k: int = 10
    pre_nms_top_k: int = 3000
    nms_iou: float = 0.3
    min_box_size: float = 10.0
    pool_size: int = 10
    relation_scope: str = choice("image", ("image", "batch"))
    feature_weight: float = 0.005
    relation_weight: float = 40.0
    response_cls_weight: float = 0.1
    response_reg_weight: float = 0.1
    adapter: bool = True

    def __post_init__(self) -> None:
        for name in ("top_k", "pre_nms_top_k", "pool_size", "nms_iou"):
            require_number("distill.gid", name, getattr(self, name), positive=True)
        if self.nms_iou > 1:
            raise ConfigError(f"config key 'distill.gid.nms_iou' must be in (0, 1], got {self.nms_iou!r}")
        for name in ("min_box_size", "feature_weight", "relation_weight", "response_cls_weight", "response_reg_weight"):
            require_number("distill.gid", name, getattr(self, name))


@dataclass
class HeadView:
    """One detector's per-anchor outputs as GID reads them (B images, N anchors).

    probs float[B, N, C] (sigmoid; one column for the RPN), boxes float[B, N, 4] decoded xyxy
    (no gradient), logits float[B, N, C] and regression float[B, N, 4] (in the graph)."""

    probs: Tensor
    boxes: Tensor
    logits: Tensor
    regression: Tensor
    anchors: list[Tensor]
    num_anchors_per_level: list[int]


def head_view(inputs: DistillInputs, role: str, two_stage: bool) -> HeadView:
    """The dense head's outputs (column 0, the unused background slot, dropped) or the RPN's."""
    if two_stage:
        rpn = inputs.extra(role, RPN)
        box_coder = inputs.student.model.rpn.box_coder
        with torch.no_grad():
            boxes = box_coder.decode(rpn.deltas.detach().reshape(-1, 4), rpn.anchors).reshape(rpn.deltas.shape)
        logits = rpn.objectness.unsqueeze(-1)
        return HeadView(logits.detach().sigmoid(), boxes, logits, rpn.deltas, rpn.anchors, rpn.num_anchors_per_level)
    dense = inputs.extra(role, DENSE)
    with torch.no_grad():
        boxes = dense.decode().detach()
    logits = dense.cls_logits[..., 1:]
    return HeadView(logits.detach().sigmoid(), boxes, logits, dense.bbox_regression, dense.anchors,
                    dense.num_anchors_per_level)


class GID(DistillMethod):
    """``distill.method: gid``.

    Args:
        two_stage: the student is a two-stage detector (GISM on the RPN; the teacher is of the
            student's family, or both are two-stage).
        levels: the level names instances are pooled from, finest first.
        student_channels, teacher_channels: C_s, C_t.
        settings: ``distill.gid`` (:class:`GIDConfig`; ``adapter``: the shared 3x3 conv on the
            student's maps, needed when C_s != C_t).
        scale: ``distill.weight_scale`` (multiplies every term; 1 by default).
    """

    name = "gid"

    def __init__(
        self, *, two_stage: bool, levels: Sequence[str], student_channels: int, teacher_channels: int,
        settings: GIDConfig = GIDConfig(), scale: float = 1.0,
    ) -> None:
        # The reproduction's adapter is a module of the student detector: the student's SGD trains it.
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.two_stage = two_stage
        self.requires = frozenset({RPN if two_stage else DENSE})
        self.levels = tuple(levels)
        self.settings = settings
        self.scale = scale
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 3, padding=1) if settings.adapter else None

    def select(self, inputs: DistillInputs, t: HeadView, s: HeadView) -> list[Tensor]:
        """GISM per image: float[K_b, 4] xyxy GI boxes."""
        if t.probs.shape != s.probs.shape:
            raise ModelMismatchError(
                f"gid compares the teacher's and the student's scores anchor by anchor, but the teacher has "
                f"{tuple(t.probs.shape[1:])} and the student {tuple(s.probs.shape[1:])} (anchors x classes): "
                "give both the same anchor_sizes"
            )
        cfg = self.settings
        scores = gi_scores(t.probs, s.probs, cfg.gi_score)
        boxes = gi_boxes(t.probs, s.probs, t.boxes, s.boxes)
        return [
            select_instances(sc, bx, size, pre_nms_top_k=cfg.pre_nms_top_k, min_size=cfg.min_box_size,
                             nms_iou=cfg.nms_iou, top_k=cfg.top_k)
            for sc, bx, size in zip(scores, boxes, inputs.image_sizes)
        ]

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/gid/feature", ".../relation", ".../response_cls", ".../response_reg"}."""
        if not inputs.has_student:
            return {}
        t_view, s_view = head_view(inputs, TEACHER, self.two_stage), head_view(inputs, STUDENT, self.two_stage)
        instances = self.select(inputs, t_view, s_view)
        feature, relation = self.instance_losses(inputs, instances)
        cls, reg = self.response_losses(inputs, t_view, s_view, instances)
        cfg, k = self.settings, self.scale
        return {
            "distill/gid/feature": k * cfg.feature_weight * feature,
            "distill/gid/relation": k * cfg.relation_weight * relation,
            "distill/gid/response_cls": k * cfg.response_cls_weight * cls,
            "distill/gid/response_reg": k * cfg.response_reg_weight * reg,
        }

    def instance_losses(self, inputs: DistillInputs, instances: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The feature and relation terms on the GI boxes pooled from both models."""
        idx = [inputs.levels.index(name) for name in self.levels]
        strides = [inputs.strides[i] for i in idx]
        t_maps = [inputs.teacher_levels[i] for i in idx]
        s_maps = [inputs.student_levels[i] for i in idx]
        a_maps = [self.adapter(s) for s in s_maps] if self.adapter is not None else s_maps
        size = self.settings.pool_size
        count = sum(len(b) for b in instances)
        if count == 0:
            zero = sum(a.sum() for a in a_maps) * 0.0
            return zero, zero
        t_inst = pool_instances(t_maps, strides, instances, output_size=size)
        a_inst = pool_instances(a_maps, strides, instances, output_size=size)
        feature = (t_inst - a_inst).pow(2).sum() / (count * size * size)
        # Relations compare each model's own feature space: the student's unadapted instances.
        s_inst = a_inst if self.adapter is None else pool_instances(s_maps, strides, instances, output_size=size)
        t_flat, s_flat = t_inst.flatten(1), s_inst.flatten(1)
        if self.settings.relation_scope == "batch":
            return feature, relation_loss(t_flat, s_flat)
        counts = [len(b) for b in instances]
        per_image = [relation_loss(t, s) for t, s in zip(t_flat.split(counts), s_flat.split(counts))]
        return feature, torch.stack(per_image).mean()

    def response_losses(
        self, inputs: DistillInputs, t: HeadView, s: HeadView, instances: list[Tensor],
    ) -> tuple[Tensor, Tensor]:
        """BCE(z_s, σ(z_t)) summed over classes and L1 over the 4 regression outputs, on the
        anchors matched to the GI boxes, each ÷ max(1, matched anchors)."""
        if anchors_are_points(s.anchors[0]):
            mask = torch.stack([inside_any((a[:, :2] + a[:, 2:]) / 2, b) for a, b in zip(s.anchors, instances)])
        else:
            matched = assign(inputs.student, s.anchors, s.num_anchors_per_level, instances)
            mask = torch.stack(matched) >= 0
        n = mask.sum().clamp_min(1)
        cls = F.binary_cross_entropy_with_logits(s.logits, t.logits.detach().sigmoid(), reduction="none").sum(-1)
        reg = (s.regression - t.regression.detach()).abs().sum(-1)
        return (cls * mask).sum() / n, (reg * mask).sum() / n


def build_gid(cfg: GIDConfig, ctx: MethodContext) -> GID:
    """GID from ``distill.gid``. GISM compares both detectors anchor by anchor: the teacher is
    of the student's family (any two-stage family with a two-stage student)."""
    family = ctx.student.family
    two_stage = family_facts(family).two_stage
    same = ctx.teacher.family == family or (two_stage and family_facts(ctx.teacher.family).two_stage)
    if not same:
        raise ConfigError(
            f"distill.method 'gid' compares the teacher's and the student's scores anchor by anchor: the teacher "
            f"must be a {family} too (or any two-stage family for a two-stage student), got {ctx.teacher.family}"
        )
    if not cfg.adapter and ctx.student.out_channels != ctx.teacher.out_channels:
        raise ConfigError(
            f"config key 'distill.gid.adapter' is false but the student's FPN has {ctx.student.out_channels} "
            f"channels and the teacher's {ctx.teacher.out_channels}; valid choices here: true"
        )
    return GID(two_stage=two_stage, levels=pooled_levels(ctx, two_stage), student_channels=ctx.student.out_channels,
               teacher_channels=ctx.teacher.out_channels, settings=cfg, scale=ctx.weight_scale)


SPEC = register_method(MethodSpec(
    name="gid", section=GIDConfig, build=build_gid,
    # GISM reads the scores and boxes of every anchor: the dense head's, or the RPN's.
    needs={ONE_STAGE: frozenset({DENSE}), TWO_STAGE: frozenset({RPN})},
    # The paper reports RetinaNet, FCOS and Faster R-CNN (the two-stage RPN response is ours).
    native=frozenset({"retinanet", "fcos", "faster_rcnn", "mask_rcnn"}),
    paper="Dai et al., General Instance Distillation for Object Detection, CVPR 2021",
))
