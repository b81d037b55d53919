"""YOLO (darknet / Ultralytics txt) readers: a YOLO split to an in-memory COCO dict.

The dict is served by :meth:`icdistill.data.coco.CocoDetection.from_dict`::

    coco_dict, image_root = load_yolo("/data/cells", split="train")
    train = CocoDetection.from_dict(coco_dict, image_root, transforms, source="cells train")

Two layouts:

* a YOLO folder: ``root/images/<split>/*.jpg|*.png`` (also .jpeg, .bmp, .tif, .tiff, .webp),
  ``root/labels/<split>/<image stem>.txt`` and a class names file (``classes.txt``,
  ``obj.names`` or ``data.yaml`` with ``names``) — :func:`load_yolo`;
* an Ultralytics ``data.yaml`` (keys ``path``, ``train``, ``val``, ``test``, ``names`` as a list
  or an ``{id: name}`` mapping, optional ``nc``): each split is an image folder (searched
  recursively), a ``.txt`` list of image paths, or a list of those, relative to ``path``;
  labels are found by Ultralytics' rule (the last ``/images/`` of an image path replaced by
  ``/labels/``, extension ``.txt``) — :func:`read_yolo_yaml`. ``path`` relative (to the
  yaml's folder; Ultralytics resolves it against its datasets folder) or missing is the yaml's
  folder; a ``path`` that does not exist here (a yaml written on another machine, or for
  Ultralytics' datasets folder) falls back to the yaml's folder, and a split ``../x`` that does
  not exist is read as ``x``, as Ultralytics does for Roboflow's exports.

Box formats: a label line is ``class cx cy w h`` with the centre and size normalised by the
image width / height (0..1); the COCO dict gets ``bbox = [x, y, w, h]`` in pixels,
``x = (cx - w/2)·W``, ``y = (cy - h/2)·H``, ``w·W``, ``h·H``. A line ``class x1 y1 x2 y2 x3 y3
...`` (an Ultralytics segment, normalised) gives the polygon's bounding box and the polygon, in
pixels, as its ``segmentation``; with a ``kpt_shape`` in the yaml (pose labels) the values after
the box are keypoints and are ignored. Class index k becomes category id k + 1. Images get ids
1..N in file-name order, annotations ids 1..M.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ..errors import DataError
from .layouts import IMAGE_EXTS, describe_folder, image_files

__all__ = ["YoloSplit", "find_data_yaml", "load_yolo", "read_yolo", "read_yolo_names",
           "read_yolo_yaml", "yaml_split_keys"]

log = logging.getLogger(__name__)

_NAME_FILES = ("classes.txt", "obj.names", "data.yaml")
_DATA_YAMLS = ("data.yaml", "data.yml")
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}

#: ``(class, cx, cy, w, h, polygon)``: normalised box, normalised flat polygon or None.
_Label = tuple[int, float, float, float, float, "list[float] | None"]


@dataclass
class YoloSplit:
    """One YOLO split as read: ``coco``, the ``image_root`` its ``file_name`` are relative to
    (absolute when outside it), and what was found (``layout``, ``split``, ``info``: counts
    such as ``images_without_labels``, which are background images)."""

    coco: dict
    image_root: Path
    layout: str
    split: str
    info: dict[str, Any] = field(default_factory=dict)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(_read_text(path, "YOLO data file"))
    except yaml.YAMLError as e:
        raise DataError(f"YOLO data file {path} is not valid yaml: {e}") from e
    except (ValueError, TypeError, RecursionError) as e:  # e.g. a timestamp out of range
        raise DataError(f"YOLO data file {path} cannot be read as yaml: {e}") from e


def _yaml_names(data: Any, path: Path) -> list[str]:
    """``names`` of a yaml mapping: a list, or ``{index: name}`` with indices 0..C-1; only
    ``nc`` gives ``class0..``; ``nc`` and ``names`` must agree."""
    raw: Any = data.get("names") if isinstance(data, dict) else None
    nc = data.get("nc") if isinstance(data, dict) else None
    if raw is None and isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
        return [f"class{i}" for i in range(nc)]
    if isinstance(raw, dict):
        try:
            idx = sorted(int(k) for k in raw)
        except (TypeError, ValueError, OverflowError) as e:
            raise DataError(f"YOLO data file {path}: 'names' keys must be integers") from e
        if idx != list(range(len(idx))):
            raise DataError(f"YOLO data file {path}: 'names' indices must be 0..C-1, got {idx[:20]}")
        by_int = {int(k): v for k, v in raw.items()}
        names = [str(by_int[k]) for k in idx]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        raise DataError(f"YOLO data file {path}: needs a 'names' list or mapping")
    if nc is not None and nc != len(names):
        raise DataError(f"YOLO data file {path}: 'nc' is {nc!r} but 'names' has {len(names)} names")
    return names


def read_yolo_names(path: str | os.PathLike) -> list[str]:
    """Class names from a names file: ``*.yaml``/``*.yml`` -> its ``names:`` (a list, or a
    ``{index: name}`` mapping with indices 0..C-1); anything else -> one name per non-empty line.

    Raises:
        DataError: naming the file, when it is missing, unreadable, has no names, or a yaml
            ``names`` of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"YOLO class names file not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml"):
        names = _yaml_names(_load_yaml(path), path)
    else:
        text = _read_text(path, "YOLO class names file")
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"YOLO class names file {path} holds no class name")
    return names


def find_data_yaml(root: str | os.PathLike | None, names_file: str | os.PathLike | None) -> Path | None:
    """The Ultralytics data yaml to read, or ``None`` for a plain YOLO folder: ``names_file``
    (relative to ``root``) when it is a yaml with a ``train`` key, else ``data.yaml`` /
    ``data.yml`` in ``root`` when it has one."""
    cands = []
    if names_file is not None:
        p = Path(names_file)
        cands.append(p if p.is_absolute() or not root else Path(root) / p)
    elif root:
        cands += [Path(root) / n for n in _DATA_YAMLS]
    for p in cands:
        if p.suffix.lower() in (".yaml", ".yml") and p.is_file():
            data = _load_yaml(p)
            if isinstance(data, dict) and data.get("train"):
                return p
    return None


def yaml_split_keys(yaml_path: str | os.PathLike, train: str | None = None,
                    test: str | None = None) -> tuple[str, str]:
    """The yaml keys read as the training and the test split: ``train`` / ``test`` when given
    (``valid`` / ``validation`` mean ``val``), else ``train`` and ``test`` when the yaml gives
    test images, else ``val``.

    Raises:
        DataError: a chosen key gives no images in the yaml (the keys it has are listed).
    """
    yaml_path = Path(yaml_path)
    data = _load_yaml(yaml_path)
    if not isinstance(data, dict):
        raise DataError(f"YOLO data file {yaml_path}: expected a mapping with train/val/names")
    keys = {"train": _SPLIT_ALIASES.get(train, train) if train else "train",
            "test": (_SPLIT_ALIASES.get(test, test) if test
                     else "test" if data.get("test") else "val")}
    for role, key in keys.items():
        if not data.get(key):
            have = [k for k in ("train", "val", "test") if data.get(k)]
            raise DataError(f"YOLO data file {yaml_path}: no '{key}' images for the {role} split "
                            f"(data.yolo.{role}_splits); it gives {', '.join(have) or 'none'}")
    return keys["train"], keys["test"]


def read_yolo_yaml(yaml_path: str | os.PathLike, split: str) -> YoloSplit:
    """Read split ``split`` (a key of the yaml: ``train``, ``val``, ``test``) of an
    Ultralytics data yaml (see the module docstring).

    Returns:
        A :class:`YoloSplit` whose ``image_root`` is the dataset folder (``path``).

    Raises:
        DataError: naming the yaml or the file: not a mapping, no names, a split missing or
            naming no image, a label line malformed (``file:line``), an image header unreadable.
    """
    yaml_path = Path(yaml_path)
    data = _load_yaml(yaml_path)
    if not isinstance(data, dict):
        raise DataError(f"YOLO data file {yaml_path}: expected a mapping with train/val/names")
    names = _yaml_names(data, yaml_path)
    base = _dataset_dir(yaml_path, data.get("path"))
    images = _split_images(base, data.get(split), yaml_path, split)
    if not images:
        raise DataError(f"YOLO data file {yaml_path}: split '{split}' names no image")
    coco, without = _to_coco(images, base, _ultralytics_label_path, names,
                             pose=data.get("kpt_shape") is not None)
    return YoloSplit(coco, base, f"Ultralytics data file {yaml_path.name} (path {base})",
                     f"data file keys: {split}", {"images_without_labels": without})


def _dataset_dir(yaml_path: Path, value: Any) -> Path:
    """The dataset folder of a yaml's ``path`` value (see the module docstring)."""
    if value is None or value == "":
        return yaml_path.parent
    if not isinstance(value, str):
        raise DataError(f"YOLO data file {yaml_path}: 'path' must be a string, got {value!r}")
    p = Path(value)
    d = p if p.is_absolute() else yaml_path.parent / p
    if d.is_dir():
        return d
    # A yaml written on another machine (Colab's /content/...) or for Ultralytics' datasets
    # folder (../datasets/x) that now sits beside its data: read the data beside it.
    log.warning("%s: 'path' %s does not exist here; reading the data beside the yaml",
                yaml_path, value)
    return yaml_path.parent


def _split_images(base: Path, value: Any, yaml_path: Path, key: str) -> list[Path]:
    """Image files of a split value: folders (recursive), ``.txt`` lists, or a list of those."""
    values = value if isinstance(value, list) else [value]
    out: list[Path] = []
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"YOLO data file {yaml_path}: '{key}' must be a folder or a .txt "
                            f"file (or a list of them), got {v!r}")
        p = Path(v) if Path(v).is_absolute() else base / v
        if not p.exists() and v.startswith("../") and (base / v[3:]).exists():
            p = base / v[3:]  # Roboflow writes ../train/images for train/images
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file()
                          and not any(part.startswith((".", "__MACOSX")) for part in f.relative_to(p).parts))
        elif p.is_file():
            out += _listed_images(p)
        else:
            raise DataError(f"YOLO data file {yaml_path}: '{key}' images not found: {p} "
                            f"({base} holds {describe_folder(base)})")
    return list(dict.fromkeys(out))


def _listed_images(txt: Path) -> list[Path]:
    """Image paths listed one per line in ``txt`` (relative ones against its folder)."""
    lines = [s.strip() for s in _read_text(txt, "YOLO image list").splitlines() if s.strip()]
    return [Path(s) if Path(s).is_absolute() else txt.parent / s for s in lines]


def _ultralytics_label_path(image: Path) -> Path:
    """Ultralytics' ``img2label_paths``: the last ``/images/`` of the path becomes ``/labels/``
    and the extension ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = str(image)
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s.rsplit(".", 1)[0] + ".txt")


def load_yolo(
    root: str | os.PathLike,
    *,
    split: str = "train",
    names_file: str | os.PathLike | None = None,
) -> tuple[dict, Path]:
    """Read one split of a YOLO folder into a COCO dict (see :func:`read_yolo`).

    Returns:
        ``(coco_dict, image_root)``.
    """
    got = read_yolo(root, split=split, names_file=names_file)
    return got.coco, got.image_root


def read_yolo(
    root: str | os.PathLike,
    *,
    split: str = "train",
    names_file: str | os.PathLike | None = None,
) -> YoloSplit:
    """Read one split of a YOLO folder.

    Args:
        root: the YOLO folder (layout in the module docstring).
        split: sub-folder of ``images/`` and ``labels/``.
        names_file: class names file (relative to ``root`` or absolute), read with
            :func:`read_yolo_names`; default: the first of ``classes.txt``, ``obj.names``,
            ``data.yaml`` found in ``root``.

    Returns:
        A :class:`YoloSplit`: ``image_root`` is ``root/images/<split>``, images' ``file_name``
        are relative to it, sizes are read from the image headers (PIL, no decoding), boxes
        are COCO ``[x, y, w, h]`` pixels. An image without a label file, or with an empty one,
        has no object.

    Raises:
        DataError: the image folder or the names file is missing; an image header cannot be
            read (file named); a label line is not ``class cx cy w h`` or a polygon with an
            integer class, or its class is out of range (``file:line`` named).
    """
    root = Path(root)
    img_dir = root / "images" / split
    lbl_dir = root / "labels" / split
    if not img_dir.is_dir():
        where = describe_folder(root) if root.is_dir() else "(the folder does not exist)"
        raise DataError(f"YOLO image folder not found: {img_dir}; {root} holds {where}; a YOLO "
                        f"folder has images/<split>/ and labels/<split>/ (data.yolo.train_splits, "
                        f"data.yolo.test_splits) or an Ultralytics data.yaml (data.yolo.names_file)")
    names = _class_names(root, names_file)
    images = image_files(img_dir)
    coco, without = _to_coco(images, img_dir, lambda p: lbl_dir / f"{p.stem}.txt", names)
    return YoloSplit(coco, img_dir, "images/<split>/ + labels/<split>/", f"folders: {split}",
                     {"images_without_labels": without})


def _to_coco(
    images: Sequence[Path], image_root: Path, label_of: Callable[[Path], Path],
    names: list[str], pose: bool = False,
) -> tuple[dict, int]:
    """The COCO dict of ``images`` (ids 1..N in this order) with the labels of
    ``label_of(image)``, and how many images have no label file."""
    out_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    without = 0
    for img_id, path in enumerate(images, start=1):
        width, height = _image_size(path)
        out_images.append({"id": img_id, "file_name": _relative(path, image_root),
                           "width": width, "height": height})
        label = label_of(path)
        if not os.path.isfile(label):
            without += 1
            continue
        for cls, cx, cy, w, h, poly in _read_label_file(label, len(names), pose):
            bw, bh = w * width, h * height
            ann = {"id": len(annotations) + 1, "image_id": img_id, "category_id": cls + 1,
                   "bbox": [(cx - w / 2.0) * width, (cy - h / 2.0) * height, bw, bh],
                   "area": max(bw, 0.0) * max(bh, 0.0), "iscrowd": 0}
            if poly is not None:
                ann["segmentation"] = [[v * (width if i % 2 == 0 else height)
                                        for i, v in enumerate(poly)]]
            annotations.append(ann)
    categories = [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(names)]
    return {"images": out_images, "annotations": annotations, "categories": categories}, without


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _class_names(root: Path, names_file: str | os.PathLike | None) -> list[str]:
    """Class names from ``names_file`` (relative to ``root`` or absolute), else from the first
    of :data:`_NAME_FILES` found in ``root``."""
    if names_file is not None:
        p = Path(names_file)
        return read_yolo_names(p if p.is_absolute() else root / p)
    for cand in _NAME_FILES:
        if (root / cand).is_file():
            return read_yolo_names(root / cand)
    raise DataError(f"YOLO folder {root}: no class names file (looked for "
                    f"{', '.join(_NAME_FILES)}); set data.yolo.names_file")


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (PIL, no decoding); DataError names the file."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read the header of image {path}: {e}") from e
    return int(width), int(height)


def _read_label_file(label: Path, num_classes: int, pose: bool = False) -> list[_Label]:
    """The labels of each non-empty line of a YOLO label file (normalised)."""
    lines = _read_text(label, "YOLO label file").splitlines()
    return [_parse_label_line(line, f"{label}:{lineno}", num_classes, pose)
            for lineno, line in enumerate(lines, start=1) if line.split()]


def _parse_label_line(line: str, where: str, num_classes: int, pose: bool = False) -> _Label:
    """One ``class cx cy w h`` line, or ``class x1 y1 ... xn yn`` (n >= 3, a polygon), or with
    ``pose`` ``class cx cy w h`` + keypoints; DataError names ``where`` (``file:line``)."""
    parts = line.split()
    shown = repr(line.strip()[:80])
    if not (len(parts) == 5 or (pose and len(parts) > 5) or (len(parts) >= 7 and len(parts) % 2)):
        raise DataError(f"{where}: expected 5 values 'class cx cy w h' or a polygon "
                        f"'class x1 y1 x2 y2 x3 y3 ...', got {len(parts)}: {shown}")
    try:
        as_float = float(parts[0])  # some tools write the class as 0.0
        if not as_float.is_integer():
            raise ValueError(f"class {parts[0]!r} is not an integer")
        cls = int(as_float)
        values = [float(v) for v in (parts[1:5] if pose else parts[1:])]
    except ValueError as e:
        raise DataError(f"{where}: malformed YOLO label line {shown} "
                        f"(integer class, then numbers expected)") from e
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{where}: non-finite value in {shown}")
    if not 0 <= cls < num_classes:
        raise DataError(f"{where}: class index {cls} out of range 0..{num_classes - 1} "
                        f"({num_classes} class names)")
    if len(values) == 4:
        return cls, values[0], values[1], values[2], values[3], None
    xs, ys = values[0::2], values[1::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, values
