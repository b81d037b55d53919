"""torchvision's RPN and RoI-head training passes, recomposed from their public pieces so that
the tensors a distillation method needs (objectness, anchors, proposals, sampled anchors and
RoIs) come out of the same pass as the losses.

The order of operations and random draws is torchvision's own (``RegionProposalNetwork.forward``
and ``compute_loss``, ``RoIHeads.forward``): with the same seed the losses are identical, which
``tests/test_adapter_equivalence.py`` checks against torchvision's ``forward``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from .extras import RoISamples, RPNOutputs, float32_shapes


@contextlib.contextmanager
def training_proposal_counts(rpn: RegionProposalNetwork) -> Iterator[None]:
    """Make ``rpn`` keep training-mode pre/post-NMS counts (torchvision reads them off
    ``rpn.training``); the RPN has no normalisation layer, so nothing else changes."""
    was_training = rpn.training
    rpn.training = True
    try:
        yield
    finally:
        rpn.training = was_training


def run_rpn(
    rpn: RegionProposalNetwork, images: ImageList, features: list[Tensor], targets: list[dict[str, Tensor]] | None
) -> tuple[RPNOutputs, dict[str, Tensor]]:
    """The RPN pass: its outputs and, with ``targets`` (model labels), its two losses.

    Proposals use training-mode counts whatever the mode (a frozen teacher is in eval mode).
    """
    objectness_levels, deltas_levels = rpn.head(features)
    anchors = rpn.anchor_generator(images, float32_shapes(features))  # float32 under autocast too
    num_images = len(anchors)
    per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness_levels]
    objectness, deltas = concat_box_prediction_layers(objectness_levels, deltas_levels)
    objectness, deltas = objectness.float(), deltas.float()  # proposals and losses in float32
    # Faster R-CNN does not backpropagate through the proposals.
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(num_images, -1, 4)
    with training_proposal_counts(rpn):
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
    out = RPNOutputs(
        objectness=objectness.view(num_images, -1), deltas=deltas.view(num_images, -1, 4),
        anchors=anchors, num_anchors_per_level=per_level, proposals=boxes,
    )
    if targets is None:
        return out, {}
    labels, matched_gt_boxes = rpn.assign_targets_to_anchors(anchors, targets)
    regression_targets = rpn.box_coder.encode(matched_gt_boxes, anchors)
    out.labels, out.regression_targets = labels, regression_targets
    losses = _rpn_loss(rpn, objectness, deltas, out)
    return out, losses


def _rpn_loss(rpn: RegionProposalNetwork, objectness: Tensor, deltas: Tensor, out: RPNOutputs) -> dict[str, Tensor]:
    """``RegionProposalNetwork.compute_loss``, keeping the sampled anchors in ``out``."""
    pos_masks, neg_masks = rpn.fg_bg_sampler(out.labels)
    out.sampled_positive = [m.bool() for m in pos_masks]
    out.sampled_negative = [m.bool() for m in neg_masks]
    sampled_pos = torch.where(torch.cat(pos_masks, dim=0))[0]
    sampled_neg = torch.where(torch.cat(neg_masks, dim=0))[0]
    sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
    labels = torch.cat(out.labels, dim=0)
    regression_targets = torch.cat(out.regression_targets, dim=0)
    box_loss = F.smooth_l1_loss(
        deltas[sampled_pos], regression_targets[sampled_pos], beta=1 / 9, reduction="sum"
    ) / sampled.numel()
    objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
    return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}


def box_head_outputs(
    roi_heads: RoIHeads, features: "dict[str, Tensor]", boxes: list[Tensor], image_sizes: list[tuple[int, int]]
) -> tuple[Tensor, Tensor]:
    """RoI pooling + box head + predictor on per-image boxes: class_logits float[R, C+1] and
    box_regression float[R, 4(C+1)]."""
    pooled = roi_heads.box_roi_pool(features, boxes, image_sizes)
    return roi_heads.box_predictor(roi_heads.box_head(pooled))


def run_roi_heads_train(
    roi_heads: RoIHeads,
    features: "dict[str, Tensor]",
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    targets: list[dict[str, Tensor]],
) -> tuple[RoISamples, dict[str, Tensor]]:
    """``RoIHeads.forward`` in training (boxes and, for Mask R-CNN, masks): the sampled RoIs and
    the losses. ``targets`` carry model labels (and ``masks`` for Mask R-CNN)."""
    boxes, matched_idxs, labels, regression_targets = roi_heads.select_training_samples(proposals, targets)
    class_logits, box_regression = box_head_outputs(roi_heads, features, boxes, image_sizes)
    loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
    losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
    if roi_heads.has_mask():
        positive = [torch.where(lab > 0)[0] for lab in labels]
        mask_boxes = [b[pos] for b, pos in zip(boxes, positive)]
        mask_logits = roi_heads.mask_predictor(roi_heads.mask_head(roi_heads.mask_roi_pool(features, mask_boxes, image_sizes)))
        losses["loss_mask"] = maskrcnn_loss(
            mask_logits, mask_boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
            [m[pos] for m, pos in zip(matched_idxs, positive)],
        )
    return RoISamples(boxes, labels, matched_idxs, regression_targets, class_logits, box_regression), losses
