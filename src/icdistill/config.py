"""The config tree: frozen dataclasses loaded from YAML and overridden with ``--set a.b=c``.

Sections: ``data``, ``model`` (the detector being trained: the student), ``teacher``, ``distill``,
``solver``, ``eval``. An unknown key, a wrong type or a value outside its choices is a
:class:`~icdistill.errors.ConfigError` that names the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from icdistill.detectors.families import FAMILIES  # the family table's names (plain data, no torch)
from icdistill.errors import ConfigError

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_large")
DATA_FORMATS = ("coco", "shapes", "voc", "voc_folder", "yolo", "cityscapes")
EVALUATORS = ("coco", "voc")
DEVICES = ("auto", "cpu", "cuda")

# Keys whose value must be one of a fixed set: dotted key -> choices.
CHOICES = {
    "data.format": DATA_FORMATS,
    "model.family": FAMILIES,
    "model.backbone": BACKBONES,
    "model.head_norm": ("gn",),
    "teacher.head_norm": ("gn",),
    "teacher.family": FAMILIES,
    "teacher.backbone": BACKBONES,
    "eval.evaluator": EVALUATORS,
    "solver.device": DEVICES,
    "solver.amp": ("bf16", "fp16"),
    "solver.grad_clip_runs": ("all", "distill"),
    "solver.lr_schedule": ("step", "cosine"),
}


@dataclass(frozen=True)
class ShapesConfig:
    """The procedurally generated shapes dataset (``data.format: shapes``)."""

    root: str = "data/shapes"
    num_train: int = 400
    num_test: int = 100
    image_height: int = 160
    image_width: int = 224
    seed: int = 0


@dataclass(frozen=True)
class CocoDataConfig:
    """``data.coco`` (``data.format: coco``): COCO json files and their image folders, all four
    required; relative paths are taken relative to the config file when something is there."""

    train_images: str = ""
    train_ann: str = ""
    test_images: str = ""
    test_ann: str = ""


@dataclass(frozen=True)
class VOCDataConfig:
    """``data.voc`` (``data.format: voc``): ``root`` is a VOC year folder, or a VOCdevkit with
    ``train_years`` / ``test_years``; ``train_splits`` / ``test_splits`` are ImageSets/Main
    split names (joined). Difficult objects are excluded from training and ignored by the
    evaluators unless ``keep_difficult``. ``class_names`` null: the 20 VOC names if they
    cover the data, else the sorted names found."""

    root: str = ""
    train_splits: tuple[str, ...] = ("trainval",)
    test_splits: tuple[str, ...] = ("test",)
    train_years: Optional[tuple[str, ...]] = None
    test_years: Optional[tuple[str, ...]] = None
    class_names: Optional[tuple[str, ...]] = None
    keep_difficult: bool = False


@dataclass(frozen=True)
class VOCFolderDataConfig:
    """``data.voc_folder`` (``data.format: voc_folder``): ``root`` with images + VOC XML files,
    no ImageSets, in a layout found there (``images/`` + ``annotations/``, ``JPEGImages/`` +
    ``Annotations/``, mixed, or the one folder holding XMLs and the one holding images) or
    named by ``image_dir`` / ``ann_dir`` (relative to ``root``). Split folders (``train/``
    beside ``test/``, ``valid/`` or ``val/``; ``train_splits`` / ``test_splits`` name others,
    null: found) give the split, else a split seeded by ``split_seed`` with ``test_fraction``
    of the images for testing. ``class_names`` / ``keep_difficult``: as for ``voc``."""

    root: str = ""
    image_dir: Optional[str] = None
    ann_dir: Optional[str] = None
    train_splits: Optional[tuple[str, ...]] = None
    test_splits: Optional[tuple[str, ...]] = None
    test_fraction: float = 0.2
    split_seed: int = 0
    class_names: Optional[tuple[str, ...]] = None
    keep_difficult: bool = False


@dataclass(frozen=True)
class YoloDataConfig:
    """``data.yolo`` (``data.format: yolo``): ``root`` with ``images/<split>``,
    ``labels/<split>`` and a class names file (``names_file``, default classes.txt / obj.names /
    data.yaml), the splits named by ``train_splits[0]`` / ``test_splits[0]`` (null:
    ``trainval`` / ``test``); or an Ultralytics data.yaml (with ``train:``) in ``root`` or named
    by ``names_file``, whose keys ``train_splits[0]`` / ``test_splits[0]`` pick (null: ``train``,
    and ``test`` if it gives test images else ``val``)."""

    root: str = ""
    names_file: Optional[str] = None
    train_splits: Optional[tuple[str, ...]] = None
    test_splits: Optional[tuple[str, ...]] = None


@dataclass(frozen=True)
class CityscapesDataConfig:
    """``data.cityscapes`` (``data.format: cityscapes``): ``root`` with ``leftImg8bit/`` and
    ``gtFine/`` (polygons); the eight instance classes; ``train_splits[0]`` / ``test_splits[0]``
    name the splits."""

    root: str = ""
    train_splits: tuple[str, ...] = ("train",)
    test_splits: tuple[str, ...] = ("val",)


@dataclass(frozen=True)
class DataConfig:
    """Which data (``format`` and its own section) and how it is checked and resized.

    ``format`` picks the reader (:mod:`icdistill.data.formats`) and the section it reads:
    ``coco``, ``voc``, ``voc_folder``, ``yolo``, ``cityscapes`` or ``shapes`` (the generated
    demo set), each documented in its class above. The keys of the other sections are not read.
    Configs written with the older flat keys (``data.root``, ``data.train_ann`` ...) still load:
    each is moved into the section of ``format`` (:func:`_move_flat_data_keys`), with a warning
    naming the new key.

    ``class_aliases`` (``{alias: canonical name}``, any format) merges classes spelled two ways
    (``"Rbc ": RBC``); names differing only in case, spaces or punctuation are reported by every
    run's data report and by ``icdistill stats``. ``validate_images`` decodes every image in full
    before the first step; ``skip_unreadable`` leaves out (and counts) images that are missing
    or do not decode, instead of stopping there.

    ``with_masks`` null loads instance masks exactly when the model needs them (Mask R-CNN).
    ``filter_empty`` leaves training images without any box out (they are kept by default: they
    still teach the detector what background looks like); test images are always kept.
    """

    format: str = "coco"
    coco: CocoDataConfig = field(default_factory=CocoDataConfig)
    voc: VOCDataConfig = field(default_factory=VOCDataConfig)
    voc_folder: VOCFolderDataConfig = field(default_factory=VOCFolderDataConfig)
    yolo: YoloDataConfig = field(default_factory=YoloDataConfig)
    cityscapes: CityscapesDataConfig = field(default_factory=CityscapesDataConfig)
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    class_aliases: dict[str, str] = field(default_factory=dict)
    skip_unreadable: bool = False
    validate_images: bool = True
    with_masks: Optional[bool] = None
    filter_empty: bool = False
    min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size: int = 1333
    test_size: int = 800
    flip_prob: float = 0.5
    num_workers: int = 0

    @property
    def section(self) -> Any:
        """The section of the chosen format (``data.<format>``)."""
        return getattr(self, self.format)

    @property
    def location(self) -> str:
        """Where the data is, for messages: the training json (``coco``), else the section's
        ``root`` ("" when not set)."""
        return self.coco.train_ann if self.format == "coco" else self.section.root


#: The flat ``data`` keys of older configs: their value before sections (a value equal to it
#: meant "not given" and is dropped), and the format sections that hold them now.
_FLAT_DATA_KEYS: dict[str, tuple[Any, tuple[str, ...]]] = {
    **{k: ("", ("coco",)) for k in ("train_images", "train_ann", "test_images", "test_ann")},
    "root": ("", ("voc", "voc_folder", "yolo", "cityscapes")),
    "train_splits": (["trainval"], ("voc", "voc_folder", "yolo", "cityscapes")),
    "test_splits": (["test"], ("voc", "voc_folder", "yolo", "cityscapes")),
    "train_years": (None, ("voc",)),
    "test_years": (None, ("voc",)),
    "class_names": (None, ("voc", "voc_folder")),
    "keep_difficult": (False, ("voc", "voc_folder")),
    "test_fraction": (0.2, ("voc_folder",)),
    "split_seed": (0, ("voc_folder",)),
    "names_file": (None, ("yolo",)),
    "image_dir": (None, ("voc_folder",)),
    "ann_dir": (None, ("voc_folder",)),
}


def _move_flat_data_keys(values: dict[str, Any], notice: bool = True) -> dict[str, Any]:
    """The ``data`` mapping with each older flat key (``root``, ``train_ann`` ...) moved into
    the section of ``data.format`` (``data.voc.root`` ...), so that older configs and saved
    runs still load. A flat key left at its old default is dropped (it meant "not given");
    one the format does not read, or one set both flat and in the section, is a ConfigError
    naming the new key. ``notice``: log each move once per process (off for a comparison with
    a saved run, which is not the user's config)."""
    fmt = values.get("format", DataConfig.format)
    out = dict(values)
    for key in [k for k in values if k in _FLAT_DATA_KEYS]:
        value = out.pop(key)
        old_default, sections = _FLAT_DATA_KEYS[key]
        as_list = list(value) if isinstance(value, tuple) else value
        if as_list == old_default:
            continue
        if fmt not in sections:
            raise ConfigError(f"config key 'data.{key}' is not read by data.format '{fmt}'; it "
                              f"is now a key of the format's own section: "
                              f"{', '.join(f'data.{s}.{key}' for s in sections)}")
        section = dict(out.get(fmt) or {})
        if key in section and section[key] != value:
            raise ConfigError(f"config keys 'data.{key}' and 'data.{fmt}.{key}' are both set; "
                              f"keep 'data.{fmt}.{key}' (the flat key is the older spelling)")
        section[key] = value
        out[fmt] = section
        if notice and (key, fmt) not in _WARNED:
            _WARNED.add((key, fmt))
            log.warning("config key 'data.%s' is now 'data.%s.%s' (moved there for this run)",
                        key, fmt, key)
    return out


_WARNED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ModelConfig:
    """A torchvision detector. ``num_classes`` null means: take it from the training data.

    ``weights``: null (from scratch), a torchvision COCO weights name (``COCO_V1``, ``DEFAULT``
    or the full enum name), or a checkpoint path (a training ``checkpoints/last.pt`` or a
    ``detector.pt``). ``backbone_weights``: null or ``imagenet``. ``head_norm``: null (torchvision's
    RetinaNet head) or ``gn`` (GroupNorm head towers, for training from scratch).
    ``box_batch_size_per_image`` / ``rpn_post_nms_top_n_test`` (two-stage families; null:
    torchvision's 512 / 1000): sampled training RoIs and test-time proposals per image.
    ``fpn_channels`` is ignored by the FPN-free families (``faster_rcnn_c4``, ``faster_rcnn_dc5``).
    ``allow_unsafe_pickle`` (default false): a ``weights`` file is read weights-only (tensors and
    plain data); true lets a file that needs unpickling load, which runs any code its author put
    in it: only for files whose source you trust.
    """

    family: str = "retinanet"
    backbone: str = "resnet50"
    fpn_channels: int = 256
    num_classes: Optional[int] = None
    weights: Optional[str] = None
    backbone_weights: Optional[str] = None
    trainable_backbone_layers: Optional[int] = None
    anchor_sizes: Optional[tuple[int, ...]] = None
    detections_per_image: int = 100
    score_thresh: float = 0.05
    head_norm: Optional[str] = None
    box_batch_size_per_image: Optional[int] = None
    rpn_post_nms_top_n_test: Optional[int] = None
    allow_unsafe_pickle: bool = False


@dataclass(frozen=True)
class DistillConfig:
    """The keys every distillation method shares; each registered method adds its own section
    ``distill.<method>`` (:func:`distill_config_type`, docs/config.md).

    ``method``: a registered method's name or ``none`` (plain training). ``weight_scale``
    multiplies every distillation term of whichever method runs (a method's section holds its
    own absolute term weights), so a weight sweep is the same factors for every method.
    ``levels`` (null: every level of the student) are the distilled pyramid levels.
    ``warmup_iters`` (the distillation warm-up: the method sees the student's features detached
    and trains only its own parts) null is the method's default. ``inherit``: at a fresh start
    the student's neck and heads start from the teacher's. ``lr``, ``weight_decay`` and
    ``grad_clip_norm`` are the own AdamW of a method that trains its own parts with one (its
    module says so).

    ``check_teacher`` (this project's pre-flight check, not the paper's): before the first step
    of a distillation run the teacher is evaluated on up to ``check_teacher_images`` test
    images; a box AP (percent) below ``check_teacher_min_ap`` or class names in the teacher's
    file that differ from the data's stop the run (engine/teacher_check.py)."""

    method: str = field(default="none", metadata={"choices": lambda: _method_choices()})
    weight_scale: float = 1.0
    levels: Optional[tuple[str, ...]] = None
    warmup_iters: Optional[int] = None
    inherit: bool = False
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip_norm: float = 0.01
    check_teacher: bool = True
    check_teacher_images: int = 50
    check_teacher_min_ap: float = 1.0

    def __post_init__(self) -> None:
        require_number("distill", "weight_scale", self.weight_scale)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # The class with the method sections is made at run time (distill_config_type), so pickle
        # and deepcopy rebuild the section from its fields instead of looking the class up by name.
        return _distill_config_from_fields, ({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},)


def _method_choices() -> tuple[str, ...]:
    from icdistill.distill.core.registry import NO_METHOD, method_names  # lazy: method modules import this one

    return (*method_names(), NO_METHOD)


_DISTILL_TYPES: dict[tuple[tuple[str, type], ...], type] = {}


def distill_config_type() -> type:
    """:class:`DistillConfig` with one field per registered method, ``distill.<name>``, of the
    method's section type (default: the section's defaults). Made once per set of methods."""
    from icdistill.distill.core.registry import method_sections  # lazy: method modules import this one

    sections = tuple(method_sections().items())
    if sections not in _DISTILL_TYPES:
        fields = [(name, section, field(default_factory=section)) for name, section in sections]
        cls = dataclasses.make_dataclass("DistillConfig", fields, bases=(DistillConfig,), frozen=True)
        cls.__module__, cls.__qualname__ = __name__, "DistillConfig"
        cls.__doc__ = DistillConfig.__doc__
        _DISTILL_TYPES[sections] = cls
    return _DISTILL_TYPES[sections]


def _distill_config_from_fields(values: dict[str, Any]) -> DistillConfig:
    """What :meth:`DistillConfig.__reduce__` saved, rebuilt (with the method sections if it had them)."""
    shared = {f.name for f in dataclasses.fields(DistillConfig)}
    return (DistillConfig if set(values) <= shared else distill_config_type())(**values)


def distill_config(**values: Any) -> DistillConfig:
    """The ``distill`` section from keyword values as a YAML file would give them (method
    sections as dicts), validated: ``distill_config(method=NAME, NAME={"key": value})``."""
    return _build(distill_config_type(), _refuse_former_distill_keys(values), "distill.")


def _refuse_former_distill_keys(values: dict[str, Any]) -> dict[str, Any]:
    """ConfigError for a ``distill`` key of an earlier version, naming the key that replaced it;
    a null ``loss_weight`` (what earlier versions saved by default) is dropped."""
    from icdistill.distill.core.registry import method_names, method_spec

    values = dict(values)
    if values.get("loss_weight", 0) is None:
        values.pop("loss_weight")
    if "loss_weight" in values:
        method = values.get("method")
        if method in method_names():
            weights = [f"'distill.{method}.{f.name}'" for f in dataclasses.fields(method_spec(method).section)
                       if f.name.endswith("weight")]
            own = " / ".join(weights) or f"the keys of 'distill.{method}'"
        else:
            own = "'distill.<method>.loss_weight' (or the method's per-term '*_weight' keys)"
        raise ConfigError(
            f"config key 'distill.loss_weight' was removed: set the method's own weight(s) {own}, or "
            f"'distill.weight_scale' (default 1) to multiply every distillation term of any method"
        )
    for name in method_names():
        for key in method_spec(name).former_keys:
            if key in values:
                raise ConfigError(f"config key 'distill.{key}' moved: set 'distill.{name}.{key}' instead")
    return values


def require_at_most_one(section: str, name: str, value: float) -> None:
    """ConfigError unless ``value`` <= 1 (a fraction or an IoU)."""
    if value > 1:
        raise ConfigError(f"config key '{section}.{name}' must be at most 1, got {value!r}")


def require_number(section: str, name: str, value: Optional[float], *, positive: bool = False) -> None:
    """ConfigError unless ``value`` (None passes) is > 0 (``positive``) or >= 0."""
    if value is None or (value > 0 if positive else value >= 0):
        return
    rule = "a positive number" if positive else "a number >= 0"
    raise ConfigError(f"config key '{section}.{name}' must be {rule}, got {value!r}")


def require_numbers(section: str, values: object, *, positive: tuple[str, ...] = (),
                    non_negative: tuple[str, ...] = ()) -> None:
    """:func:`require_number` on each named attribute of ``values`` (a config section)."""
    for name in positive:
        require_number(section, name, getattr(values, name), positive=True)
    for name in non_negative:
        require_number(section, name, getattr(values, name))


def choice(default: Optional[str], choices: tuple[str, ...]) -> Any:
    """A ``str`` (or ``Optional[str]``) dataclass field whose value must be one of ``choices``
    (checked on loading)."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class SolverConfig:
    """The student's SGD schedule (detectron2's 1x recipe). ``base_lr`` null means the
    family's reference LR (0.01 one-stage, 0.02 two-stage at 16 images) scaled linearly to
    ``ims_per_batch``. ``steps`` are fractions of ``max_iter``. ``ims_per_batch`` is the global
    batch: with torchrun each process takes ``ims_per_batch / WORLD_SIZE`` images.

    ``amp``: null (fp32), ``bf16`` (autocast; CPU or GPU) or ``fp16`` (autocast with a gradient
    scaler; GPU only). ``channels_last`` and ``sync_bn`` (SyncBatchNorm for BN students under
    torchrun) apply on GPUs.

    ``grad_clip_value`` clips the student's gradients elementwise (null: off) in every run
    (``grad_clip_runs: all``, teachers and baselines too, so every gain is measured against a
    baseline trained the same way) or only in distillation runs (``distill``, what ICD's release
    does).

    ``keep_checkpoints``: the newest N periodic snapshots ``checkpoints/model_<iter>.pt`` are
    kept (``last.pt`` always); null keeps every one.

    ``lr_schedule``: ``step`` (warm-up, then ×``gamma`` at ``steps``: detectron2's) or ``cosine``
    (warm-up, then cosine decay to 0 at ``max_iter``). ``ema`` keeps an exponential moving
    average of the student's weights and batch-norm statistics, updated after every student
    step with decay ``ema_decay * (1 - exp(-updates / ema_tau))`` (the warm-up of YOLOX's and
    timm's model EMA); evaluations and ``detector.pt`` then use the averaged weights, and the
    training checkpoint holds both. Off (``false``) is the plain recipe."""

    max_iter: int = 90000
    ims_per_batch: int = 16
    base_lr: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: tuple[float, ...] = (2 / 3, 8 / 9)
    gamma: float = 0.1
    checkpoint_period: int = 5000
    keep_checkpoints: Optional[int] = 3
    log_period: int = 20
    seed: int = 0
    device: str = "auto"
    amp: Optional[str] = None
    channels_last: bool = False
    sync_bn: bool = True
    grad_clip_value: Optional[float] = 1.0
    grad_clip_runs: str = "all"
    lr_schedule: str = "step"
    ema: bool = False
    ema_decay: float = 0.9998
    ema_tau: float = 2000.0

    def __post_init__(self) -> None:
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"config key 'solver.ema_decay' must be in (0, 1), e.g. 0.9998, got {self.ema_decay!r}")
        require_number("solver", "ema_tau", self.ema_tau, positive=True)
        keep = self.keep_checkpoints
        if keep is not None and keep < 1:
            raise ConfigError(f"config key 'solver.keep_checkpoints' must be a positive integer or null "
                              f"(keep every snapshot), got {keep!r}")


@dataclass(frozen=True)
class EvalConfig:
    """``period`` 0 evaluates only at the end; ``viz_images`` test images get detection and
    attention PNGs. ``evaluator``: ``coco`` (AP, AP50, AP75, APs/m/l) or ``voc`` (detectron2's
    Pascal VOC metric: AP over IoU 0.50:0.95, AP50, AP75; ``voc_07_metric`` picks 11-point).
    ``report`` false skips the end-of-run plots (``viz/training_curves.png``) and ``report.html``
    (``icdistill report RUN_DIR`` still writes them later from the run's files); the test suite
    turns it off where a test does not look at them, since plotting costs seconds per run."""

    evaluator: str = "coco"
    voc_07_metric: bool = True
    period: int = 0
    batch_size: int = 4
    viz_images: int = 4
    report: bool = True


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(backbone="resnet101"))
    distill: DistillConfig = field(default_factory=lambda: distill_config_type()())
    solver: SolverConfig = field(default_factory=SolverConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any, choices: Optional[tuple[str, ...]] = None) -> Any:
    """Check/convert one YAML value against a dataclass field type (and, for strings, its
    ``choices``); ConfigError names the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0], choices)
    if tp is DistillConfig:
        tp = distill_config_type()  # the distill section holds one section per registered method
        if isinstance(value, dict):
            value = _refuse_former_distill_keys(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {_coerce(f"{key} (a key)", k, key_type): _coerce(f"{key}.{k}", v, value_type)
                for k, v in value.items()}
    if origin is tuple:
        if isinstance(value, (int, float, str)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_type, *_rest) = typing.get_args(tp)
        return tuple(_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    if value is None:
        raise ConfigError(f"config key '{key}' must not be null (expected {_type_name(tp)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        value = str(value)
        choices = choices if choices is not None else CHOICES.get(key)
        if choices is not None and value not in choices:
            raise ConfigError(f"config key '{key}' is {value!r}; valid choices: {', '.join(choices)}")
        return value
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys in '{prefix.rstrip('.') or 'the top level'}': "
            + ", ".join(names)
        )
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}
    choices = {k: c() if callable(c) else c for k, c in choices.items()}
    return cls(**{k: _coerce(prefix + k, v, hints[k], choices[k]) for k, v in values.items()})


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": value}}}`` with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def config_from_dict(values: dict[str, Any], rename_notice: bool = True) -> Config:
    """Validate a config mapping. Older flat ``data`` keys are moved into their format's section
    first, with a notice unless ``rename_notice`` is false (a saved run read back to compare)."""
    values = dict(values or {})
    if isinstance(values.get("data"), dict):
        values["data"] = _move_flat_data_keys(values["data"], notice=rename_notice)
    return _build(Config, values)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config, apply ``key=value`` overrides and validate.

    Relative data paths are resolved against the config file's directory. ``_base_: FILE``
    at the top of a config merges it over another file (paths relative to the including one).
    """
    values = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        values = _deep_update(values, parse_override(text))
    return config_from_dict(values)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(values).__name__}")
    base = values.pop("_base_", None)
    _resolve_paths(values, path.parent)
    if base is not None:
        values = _deep_update(_read_yaml(path.parent / base), values)
    return values


# Config keys that name files (section path -> keys); relative values are taken relative to
# the config file. ``data`` itself: the older flat keys.
PATH_KEYS = {
    ("data",): ("train_images", "train_ann", "test_images", "test_ann", "root"),
    ("data", "coco"): ("train_images", "train_ann", "test_images", "test_ann"),
    **{("data", fmt): ("root",) for fmt in ("voc", "voc_folder", "yolo", "cityscapes")},
}


def _resolve_paths(values: dict[str, Any], base_dir: Path) -> None:
    """Relative data paths: against the config file's folder when something exists there,
    else left relative to the working directory (recipes shipped in the package name data
    beside the checkout, e.g. ``../shared/data/bccd``)."""
    for path, keys in PATH_KEYS.items():
        sec: Any = values
        for part in path:
            sec = sec.get(part) if isinstance(sec, dict) else None
        if not isinstance(sec, dict):
            continue
        for key in keys:
            value = sec.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                candidate = base_dir / value
                if candidate.exists():
                    sec[key] = str(candidate.resolve())


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
