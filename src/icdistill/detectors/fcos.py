"""FCOS adapter: torchvision :class:`~torchvision.models.detection.FCOS` without its transform.

FCOS has one "anchor" (a point with a size equal to the level's scale) per location, so the head
outputs split per level by ``H * W``. Losses: ``classification`` (focal), ``bbox_regression``
(GIoU), ``bbox_ctrness`` (BCE on centre-ness).
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection import FCOS

from .retinanet import DenseAdapter


class FCOSAdapter(DenseAdapter):
    """FCOS over p3..p7 (strides 8..128). See :class:`~icdistill.detectors.retinanet.DenseAdapter`."""

    def __init__(self, model: FCOS, num_classes: int) -> None:
        super().__init__(model, num_classes, family="fcos")

    def _compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_locations_per_level: list[int],
    ) -> dict[str, Tensor]:
        # FCOS.compute_loss needs the per-level counts for its scale-range assignment.
        return self.model.compute_loss(targets, head_outputs, anchors, num_locations_per_level)
