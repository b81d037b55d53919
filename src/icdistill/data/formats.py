"""The data formats: ``data.format`` -> the reader of its own config section (``data.<format>``).

Each reader takes only its section (plus :class:`ReadOptions`, what every format shares) and
returns the training and the test :class:`SplitSource`: a COCO json file, or the in-memory COCO
dict its format was converted to, with what the reader found. :mod:`icdistill.data.build` turns
both into :class:`~icdistill.data.coco.CocoDetection`, so transforms, checks, the report and
evaluation are the same for every format. A new format is a reader here, its section in
``config.py`` (``DataConfig``) and its name in ``config.DATA_FORMATS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..config import (CityscapesDataConfig, CocoDataConfig, DataConfig, ShapesConfig,
                      VOCDataConfig, VOCFolderDataConfig, YoloDataConfig)
from ..errors import ConfigError
from .cityscapes import load_cityscapes
from .synthetic import generate_shapes
from .voc import load_voc
from .voc_folder import read_voc_folder
from .yolo import find_data_yaml, read_yolo, read_yolo_yaml, yaml_split_keys

__all__ = ["FORMATS", "ReadOptions", "SplitSource", "read_splits"]


@dataclass
class SplitSource:
    """One split as a reader gives it: ``ann_file`` (a COCO json) or ``coco`` (a COCO dict),
    the folder its ``file_name`` are relative to, what errors name (``source``; a json's own
    path when ``None``), what the reader found (``info``: layout, how the split was made) and
    the files it left out, by reason (``skipped``)."""

    image_root: Path
    source: str | None = None
    coco: dict | None = None
    ann_file: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadOptions:
    """What every reader may need beside its section: ``data.class_aliases`` (a reader that
    leaves out classes missing from its list keeps the aliases) and whether to show progress."""

    class_aliases: Mapping[str, str] = field(default_factory=dict)
    progress: bool = False


Pair = tuple[SplitSource, SplitSource]


def read_splits(data: DataConfig, options: ReadOptions) -> Pair:
    """The training and test split of ``data.format``, read from its section ``data.<format>``;
    each split's ``info`` starts with ``format``."""
    train, test = FORMATS[data.format](data.section, options)
    for split in (train, test):
        split.info = {"format": data.format, **split.info}
    return train, test


def _read_coco(cfg: CocoDataConfig, options: ReadOptions) -> Pair:
    for key in ("train_images", "train_ann", "test_images", "test_ann"):
        if not getattr(cfg, key):
            raise ConfigError(f"config key 'data.coco.{key}' is required for data.format 'coco'")
    how = {"split": "files: data.coco.train_ann, data.coco.test_ann"}
    return (SplitSource(Path(cfg.train_images), ann_file=Path(cfg.train_ann), info=how),
            SplitSource(Path(cfg.test_images), ann_file=Path(cfg.test_ann), info=how))


def _read_shapes(cfg: ShapesConfig, options: ReadOptions) -> Pair:
    paths = generate_shapes(cfg.root, num_train=cfg.num_train, num_test=cfg.num_test,
                            image_size=(cfg.image_height, cfg.image_width), seed=cfg.seed,
                            progress=options.progress)
    how = {"split": "generated (data.shapes)"}
    return (SplitSource(paths.train_images, ann_file=paths.train_json, info=dict(how)),
            SplitSource(paths.test_images, ann_file=paths.test_json, info=dict(how)))


def _require_root(root: str, fmt: str) -> None:
    if not root:
        raise ConfigError(f"config key 'data.{fmt}.root' is required for data.format '{fmt}'")


def _with_aliases(names: Sequence[str] | None, options: ReadOptions) -> list[str] | None:
    """A reader's class list with the aliases of ``data.class_aliases`` added (a reader leaves
    out objects of classes not in its list; CocoDetection then merges the aliases), or
    ``None`` (the reader finds the classes) when ``names`` is not given."""
    if not names:
        return None
    return [*names, *(a for a in options.class_aliases if a not in names)]


def _split_tag(splits: tuple[str, ...], years: tuple[str, ...] | None) -> str:
    """``trainval`` or ``train+val (2007+2012)``: how a VOC split is named in ``source``."""
    return "+".join(splits) + (f" ({'+'.join(years)})" if years else "")


def _read_voc(cfg: VOCDataConfig, options: ReadOptions) -> Pair:
    """The VOC training and test splits (``*_splits`` of ``*_years``) of ``root``."""
    _require_root(cfg.root, "voc")
    train = load_voc(cfg.root, cfg.train_splits, years=cfg.train_years,
                     class_names=_with_aliases(cfg.class_names, options),
                     keep_difficult=cfg.keep_difficult)
    # The test split takes the training classes, so both map ids the same way; aliases are
    # kept as classes of their own until CocoDetection merges them, as in training.
    train_names = [c["name"] for c in sorted(train[0]["categories"], key=lambda c: c["id"])]
    test = load_voc(cfg.root, cfg.test_splits, years=cfg.test_years,
                    class_names=_with_aliases(train_names, options),
                    keep_difficult=cfg.keep_difficult)
    how = {"split": "ImageSets/Main: data.voc.train_splits, data.voc.test_splits"}
    return (SplitSource(train[1], f"{cfg.root} {_split_tag(cfg.train_splits, cfg.train_years)}",
                        coco=train[0], info=how),
            SplitSource(test[1], f"{cfg.root} {_split_tag(cfg.test_splits, cfg.test_years)}",
                        coco=test[0], info=how))


def _read_voc_folder(cfg: VOCFolderDataConfig, options: ReadOptions) -> Pair:
    """Both splits of a plain VOC-XML folder in one read (split folders or the seeded split)."""
    _require_root(cfg.root, "voc_folder")
    got = read_voc_folder(
        cfg.root, image_dir=cfg.image_dir, ann_dir=cfg.ann_dir,
        class_names=_with_aliases(cfg.class_names, options), test_fraction=cfg.test_fraction,
        seed=cfg.split_seed, keep_difficult=cfg.keep_difficult,
        train_folders=cfg.train_splits, test_folders=cfg.test_splits)
    return tuple(  # type: ignore[return-value]
        SplitSource(s.image_root, f"{cfg.root} ({name})", coco=s.coco,
                    info={"layout": s.layout, "split": s.split}, skipped=s.skipped)
        for name, s in ((n, got[n]) for n in ("train", "test")))


def _read_yolo(cfg: YoloDataConfig, options: ReadOptions) -> Pair:
    """A YOLO folder (``images/<split>``) or an Ultralytics data yaml (``root`` holding
    ``data.yaml``, or ``names_file`` naming it)."""
    yaml_path = find_data_yaml(cfg.root or None, cfg.names_file)
    if yaml_path is not None:
        keys = yaml_split_keys(yaml_path, *(v[0] if v else None
                                            for v in (cfg.train_splits, cfg.test_splits)))
        reads = [(read_yolo_yaml(yaml_path, k), f"{yaml_path} ({k})") for k in keys]
    elif not cfg.root:
        hint = (f" unless data.yolo.names_file is an Ultralytics data.yaml with 'train:'; "
                f"{cfg.names_file} is not one" if cfg.names_file
                else " (or data.yolo.names_file: an Ultralytics data.yaml)")
        raise ConfigError(f"config key 'data.yolo.root' is required for data.format 'yolo'{hint}")
    else:
        splits = ((cfg.train_splits or ("trainval",))[0], (cfg.test_splits or ("test",))[0])
        reads = [(read_yolo(cfg.root, split=split, names_file=cfg.names_file),
                  f"{cfg.root} ({split})") for split in splits]
    return tuple(  # type: ignore[return-value]
        SplitSource(r.image_root, source, coco=r.coco,
                    info={"layout": r.layout, "split": r.split, **r.info})
        for r, source in reads)


def _read_cityscapes(cfg: CityscapesDataConfig, options: ReadOptions) -> Pair:
    _require_root(cfg.root, "cityscapes")
    train_split, test_split = cfg.train_splits[0], cfg.test_splits[0]
    how = {"split": f"folders: {train_split}, {test_split}"}
    out = []
    for split in (train_split, test_split):
        coco, image_root = load_cityscapes(cfg.root, split=split)
        out.append(SplitSource(image_root, f"{cfg.root} ({split})", coco=coco, info=dict(how)))
    return out[0], out[1]


#: ``data.format`` -> its reader; each reads only its own section ``data.<format>``.
FORMATS: dict[str, Callable[[Any, ReadOptions], Pair]] = {
    "coco": _read_coco,
    "shapes": _read_shapes,
    "voc": _read_voc,
    "voc_folder": _read_voc_folder,
    "yolo": _read_yolo,
    "cityscapes": _read_cityscapes,
}
