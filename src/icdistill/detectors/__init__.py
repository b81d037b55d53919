"""Detector adapters over torchvision's RetinaNet, FCOS, Faster R-CNN and Mask R-CNN (see :mod:`.base`),
the family table (:mod:`.families`), the extras they hand distillation methods (:mod:`.extras`) and
the builders from a config section (:mod:`.build`).

The public names load on first use (PEP 562): ``icdistill.config`` reads :mod:`.families` (plain
data) without loading torch, and the adapters' modules import torch only when asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module (in this package) that defines it
_PUBLIC = {
    "BACKBONES": "backbones",
    "DetectorAdapter": "base",
    "from_model_labels": "base",
    "model_num_classes": "base",
    "to_model_labels": "base",
    "build_model": "build",
    "build_teacher": "build",
    "num_classes_for": "build",
    "build_detector": "builders",
    "CondInstAdapter": "condinst",
    "FAMILIES": "families",
    "FAMILY_TABLE": "families",
    "FamilyFacts": "families",
    "family_facts": "families",
    "FasterRCNNAdapter": "faster_rcnn",
    "FCOSAdapter": "fcos",
    "MaskRCNNAdapter": "mask_rcnn",
    "RetinaNetAdapter": "retinanet",
    "FrozenTeacher": "weights",
    "freeze_as_teacher": "weights",
    "load_detector_state": "weights",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
