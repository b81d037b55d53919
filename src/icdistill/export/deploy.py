"""The student as one module from image to detections: what the ONNX file holds.

:class:`DeployedDetector` wraps a detector adapter: ImageNet normalisation, zero padding to
multiples of 32 (what ``collate_batch`` does), the backbone + FPN, the head, box decoding, the
score threshold, per-class NMS and the top ``detections_per_image`` — the same computation as
``adapter.detect`` on a one-image batch (``tests/test_export.py`` checks it), written out here
because the adapters turn the image size into Python ints, which a traced export would freeze
into constants: here the size stays a traced value, so the exported file takes any H x W.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image

from ..detectors.backbones import fpn_levels
from ..detectors.base import DetectorAdapter, from_model_labels
from ..detectors.condinst import CondInstAdapter
from ..detectors.faster_rcnn import FasterRCNNAdapter
from ..detectors.families import family_facts
from ..detectors.retinanet import DenseAdapter
from ..errors import ExportError
from ..structures import IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISIBILITY


def check_exportable(adapter: DetectorAdapter) -> None:
    """ExportError unless ``adapter``'s detection is one this module can write out: the dense
    one-stage post-processing (RetinaNet, FCOS) or torchvision's RPN + RoI heads (Faster R-CNN
    and its kin, Mask R-CNN); not CondInst, whose masks need its dynamic heads."""
    if isinstance(adapter, CondInstAdapter):
        raise ExportError(
            "the condinst family cannot be exported to ONNX: its masks come from per-detection dynamic "
            "mask heads, which icdistill does not write out; use --format torchvision"
        )
    if not isinstance(adapter, (DenseAdapter, FasterRCNNAdapter)):
        raise ExportError(
            f"the {adapter.family} family cannot be exported to ONNX: its detection is neither the dense "
            "one-stage post-processing (RetinaNet, FCOS) nor torchvision's RPN + RoI heads (Faster/Mask R-CNN), "
            "the two paths icdistill writes out; use --format torchvision"
        )


class DeployedDetector(nn.Module):
    """``forward(image) -> (boxes, scores, labels)`` (+ ``masks`` for a family with masks).

    Args of forward:
        image: float Tensor[1, 3, H, W], RGB in [0, 1], already resized by the test rule
            (:class:`icdistill.export.source.ResizeRule`); any H, W.

    Returns:
        boxes float[K, 4] xyxy in pixels of ``image`` (clipped to it), scores float[K] (all at or
        above the detector's score threshold, highest first per class after NMS), labels int64[K]
        in 0..C-1; with masks also masks float[K, 1, H, W] (probabilities; threshold at 0.5).
    """

    def __init__(self, adapter: DetectorAdapter) -> None:
        super().__init__()
        check_exportable(adapter)
        self.adapter = adapter.eval()
        self.with_masks = family_facts(adapter.family).masks
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()  # detection only: the wrapper is never trained

    @property
    def output_names(self) -> list[str]:
        return ["boxes", "scores", "labels", *(["masks"] if self.with_masks else [])]

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        h, w = image.shape[-2], image.shape[-1]
        x = (image - self.mean) / self.std
        div = SIZE_DIVISIBILITY
        x = F.pad(x, (0, (div - w % div) % div, 0, (div - h % div) % div))
        features = self.adapter.features(x)
        images = ImageList(x, [(h, w)])
        if isinstance(self.adapter, DenseAdapter):
            det = self._dense(images, features)
        else:
            det = self._two_stage(images, features)
        out = (det["boxes"], det["scores"], from_model_labels(det["labels"]).long())
        if self.with_masks:
            # Mask R-CNN's [K, 1, 28, 28] box-frame probabilities pasted into the image, as
            # MaskRCNNAdapter.detect does (torchvision has a traceable loop for this).
            out = (*out, paste_masks_in_image(det["masks"], det["boxes"], (h, w)))
        return out

    def _dense(self, images: ImageList, features: "OrderedDict[str, Tensor]") -> dict[str, Tensor]:
        """DenseAdapter.detect for one image, with traced sizes."""
        model = self.adapter.model
        levels = list(fpn_levels(features, self.adapter.spec).values())
        head = dict(model.head(levels))
        anchors = model.anchor_generator(images, levels)
        # The background slot (model label 0) never surfaces, as in DenseAdapter.detect.
        logits = head["cls_logits"]
        head["cls_logits"] = logits.index_fill(-1, torch.tensor([0], device=logits.device), float("-inf"))
        locations = [lv.size(2) * lv.size(3) for lv in levels]
        per_location = logits.size(1) // sum(locations)  # RetinaNet: A anchors; FCOS: 1
        per_level = [n * per_location for n in locations]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return model.postprocess_detections(split, split_anchors, images.image_sizes)[0]

    def _two_stage(self, images: ImageList, features: "OrderedDict[str, Tensor]") -> dict[str, Tensor]:
        """FasterRCNNAdapter.detect for one image, with traced sizes."""
        model = self.adapter.model
        levels = fpn_levels(features, self.adapter.spec)
        proposals, _ = model.rpn(images, levels)
        detections, _ = model.roi_heads(levels, proposals, images.image_sizes)
        return detections[0]

    def settings(self) -> dict[str, float | int]:
        """The post-processing numbers baked into the module (for the sidecar)."""
        model = self.adapter.model
        post = model.roi_heads if isinstance(self.adapter, FasterRCNNAdapter) else model
        return {
            "score_thresh": float(post.score_thresh),
            "nms_thresh": float(post.nms_thresh),
            "detections_per_image": int(post.detections_per_img),
        }
