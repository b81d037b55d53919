"""From the ``data`` section of a config to the training and test datasets.

The format's reader (:mod:`icdistill.data.formats`, from ``data.<format>``) gives both splits;
every format becomes a :class:`CocoDetection`, so transforms, the prior, the report and
evaluation are the same for all. Every check that can fail on user input (missing config keys,
missing files, differing class lists, an empty training set, unreadable images) runs here,
before any training step.
"""

from __future__ import annotations

from typing import Any

from ..config import DataConfig
from ..errors import DataError, ModelMismatchError
from .class_names import check_class_aliases
from .coco import CocoDetection, Transform
from .formats import ReadOptions, read_splits
from .transforms import build_transforms

__all__ = ["build_datasets", "data_report", "resolve_with_masks"]


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
    """The two datasets as read by the format's reader (:mod:`icdistill.data.formats`), before
    filtering and checks, with what the reader found (``report["reader"]``: format, layout, how
    the split was made)."""
    aliases = check_class_aliases(data.class_aliases)
    train, test = read_splits(data, ReadOptions(class_aliases=aliases, progress=progress))
    options = {"skip_unreadable": data.skip_unreadable, "with_masks": with_masks,
               "progress": progress, "class_aliases": aliases}
    out = []
    for split, tf in ((train, train_tf), (test, test_tf)):
        if split.coco is None:
            ds = CocoDetection(split.image_root, split.ann_file, tf, **options)
        else:
            ds = CocoDetection.from_dict(split.coco, split.image_root, tf, source=split.source,
                                         **options)
        ds.add_reader_report(split.info, split.skipped)
        out.append(ds)
    return out[0], out[1]
