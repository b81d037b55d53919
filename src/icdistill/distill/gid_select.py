"""GID's pure pieces (Dai et al., CVPR 2021): the general-instance selection (GISM), the instances'
RoIAlign on one FPN level each, and the relation loss. No module state, no detector code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import clip_boxes_to_image, nms, roi_align

from icdistill.distill.fbkd import safe_sqrt

GI_SCORES = ("paper", "repro")
RELATION_SCOPES = ("image", "batch")


def gi_scores(p_t: Tensor, p_s: Tensor, mode: str = "paper") -> Tensor:
    """The GI score of every anchor: float[..., C] class probabilities -> float[...].

    ``paper``: max_c |P_t − P_s|; ``repro`` (the first author's reproduction): |max_c P_t − max_c P_s|."""
    if mode == "paper":
        return (p_t - p_s).abs().amax(dim=-1)
    if mode == "repro":
        return (p_t.amax(dim=-1) - p_s.amax(dim=-1)).abs()
    raise ValueError(f"gi_score must be one of {GI_SCORES}, got {mode!r}")


def gi_boxes(p_t: Tensor, p_s: Tensor, boxes_t: Tensor, boxes_s: Tensor) -> Tensor:
    """The GI box of every anchor: the teacher's where max_c P_t > max_c P_s, else the student's.

    p_t, p_s float[..., C]; boxes_t, boxes_s float[..., 4] xyxy -> float[..., 4]."""
    teacher_wins = p_t.amax(dim=-1) > p_s.amax(dim=-1)
    return torch.where(teacher_wins.unsqueeze(-1), boxes_t, boxes_s)


def select_instances(
    scores: Tensor, boxes: Tensor, image_size: tuple[int, int], *, pre_nms_top_k: int = 3000,
    min_size: float = 10.0, nms_iou: float = 0.3, top_k: int = 10,
) -> Tensor:
    """GISM on one image: the top ``pre_nms_top_k`` scores, boxes clipped to the image, those
    with a side of at most ``min_size`` px dropped (detectron2 ``nonempty``), NMS at ``nms_iou``,
    the best ``top_k`` kept.

    scores float[N], boxes float[N, 4] xyxy pixels, image_size (h, w) -> float[K, 4], K <= top_k,
    best first (no gradient)."""
    scores, boxes = scores.detach(), boxes.detach()
    order = scores.topk(min(pre_nms_top_k, scores.numel())).indices
    scores, boxes = scores[order], clip_boxes_to_image(boxes[order], tuple(image_size))
    wide = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    scores, boxes = scores[wide], boxes[wide]
    keep = nms(boxes, scores, nms_iou)[:top_k]
    return boxes[keep]


def box_levels(boxes: Tensor, k_min: int, k_max: int) -> Tensor:
    """detectron2's FPN level rule k = floor(4 + log2(sqrt(area) / 224 + 1e-8)), clamped to
    [k_min, k_max]: boxes float[R, 4] -> int64[R] level numbers (p<k>)."""
    sizes = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(0).sqrt()
    k = torch.floor(4 + torch.log2(sizes / 224 + 1e-8))
    return k.clamp(k_min, k_max).long()


def pool_instances(
    features: Sequence[Tensor], strides: Sequence[int], boxes: Sequence[Tensor], *, output_size: int = 10,
    sampling_ratio: int = 2,
) -> Tensor:
    """RoIAlign (aligned = True, detectron2's ROIAlignV2) of each box from its one level.

    Args:
        features: per level float[B, C, H_l, W_l], finest first, at ``strides`` (powers of 2).
        boxes: per image float[R_b, 4] xyxy pixels.
    Returns:
        float[sum R_b, C, output_size, output_size], boxes in image order.
    """
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
    numbers = [int(round(math.log2(s))) for s in strides]
    levels = box_levels(rois[:, 1:], numbers[0], numbers[-1])
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    for feat, number, stride in zip(features, numbers, strides):
        idx = torch.nonzero(levels == number).flatten()
        if idx.numel():
            out[idx] = roi_align(feat, rois[idx], output_size, spatial_scale=1.0 / stride,
                                 sampling_ratio=sampling_ratio, aligned=True).to(out.dtype)
    return out


def normalised_distances(x: Tensor) -> Tensor:
    """Pairwise L2 distances of the rows of x (float[K, D]) divided by their mean over the
    non-zero off-diagonal pairs: float[K, K]."""
    sq = x.pow(2).sum(dim=1)
    # |xi - xj|² from the Gram matrix (no [K, K, D] difference tensor), with a sqrt whose
    # gradient is 0 (not NaN) on the zero diagonal.
    d = safe_sqrt((sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0))
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    nonzero = d[off & (d > 0)]
    psi = nonzero.mean() if nonzero.numel() else d.new_ones(())
    return d / psi


def relation_loss(t: Tensor, s: Tensor) -> Tensor:
    """L_R = Σ_{i≠j} smoothL1_{β=1}(d^s_ij/ψ_s, d^t_ij/ψ_t) / (K² − K); 0 when K < 3.

    t float[K, D_t], s float[K, D_s] (flattened instance features; t is not differentiated)."""
    k = t.shape[0]
    if k < 3:
        return s.sum() * 0.0
    dt = normalised_distances(t.detach())
    ds = normalised_distances(s)
    off = ~torch.eye(k, dtype=torch.bool, device=t.device)
    return F.smooth_l1_loss(ds[off], dt[off], beta=1.0, reduction="sum") / (k * k - k)


def inside_any(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS's GID response mask: points float[N, 2] (x, y) strictly inside any of boxes
    float[M, 4] -> bool[N]."""
    if boxes.numel() == 0:
        return torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    x, y = points[:, :1], points[:, 1:]
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    return inside.any(dim=1)


__all__ = [
    "GI_SCORES", "RELATION_SCOPES", "box_levels", "gi_boxes", "gi_scores", "inside_any",
    "normalised_distances", "pool_instances", "relation_loss", "select_instances",
]
