"""``assign``: a detector's own anchor matcher applied to arbitrary boxes.

The distillation methods that weight anchors by foreground / background (Chen et al. 2017's
one-stage form, GID's response mask) need the assignment the detector's loss would make for
given boxes, without running that loss. This module reproduces it from the model's own parts:

* RetinaNet: ``model.proposal_matcher`` on box/anchor IoU (0.5 / 0.4, low-quality matches);
* FCOS (and CondInst): torchvision ``FCOS.compute_loss``'s centre sampling, inside-box and
  scale-range rules;
* Faster R-CNN / Mask R-CNN: the RPN's ``proposal_matcher`` (0.7 / 0.3, low-quality matches).

Result per image: int64 Tensor[N], the matched box index for a foreground anchor, ``BACKGROUND``
(-1) or ``IGNORED`` (-2, between the IoU thresholds; FCOS has none).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from .base import DetectorAdapter

BACKGROUND, IGNORED = -1, -2
FCOS_MATCHING = ("fcos", "condinst")  # CondInst is torchvision's FCOS with more heads


def assign(
    detector: DetectorAdapter,
    anchors: Sequence[Tensor],
    num_anchors_per_level: Sequence[int],
    boxes: Sequence[Tensor],
) -> list[Tensor]:
    """The detector's matching of ``anchors`` to ``boxes``.

    Args:
        detector: an adapter (or frozen teacher) of a RetinaNet, an FCOS or a two-stage
            detector (then the anchors are the RPN's).
        anchors: per image float Tensor[N, 4] xyxy pixels (the ``anchors`` extra).
        num_anchors_per_level: N split by level, finest first (FCOS's scale ranges need it).
        boxes: per image float Tensor[M_b, 4] xyxy pixels (M_b may be 0).
    Returns:
        per image int64 Tensor[N]: box index (foreground), -1 background, -2 ignored.
    """
    family = detector.family
    if family in FCOS_MATCHING:
        radius = float(detector.model.center_sampling_radius)
        return [_fcos_match(a, b, num_anchors_per_level, radius) for a, b in zip(anchors, boxes)]
    if hasattr(detector.model, "rpn"):  # two-stage: the RPN's matcher on its anchors
        matcher = detector.model.rpn.proposal_matcher
    elif hasattr(detector.model, "proposal_matcher"):  # RetinaNet
        matcher = detector.model.proposal_matcher
    else:
        raise ValueError(f"assign: no matcher for the {family!r} family")
    out = []
    for a, b in zip(anchors, boxes):
        if b.numel() == 0:
            out.append(torch.full((a.shape[0],), BACKGROUND, dtype=torch.int64, device=a.device))
        else:
            out.append(matcher(box_iou(b.to(a), a)))
    return out


def _fcos_match(anchors: Tensor, gt_boxes: Tensor, num_per_level: Sequence[int], radius: float) -> Tensor:
    """torchvision ``FCOS.compute_loss``'s per-image matching (points inside the box, within
    ``radius`` strides of its centre, in the level's scale range; the smallest box wins)."""
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.int64, device=anchors.device)
    gt_boxes = gt_boxes.to(anchors)
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    sizes = anchors[:, 2] - anchors[:, 0]
    match = (centers[:, None, :] - gt_centers[None, :, :]).abs().max(dim=2).values < radius * sizes[:, None]
    x, y = centers.unsqueeze(dim=2).unbind(dim=1)
    x0, y0, x1, y1 = gt_boxes.unsqueeze(dim=0).unbind(dim=2)
    dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)
    match &= dist.min(dim=2).values > 0
    lower = sizes * 4
    lower[: num_per_level[0]] = 0
    upper = sizes * 8
    upper[-num_per_level[-1]:] = float("inf")
    dist = dist.max(dim=2).values
    match &= (dist > lower[:, None]) & (dist < upper[:, None])
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    score = match.to(torch.float32) * (1e8 - areas[None, :])
    best, idx = score.max(dim=1)
    idx[best < 1e-5] = BACKGROUND
    return idx
