"""Instance masks in and out of the mask families' adapters, in one place: the targets' masks
checked and handed to torchvision (:func:`mask_model_targets`, also CondInst's), and the RoI
heads' 28x28 mask probabilities pasted into the image (:class:`MaskTargetsAndPastedMasks`, the
Mask R-CNN and Cascade Mask R-CNN adapters): the step ``GeneralizedRCNNTransform.postprocess``
would do and that this toolkit bypasses.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import paste_masks_in_image

from .base import model_detections, model_targets

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
        :func:`~.base.model_targets` (background-shifted labels) plus ``masks`` uint8[N, h, w].

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


class MaskTargetsAndPastedMasks:
    """Mixin of a two-stage adapter whose RoI heads have a mask branch (put it before the
    :class:`~.faster_rcnn.FasterRCNNAdapter` base): training targets need ``masks``
    uint8[N, h, w]; detections carry ``masks`` float[K, 1, h, w]."""

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
