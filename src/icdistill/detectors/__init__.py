"""Detector adapters over torchvision's RetinaNet, FCOS, Faster R-CNN and Mask R-CNN (see :mod:`.base`)."""

from .backbones import BACKBONES
from .base import DetectorAdapter, from_model_labels, model_num_classes, to_model_labels
from .builders import FAMILIES, build_detector
from .faster_rcnn import FasterRCNNAdapter
from .fcos import FCOSAdapter
from .mask_rcnn import MaskRCNNAdapter
from .retinanet import RetinaNetAdapter
from .weights import FrozenTeacher, freeze_as_teacher, load_detector_state

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "DetectorAdapter",
    "FasterRCNNAdapter",
    "FCOSAdapter",
    "FrozenTeacher",
    "MaskRCNNAdapter",
    "RetinaNetAdapter",
    "build_detector",
    "freeze_as_teacher",
    "from_model_labels",
    "load_detector_state",
    "model_num_classes",
    "to_model_labels",
]
