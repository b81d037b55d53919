"""FCOS adapter and builder: torchvision :class:`~torchvision.models.detection.FCOS` without its transform.

FCOS has one "anchor" (a point with a size equal to the level's scale) per location, so the head
outputs split per level by ``H * W``. Losses: ``classification`` (focal), ``bbox_regression``
(GIoU), ``bbox_ctrness`` (BCE on centre-ness).
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN

from ..errors import ConfigError
from .levels import P3_P7
from .base import model_num_classes
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


def fcos(
    backbone: BackboneWithFPN, num_classes: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, score_thresh: float, head_norm: str | None = None,
) -> FCOSAdapter:
    """FCOS on an FPN backbone; ``anchor_sizes`` set the levels' regression ranges."""
    # One point "anchor" per location whose size sets the level's regression range (4x..8x size);
    # torchvision's default equals the strides.
    if backbone.out_channels % 32:
        # torchvision's FCOS head normalises with GroupNorm(32, C).
        raise ConfigError(f"fcos needs fpn_channels divisible by 32 (GroupNorm with 32 groups), got {backbone.out_channels}")
    sizes = anchor_sizes or P3_P7.strides
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * len(sizes))
    model = FCOS(
        backbone,
        model_num_classes(num_classes),
        anchor_generator=anchors,
        score_thresh=score_thresh,
        detections_per_img=detections_per_image,
    )
    return FCOSAdapter(model, num_classes)
