"""CrossKD (Wang et al., CVPR 2024, "CrossKD: Cross-Head Knowledge Distillation for Object
Detection"): the student's intermediate head features run through the teacher's remaining head
layers, and those cross-head predictions are distilled towards the teacher's own.

Reimplemented from the paper and from facts about the authors' release (jbwang1997/CrossKD,
CC BY-NC 4.0; none of its code is used). For a dense one-stage head (two towers of n = 4
conv -> [norm] -> ReLU layers, then the predictors):

* the student's tower activation h^s_k at layer ``cross_layer`` = k (after conv and norm,
  before the ReLU; k = 0: the FPN level) is captured from its own training pass
  (the ``head_hold`` extra);
* it is aligned to the teacher's statistics, per level and channel over the batch's positions:
  A(h^s) = (h^s - mean(h^s)) / (std(h^s) + 1e-6) * std(h^t) + mean(h^t) (unbiased stds; the
  student's statistics carry gradient, the teacher's do not) -- the release's alignment;
* the teacher's head runs from layer k on it (the ``head_from`` call, autograd on, parameters
  frozen), giving the cross-head logits x^ and box outputs;
* ``cls``: KD quality focal loss, sum over locations and foreground classes of
  w_loc * BCEWithLogits(x^, sigmoid(y)) * |sigmoid(x^) - sigmoid(y)|^beta / avg_factor, with y the
  teacher's logits;
* ``reg``: both box outputs decoded with the teacher's box coder and anchors, GIoU loss
  (RetinaNet) or -log(IoU) (FCOS), weighted per location by w_loc * sigmoid(max_c y_c) and
  divided by the same avg_factor.

The student's own predictions are trained by the ground truth only; the KD gradient reaches
the student's tower layers 1..k, its FPN and backbone through the frozen teacher layers.
Normalisers follow the release: RetinaNet w_loc = 1 except ignored anchors (IoU in [0.4, 0.5))
and padded locations, avg_factor = sum over images of max(#positive anchors, 1); FCOS w_loc = 1
on valid locations (every location with ``faithful_padding``), avg_factor = max(sum of the
centre-ness targets of the positive points, 1e-6).

This project's adaptations [ADAPT]: positions are matched on the teacher's anchors (the student
is of the same family, so they are the student's too); alignment statistics and FCOS's
locations are valid (unpadded) positions only unless ``faithful_padding``; a 1x1 conv per
tower maps a student head narrower or wider than the teacher's (the release has only equal
widths); CondInst runs FCOS's path on its FCOS towers.

Two-stage detectors (Faster / Mask R-CNN FPN, and this project's other two-stage families
[ADAPT]): the release's experimental ``faster-rcnn`` branch, untuned by its authors. The cross
point is the RoI head's input: the teacher's whole box branch (RoIAlign, box head, predictor) runs
on the student's FPN features at the student's sampled RoIs. ``cls``: KL(softmax(y/T) ||
softmax(x^/T)) * T^2 over the C + 1 classes, T = 3, averaged over the sampled RoIs; ``reg``: L1
on the encoded deltas of the teacher's most probable foreground class c*, weighted per RoI by
that class's probability, divided by 4 * the sum of the weights. No alignment; a 1x1 conv per
level [ADAPT] when the FPN widths differ. Not carried over: the branch's Mask R-CNN mask-logit KD
(the mask head is left alone) and per-stage Cascade KD (Cascade uses its first stage).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from icdistill.detectors.assign import IGNORED, assign
from icdistill.detectors.extras import DENSE, HEAD_FROM, HEAD_HOLD, ROI_SAMPLES, DenseOutputs, RoISamples
from icdistill.detectors.head_split import TOWERS, HeadHolds, head_from, tower_depth
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs, valid_token_mask
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, family_kind, register_method
from icdistill.distill.methods._fpn_parts import build_adapters
from icdistill.distill.methods.pkd import PKD
from icdistill.errors import ConfigError

NAME = "crosskd"
PAPER = "Wang et al., CVPR 2024"
# Detector kind -> the extras both adapters must provide (detectors/extras.py names; every
# two-stage adapter also has the ``box_head`` call).
NEEDS: Mapping[str, frozenset[str]] = {
    ONE_STAGE: frozenset({DENSE, HEAD_HOLD, HEAD_FROM}),
    TWO_STAGE: frozenset({ROI_SAMPLES}),
}
# Families of the release's configs (RetinaNet, FCOS; GFL and ATSS are not torchvision's), and
# Faster / Mask R-CNN of its experimental branch.
NATIVE: frozenset[str] = frozenset({"retinanet", "fcos", "faster_rcnn", "mask_rcnn"})
ONE_STAGE_REG_LOSSES, TWO_STAGE_REG_LOSSES = ("giou", "iou"), ("l1",)
REG_LOSSES = ONE_STAGE_REG_LOSSES + TWO_STAGE_REG_LOSSES
STD_EPS = 1e-6  # added to the student's std in the alignment (the release's)
MMDET_EPS = torch.finfo(torch.float32).eps  # mmdet's weighted-mean denominator guard (1.19e-7)


@dataclass(frozen=True)
class CrossKDDefaults:
    """The release's settings for one head kind: the cross layer k, the term weights, the
    regression loss and the classification KL's temperature (two-stage only)."""

    cross_layer: int
    cls_weight: float
    reg_weight: float
    reg_loss: str
    temperature: float | None = None


# Head kind of each one-stage family whose head this method can split (every two-stage family
# is of kind ``two_stage``), and the kinds' defaults: RetinaNet R101 -> R50 (k 3, weights 1 / 1,
# GIoU), FCOS R101 -> R50 (k 2, 0.4 / 0.75, -log IoU), the two-stage branch (RoI level, KL with
# T 3 at 0.5, L1 at 1.0).
HEAD_KINDS: Mapping[str, str] = {"retinanet": "retinanet", "fcos": "fcos", "condinst": "fcos"}
FAMILY_DEFAULTS: Mapping[str, CrossKDDefaults] = {
    "retinanet": CrossKDDefaults(3, 1.0, 1.0, "giou"),
    "fcos": CrossKDDefaults(2, 0.4, 0.75, "iou"),
    TWO_STAGE: CrossKDDefaults(0, 0.5, 1.0, "l1", temperature=3.0),
}


def _config_error(key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"config key 'distill.{NAME}.{key}' is {value!r}; {what}")


@dataclass(frozen=True)
class CrossKDConfig:
    """``distill.crosskd`` (CrossKD, Wang et al., CVPR 2024). Nulls take the student family's
    release defaults: RetinaNet ``cross_layer`` 3, ``cls_weight`` 1.0, ``reg_weight`` 1.0,
    ``reg_loss`` giou; FCOS (and CondInst [ADAPT]) 2, 0.4, 0.75, iou; two-stage families (the
    release's experimental branch, untuned) ``cls_weight`` 0.5, ``reg_weight`` 1.0, ``reg_loss``
    l1, ``temperature`` 3 (two-stage only). ``cross_layer`` k in 0..4 (one-stage only):
    the tower layer whose output (before its ReLU; 0 = the FPN level) goes to the teacher's head.
    ``beta``: the KD quality focal loss exponent. ``align``: the release's statistics alignment
    of the student's held features to the teacher's (false: none). ``faithful_padding``: the
    release's statistics over every position and FCOS's KD on padded points too (default: valid
    positions only [ADAPT]). ``pkd_weight``: the release's CrossKD + PKD variant, PKD (Pearson
    imitation, ``distill.method: pkd``'s loss with batch statistics) on every distilled FPN level
    at this weight (the release: 2 for RetinaNet and FCOS); 0 (default) is CrossKD alone.
    ``distill.weight_scale`` multiplies every weight."""

    cross_layer: Optional[int] = None
    cls_weight: Optional[float] = None
    reg_weight: Optional[float] = None
    reg_loss: Optional[str] = None
    temperature: Optional[float] = None
    beta: float = 1.0
    align: bool = True
    faithful_padding: bool = False
    pkd_weight: float = 0.0

    def __post_init__(self) -> None:
        if (isinstance(self.pkd_weight, bool) or not isinstance(self.pkd_weight, (int, float))
                or not math.isfinite(self.pkd_weight) or self.pkd_weight < 0):
            raise _config_error("pkd_weight", self.pkd_weight, "use a weight >= 0 (0: CrossKD alone; the release's "
                                                               "CrossKD + PKD uses 2)")
        if self.cross_layer is not None and (isinstance(self.cross_layer, bool) or not isinstance(self.cross_layer, int)
                                             or self.cross_layer < 0):
            raise _config_error("cross_layer", self.cross_layer,
                                "use a tower layer index 0..4 (0 = the FPN level), or null for the family's default")
        for key in ("cls_weight", "reg_weight"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise _config_error(key, value, "use a finite number >= 0, or null for the family's default")
        if self.reg_loss is not None and self.reg_loss not in REG_LOSSES:
            raise _config_error("reg_loss", self.reg_loss,
                                f"valid choices: {', '.join(REG_LOSSES)}, or null for the family's default")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
            raise _config_error("beta", self.beta, "use a number > 0 (the release's: 1)")
        if self.temperature is not None and (isinstance(self.temperature, bool)
                                             or not isinstance(self.temperature, (int, float))
                                             or not self.temperature > 0):
            raise _config_error("temperature", self.temperature, "use a number > 0, or null for the release's 3")


# --------------------------------------------------------------------------- pure losses


def align_statistics(student_hold: Tensor, teacher_hold: Tensor, valid: Tensor | None = None,
                     eps: float = STD_EPS) -> Tensor:
    """The student's held features moved to the teacher's per-channel statistics.

    Args:
        student_hold: float Tensor[B, C, H, W] (gradient flows through it and its statistics).
        teacher_hold: float Tensor[B, C, H, W] (no gradient).
        valid: bool Tensor[B, H, W] of the positions the statistics are taken over; None: all.
        eps: added to the student's std.
    Returns:
        float Tensor[B, C, H, W]: (s - mean_s) / (std_s + eps) * std_t + mean_t, with means and
        unbiased stds per channel over the (valid) positions of the batch.
    """
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        cells = x.transpose(0, 1).flatten(1)  # [C, B*H*W]
        if valid is not None:
            cells = cells[:, valid.flatten()]
        correction = 1 if cells.shape[1] > 1 else 0  # one position: no unbiased estimate
        shape = (1, -1, 1, 1)
        return cells.mean(dim=1).view(shape), cells.std(dim=1, correction=correction).view(shape)

    s_mean, s_std = stats(student_hold)
    t_mean, t_std = stats(teacher_hold.detach())
    return (student_hold - s_mean) / (s_std + eps) * t_std + t_mean


def kd_quality_focal_loss(cross_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0) -> Tensor:
    """Elementwise KD quality focal loss: BCEWithLogits(x^, sigmoid(y)) * |sigmoid(x^) - sigmoid(y)|^beta.

    Args:
        cross_logits: float Tensor[..., C] (x^).
        teacher_logits: float Tensor[..., C] (y; not differentiated).
    Returns:
        float Tensor[..., C].
    """
    target = teacher_logits.detach().sigmoid()
    bce = F.binary_cross_entropy_with_logits(cross_logits, target, reduction="none")
    return bce * (cross_logits.sigmoid() - target).abs().pow(beta)


def giou_distill_loss(cross_boxes: Tensor, teacher_boxes: Tensor) -> Tensor:
    """1 - GIoU of aligned boxes (eps 1e-6): float[..., 4] xyxy each -> float[...]."""
    flat = generalized_box_iou_loss(cross_boxes.reshape(-1, 4), teacher_boxes.detach().reshape(-1, 4),
                                    reduction="none", eps=1e-6)
    return flat.view(cross_boxes.shape[:-1])


def iou_log_loss(cross_boxes: Tensor, teacher_boxes: Tensor, eps: float = 1e-6) -> Tensor:
    """-log(clamp(IoU, eps)) of aligned boxes: float[..., 4] xyxy each -> float[...].

    IoU = (intersection + eps) / (union + eps) [ADAPT]: torchvision's FCOS ends its box branch
    with a ReLU, so it predicts empty boxes (all distances 0), and two equal empty boxes must
    cost nothing (the release's FCOS uses exp, which never gives them); elsewhere the eps
    changes the IoU by at most eps / union."""
    target = teacher_boxes.detach()
    lt = torch.maximum(cross_boxes[..., :2], target[..., :2])
    rb = torch.minimum(cross_boxes[..., 2:], target[..., 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=-1)
    area = lambda b: (b[..., 2:] - b[..., :2]).clamp_min(0).prod(dim=-1)  # noqa: E731
    union = area(cross_boxes) + area(target) - inter
    return -((inter + eps) / (union + eps)).clamp_min(eps).log()


def weighted_sum(loss: Tensor, weight: Tensor, avg_factor: float) -> Tensor:
    """sum(weight * loss) / (avg_factor + 1.19e-7) (mmdet's weighted mean); locations of weight
    0 contribute exactly 0 even where ``loss`` is not finite. Shapes broadcast."""
    weight = weight.expand_as(loss) if weight.dim() == loss.dim() else weight
    terms = torch.where(weight > 0, weight * loss, torch.zeros_like(loss))
    return terms.sum() / (avg_factor + MMDET_EPS)


def roi_kl_loss(cross_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per RoI KL(softmax(y/T) || softmax(x^/T)) * T^2 over the C + 1 classes.

    Args:
        cross_logits: float Tensor[R, C+1] (x^, the teacher's box branch on the student's features).
        teacher_logits: float Tensor[R, C+1] (y; not differentiated).
    Returns:
        float Tensor[R].
    """
    target = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    log_cross = F.log_softmax(cross_logits / temperature, dim=-1)
    return (target.exp() * (target - log_cross)).sum(dim=-1) * temperature ** 2


def roi_delta_l1_loss(cross_deltas: Tensor, teacher_logits: Tensor, teacher_deltas: Tensor) -> Tensor:
    """L1 between the encoded deltas of the teacher's most probable foreground class, weighted
    by its probability and divided by 4 * the sum of the weights (0 without RoIs).

    Args:
        cross_deltas, teacher_deltas: float Tensor[R, 4(C+1)], class-specific (column 0 background).
        teacher_logits: float Tensor[R, C+1].
    Returns:
        A scalar tensor.
    """
    probs = teacher_logits.detach().softmax(dim=-1)[:, 1:]  # foreground classes
    weight, best = probs.max(dim=-1)
    rows = torch.arange(best.shape[0], device=best.device)
    pick = lambda d: d.view(d.shape[0], -1, 4)[rows, best + 1]  # noqa: E731
    l1 = (pick(cross_deltas) - pick(teacher_deltas.detach())).abs().sum(dim=-1)
    return (weight * l1).sum() / (4 * weight.sum()).clamp_min(MMDET_EPS)


# ------------------------------------------------------------------- positions and weights


def location_valid(level_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                   image_sizes: Sequence[tuple[int, int]], anchors_per_location: int, device) -> Tensor:
    """bool Tensor[B, N]: whether each anchor's location is inside its image (not padding),
    in the head's order (levels finest first, location-major, then anchor)."""
    masks = valid_token_mask(level_shapes, strides, image_sizes, device)
    flat = torch.cat([m.flatten(1) for m in masks], dim=1)
    return flat.repeat_interleave(anchors_per_location, dim=1)


def retinanet_weights(teacher, dense: DenseOutputs, boxes: Sequence[Tensor], valid: Tensor) -> tuple[Tensor, float]:
    """RetinaNet's w_loc float[B, N] (1 on valid, not-ignored anchors) and avg_factor (sum over
    images of max(#positives, 1)) from the detector's own matcher (IoU 0.5 / 0.4)."""
    matched = torch.stack(assign(teacher, dense.anchors, dense.num_anchors_per_level, boxes))
    weight = (valid & (matched != IGNORED)).to(dense.cls_logits.dtype)
    avg_factor = float((matched >= 0).sum(dim=1).clamp_min(1).sum())
    return weight, avg_factor


def centerness_targets(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centre-ness of points inside their boxes: points float[N, 4] (point anchors xyxy;
    their centres count), boxes float[N, 4] xyxy -> float[N] =
    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))."""
    centers = (points[:, :2] + points[:, 2:]) / 2
    ltrb = torch.cat([centers - boxes[:, :2], boxes[:, 2:] - centers], dim=1)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    return torch.sqrt((lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values))


def fcos_weights(teacher, dense: DenseOutputs, boxes: Sequence[Tensor], valid: Tensor | None) -> tuple[Tensor, float]:
    """FCOS's w_loc float[B, N] (1 on valid points, or everywhere when ``valid`` is None) and
    avg_factor = max(sum of the positive points' centre-ness targets, 1e-6), from torchvision
    FCOS's own matching."""
    matched = assign(teacher, dense.anchors, dense.num_anchors_per_level, boxes)
    total = dense.cls_logits.new_zeros(())
    for points, gt, idx in zip(dense.anchors, boxes, matched):
        fg = idx >= 0
        if fg.any():
            total = total + centerness_targets(points[fg], gt.to(points)[idx[fg]]).sum()
    weight = torch.ones(dense.cls_logits.shape[:2], dtype=dense.cls_logits.dtype, device=dense.cls_logits.device)
    if valid is not None:
        weight = weight * valid
    return weight, max(float(total), 1e-6)


# ------------------------------------------------------------------------------ the method


class CrossKD(DistillMethod):
    """``distill.method: crosskd`` on a dense one-stage student and teacher of the same head kind.

    Args:
        head_kind: ``retinanet`` (anchors, GIoU, ignored anchors excluded) or ``fcos``.
        cross_layer: k, 0..n.
        cls_weight, reg_weight: the terms' absolute weights (``weight_scale`` included).
        reg_loss: ``giou`` or ``iou``.
        beta: the KD quality focal loss exponent.
        align: apply the statistics alignment.
        faithful_padding: statistics over all positions, FCOS's KD on padded points too.
        student_channels, teacher_channels: the heads' widths; a 1x1 conv per tower [ADAPT]
            maps the student's held features when they differ (trained in the student's SGD).
    """

    name = NAME
    requires = frozenset({DENSE, HEAD_HOLD})

    def __init__(
        self, *, head_kind: str, cross_layer: int, cls_weight: float, reg_weight: float, reg_loss: str,
        beta: float = 1.0, align: bool = True, faithful_padding: bool = False,
        student_channels: int = 256, teacher_channels: int = 256,
    ) -> None:
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        if head_kind not in ("retinanet", "fcos") or reg_loss not in ONE_STAGE_REG_LOSSES:
            raise ValueError(f"head_kind {head_kind!r} / reg_loss {reg_loss!r}; valid: retinanet, fcos / "
                             f"{ONE_STAGE_REG_LOSSES}")
        self.head_kind, self.cross_layer = head_kind, cross_layer
        self.cls_weight, self.reg_weight, self.reg_loss, self.beta = cls_weight, reg_weight, reg_loss, beta
        self.align, self.faithful_padding = align, faithful_padding
        self.adapters = (nn.ModuleDict({t: nn.Conv2d(student_channels, teacher_channels, 1) for t in TOWERS})
                         if student_channels != teacher_channels else None)

    def cross_head(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """The teacher's head from layer k on the student's aligned held features:
        ``cls_logits`` float[B, N, K], ``bbox_regression`` float[B, N, 4] (+ ``bbox_ctrness``)."""
        student: HeadHolds = inputs.extra(STUDENT, HEAD_HOLD)
        teacher: HeadHolds = inputs.extra(TEACHER, HEAD_HOLD)
        k = self.cross_layer
        valid = None if self.faithful_padding else self.head_valid_masks(inputs, teacher.at("cls", k))
        cross = {}
        for tower in TOWERS:
            levels = []
            for i, (s, t) in enumerate(zip(student.at(tower, k), teacher.at(tower, k))):
                s = s.detach() if inputs.detach_student else s
                s = self.adapters[tower](s) if self.adapters is not None else s
                levels.append(align_statistics(s, t, None if valid is None else valid[i]) if self.align else s)
            cross[tower] = levels
        return head_from(inputs.teacher, cross["cls"], cross["reg"], k)

    @staticmethod
    def head_valid_masks(inputs: DistillInputs, levels: Sequence[Tensor]) -> list[Tensor]:
        """Per head level bool Tensor[B, H_l, W_l], False on padding (every head level, not
        only ``distill.levels``)."""
        shapes = [(int(x.shape[-2]), int(x.shape[-1])) for x in levels]
        return valid_token_mask(shapes, inputs.teacher.strides[:len(shapes)], inputs.image_sizes, levels[0].device)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/crosskd/cls", "distill/crosskd/reg"}; {} without a student."""
        if not inputs.has_student:
            return {}
        dense: DenseOutputs = inputs.extra(TEACHER, DENSE)
        cross = self.cross_head(inputs)
        boxes = [t["boxes"].reshape(-1, 4).to(dense.cls_logits) for t in inputs.targets]
        weight, avg_factor = self.location_weights(inputs, dense, boxes)
        # Column 0 is torchvision's unused background slot: not a class.
        cls_loss = kd_quality_focal_loss(cross["cls_logits"][..., 1:], dense.cls_logits[..., 1:], self.beta)
        cls = weighted_sum(cls_loss, weight.unsqueeze(-1), avg_factor)
        cross_boxes = replace(dense, bbox_regression=cross["bbox_regression"]).decode()
        teacher_boxes = dense.decode()
        reg_loss = (giou_distill_loss if self.reg_loss == "giou" else iou_log_loss)(cross_boxes, teacher_boxes)
        reg_weight = weight * dense.cls_logits[..., 1:].detach().max(dim=-1).values.sigmoid()
        reg = weighted_sum(reg_loss, reg_weight, avg_factor)
        return {f"distill/{NAME}/cls": self.cls_weight * cls, f"distill/{NAME}/reg": self.reg_weight * reg}

    def location_weights(self, inputs: DistillInputs, dense: DenseOutputs, boxes: list[Tensor]) -> tuple[Tensor, float]:
        """w_loc float[B, N] and avg_factor of the head kind (module docstring)."""
        holds: HeadHolds = inputs.extra(TEACHER, HEAD_HOLD)
        levels = holds.at("cls", 0)
        shapes = [(int(x.shape[-2]), int(x.shape[-1])) for x in levels]
        per_location = dense.cls_logits.shape[1] // sum(h * w for h, w in shapes)
        valid = location_valid(shapes, inputs.teacher.strides[:len(shapes)], inputs.image_sizes, per_location,
                               dense.cls_logits.device)
        if self.head_kind == "retinanet":
            return retinanet_weights(inputs.teacher, dense, boxes, valid)
        return fcos_weights(inputs.teacher, dense, boxes, None if self.faithful_padding else valid)


class CrossKDTwoStage(DistillMethod):
    """``distill.method: crosskd`` on a two-stage student and teacher: the release's experimental
    branch (module docstring).

    Args:
        level_names: the student's FPN level names (the RoI pooler reads its own subset).
        cls_weight, reg_weight: the terms' absolute weights (``weight_scale`` included).
        temperature: T of the classification KL.
        student_channels, teacher_channels: FPN widths; a 1x1 conv per level [ADAPT] maps the
            student's levels when they differ (trained in the student's SGD).
    """

    name = NAME
    requires = frozenset({ROI_SAMPLES})

    def __init__(
        self, *, level_names: Sequence[str], cls_weight: float, reg_weight: float, temperature: float,
        student_channels: int = 256, teacher_channels: int = 256,
    ) -> None:
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.cls_weight, self.reg_weight, self.temperature = cls_weight, reg_weight, temperature
        self.level_names = tuple(level_names)
        self.adapters = (nn.ModuleDict({n: nn.Conv2d(student_channels, teacher_channels, 1) for n in self.level_names})
                         if student_channels != teacher_channels else None)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/crosskd/cls", "distill/crosskd/reg"}; {} without a student."""
        if not inputs.has_student:
            return {}
        samples: RoISamples = inputs.extra(STUDENT, ROI_SAMPLES)
        features = OrderedDict()
        for name, level in inputs.all_student_features.items():
            level = level.detach() if inputs.detach_student else level
            features[name] = self.adapters[name](level) if self.adapters is not None and name in self.adapters else level
        # The teacher's own (frozen, eval-mode) box branch with autograd on: the wrapper of a
        # frozen teacher runs it under inference_mode, which would cut the student's gradient.
        teacher_detector = getattr(inputs.teacher, "adapter", inputs.teacher)
        with torch.enable_grad():
            cross_logits, cross_deltas = teacher_detector.box_head(features, samples.boxes, inputs.image_sizes)
        teacher_logits, teacher_deltas = inputs.box_head(TEACHER, samples.boxes)
        # The losses in float32 whatever autocast ran the box heads in (bf16 / fp16 logits would
        # put the KL's and the L1's sums in a low-precision dtype).
        cross_logits, cross_deltas = cross_logits.float(), cross_deltas.float()
        teacher_logits, teacher_deltas = teacher_logits.float(), teacher_deltas.float()
        cls = roi_kl_loss(cross_logits, teacher_logits, self.temperature).sum() / max(cross_logits.shape[0], 1)
        reg = roi_delta_l1_loss(cross_deltas, teacher_logits, teacher_deltas)
        return {f"distill/{NAME}/cls": self.cls_weight * cls, f"distill/{NAME}/reg": self.reg_weight * reg}


class WithPKD(DistillMethod):
    """CrossKD + PKD (the release's variant): ``base``'s terms plus PKD on every distilled level.

    Args:
        base: a :class:`CrossKD` or :class:`CrossKDTwoStage`.
        pkd: the PKD loss (its ``loss_weight`` already the add-on's weight).
    """

    name = NAME

    def __init__(self, base: DistillMethod, pkd: PKD) -> None:
        super().__init__(base.optim)
        self.base, self.pkd = base, pkd
        self.requires = base.requires

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """``base``'s terms and ``distill/crosskd/pkd``; {} without a student."""
        losses = self.base(inputs)
        losses.update({f"distill/{NAME}/pkd": term for term in self.pkd(inputs).values()})
        return losses


def with_pkd_addon(method: DistillMethod, section: CrossKDConfig, ctx: MethodContext) -> DistillMethod:
    """``method`` alone when ``pkd_weight`` is 0, else wrapped with PKD on every distilled level
    (batch statistics, the padding rule of ``faithful_padding``, a 1x1 adapter when widths differ)."""
    if section.pkd_weight == 0:
        return method
    adapters = build_adapters(NAME, "auto", ctx.student.out_channels, ctx.teacher.out_channels, len(ctx.levels))
    pkd = PKD(levels=ctx.levels, loss_weight=float(section.pkd_weight) * float(ctx.weight_scale),
              faithful_padding=section.faithful_padding, adapters=adapters)
    return WithPKD(method, pkd)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def build_crosskd(section: CrossKDConfig, ctx: MethodContext) -> DistillMethod:
    """CrossKD from its ``distill.crosskd`` section and the method context; nulls take the
    student family's release defaults; every weight is multiplied by ``distill.weight_scale``.

    ConfigError when teacher and student do not share a head kind (the teacher's head runs on
    the student's features, and its predictions are compared location by location or RoI by
    RoI), when the towers' depths differ, when ``cross_layer`` is past the towers' depth, or
    when a key does not apply to the kind."""
    kind = kind_of(ctx.student.family, "student")
    if kind_of(ctx.teacher.family, "teacher") != kind:
        raise ConfigError(
            f"distill.method {NAME!r} runs the student's features through the teacher's head and compares "
            f"them location by location: the teacher must have the student's head ({ctx.student.family}: "
            f"{_kind_families(kind)}), got teacher {ctx.teacher.family}")
    defaults = FAMILY_DEFAULTS[kind]
    reg_loss = _pick(section.reg_loss, defaults.reg_loss)
    allowed = TWO_STAGE_REG_LOSSES if kind == TWO_STAGE else ONE_STAGE_REG_LOSSES
    if reg_loss not in allowed:
        raise _config_error("reg_loss", reg_loss, f"a {ctx.student.family} student takes: {', '.join(allowed)}")
    scale = float(ctx.weight_scale)
    cls_weight = scale * _pick(section.cls_weight, defaults.cls_weight)
    reg_weight = scale * _pick(section.reg_weight, defaults.reg_weight)
    if kind == TWO_STAGE:
        if section.cross_layer is not None:
            raise _config_error("cross_layer", section.cross_layer,
                                "two-stage students cross at the RoI head's input: leave it null")
        return with_pkd_addon(CrossKDTwoStage(
            level_names=ctx.student.level_names, cls_weight=cls_weight, reg_weight=reg_weight,
            temperature=float(_pick(section.temperature, defaults.temperature)),
            student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels), section, ctx)
    if section.temperature is not None:
        raise _config_error("temperature", section.temperature, "it applies to two-stage students only: leave it null")
    depth = tower_depth(ctx.student.model.head)
    if tower_depth(ctx.teacher.model.head) != depth:
        raise ConfigError(f"distill.method {NAME!r} needs head towers of equal depth; student {depth}, "
                          f"teacher {tower_depth(ctx.teacher.model.head)}")
    cross_layer = _pick(section.cross_layer, defaults.cross_layer)
    if cross_layer > depth:
        raise _config_error("cross_layer", cross_layer, f"the head towers have {depth} layers: use 0..{depth}")
    return with_pkd_addon(CrossKD(
        head_kind=kind, cross_layer=cross_layer, cls_weight=cls_weight, reg_weight=reg_weight, reg_loss=reg_loss,
        beta=float(section.beta), align=section.align, faithful_padding=section.faithful_padding,
        student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
    ), section, ctx)


def kind_of(family: str, role: str) -> str:
    """``retinanet`` / ``fcos`` (the one-stage heads this method splits) or ``two_stage``;
    ConfigError naming the families otherwise."""
    if family in HEAD_KINDS:
        return HEAD_KINDS[family]
    if family_kind(family) == TWO_STAGE:
        return TWO_STAGE
    raise ConfigError(
        f"distill.method {NAME!r} splits a RetinaNet- or FCOS-style head or crosses at a two-stage RoI head; "
        f"the {role} is {family}, whose head it cannot split (one-stage families: {', '.join(HEAD_KINDS)})")


def _kind_families(kind: str) -> str:
    if kind == TWO_STAGE:
        return "a two-stage family"
    return ", ".join(f for f, k in HEAD_KINDS.items() if k == kind)


SPEC = register_method(MethodSpec(
    name=NAME, section=CrossKDConfig, build=build_crosskd, needs=NEEDS, native=NATIVE,
    paper="Wang et al., CrossKD: Cross-Head Knowledge Distillation for Object Detection, CVPR 2024",
))
