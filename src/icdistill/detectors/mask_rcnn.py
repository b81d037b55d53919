"""Mask R-CNN adapter: torchvision :class:`~torchvision.models.detection.MaskRCNN` without its
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


import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import paste_masks_in_image


from .faster_rcnn import FasterRCNNAdapter
from .retinanet import model_detections, model_targets

MISSING_MASKS_HINT = (
    "mask_rcnn needs instance masks in every target: load the data with masks "
    "(data.with_masks: true, on a dataset with segmentations)"
)


def mask_model_targets(
    targets: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]]
) -> list[dict[str, Tensor]]:
    """Data targets with masks -> torchvision Mask R-CNN targets.

    Args:
        targets: per image ``boxes`` float[N, 4] xyxy pixels of the resized image, ``labels``
            int64[N] contiguous 0..C-1, ``masks`` uint8 (or bool) Tensor[N, h, w] of 0/1 at the
            image's unpadded size (N may be 0: ``masks`` of shape [0, h, w]).
        image_sizes: (h, w) of each resized image (only used to validate mask shapes).

    Returns:
        :func:`~.retinanet.model_targets` (background-shifted labels) plus ``masks`` uint8[N, h, w].

    Raises:
        ValueError: a target lacks ``masks`` (the data was loaded without them) or its masks do
            not match its boxes / image size.
    """
    if len(targets) != len(image_sizes):
        raise ValueError(f"got {len(targets)} targets for {len(image_sizes)} images")
    converted = model_targets(targets)
    for i, (t, out, (h, w)) in enumerate(zip(targets, converted, image_sizes)):
        if "masks" not in t:
            raise ValueError(f"target {i} has no 'masks'; {MISSING_MASKS_HINT}")
        masks = t["masks"]
        n = out["boxes"].shape[0]
        if masks.dim() != 3 or masks.shape[0] != n or tuple(masks.shape[1:]) != (int(h), int(w)):
            raise ValueError(
                f"target {i}: masks must be Tensor[N, h, w] = [{n}, {int(h)}, {int(w)}] (one per box, at "
                f"the image's unpadded size), got {tuple(masks.shape)}"
            )
        out["masks"] = masks.to(torch.uint8) if masks.dtype == torch.bool else masks
    return converted


class MaskRCNNAdapter(FasterRCNNAdapter):
    """Mask R-CNN over p2..p6 (strides 4..64); box and mask RoIAlign pool from p2..p5.

    Same contract as :class:`FasterRCNNAdapter`, plus masks: every training target needs
    ``masks`` uint8[N, h, w], and every detection carries ``masks`` float[K, 1, h, w].
    """

    def __init__(self, model: MaskRCNN, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.family = "mask_rcnn"

    def _model_targets(self, targets: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Targets need ``masks`` uint8[N, h, w] aligned with ``boxes`` (see
        :func:`mask_model_targets`; a missing one is a ValueError). ``losses`` then also returns
        ``loss_mask``."""
        return mask_model_targets(targets, image_sizes)

    def _detections(self, detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Adds ``masks`` float[K, 1, h, w]: per-pixel probabilities in [0, 1] of the detection's
        class over the unpadded resized image (threshold at 0.5 for a binary mask)."""
        out = model_detections(detections)
        for det, raw, size in zip(out, detections, image_sizes):
            # RoI heads give [K, 1, 28, 28] probabilities in box frames; paste into the image.
            det["masks"] = paste_masks_in_image(raw["masks"], raw["boxes"], size)
        return out
