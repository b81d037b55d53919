"""Li, Jin, Yan 2017, "Mimicking Very Efficient Network for Object Detection" (CVPR 2017):
the student imitates the teacher's features inside region proposals.

Faster R-CNN (native, as UP's ``Sample_Feature_Mimicker``): the teacher's train-mode RPN
proposals (post-NMS, capped at ``max_proposals`` = 1000), each RoIAligned 7×7 (sampling ratio 2)
from its level among p2–p5 (torchvision's mapper = UP's base-56 rule) on both models;
L = ½ · Σ (t_pool − A(s_pool))² / (R·C·7·7), weight 1, no warm-up. A is a 1×1 conv only when
the widths differ (it commutes with RoIAlign, so it is applied after pooling).

RetinaNet / FCOS ([ADAPT], this project's): pseudo-proposals from the source model's dense head
(every anchor decoded, scored by its max class sigmoid, top ``pre_nms_top_n`` = 2000, NMS 0.7,
≤ ``max_proposals``), pooled from p3–p7 with LevelMapper(3, 7, 224, 4).

``regions: gt`` pools the ground-truth boxes instead; ``proposal_source: student`` takes the
student's proposals (detached). No proposals at all gives a zero loss (UP asserts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from icdistill.config import choice, require_at_most_one, require_number
from icdistill.detectors.extras import DENSE, RPN
from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._parts import TWO_STAGE_POOL_LEVELS, check_same_kind, zero_loss

REGIONS = ("proposals", "gt")
SOURCES = (TEACHER, STUDENT)


@dataclass(frozen=True)
class MimicConfig:
    """``distill.mimic``. ``regions``: ``proposals`` (two-stage: RPN proposals; one-stage:
    pseudo-proposals from the dense head, this project's adaptation [ADAPT]) or ``gt``;
    ``proposal_source``: ``teacher`` (United-Perception's) or ``student``; at most
    ``max_proposals`` per image; the [ADAPT] pseudo-proposals keep the top ``pre_nms_top_n``
    scores before NMS at ``nms_thresh``. ``loss_weight``: the one term's weight (the original's 1)."""

    regions: str = choice("proposals", REGIONS)
    proposal_source: str = choice(TEACHER, SOURCES)
    max_proposals: int = 1000
    pre_nms_top_n: int = 2000
    nms_thresh: float = 0.7
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_proposals", "pre_nms_top_n", "nms_thresh"):
            require_number("distill.mimic", name, getattr(self, name), positive=True)
        require_at_most_one("distill.mimic", "nms_thresh", self.nms_thresh)
        require_number("distill.mimic", "loss_weight", self.loss_weight)


def mimic_loss(teacher_pooled: Tensor, student_pooled: Tensor) -> Tensor:
    """½ · mean of the squared difference over all pooled RoIs, channels and bins: float
    [R, C, k, k] each (R ≥ 1); the teacher side is not differentiated."""
    return 0.5 * (student_pooled - teacher_pooled.detach()).pow(2).mean()


def dense_pseudo_proposals(
    boxes: Tensor, scores: Tensor, image_sizes: Sequence[tuple[int, int]], *,
    pre_nms_top_n: int = 2000, nms_thresh: float = 0.7, max_proposals: int = 1000, min_size: float = 1e-3,
) -> list[Tensor]:
    """[ADAPT] RPN-like proposals from a one-stage head: per image clip, drop boxes under
    ``min_size``, keep the top ``pre_nms_top_n`` scores, NMS at ``nms_thresh``, keep at most
    ``max_proposals`` (highest score first).

    Args:
        boxes: float[B, N, 4] decoded boxes, xyxy pixels.
        scores: float[B, N], e.g. the max class sigmoid.
    Returns:
        per image float[P_b, 4].
    """
    out = []
    for b, s, size in zip(boxes, scores, image_sizes):
        b = clip_boxes_to_image(b, tuple(int(v) for v in size))
        keep = remove_small_boxes(b, min_size)
        b, s = b[keep], s[keep]
        top = s.topk(min(pre_nms_top_n, s.numel())).indices
        b, s = b[top], s[top]
        out.append(b[nms(b, s, nms_thresh)[:max_proposals]])
    return out


class Mimic(DistillMethod):
    """``distill.method: mimic``.

    Args:
        two_stage: the source model has an RPN (else dense-head pseudo-proposals, [ADAPT]).
        student_channels, teacher_channels: C_s, C_t (a 1×1 adapter only when they differ).
        regions: ``proposals`` or ``gt``.
        proposal_source: ``teacher`` (UP's) or ``student``.
        max_proposals, pre_nms_top_n, nms_thresh: proposal counts (module docstring).
        pool_levels: level names RoIAlign pools from (None: the distilled levels).
        loss_weight: λ (default 1).
        optim: the adapter's optimisation (the student's SGD, as the originals train adapters).
    """

    name = "mimic"

    def __init__(
        self, *, two_stage: bool, student_channels: int, teacher_channels: int, regions: str = "proposals",
        proposal_source: str = TEACHER, max_proposals: int = 1000, pre_nms_top_n: int = 2000,
        nms_thresh: float = 0.7, pool_levels: Sequence[str] | None = None, loss_weight: float = 1.0,
        optim: MethodOptim = MethodOptim(kind="student"),
    ) -> None:
        super().__init__(optim)
        if regions not in REGIONS or proposal_source not in SOURCES:
            raise ValueError(f"regions {regions!r} / proposal_source {proposal_source!r}; valid: {REGIONS} / {SOURCES}")
        self.two_stage, self.regions, self.proposal_source = two_stage, regions, proposal_source
        self.max_proposals, self.pre_nms_top_n, self.nms_thresh = max_proposals, pre_nms_top_n, nms_thresh
        self.pool_levels = tuple(pool_levels) if pool_levels else None
        self.loss_weight = loss_weight
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1) if student_channels != teacher_channels else None
        self.requires = frozenset() if regions == "gt" else frozenset({RPN if two_stage else DENSE})

    def regions_of(self, inputs: DistillInputs) -> list[Tensor]:
        """The boxes to imitate: per image float[R_b, 4] xyxy pixels (no gradient)."""
        if self.regions == "gt":
            return [t["boxes"].reshape(-1, 4).float() for t in inputs.targets]
        if self.two_stage:
            return [p.detach()[: self.max_proposals] for p in inputs.extra(self.proposal_source, RPN).proposals]
        dense = inputs.extra(self.proposal_source, DENSE)
        with torch.no_grad():
            boxes = dense.decode()
            scores = dense.cls_logits[..., 1:].sigmoid().amax(dim=-1)  # column 0 is the unused background
        return dense_pseudo_proposals(boxes, scores, inputs.image_sizes, pre_nms_top_n=self.pre_nms_top_n,
                                      nms_thresh=self.nms_thresh, max_proposals=self.max_proposals)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/mimic/feature"}; {} in a method-only stage."""
        if not inputs.has_student:
            return {}
        boxes = self.regions_of(inputs)
        if sum(len(b) for b in boxes) == 0:
            return {"distill/mimic/feature": zero_loss(inputs.student_levels)}
        levels = self.pool_levels or inputs.levels
        t_pool = inputs.roi_align(TEACHER, boxes, levels=levels, output_size=7, sampling_ratio=2)
        s_pool = inputs.roi_align(STUDENT, boxes, levels=levels, output_size=7, sampling_ratio=2)
        if self.adapter is not None:
            s_pool = self.adapter(s_pool)
        return {"distill/mimic/feature": self.loss_weight * mimic_loss(t_pool, s_pool)}


def build_mimic(cfg: MimicConfig, ctx: MethodContext) -> Mimic:
    """Li et al. 2017 from ``distill.mimic``; two-stage detectors pool p2–p5."""
    family = ctx.student.family
    if cfg.regions == "proposals":
        check_same_kind("mimic", ctx.teacher.family, family)
    two_stage = family_facts(family).two_stage
    return Mimic(
        two_stage=two_stage, student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        regions=cfg.regions, proposal_source=cfg.proposal_source, max_proposals=cfg.max_proposals,
        pre_nms_top_n=cfg.pre_nms_top_n, nms_thresh=cfg.nms_thresh,
        # RoIAlign of a two-stage pyramid reads p2-p5 only, whatever distill.levels says.
        pool_levels=tuple(n for n in ctx.levels if n in TWO_STAGE_POOL_LEVELS) or ctx.levels if two_stage else ctx.levels,
        loss_weight=cfg.loss_weight * ctx.weight_scale, optim=MethodOptim(kind=STUDENT_SGD),
    )


SPEC = register_method(MethodSpec(
    name="mimic", section=MimicConfig, build=build_mimic,
    # The proposals (regions: proposals): the RPN's, or the dense head's for pseudo-proposals.
    needs={ONE_STAGE: frozenset({DENSE}), TWO_STAGE: frozenset({RPN})},
    native=frozenset({"faster_rcnn", "mask_rcnn"}),
    paper="Li, Jin, Yan, Mimicking Very Efficient Network for Object Detection, CVPR 2017",
))
