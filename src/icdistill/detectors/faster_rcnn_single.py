"""FPN-free Faster R-CNN (detectron2's R50-C4 and R50-DC5): adapters and builders.

Both are torchvision :class:`~torchvision.models.detection.FasterRCNN` models assembled from its
public pieces around one feature map of stride 16 (see :mod:`.resnet_trunks`):

* ``faster_rcnn_c4``: RPN on ``c4`` (res4); RoIAlign 14x14 on ``c4``, then res5 + global average
  pooling as the box head (float[R, C5]), then ``FastRCNNPredictor``.
* ``faster_rcnn_dc5``: RPN on ``c5`` (dilated res5); RoIAlign 7x7 on ``c5``, then torchvision's
  2-fc ``TwoMLPHead`` (1024 wide, detectron2's width), then ``FastRCNNPredictor``.

RPN: one level with all five anchor sizes (default 32, 64, 128, 256, 512) x ratios 0.5, 1, 2,
i.e. 15 anchors per location; torchvision's ``RPNHead`` (a 3x3 conv of the map's width).
RoIAlign samples adaptively (``sampling_ratio=0``, detectron2's default) and is torchvision's
``aligned=False`` kind (detectron2 uses ROIAlignV2, aligned): a difference of half a pixel.
Training, detection and the extras (``anchors``, ``rpn``, ``roi_samples``, ``box_head``) are the
Faster R-CNN adapter's, whose renaming from public level names to torchvision's keys is the
identity here; what a distillation method sees is the single map (``c4`` or ``c5``).
"""

from __future__ import annotations

from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from .base import model_num_classes
from .faster_rcnn import FasterRCNNAdapter
from .resnet_trunks import C4, DC5, ResNetParts, res5_box_head

DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)
DC5_FC_WIDTH = 1024  # detectron2's FastRCNNConvFCHead FC_DIM


class FasterRCNNC4Adapter(FasterRCNNAdapter):
    """Faster R-CNN C4: one level ``c4`` (stride 16; 1024 channels for ResNet-50/101)."""

    spec = C4

    def __init__(self, model: FasterRCNN, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.family = "faster_rcnn_c4"


class FasterRCNNDC5Adapter(FasterRCNNAdapter):
    """Faster R-CNN DC5: one level ``c5`` (stride 16 by dilation; 2048 channels for ResNet-50/101)."""

    spec = DC5

    def __init__(self, model: FasterRCNN, num_classes: int) -> None:
        super().__init__(model, num_classes)
        self.family = "faster_rcnn_dc5"


def single_level_anchors(anchor_sizes: tuple[int, ...] | None) -> AnchorGenerator:
    """All sizes on the one level, ratios 0.5 / 1 / 2: 3 x len(sizes) anchors per location."""
    return AnchorGenerator((tuple(anchor_sizes or DEFAULT_ANCHOR_SIZES),), ((0.5, 1.0, 2.0),))


def faster_rcnn_c4(
    parts: ResNetParts, num_classes: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, score_thresh: float, head_norm: str | None = None,
) -> FasterRCNNC4Adapter:
    """Faster R-CNN C4 on ``parts`` from :func:`.resnet_trunks.build_resnet_parts` (with res5)."""
    model = FasterRCNN(
        parts.trunk,
        num_classes=None,
        rpn_anchor_generator=single_level_anchors(anchor_sizes),
        box_roi_pool=MultiScaleRoIAlign(["c4"], output_size=14, sampling_ratio=0),
        box_head=res5_box_head(parts.res5),
        box_predictor=FastRCNNPredictor(parts.res5_channels, model_num_classes(num_classes)),
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_image,
    )
    return FasterRCNNC4Adapter(model, num_classes)


def faster_rcnn_dc5(
    parts: ResNetParts, num_classes: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, score_thresh: float, head_norm: str | None = None,
) -> FasterRCNNDC5Adapter:
    """Faster R-CNN DC5 on ``parts`` from :func:`.resnet_trunks.build_resnet_parts`."""
    channels = parts.trunk.out_channels
    model = FasterRCNN(
        parts.trunk,
        num_classes=None,
        rpn_anchor_generator=single_level_anchors(anchor_sizes),
        box_roi_pool=MultiScaleRoIAlign(["c5"], output_size=7, sampling_ratio=0),
        box_head=TwoMLPHead(channels * 7 * 7, DC5_FC_WIDTH),
        box_predictor=FastRCNNPredictor(DC5_FC_WIDTH, model_num_classes(num_classes)),
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_image,
    )
    return FasterRCNNDC5Adapter(model, num_classes)
