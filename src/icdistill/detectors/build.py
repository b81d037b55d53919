"""A detector from one model section of the config (``model`` or ``teacher``), with its weights."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import ConfigError, ModelMismatchError
from ..files import UNSAFE_PICKLE_FLAG, detector_state_from_checkpoint, load_checkpoint, saved_model_config
from .base import DetectorAdapter
from .builders import FPN_FREE_FAMILIES, build_detector
from .weights import FrozenTeacher, freeze_as_teacher, is_checkpoint_path, load_detector_state

# Keys of a model section that change the architecture: a checkpoint must agree on them.
ARCHITECTURE_KEYS = ("family", "backbone", "fpn_channels", "head_norm")


def unsafe_pickle_opt_in(role: str) -> str:
    """How a user lets ``<role>.weights`` be unpickled, as the refusal names it."""
    return f"set {role}.allow_unsafe_pickle: true (or pass {UNSAFE_PICKLE_FLAG})"


def num_classes_for(model_cfg: ModelConfig, data_classes: int, role: str) -> int:
    """The class count of the detector: the data's, checked against ``<role>.num_classes``."""
    if model_cfg.num_classes is not None and model_cfg.num_classes != data_classes:
        raise ModelMismatchError(
            f"{role}.num_classes is {model_cfg.num_classes} but the training data has {data_classes} classes"
        )
    return data_classes


def build_model(model_cfg: ModelConfig, num_classes: int, role: str = "model") -> DetectorAdapter:
    """A detector adapter with its weights: scratch, torchvision names, or a checkpoint file (a
    detector file or a training checkpoint). ``role`` names the config section in errors."""
    checkpoint = model_cfg.weights if model_cfg.weights and is_checkpoint_path(model_cfg.weights) else None
    adapter = build_detector(
        model_cfg.family,
        backbone=model_cfg.backbone,
        num_classes=num_classes_for(model_cfg, num_classes, role),
        fpn_channels=model_cfg.fpn_channels,
        weights=None if checkpoint else model_cfg.weights,
        backbone_weights=None if checkpoint else model_cfg.backbone_weights,
        trainable_backbone_layers=model_cfg.trainable_backbone_layers,
        anchor_sizes=model_cfg.anchor_sizes,
        detections_per_image=model_cfg.detections_per_image,
        score_thresh=model_cfg.score_thresh,
        head_norm=model_cfg.head_norm,
        box_batch_size_per_image=model_cfg.box_batch_size_per_image,
        rpn_post_nms_top_n_test=model_cfg.rpn_post_nms_top_n_test,
    )
    if checkpoint:
        ckpt = load_checkpoint(checkpoint, allow_unsafe_pickle=model_cfg.allow_unsafe_pickle,
                               opt_in=unsafe_pickle_opt_in(role))
        saved = saved_model_config(ckpt)
        for key in ARCHITECTURE_KEYS:
            if key == "fpn_channels" and model_cfg.family in FPN_FREE_FAMILIES:
                continue  # no FPN: the width is the ResNet's own, whatever the key says
            if key in saved and saved[key] != getattr(model_cfg, key):
                raise ModelMismatchError(
                    f"{checkpoint} holds a {saved.get('family')}/{saved.get('backbone')} detector with "
                    f"fpn_channels={saved.get('fpn_channels')}, but {role}.{key} is {getattr(model_cfg, key)!r}; "
                    f"set {role}.{key}: {saved[key]!r}"
                )
        load_detector_state(adapter, detector_state_from_checkpoint(ckpt, checkpoint), source=checkpoint)
    return adapter


def build_teacher(teacher_cfg: ModelConfig, num_classes: int) -> FrozenTeacher:
    """The frozen teacher from the ``teacher`` section; its weights are required."""
    if not teacher_cfg.weights:
        raise ConfigError(
            "config key 'teacher.weights' is required for distillation: a checkpoint "
            "(a run's detector.pt or checkpoints/last.pt) or a torchvision COCO weights name"
        )
    return freeze_as_teacher(build_model(teacher_cfg, num_classes, "teacher"))
