"""Cascade R-CNN and Cascade Mask R-CNN (Cai & Vasconcelos) on the Faster R-CNN FPN (p2..p6).

torchvision has no cascade; this builds one from its public pieces (``TwoMLPHead``, ``BoxCoder``,
``Matcher``, ``BalancedPositiveNegativeSampler``, ``MultiScaleRoIAlign``, ``fastrcnn``-style
losses, ``maskrcnn_loss`` / ``maskrcnn_inference``) in :class:`CascadeRoIHeads`, which replaces
``FasterRCNN.roi_heads`` and keeps its call signature, so torchvision's own ``forward`` runs it.

Three box stages, each its own 2-fc head (1024) and predictor with **class-agnostic** regression:

=====  ===============  ======================  ===========
stage  IoU (foreground)  box coder weights       loss weight
=====  ===============  ======================  ===========
1      0.5               (10, 10, 5, 5)          1
2      0.6               (20, 20, 10, 10)        0.5
3      0.7               (30, 30, 15, 15)        0.25
=====  ===============  ======================  ===========

Training (detectron2's ``CascadeROIHeads``): stage 1 samples 512 RoIs per image (25 % positive)
from the RPN proposals plus the ground truth; each later stage takes the previous stage's
regressed boxes of those RoIs (detached), re-labels them at its own IoU without sampling. Test:
each stage runs on the previous stage's boxes; the class scores are the three stages' softmax
probabilities averaged, the boxes the last stage's. The mask head (``cascade_mask_rcnn``) trains
on the last stage's positive RoIs and predicts on the final detections.

Losses: ``loss_objectness``, ``loss_rpn_box_reg`` (RPN), ``loss_classifier_s{k}``,
``loss_box_reg_s{k}`` (k = 1, 2, 3; already multiplied by the stage weight), ``loss_mask``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from .backbones import fpn_levels
from .base import image_list, model_num_classes, require_mode
from .extras import ANCHORS, ROI_SAMPLES, RPN, RoISamples
from .faster_rcnn import FasterRCNNAdapter, fpn_two_stage_model
from .masks import MaskTargetsAndPastedMasks
from .two_stage import run_rpn

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
FC_WIDTH = 1024


class AgnosticPredictor(nn.Module):
    """float[R, F] -> class logits float[R, K] and one box delta per RoI float[R, 4]."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class CascadeStage(nn.Module):
    """One box stage: its 2-fc head, class-agnostic predictor, box coder and matcher."""

    def __init__(self, pooled_features: int, num_classes: int, iou: float, weights: tuple[float, ...]) -> None:
        super().__init__()
        self.box_head = TwoMLPHead(pooled_features, FC_WIDTH)
        self.box_predictor = AgnosticPredictor(FC_WIDTH, num_classes)
        self.box_coder = BoxCoder(weights)
        self.proposal_matcher = Matcher(iou, iou, allow_low_quality_matches=False)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.box_predictor(self.box_head(pooled))


class CascadeRoIHeads(nn.Module):
    """Drop-in for torchvision's ``RoIHeads``: ``forward(features, proposals, image_shapes,
    targets=None)`` returns (detections, losses) as torchvision's does (detections in eval mode,
    losses in training). ``fg_bg_sampler`` is stage 1's RoI sampler."""

    def __init__(self, box_roi_pool: MultiScaleRoIAlign, stages: list[CascadeStage], *, score_thresh: float,
                 nms_thresh: float, detections_per_img: int, mask_parts: tuple[nn.Module, ...] | None = None) -> None:
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.stages = nn.ModuleList(stages)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(512, 0.25)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.mask_roi_pool, self.mask_head, self.mask_predictor = mask_parts or (None, None, None)

    def has_mask(self) -> bool:
        return self.mask_predictor is not None

    def match(self, stage: CascadeStage, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Per image: matched gt index (clamped, 0 for none), model labels (0 background) and
        regression targets of ``proposals`` at ``stage``'s IoU, encoded with its weights."""
        matched, labels = [], []
        for boxes, t in zip(proposals, targets):
            if t["boxes"].numel() == 0:
                matched.append(torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device))
                labels.append(torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device))
                continue
            idx = stage.proposal_matcher(box_iou(t["boxes"], boxes))
            lab = t["labels"][idx.clamp(min=0)].to(torch.int64)
            lab[idx < 0] = 0  # below the stage's IoU: background (no ignored band)
            matched.append(idx.clamp(min=0))
            labels.append(lab)
        gt = [t["boxes"][m] if t["boxes"].numel() else torch.zeros_like(b) for t, m, b in zip(targets, matched, proposals)]
        return matched, labels, stage.box_coder.encode(gt, proposals)

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]):
        """Stage 1's RoIs, as ``RoIHeads.select_training_samples``: the ground truth added to the
        proposals, matched at IoU 0.5, 512 sampled per image -> (boxes, matched_idxs, labels,
        regression_targets) per image."""
        proposals = [torch.cat([p, t["boxes"].to(p.dtype)]) for p, t in zip(proposals, targets)]
        matched, labels, _ = self.match(self.stages[0], proposals, targets)
        keep = [torch.where(pos | neg)[0] for pos, neg in zip(*self.fg_bg_sampler(labels))]
        boxes = [p[k] for p, k in zip(proposals, keep)]
        matched, labels = [m[k] for m, k in zip(matched, keep)], [lab[k] for lab, k in zip(labels, keep)]
        _, _, regression = self.match(self.stages[0], boxes, targets)
        return boxes, matched, labels, regression

    def run_stage(self, k: int, features, boxes: list[Tensor], image_shapes) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Stage ``k`` on per-image ``boxes``: logits [R, K], deltas [R, 4] and the regressed,
        clipped boxes per image (detached: the next stage's input)."""
        logits, deltas = self.stages[k](self.box_roi_pool(features, boxes, image_shapes))
        decoded = self.stages[k].box_coder.decode(deltas.detach(), boxes).reshape(-1, 4)
        per_image = decoded.split([len(b) for b in boxes])
        return logits, deltas, [clip_boxes_to_image(b, s) for b, s in zip(per_image, image_shapes)]

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            return [], self.train_losses(features, proposals, image_shapes, targets)[1]
        return self.detect(features, proposals, image_shapes), {}

    def train_losses(self, features, proposals, image_shapes, targets) -> tuple[RoISamples, dict[str, Tensor]]:
        """Stage 1's samples and every stage's weighted losses (+ ``loss_mask``)."""
        boxes, matched, labels, regression = self.select_training_samples(proposals, targets)
        samples = RoISamples(boxes, labels, matched, regression)
        losses = {}
        for k, weight in enumerate(STAGE_LOSS_WEIGHTS[: len(self.stages)]):
            if k > 0:
                matched, labels, regression = self.match(self.stages[k], boxes, targets)
            logits, deltas, next_boxes = self.run_stage(k, features, boxes, image_shapes)
            if k == 0:  # what a method reads off the student's RoIs: stage 1's outputs
                samples.class_logits, samples.box_regression = logits, deltas.repeat(1, logits.shape[1])
            cls, reg = agnostic_loss(logits, deltas, labels, regression)
            losses[f"loss_classifier_s{k + 1}"], losses[f"loss_box_reg_s{k + 1}"] = weight * cls, weight * reg
            if k < len(self.stages) - 1:
                boxes = next_boxes
        if self.has_mask():
            losses["loss_mask"] = self.mask_loss(features, boxes, matched, labels, image_shapes, targets)
        return samples, losses

    def mask_loss(self, features, boxes, matched, labels, image_shapes, targets) -> Tensor:
        """torchvision's ``maskrcnn_loss`` on the last stage's positive RoIs."""
        positive = [torch.where(lab > 0)[0] for lab in labels]
        mask_boxes = [b[p] for b, p in zip(boxes, positive)]
        logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
        return maskrcnn_loss(logits, mask_boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
                             [m[p] for m, p in zip(matched, positive)])

    def detect(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` [D, 4], ``scores`` [D], ``labels`` [D] (model labels) and, with
        the mask head, ``masks`` float[D, 1, 28, 28] probabilities."""
        boxes, probs = proposals, []
        for k in range(len(self.stages)):
            logits, _, regressed = self.run_stage(k, features, boxes, image_shapes)
            probs.append(F.softmax(logits, -1))
            boxes = regressed
        scores = (sum(probs) / len(probs)).split([len(b) for b in boxes])
        detections = [self.postprocess(b, s, size) for b, s, size in zip(boxes, scores, image_shapes)]
        if self.has_mask():
            det_boxes = [d["boxes"] for d in detections]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, det_boxes, image_shapes)))
            for d, m in zip(detections, maskrcnn_inference(logits, [d["labels"] for d in detections])):
                d["masks"] = m
        return detections

    def postprocess(self, boxes: Tensor, scores: Tensor, size) -> dict[str, Tensor]:
        """One box per RoI for every class (class-agnostic), torchvision's filtering: background
        dropped, score threshold, boxes under 0.01 px removed, per-class NMS, top detections."""
        num_classes = scores.shape[1]
        labels = torch.arange(num_classes, device=scores.device).expand_as(scores)[:, 1:].reshape(-1)
        all_boxes = boxes[:, None].expand(-1, num_classes - 1, 4).reshape(-1, 4)
        flat = scores[:, 1:].reshape(-1)
        keep = torch.where(flat > self.score_thresh)[0]
        all_boxes, flat, labels = all_boxes[keep], flat[keep], labels[keep]
        keep = remove_small_boxes(all_boxes, 1e-2)
        all_boxes, flat, labels = all_boxes[keep], flat[keep], labels[keep]
        keep = batched_nms(all_boxes, flat, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": all_boxes[keep], "scores": flat[keep], "labels": labels[keep]}


def agnostic_loss(logits: Tensor, deltas: Tensor, labels: list[Tensor], targets: Tensor | list[Tensor]) -> tuple[Tensor, Tensor]:
    """``fastrcnn_loss`` with one box per RoI: cross-entropy over [R, K] and smooth-L1 (β = 1/9)
    on the foreground RoIs' [R, 4] deltas, summed and divided by R."""
    labels_cat = torch.cat(labels)
    targets_cat = torch.cat(targets) if isinstance(targets, (list, tuple)) else targets
    positive = torch.where(labels_cat > 0)[0]
    box_loss = F.smooth_l1_loss(deltas[positive], targets_cat[positive], beta=1 / 9, reduction="sum")
    return F.cross_entropy(logits, labels_cat), box_loss / max(labels_cat.numel(), 1)


def cascade_roi_heads(out_channels: int, num_classes: int, *, masks: bool, score_thresh: float,
                      detections_per_image: int) -> CascadeRoIHeads:
    """Three stages on RoIAlign 7x7 of p2..p5; with ``masks`` torchvision's mask branch."""
    stages = [CascadeStage(out_channels * 7 * 7, num_classes, iou, w) for iou, w in zip(STAGE_IOUS, STAGE_BOX_WEIGHTS)]
    mask_parts = None
    if masks:
        mask_parts = (MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2), MaskRCNNHeads(out_channels, [256] * 4, 1),
                      MaskRCNNPredictor(256, 256, num_classes))
    return CascadeRoIHeads(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), stages, score_thresh=score_thresh,
                           nms_thresh=0.5, detections_per_img=detections_per_image, mask_parts=mask_parts)


class CascadeRCNNAdapter(FasterRCNNAdapter):
    """Cascade R-CNN over p2..p6: Faster R-CNN's backbone, FPN and RPN, :class:`CascadeRoIHeads`.

    Extras as Faster R-CNN's; ``roi_samples`` and the ``box_head`` call are stage 1's (the call's
    class-agnostic deltas repeated for every class, [R, 4(C+1)], weights 10, 10, 5, 5)."""

    family_name = "cascade_rcnn"

    def __init__(self, model: FasterRCNN, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.family = self.family_name

    def forward_train(
        self, images: Tensor, image_sizes: list[tuple[int, int]], features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]], extras: Collection[str] = (),
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """RPN + the three stages' losses (+ ``loss_mask``) and the asked-for extras. Train mode."""
        require_mode(self, training=True, call="losses")
        if set(extras) - self.supported_extras:
            return super().forward_train(images, image_sizes, features, targets, extras)  # its ValueError
        images_l = image_list(images, image_sizes)
        feats = fpn_levels(features, self.spec)
        tv_targets = self._model_targets(targets, image_sizes)
        rpn_out, rpn_losses = run_rpn(self.model.rpn, images_l, list(feats.values()), tv_targets)
        samples, roi_losses = self.model.roi_heads.train_losses(feats, rpn_out.proposals, images_l.image_sizes, tv_targets)
        captured = {ANCHORS: rpn_out.anchors, RPN: rpn_out, ROI_SAMPLES: samples}
        return {**rpn_losses, **roi_losses}, {name: captured[name] for name in extras}

    def box_head(self, features, boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Stage 1 on given boxes: class_logits float[R, C+1], box_regression float[R, 4(C+1)]."""
        feats = fpn_levels(features, self.spec)
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        logits, deltas = self.model.roi_heads.stages[0](self.model.roi_heads.box_roi_pool(feats, list(boxes), sizes))
        return logits, deltas.repeat(1, logits.shape[1])


class CascadeMaskRCNNAdapter(MaskTargetsAndPastedMasks, CascadeRCNNAdapter):
    """Cascade Mask R-CNN: targets need ``masks`` uint8[N, h, w]; detections carry pasted
    ``masks`` float[K, 1, h, w] (:class:`.masks.MaskTargetsAndPastedMasks`, as Mask R-CNN's)."""

    family_name = "cascade_mask_rcnn"


def _cascade(backbone: BackboneWithFPN, num_classes: int, anchor_sizes, detections_per_image: int,
             score_thresh: float, *, masks: bool):
    model = fpn_two_stage_model(FasterRCNN, backbone, num_classes, anchor_sizes, detections_per_image, score_thresh)
    model.roi_heads = cascade_roi_heads(backbone.out_channels, model_num_classes(num_classes), masks=masks,
                                        score_thresh=score_thresh, detections_per_image=detections_per_image)
    return (CascadeMaskRCNNAdapter if masks else CascadeRCNNAdapter)(model, num_classes)


def cascade_rcnn(backbone: BackboneWithFPN, num_classes: int, anchor_sizes, detections_per_image: int,
                 score_thresh: float, head_norm: str | None = None) -> CascadeRCNNAdapter:
    """Cascade R-CNN on an FPN backbone (Faster R-CNN's anchors and RPN)."""
    return _cascade(backbone, num_classes, anchor_sizes, detections_per_image, score_thresh, masks=False)


def cascade_mask_rcnn(backbone: BackboneWithFPN, num_classes: int, anchor_sizes, detections_per_image: int,
                      score_thresh: float, head_norm: str | None = None) -> CascadeMaskRCNNAdapter:
    """Cascade Mask R-CNN: Cascade R-CNN plus torchvision's mask branch on the last stage."""
    return _cascade(backbone, num_classes, anchor_sizes, detections_per_image, score_thresh, masks=True)
