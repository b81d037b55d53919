"""CondInst (Tian et al., ECCV 2020, "Conditional Convolutions for Instance Segmentation") on
torchvision's FCOS: adapter, head and builder.

The model is a torchvision :class:`~torchvision.models.detection.FCOS` whose head is
:class:`CondInstHead`: torchvision's ``FCOSHead`` (classification and regression towers) plus

* ``controller``: a 3x3 conv on the regression tower's output at every level (AdelaiDet puts it on
  the box tower), predicting per location the 169 parameters of that instance's dynamic mask head
  (:mod:`.condinst_mask`); init N(0, 0.01), bias 0 as AdelaiDet;
* ``mask_branch``: P3 -> 8-channel mask features at stride 8 (the paper's basic version on P3).

Training: FCOS's own matching (centre sampling, scale ranges) gives the positive locations; at
most ``max_proposals`` (500, AdelaiDet's CondInst setting) of them per batch, drawn at random, run
their dynamic head on their image's mask features with coordinates relative to the location
(divided by the level's size of interest, 64 ... 1024); the logits go x2 by
:func:`~.condinst_mask.aligned_bilinear` to stride 4 and a dice loss compares their sigmoid with
the matched instance's ground-truth mask at stride 4 (``loss_mask``, weight 1, mean over
instances). Test: FCOS's detections (torchvision's post-processing, each detection's location
kept), then each detection's dynamic head -> probabilities at stride 4 -> x4 to the padded image,
cropped to the image: ``masks`` float[K, 1, h, w] as the Mask R-CNN adapter's (the evaluator
thresholds them at 0.5).

Losses: ``classification``, ``bbox_regression``, ``bbox_ctrness`` (FCOS's), ``loss_mask``.
``model.forward`` is torchvision FCOS's (boxes only); masks come from the adapter's ``detect``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Collection

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import boxes as box_ops

from ..errors import ConfigError
from .assign import assign
from .levels import P3_P7
from .base import check_extras, model_detections, model_num_classes, require_mode
from .condinst_mask import (
    MASK_OUT_STRIDE, NUM_DYNAMIC_PARAMS, MaskBranch, aligned_bilinear, dice_loss, dynamic_mask_logits, gt_bitmasks,
)
from .extras import HEAD_HOLD
from .fcos import FCOSAdapter
from .head_split import capture_head_holds
from .masks import mask_model_targets

MAX_PROPOSALS = 500
SOI_PER_ANCHOR_SIZE = 8  # FCOS's scale range of a level ends at 8x its anchor size (64 ... 1024)


class CondInstHead(FCOSHead):
    """``FCOSHead`` plus ``controller`` and ``mask_branch``. ``forward(levels)`` returns FCOS's
    ``cls_logits`` [B, N, K], ``bbox_regression`` [B, N, 4], ``bbox_ctrness`` [B, N, 1] and
    ``controller`` [B, N, 169] (N locations over all levels, level-major then row-major)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, 1, num_classes)
        self.controller = nn.Conv2d(in_channels, NUM_DYNAMIC_PARAMS, 3, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.zeros_(self.controller.bias)
        self.mask_branch = MaskBranch(in_channels)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        reg = self.regression_head
        regression, ctrness, params = [], [], []
        for features in x:  # torchvision's FCOSRegressionHead.forward, keeping the tower's output
            tower = reg.conv(features)
            regression.append(_flat(nn.functional.relu(reg.bbox_reg(tower))))
            ctrness.append(_flat(reg.bbox_ctrness(tower)))
            params.append(_flat(self.controller(tower)))
        return {"cls_logits": self.classification_head(x), "bbox_regression": torch.cat(regression, 1),
                "bbox_ctrness": torch.cat(ctrness, 1), "controller": torch.cat(params, 1)}


def _flat(x: Tensor) -> Tensor:
    """[B, D, H, W] -> [B, HW, D] (one anchor per location)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class CondInstAdapter(FCOSAdapter):
    """CondInst over p3..p7 (FCOS's levels). Targets need ``masks`` uint8[N, h, w]; detections
    carry ``masks`` float[K, 1, h, w] (probabilities over the unpadded resized image)."""

    max_proposals: int = MAX_PROPOSALS

    def __init__(self, model: FCOS, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.family = "condinst"

    def forward_train(
        self, images: Tensor, image_sizes: list[tuple[int, int]], features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]], extras: Collection[str] = (),
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """FCOS's losses plus ``loss_mask`` and the asked-for ``anchors`` / ``dense`` extras.
        targets: ``boxes`` float[N, 4] xyxy, ``labels`` int64[N], ``masks`` uint8[N, h, w]."""
        require_mode(self, training=True, call="losses")
        check_extras(self, extras)
        with capture_head_holds(self.model.head, enabled=HEAD_HOLD in extras) as holds:
            head, anchors, levels, per_level = self._head_and_anchors(images, image_sizes, features)
        tv_targets = mask_model_targets(targets, image_sizes)
        # FCOS.compute_loss's own matching (detectors/assign.py reproduces it), shared by both losses.
        matched = assign(self, anchors, per_level, [t["boxes"] for t in tv_targets])
        losses = self.model.head.compute_loss(tv_targets, head, anchors, matched)
        mask_feats = self.model.head.mask_branch(levels[0])
        losses["loss_mask"] = self.mask_loss(mask_feats, head["controller"], anchors, matched, tv_targets)
        return losses, self._dense_extras(extras, head, anchors, per_level, holds)

    def mask_loss(self, mask_feats: Tensor, params: Tensor, anchors: list[Tensor], matched: list[Tensor],
                  targets: list[dict[str, Tensor]]) -> Tensor:
        """Mean dice loss of at most ``max_proposals`` positive locations (random draw) against their
        matched masks at stride 4. mask_feats [B, 8, H3, W3]; params [B, N, 169]; matched per image
        int64[N] (box index, < 0 background). Zero (with a graph) without positives."""
        image_index = torch.cat([torch.full_like(m, b) for b, m in enumerate(matched)])
        flat = torch.cat(matched)
        positive = torch.where(flat >= 0)[0]
        if len(positive) > self.max_proposals:
            positive = positive[torch.randperm(len(positive), device=positive.device)[: self.max_proposals]]
        if len(positive) == 0:
            return mask_feats.sum() * 0 + params.sum() * 0
        n = matched[0].shape[0]
        image_index, location, gt_index = image_index[positive], positive % n, flat[positive]
        h3, w3 = mask_feats.shape[-2:]
        stride = self.strides[0]
        bitmasks = torch.cat([gt_bitmasks(t["masks"], (h3 * stride, w3 * stride)) for t in targets])
        first = torch.tensor([0] + [len(t["masks"]) for t in targets[:-1]], device=flat.device).cumsum(0)
        gt = bitmasks[first[image_index] + gt_index]
        scores = self.instance_masks(mask_feats, params[image_index, location], image_index,
                                     torch.stack(anchors)[image_index, location])
        return dice_loss(scores, gt).mean()

    def instance_masks(self, mask_feats: Tensor, params: Tensor, image_index: Tensor, anchors: Tensor) -> Tensor:
        """Probabilities float[N, 2*H3, 2*W3] at stride 4 of N instances predicted at ``anchors``
        float[N, 4] (FCOS point anchors: centre = location, width = the level's anchor size)."""
        points = (anchors[:, :2] + anchors[:, 2:]) / 2
        soi = (anchors[:, 2] - anchors[:, 0]) * SOI_PER_ANCHOR_SIZE
        logits = dynamic_mask_logits(params, mask_feats, image_index, points, soi, self.strides[0])
        return aligned_bilinear(logits[:, None], self.strides[0] // MASK_OUT_STRIDE)[:, 0].sigmoid()

    @torch.no_grad()
    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]],
               features: "OrderedDict[str, Tensor]") -> list[dict[str, Tensor]]:
        """FCOS's detections (``boxes``, ``scores``, ``labels`` 0..C-1) plus ``masks``
        float[K, 1, h, w] of each image's unpadded size. Eval mode only."""
        require_mode(self, training=False, call="detect")
        head, anchors, levels, per_level = self._head_and_anchors(images, image_sizes, features)
        logits = head["cls_logits"]
        head["cls_logits"] = logits.index_fill(-1, torch.tensor([0], device=logits.device), float("-inf"))
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        raw = postprocess_with_locations(self.model, head, anchors, per_level, sizes)
        mask_feats = self.model.head.mask_branch(levels[0])
        out = model_detections(raw)
        for b, (det, r, (h, w)) in enumerate(zip(out, raw, sizes)):
            where = r["locations"]
            index = torch.full_like(where, b)
            probs = self.instance_masks(mask_feats, head["controller"][b, where], index, anchors[b][where])
            det["masks"] = aligned_bilinear(probs[:, None], MASK_OUT_STRIDE)[:, :, :h, :w]
        return out


def postprocess_with_locations(model: FCOS, head: dict[str, Tensor], anchors: list[Tensor], per_level: list[int],
                               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """torchvision's ``FCOS.postprocess_detections`` on unsplit head outputs ([B, N, ...]), also
    returning each detection's location: per image ``boxes`` [K, 4], ``scores`` [K], ``labels``
    (model labels) and ``locations`` int64[K], the index into N. Same score threshold, top-k
    candidates per level, clipping, per-class NMS and cap as torchvision's."""
    out = []
    for b, size in enumerate(image_sizes):
        boxes, scores, labels, locations = [], [], [], []
        start = 0
        for count in per_level:
            span = slice(start, start + count)
            logits, ctrness = head["cls_logits"][b, span], head["bbox_ctrness"][b, span]
            num_classes = logits.shape[-1]
            level_scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctrness)).flatten()
            keep = level_scores > model.score_thresh
            level_scores = level_scores[keep]
            idxs = torch.where(keep)[0]
            level_scores, order = level_scores.topk(det_utils._topk_min(idxs, model.topk_candidates, 0))
            idxs = idxs[order]
            where = torch.div(idxs, num_classes, rounding_mode="floor")
            decoded = model.box_coder.decode(head["bbox_regression"][b, span][where], anchors[b][span][where])
            boxes.append(box_ops.clip_boxes_to_image(decoded, size))
            scores.append(level_scores)
            labels.append(idxs % num_classes)
            locations.append(where + start)
            start += count
        boxes_t, scores_t, labels_t, loc_t = (torch.cat(x) for x in (boxes, scores, labels, locations))
        keep = box_ops.batched_nms(boxes_t, scores_t, labels_t, model.nms_thresh)[: model.detections_per_img]
        out.append({"boxes": boxes_t[keep], "scores": scores_t[keep], "labels": labels_t[keep],
                    "locations": loc_t[keep]})
    return out


def condinst(backbone: BackboneWithFPN, num_classes: int, anchor_sizes: tuple[int, ...] | None,
             detections_per_image: int, score_thresh: float, head_norm: str | None = None) -> CondInstAdapter:
    """CondInst on an FPN backbone (p3..p7): torchvision's FCOS with :class:`CondInstHead`."""
    channels = backbone.out_channels
    if channels % 32:
        raise ConfigError(f"condinst needs fpn_channels divisible by 32 (GroupNorm with 32 groups), got {channels}")
    sizes = anchor_sizes or P3_P7.strides
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * len(sizes))
    model = FCOS(backbone, model_num_classes(num_classes), anchor_generator=anchors,
                 head=CondInstHead(channels, model_num_classes(num_classes)),
                 score_thresh=score_thresh, detections_per_img=detections_per_image)
    return CondInstAdapter(model, num_classes)
