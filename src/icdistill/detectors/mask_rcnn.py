"""Mask R-CNN adapter and builder: torchvision :class:`~torchvision.models.detection.MaskRCNN` without its
``GeneralizedRCNNTransform``.

Mask R-CNN is Faster R-CNN plus a mask branch inside ``roi_heads`` (``mask_roi_pool`` ->
``mask_head`` -> ``mask_predictor``), so this adapter reuses :class:`FasterRCNNAdapter`'s pyramid
(p2..p6, strides 4..64) and ``features``; it only changes what goes into and comes out of the heads:

* ``losses`` passes each target's ``masks`` to the RoI heads, which then add ``loss_mask``
  (binary cross-entropy on 28x28 mask targets cropped from the ground-truth masks).
* ``detect`` returns, besides boxes/scores/labels, ``masks``: the RoI heads' per-detection 28x28
  probabilities pasted into the resized image, the step ``GeneralizedRCNNTransform.postprocess``
  would do and that this toolkit bypasses.

Losses: ``loss_objectness``, ``loss_rpn_box_reg`` (RPN), ``loss_classifier``, ``loss_box_reg``,
``loss_mask`` (RoI heads).
"""

from __future__ import annotations

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from .faster_rcnn import FasterRCNNAdapter, fpn_two_stage_model
from .masks import MaskTargetsAndPastedMasks


class MaskRCNNAdapter(MaskTargetsAndPastedMasks, FasterRCNNAdapter):
    """Mask R-CNN over p2..p6 (strides 4..64); box and mask RoIAlign pool from p2..p5.

    Same contract as :class:`FasterRCNNAdapter`, plus masks (:class:`.masks.MaskTargetsAndPastedMasks`):
    every training target needs ``masks`` uint8[N, h, w], and every detection carries ``masks``
    float[K, 1, h, w].
    """

    def __init__(self, model: MaskRCNN, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.family = "mask_rcnn"


def mask_rcnn(
    backbone: BackboneWithFPN, num_classes: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, score_thresh: float, head_norm: str | None = None,
) -> MaskRCNNAdapter:
    """Mask R-CNN on an FPN backbone: Faster R-CNN's anchors and box heads plus torchvision's
    default mask branch (RoIAlign 14x14 from p2..p5, four 3x3 convs of width 256, 2x deconv,
    per-class 28x28 mask logits)."""
    model = fpn_two_stage_model(MaskRCNN, backbone, num_classes, anchor_sizes, detections_per_image, score_thresh)
    return MaskRCNNAdapter(model, num_classes)
