"""Faster R-CNN adapter: torchvision :class:`~torchvision.models.detection.FasterRCNN` without its
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

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN

from .backbones import P2_P6, fpn_levels, rename_levels
from .base import DetectorAdapter
from .retinanet import image_list, model_detections, model_targets, require_mode


class FasterRCNNAdapter(DetectorAdapter):
    """Faster R-CNN over p2..p6 (strides 4..64); RoIAlign pools from p2..p5 (torchvision's '0'..'3')."""

    spec = P2_P6

    def __init__(self, model: FasterRCNN, num_classes: int) -> None:
        super().__init__()
        self._init_adapter(model, num_classes, "faster_rcnn", self.spec.names, self.spec.strides)

    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """images: Tensor[B, 3, Hp, Wp] -> p2..p6, each Tensor[B, out_channels, ceil(Hp/s), ceil(Wp/s)]."""
        return rename_levels(self.model.backbone(images), self.spec)

    def losses(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """RPN + RoI-head losses. targets: ``boxes`` float[N, 4] xyxy pixels (N may be 0),
        ``labels`` int64[N] contiguous. Train mode only."""
        require_mode(self, training=True, call="losses")
        images_l = image_list(images, image_sizes)
        feats = fpn_levels(features, self.spec)
        tv_targets = self._model_targets(targets, image_sizes)
        proposals, rpn_losses = self.model.rpn(images_l, feats, tv_targets)
        _, roi_losses = self.model.roi_heads(feats, proposals, images_l.image_sizes, tv_targets)
        return {**rpn_losses, **roi_losses}

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
