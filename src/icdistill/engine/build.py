"""From a config to the objects a run needs: datasets, detectors, the distiller.

Every check that can fail on user input (missing files, class counts, teacher checkpoint,
level alignment) runs here, before any training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icdistill.config import Config, ModelConfig
from icdistill.data import (
    CocoDetection,
    DatasetPrior,
    build_transforms,
    compute_prior,
    generate_shapes,
    load_cityscapes,
    load_voc,
    load_voc_folder,
    load_yolo,
)
from icdistill.detectors import DetectorAdapter, build_detector, freeze_as_teacher, load_detector_state
from icdistill.detectors.weights import FrozenTeacher, is_checkpoint_path
from icdistill.distill.distiller import Distiller, check_alignment
from icdistill.distill.fitnet import FitNetModule
from icdistill.distill.icd import ICDModule
from icdistill.distill.inherit import InheritReport, inherit_weights
from icdistill.distill.sampling import PriorTensors
from icdistill.engine.checkpoint import load_checkpoint
from icdistill.engine.optim import scale_lr
from icdistill.errors import ConfigError, DataError, ModelMismatchError
from icdistill.evaluation import COCOEvaluator, VOCEvaluator

ONE_STAGE = ("retinanet", "fcos")
MASK_FAMILIES = ("mask_rcnn",)
# λ per family: the paper's adopted settings (Table 12) and the release's FCOS config (§6).
DEFAULT_LOSS_WEIGHT = {"faster_rcnn": 3.0, "mask_rcnn": 3.0, "retinanet": 6.0, "fcos": 8.0}
# Reference student LR at 16 images per batch (§7).
REFERENCE_LR = {"faster_rcnn": 0.02, "mask_rcnn": 0.02, "retinanet": 0.01, "fcos": 0.01}
STUDENT_CHECKPOINT_FORMAT = "icdistill-student"
TRAIN_CHECKPOINT_FORMAT = "icdistill-train"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("solver.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def _coco_dicts(cfg: Config) -> tuple[tuple[dict, Path, str], tuple[dict, Path, str]]:
    """(coco_dict, image_root, source) of the training and test split of a non-COCO format."""
    data = cfg.data
    if not data.root:
        raise ConfigError(f"config key 'data.root' is required for data.format '{data.format}'")
    names = list(data.class_names) if data.class_names else None
    if data.format == "voc":
        def split(splits, years):
            return load_voc(data.root, splits, years=years, class_names=names, keep_difficult=data.keep_difficult)

        train = split(data.train_splits, data.train_years)
        # The test split takes the training classes, so both map ids the same way.
        train_names = [c["name"] for c in sorted(train[0]["categories"], key=lambda c: c["id"])]
        test = load_voc(data.root, data.test_splits, years=data.test_years, class_names=train_names,
                        keep_difficult=data.keep_difficult)
        tag = lambda splits, years: "+".join(splits) + (f" ({'+'.join(years)})" if years else "")  # noqa: E731
        return (*train, f"{data.root} {tag(data.train_splits, data.train_years)}"), (
            *test, f"{data.root} {tag(data.test_splits, data.test_years)}")
    if data.format == "cityscapes":
        train_split, test_split = data.train_splits[0], data.test_splits[0]
        return (
            (*load_cityscapes(data.root, split=train_split), f"{data.root} ({train_split})"),
            (*load_cityscapes(data.root, split=test_split), f"{data.root} ({test_split})"),
        )
    if data.format == "voc_folder":
        def split(name):
            return load_voc_folder(data.root, class_names=names, split=name, test_fraction=data.test_fraction,
                                   seed=data.split_seed, keep_difficult=data.keep_difficult)

        return (*split("train"), f"{data.root} (train)"), (*split("test"), f"{data.root} (test)")
    # yolo
    train_split, test_split = data.train_splits[0], data.test_splits[0]
    return (
        (*load_yolo(data.root, split=train_split, names_file=data.names_file), f"{data.root} ({train_split})"),
        (*load_yolo(data.root, split=test_split, names_file=data.names_file), f"{data.root} ({test_split})"),
    )


def uses_masks(cfg: Config) -> bool:
    """Whether instance masks are loaded: ``data.with_masks``, or by default for Mask R-CNN."""
    if cfg.data.with_masks is not None:
        return cfg.data.with_masks
    return cfg.model.family in MASK_FAMILIES


def build_datasets(cfg: Config, *, progress: bool = True) -> tuple[CocoDetection, CocoDetection]:
    """Training and test datasets with their transforms (shapes data is generated if needed).

    Every format becomes a :class:`CocoDetection`, so transforms, prior, report and evaluation
    are the same for all. With ``data.validate_images`` every image header is checked up front.
    """
    data = cfg.data
    train_tf = build_transforms(train=True, min_sizes=data.min_sizes, max_size=data.max_size, flip_prob=data.flip_prob)
    test_tf = build_transforms(train=False, min_sizes=(data.test_size,), max_size=data.max_size)
    options = {"skip_unreadable": data.skip_unreadable, "with_masks": uses_masks(cfg)}
    if data.format == "shapes":
        s = data.shapes
        paths = generate_shapes(
            s.root, num_train=s.num_train, num_test=s.num_test,
            image_size=(s.image_height, s.image_width), seed=s.seed, progress=progress,
        )
        train = CocoDetection(paths.train_images, paths.train_json, train_tf, **options)
        test = CocoDetection(paths.test_images, paths.test_json, test_tf, **options)
    elif data.format == "coco":
        for key in ("train_images", "train_ann", "test_images", "test_ann"):
            if not getattr(data, key):
                raise ConfigError(f"config key 'data.{key}' is required for data.format 'coco'")
        train = CocoDetection(data.train_images, data.train_ann, train_tf, **options)
        test = CocoDetection(data.test_images, data.test_ann, test_tf, **options)
    else:
        (train_dict, train_root, train_src), (test_dict, test_root, test_src) = _coco_dicts(cfg)
        train = CocoDetection.from_dict(train_dict, train_root, train_tf, source=train_src, **options)
        test = CocoDetection.from_dict(test_dict, test_root, test_tf, source=test_src, **options)
    if data.filter_empty:
        train.drop_images_without_annotations()
    if train.class_names != test.class_names:
        raise ModelMismatchError(
            f"training classes {train.class_names} differ from test classes {test.class_names}"
        )
    if len(train) == 0:
        raise DataError(f"the training set {train.source} has no images")
    if data.validate_images:
        train.check_images(progress=progress)
        test.check_images(progress=progress)
    return train, test


def data_report(train: CocoDetection, test: CocoDetection) -> dict[str, Any]:
    """What the loaders found and repaired, per split (``data_report.json`` of a run)."""
    return {
        split: {"source": str(ds.source), "classes": ds.class_names, **ds.report}
        for split, ds in (("train", train), ("test", test))
    }


def build_evaluator(cfg: Config, dataset: CocoDetection) -> COCOEvaluator:
    """The configured evaluator (``eval.evaluator``) over ``dataset``'s ground truth."""
    if cfg.eval.evaluator == "voc":
        return VOCEvaluator(dataset.coco, dataset.contiguous_to_cat_id, dataset.class_names,
                            use_07_metric=cfg.eval.voc_07_metric)
    tasks = ("bbox", "segm") if cfg.model.family in MASK_FAMILIES else ("bbox",)
    return COCOEvaluator(dataset.coco, dataset.contiguous_to_cat_id, dataset.class_names, tasks=tasks)


def num_classes_for(model_cfg: ModelConfig, data_classes: int, role: str) -> int:
    if model_cfg.num_classes is not None and model_cfg.num_classes != data_classes:
        raise ModelMismatchError(
            f"{role}.num_classes is {model_cfg.num_classes} but the training data has {data_classes} classes"
        )
    return data_classes


def detector_state_from_checkpoint(ckpt: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The detector's state dict from a ``student.pt`` or a training checkpoint."""
    if ckpt.get("format") == STUDENT_CHECKPOINT_FORMAT or ("model" in ckpt and "trainable" not in ckpt):
        return ckpt["model"]
    if "trainable" in ckpt:
        prefix = "student.model."
        return {k[len(prefix):]: v for k, v in ckpt["trainable"].items() if k.startswith(prefix)}
    raise ModelMismatchError(f"{source} is neither a student.pt nor a training checkpoint of icdistill")


def build_model(model_cfg: ModelConfig, num_classes: int, role: str) -> DetectorAdapter:
    """A detector adapter with its weights: scratch, torchvision names, or a checkpoint file."""
    checkpoint = model_cfg.weights if model_cfg.weights and is_checkpoint_path(model_cfg.weights) else None
    adapter = build_detector(
        model_cfg.family,
        backbone=model_cfg.backbone,
        num_classes=num_classes,
        fpn_channels=model_cfg.fpn_channels,
        weights=None if checkpoint else model_cfg.weights,
        backbone_weights=None if checkpoint else model_cfg.backbone_weights,
        trainable_backbone_layers=model_cfg.trainable_backbone_layers,
        anchor_sizes=model_cfg.anchor_sizes,
        detections_per_image=model_cfg.detections_per_image,
        score_thresh=model_cfg.score_thresh,
        head_norm=model_cfg.head_norm,
    )
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        saved = ckpt.get("model_config") or (ckpt.get("config") or {}).get("model") or {}
        for key in ("family", "backbone", "fpn_channels", "head_norm"):
            if key in saved and saved[key] != getattr(model_cfg, key):
                raise ModelMismatchError(
                    f"{checkpoint} holds a {saved.get('family')}/{saved.get('backbone')} detector with "
                    f"fpn_channels={saved.get('fpn_channels')}, but {role}.{key} is {getattr(model_cfg, key)!r}; "
                    f"set {role}.{key}: {saved[key]!r}"
                )
        load_detector_state(adapter, detector_state_from_checkpoint(ckpt, checkpoint), source=checkpoint)
    return adapter


def student_checkpoint(model_state: dict[str, torch.Tensor], model_config: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The content of ``student.pt``: the torchvision detector's state dict plus what is needed to
    rebuild it (``torchvision_num_classes`` counts the background class)."""
    return {
        "format": STUDENT_CHECKPOINT_FORMAT,
        "model": model_state,
        "model_config": model_config,
        "num_classes": len(class_names),
        "torchvision_num_classes": len(class_names) + 1,
        "class_names": list(class_names),
    }


def prior_tensors(prior: DatasetPrior) -> PriorTensors:
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return PriorTensors(t(prior.freq), t(prior.w_mean), t(prior.w_std), t(prior.h_mean), t(prior.h_std))


@dataclass
class RunModels:
    distiller: Distiller
    teacher: FrozenTeacher | None
    prior: DatasetPrior
    inherit_report: InheritReport | None


def build_run_models(cfg: Config, train_set: CocoDetection, *, fresh_start: bool = True) -> RunModels:
    """Student, optional frozen teacher and ICD module, all checked against each other."""
    num_classes = num_classes_for(cfg.model, train_set.num_classes, "model")
    student = build_model(cfg.model, num_classes, "model")
    prior = compute_prior(train_set)
    if cfg.distill.method == "none":
        return RunModels(Distiller(student), None, prior, None)

    dcfg = cfg.distill
    if not cfg.teacher.weights:
        raise ConfigError(
            "config key 'teacher.weights' is required for distillation: a checkpoint "
            "(checkpoints/last.pt or student.pt) or a torchvision COCO weights name"
        )
    teacher_adapter = build_model(cfg.teacher, num_classes_for(cfg.teacher, train_set.num_classes, "teacher"), "teacher")
    levels = dcfg.levels or student.level_names
    strides = check_alignment(teacher_adapter, student, levels)
    report = inherit_weights(teacher_adapter, student) if dcfg.inherit and fresh_start else None
    if dcfg.method == "fitnet":
        fitnet = FitNetModule(
            student_channels=student.out_channels, teacher_channels=teacher_adapter.out_channels,
            loss_weight=dcfg.loss_weight if dcfg.loss_weight is not None else 1.0,
        )
        distiller = Distiller(student, fitnet=fitnet, levels=levels, strides=strides, warmup_iters=dcfg.warmup_iters)
        return RunModels(distiller, freeze_as_teacher(teacher_adapter), prior, report)
    two_stage = cfg.model.family not in ONE_STAGE
    icd = ICDModule(
        num_classes=num_classes,
        teacher_channels=teacher_adapter.out_channels,
        student_channels=student.out_channels,
        prior=prior_tensors(prior),
        hidden_dim=dcfg.hidden_dim,
        num_heads=dcfg.num_heads,
        num_layers=dcfg.num_layers,
        fake_ratio=dcfg.fake_ratio,
        max_instances=dcfg.max_instances or (100 if two_stage else 300),
        jitter=dcfg.jitter,
        loss_weight=dcfg.loss_weight if dcfg.loss_weight is not None else DEFAULT_LOSS_WEIGHT[cfg.model.family],
    )
    distiller = Distiller(student, icd, levels=levels, strides=strides, warmup_iters=dcfg.warmup_iters)
    return RunModels(distiller, freeze_as_teacher(teacher_adapter), prior, report)


def student_lr(cfg: Config) -> float:
    """``solver.base_lr``, or the family's reference LR scaled linearly to the global batch."""
    if cfg.solver.base_lr is not None:
        return cfg.solver.base_lr
    return scale_lr(REFERENCE_LR[cfg.model.family], cfg.solver.ims_per_batch)
