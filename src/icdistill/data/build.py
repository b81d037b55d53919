"""From the ``data`` section of a config to the training and test datasets.

Every format becomes a :class:`CocoDetection`, so transforms, the prior, the report and
evaluation are the same for all. Every check that can fail on user input (missing config keys,
missing files, differing class lists, an empty training set, unreadable images) runs here,
before any training step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..config import DataConfig
from ..errors import ConfigError, DataError, ModelMismatchError
from .cityscapes import load_cityscapes
from .class_names import check_class_aliases
from .coco import CocoDetection, Transform
from .synthetic import generate_shapes
from .transforms import build_transforms
from .voc import load_voc
from .voc_folder import read_voc_folder
from .yolo import find_data_yaml, read_yolo, read_yolo_yaml, yaml_split_keys

__all__ = ["build_datasets", "data_report", "resolve_with_masks"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataConfig)}


@dataclass
class _Split:
    """One split read by a non-COCO reader: the COCO dict, the folder its ``file_name`` are
    relative to, what errors name (``source``), what the reader found (``info``: layout, how
    the split was made) and the files it left out, by reason (``skipped``)."""

    coco: dict
    image_root: Path
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)


def resolve_with_masks(data_cfg: DataConfig, family_has_masks: bool) -> bool:
    """Whether instance masks are loaded: ``data.with_masks`` when set, else whether the model
    family predicts masks (Mask R-CNN)."""
    if data_cfg.with_masks is not None:
        return data_cfg.with_masks
    return family_has_masks


def build_datasets(
    data_cfg: DataConfig, *, with_masks: bool, progress: bool = True
) -> tuple[CocoDetection, CocoDetection]:
    """Training and test datasets of ``data_cfg`` with their transforms (shapes data is
    generated if needed); with ``with_masks`` targets also carry instance ``masks``.

    Items are ``(image float Tensor[3, h, w] in [0, 1], target)`` with ``boxes`` float
    Tensor[N, 4] xyxy pixels of the transformed image (see :mod:`icdistill.data.coco`). With
    ``data.filter_empty`` training images without a box are left out; with
    ``data.validate_images`` every image is decoded in full up front (remembered per file, see
    :mod:`icdistill.data.image_check`), so that a broken image stops the run before its first
    step; with ``data.skip_unreadable`` such images are left out and counted instead.

    Raises:
        ConfigError: a key the format needs is missing (the key is named).
        ModelMismatchError: the training and test classes differ.
        DataError: the training set has no image, or a file is missing or broken.
    """
    train_tf = build_transforms(train=True, min_sizes=data_cfg.min_sizes, max_size=data_cfg.max_size,
                                flip_prob=data_cfg.flip_prob)
    test_tf = build_transforms(train=False, min_sizes=(data_cfg.test_size,), max_size=data_cfg.max_size)
    train, test = _load_datasets(data_cfg, train_tf, test_tf, with_masks=with_masks, progress=progress)
    if data_cfg.filter_empty:
        train.drop_images_without_annotations()
    if train.class_names != test.class_names:
        raise ModelMismatchError(
            f"training classes {train.class_names} differ from test classes {test.class_names}"
        )
    if len(train) == 0:
        raise DataError(f"the training set {train.source} has no images")
    if data_cfg.validate_images and not data_cfg.skip_unreadable:  # skipping decoded them already
        train.check_images(progress=progress)
        test.check_images(progress=progress)
    return train, test


def data_report(train: CocoDetection, test: CocoDetection) -> dict[str, Any]:
    """What the loaders found and repaired, per split (``data_report.json`` of a run)."""
    return {
        split: {"source": str(ds.source), "classes": ds.class_names, **ds.report}
        for split, ds in (("train", train), ("test", test))
    }


def _load_datasets(
    data: DataConfig, train_tf: Transform, test_tf: Transform, *, with_masks: bool, progress: bool
) -> tuple[CocoDetection, CocoDetection]:
    """The two datasets as read, before filtering and checks, with what their reader found
    (``report["reader"]``: format, layout, how the split was made)."""
    options = {"skip_unreadable": data.skip_unreadable, "with_masks": with_masks,
               "progress": progress, "class_aliases": check_class_aliases(data.class_aliases)}
    if data.format == "shapes":
        s = data.shapes
        paths = generate_shapes(
            s.root, num_train=s.num_train, num_test=s.num_test,
            image_size=(s.image_height, s.image_width), seed=s.seed, progress=progress,
        )
        pair = (CocoDetection(paths.train_images, paths.train_json, train_tf, **options),
                CocoDetection(paths.test_images, paths.test_json, test_tf, **options))
        return _with_info(pair, {"format": "shapes", "split": "generated (data.shapes)"})
    if data.format == "coco":
        for key in ("train_images", "train_ann", "test_images", "test_ann"):
            if not getattr(data, key):
                raise ConfigError(f"config key 'data.{key}' is required for data.format 'coco'")
        pair = (CocoDetection(data.train_images, data.train_ann, train_tf, **options),
                CocoDetection(data.test_images, data.test_ann, test_tf, **options))
        return _with_info(pair, {"format": "coco", "split": "files: data.train_ann, data.test_ann"})
    train, test = _coco_dicts(data)
    out = []
    for read, tf in ((train, train_tf), (test, test_tf)):
        ds = CocoDetection.from_dict(read.coco, read.image_root, tf, source=read.source, **options)
        ds.add_reader_report({"format": data.format, **read.info}, read.skipped)
        out.append(ds)
    return out[0], out[1]


def _with_info(pair: tuple[CocoDetection, CocoDetection], info: dict[str, Any]
               ) -> tuple[CocoDetection, CocoDetection]:
    for ds in pair:
        ds.add_reader_report(info, {})
    return pair


def _given(data: DataConfig, key: str) -> tuple[str, ...] | None:
    """``data.<key>`` when the config sets it to something else than its default, else None
    (the reader then finds the splits itself)."""
    value = getattr(data, key)
    return None if value == _DEFAULTS[key] else value


def _coco_dicts(data: DataConfig) -> tuple[_Split, _Split]:
    """The training and test split of a non-COCO format, as read."""
    if data.format == "yolo" and not data.root and data.names_file:
        return _yolo_splits(data)
    if not data.root:
        hint = " (or data.names_file: an Ultralytics data.yaml)" if data.format == "yolo" else ""
        raise ConfigError(f"config key 'data.root' is required for data.format '{data.format}'{hint}")
    if data.format == "voc":
        return _voc_dicts(data)
    if data.format == "cityscapes":
        train_split, test_split = data.train_splits[0], data.test_splits[0]
        how = {"split": f"folders: {train_split}, {test_split}"}
        return (_Split(*load_cityscapes(data.root, split=train_split), f"{data.root} ({train_split})", how),
                _Split(*load_cityscapes(data.root, split=test_split), f"{data.root} ({test_split})", how))
    if data.format == "voc_folder":
        return _voc_folder_splits(data)
    return _yolo_splits(data)


def _voc_folder_splits(data: DataConfig) -> tuple[_Split, _Split]:
    """Both splits of a plain VOC-XML folder in one read (split folders or the seeded split)."""
    got = read_voc_folder(
        data.root, image_dir=data.image_dir, ann_dir=data.ann_dir,
        class_names=_with_aliases(data.class_names, data),
        test_fraction=data.test_fraction, seed=data.split_seed, keep_difficult=data.keep_difficult,
        train_folders=_given(data, "train_splits"), test_folders=_given(data, "test_splits"))
    return tuple(  # type: ignore[return-value]
        _Split(s.coco, s.image_root, f"{data.root} ({name})",
               {"layout": s.layout, "split": s.split}, s.skipped)
        for name, s in ((n, got[n]) for n in ("train", "test")))


def _yolo_splits(data: DataConfig) -> tuple[_Split, _Split]:
    """A YOLO folder (``images/<split>``) or an Ultralytics data yaml (``data.root`` holding
    ``data.yaml``, or ``data.names_file`` naming it)."""
    yaml_path = find_data_yaml(data.root or None, data.names_file)
    if yaml_path is not None:
        keys = yaml_split_keys(yaml_path, *(v[0] if v else None for v in (
            _given(data, "train_splits"), _given(data, "test_splits"))))
        reads = [(read_yolo_yaml(yaml_path, k), f"{yaml_path} ({k})") for k in keys]
    elif not data.root:
        raise ConfigError(f"config key 'data.root' is required for data.format 'yolo' unless "
                          f"data.names_file is an Ultralytics data.yaml with 'train:'; "
                          f"{data.names_file} is not one")
    else:
        reads = [(read_yolo(data.root, split=split, names_file=data.names_file), f"{data.root} ({split})")
                 for split in (data.train_splits[0], data.test_splits[0])]
    return tuple(  # type: ignore[return-value]
        _Split(r.coco, r.image_root, source, {"layout": r.layout, "split": r.split, **r.info})
        for r, source in reads)


def _voc_dicts(data: DataConfig) -> tuple[_Split, _Split]:
    """The VOC training and test splits (``*_splits`` of ``*_years``) of ``data.root``."""
    names = _with_aliases(data.class_names, data)
    train = load_voc(data.root, data.train_splits, years=data.train_years, class_names=names,
                     keep_difficult=data.keep_difficult)
    # The test split takes the training classes, so both map ids the same way.
    train_names = [c["name"] for c in sorted(train[0]["categories"], key=lambda c: c["id"])]
    # Aliases are kept as classes of their own until CocoDetection merges them, as in training.
    train_names = _with_aliases(train_names, data)
    test = load_voc(data.root, data.test_splits, years=data.test_years, class_names=train_names,
                    keep_difficult=data.keep_difficult)
    how = {"split": "ImageSets/Main: data.train_splits, data.test_splits"}
    return (_Split(*train, f"{data.root} {_split_tag(data.train_splits, data.train_years)}", how),
            _Split(*test, f"{data.root} {_split_tag(data.test_splits, data.test_years)}", how))


def _split_tag(splits: tuple[str, ...], years: tuple[str, ...] | None) -> str:
    """``trainval`` or ``train+val (2007+2012)``: how a VOC split is named in ``source``."""
    return "+".join(splits) + (f" ({'+'.join(years)})" if years else "")


def _with_aliases(names: Sequence[str] | None, data: DataConfig) -> list[str] | None:
    """A reader's class list with the aliases of ``data.class_aliases`` added (a reader leaves
    out objects of classes not in its list; CocoDetection then merges the aliases), or
    ``None`` (the reader finds the classes) when ``names`` is not given."""
    if not names:
        return None
    return [*names, *(a for a in data.class_aliases if a not in names)]
