"""Faster R-CNN adapter and builder: torchvision :class:`~torchvision.models.detection.FasterRCNN` without its
``GeneralizedRCNNTransform``.

Recomposes ``GeneralizedRCNN.forward``: ``backbone`` -> ``rpn(image_list, features, targets)`` ->
``roi_heads(features, proposals, image_sizes, targets)``. Both heads switch behaviour on
``self.training`` (proposal counts, sampling, whether losses or detections come back), hence the
strict mode rules: ``losses`` in train mode, ``detect`` in eval mode.

Losses: ``loss_objectness``, ``loss_rpn_box_reg`` (RPN), ``loss_classifier``, ``loss_box_reg``
(RoI heads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Collection

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from .backbones import fpn_levels, rename_levels
from .base import (
    DetectorAdapter,
    check_extras,
    image_list,
    model_detections,
    model_num_classes,
    model_targets,
    require_mode,
)
from .extras import ANCHORS, ROI_SAMPLES, RPN, RoISamples
from .levels import P2_P6
from .two_stage import box_head_outputs, run_roi_heads_train, run_rpn


class FasterRCNNAdapter(DetectorAdapter):
    """Faster R-CNN over p2..p6 (strides 4..64); RoIAlign pools from p2..p5 (torchvision's '0'..'3')."""

    spec = P2_P6

    def __init__(self, model: FasterRCNN, num_classes: int) -> None:
        super().__init__()
        self._init_adapter(model, num_classes, "faster_rcnn", self.spec.names, self.spec.strides)

    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """images: Tensor[B, 3, Hp, Wp] -> p2..p6, each Tensor[B, out_channels, ceil(Hp/s), ceil(Wp/s)]."""
        return rename_levels(self.model.backbone(images), self.spec)

    supported_extras = frozenset({ANCHORS, RPN, ROI_SAMPLES})

    def forward_train(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]],
        extras: Collection[str] = (),
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """RPN + RoI-head losses and the asked-for ``anchors`` / ``rpn`` / ``roi_samples`` of the
        same pass. targets: ``boxes`` float[N, 4] xyxy pixels (N may be 0), ``labels`` int64[N]
        contiguous. Train mode only."""
        require_mode(self, training=True, call="losses")
        check_extras(self, extras)
        images_l = image_list(images, image_sizes)
        feats = fpn_levels(features, self.spec)
        tv_targets = self._model_targets(targets, image_sizes)
        rpn_out, rpn_losses = run_rpn(self.model.rpn, images_l, list(feats.values()), tv_targets)
        samples, roi_losses = run_roi_heads_train(self.model.roi_heads, feats, rpn_out.proposals,
                                                  images_l.image_sizes, tv_targets)
        captured = {ANCHORS: rpn_out.anchors, RPN: rpn_out, ROI_SAMPLES: samples}
        return {**rpn_losses, **roi_losses}, {name: captured[name] for name in extras}

    def extras(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        names: Collection[str],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """``anchors`` / ``rpn`` (training-mode proposal counts) and, with ``targets``,
        ``roi_samples`` on given features (the teacher's side)."""
        check_extras(self, names)
        if ROI_SAMPLES in names and targets is None:
            raise ValueError("the roi_samples extra needs targets")
        images_l = image_list(images, image_sizes)
        feats = fpn_levels(features, self.spec)
        tv_targets = None
        if targets is not None:
            # A Mask R-CNN's sampler checks that every target carries masks (it reads none).
            with_masks = all("masks" in t for t in targets)
            tv_targets = self._model_targets(targets, image_sizes) if with_masks else model_targets(targets)
        rpn_out, _ = run_rpn(self.model.rpn, images_l, list(feats.values()), tv_targets)
        out: dict[str, Any] = {ANCHORS: rpn_out.anchors, RPN: rpn_out}
        if ROI_SAMPLES in names:
            # RoIHeads.select_training_samples reads no mode; it needs model-label targets.
            boxes, matched, labels, reg = self.model.roi_heads.select_training_samples(rpn_out.proposals, tv_targets)
            out[ROI_SAMPLES] = RoISamples(boxes, labels, matched, reg)
        return {name: out[name] for name in names}

    def box_head(
        self, features: "OrderedDict[str, Tensor]", boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """RoIAlign from p2..p5 + the 2-fc box head + predictor on given boxes (per image float
        [R_b, 4] xyxy): class_logits float[R, C+1] (column 0 background), box_regression
        float[R, 4(C+1)] (weights 10, 10, 5, 5)."""
        feats = fpn_levels(features, self.spec)
        return box_head_outputs(self.model.roi_heads, feats, list(boxes), [(int(h), int(w)) for h, w in image_sizes])

    @torch.no_grad()
    def detect(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
    ) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` float[K, 4] xyxy in resized-image pixels (clipped to (h, w)),
        ``scores`` float[K], ``labels`` int64[K] in 0..C-1 (background already removed by the RoI
        heads). Eval mode only."""
        require_mode(self, training=False, call="detect")
        images_l = image_list(images, image_sizes)
        feats = fpn_levels(features, self.spec)
        proposals, _ = self.model.rpn(images_l, feats)
        detections, _ = self.model.roi_heads(feats, proposals, images_l.image_sizes)
        return self._detections(detections, images_l.image_sizes)

    def _model_targets(self, targets: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Data targets -> torchvision targets (Mask R-CNN adds the masks)."""
        return model_targets(targets)

    def _detections(self, detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """torchvision detections -> contiguous labels (Mask R-CNN also pastes the masks)."""
        return model_detections(detections)


def fpn_two_stage_model(
    model_class: type[FasterRCNN], backbone: BackboneWithFPN, num_classes: int,
    anchor_sizes: tuple[int, ...] | None, detections_per_image: int, score_thresh: float,
) -> FasterRCNN:
    """torchvision's ``FasterRCNN`` or ``MaskRCNN`` (``model_class``) with C + 1 classes and the
    RPN anchors of the FPN two-stage families: one size per level (default 32..512, torchvision's)
    x 3 aspect ratios."""
    sizes = anchor_sizes or (32, 64, 128, 256, 512)
    return model_class(
        backbone,
        model_num_classes(num_classes),
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes)),
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_image,
    )


def faster_rcnn(
    backbone: BackboneWithFPN, num_classes: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, score_thresh: float, head_norm: str | None = None,
) -> FasterRCNNAdapter:
    """Faster R-CNN on an FPN backbone: torchvision's RPN and RoI heads."""
    model = fpn_two_stage_model(FasterRCNN, backbone, num_classes, anchor_sizes, detections_per_image, score_thresh)
    return FasterRCNNAdapter(model, num_classes)
