"""Detector adapters over torchvision's RetinaNet, FCOS, Faster R-CNN and Mask R-CNN (see :mod:`.base`),
the family table (:mod:`.families`), the extras they hand distillation methods (:mod:`.extras`) and
the builders from a config section (:mod:`.build`)."""

from .backbones import BACKBONES
from .base import DetectorAdapter, from_model_labels, model_num_classes, to_model_labels
from .build import build_model, build_teacher, num_classes_for
from .builders import build_detector
from .condinst import CondInstAdapter
from .families import FAMILIES, FAMILY_TABLE, FamilyFacts, family_facts
from .faster_rcnn import FasterRCNNAdapter
from .fcos import FCOSAdapter
from .mask_rcnn import MaskRCNNAdapter
from .retinanet import RetinaNetAdapter
from .weights import FrozenTeacher, freeze_as_teacher, load_detector_state

__all__ = [
    "BACKBONES",
    "CondInstAdapter",
    "FAMILIES",
    "FAMILY_TABLE",
    "DetectorAdapter",
    "FamilyFacts",
    "FasterRCNNAdapter",
    "FCOSAdapter",
    "FrozenTeacher",
    "MaskRCNNAdapter",
    "RetinaNetAdapter",
    "build_detector",
    "build_model",
    "build_teacher",
    "family_facts",
    "freeze_as_teacher",
    "from_model_labels",
    "load_detector_state",
    "model_num_classes",
    "num_classes_for",
    "to_model_labels",
]
