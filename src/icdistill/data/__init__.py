"""Data: COCO-format data sets, the synthetic shapes set, transforms, the dataset prior and
deterministic loaders.

A dataset item is ``(image float Tensor[3, h, w] in [0, 1], target)`` with target keys
``boxes`` (float Tensor[N, 4] xyxy pixels of the transformed image), ``labels`` (int64
Tensor[N], contiguous ids 0..C-1), ``image_id`` (int) and ``orig_size`` ((h, w) on disk),
plus ``masks`` (uint8 Tensor[N, h, w], 0/1 instance masks) when built with ``with_masks=True``.
"""

from .build import build_datasets, data_report, resolve_with_masks
from .cityscapes import CITYSCAPES_CLASSES, load_cityscapes
from .coco import CocoDetection
from .loader import ShardSampler, TrainSampler, aug_seed_for, build_test_loader, build_train_loader
from .prior import DatasetPrior, compute_prior
from .synthetic import SHAPE_CLASSES, ShapesPaths, generate_shapes
from .transforms import DetectionTransforms, build_transforms
from .voc import VOC_CLASSES, load_voc
from .voc_folder import load_voc_folder, read_voc_folder
from .yolo import load_yolo, read_yolo_yaml

__all__ = [
    "CITYSCAPES_CLASSES",
    "CocoDetection",
    "DatasetPrior",
    "DetectionTransforms",
    "SHAPE_CLASSES",
    "ShapesPaths",
    "ShardSampler",
    "TrainSampler",
    "aug_seed_for",
    "build_datasets",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "compute_prior",
    "data_report",
    "generate_shapes",
    "VOC_CLASSES",
    "load_voc",
    "load_voc_folder",
    "load_yolo",
    "read_voc_folder",
    "read_yolo_yaml",
    "load_cityscapes",
    "resolve_with_masks",
]
