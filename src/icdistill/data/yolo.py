"""YOLO (darknet / ultralytics txt) reader: a YOLO folder split to an in-memory COCO dict.

The dict is served by :meth:`icdistill.data.coco.CocoDetection.from_dict`::

    coco_dict, image_root = load_yolo("/data/cells", split="train")
    train = CocoDetection.from_dict(coco_dict, image_root, transforms, source="cells train")

Layout::

    root/images/<split>/*.jpg|*.png   (also .jpeg, .bmp, .tif, .tiff, .webp)
    root/labels/<split>/<image stem>.txt
    root/classes.txt | root/obj.names | root/data.yaml   (class names)

Box formats: a label line is ``class cx cy w h`` with the centre and size normalised by the
image width / height (0..1); the COCO dict gets ``bbox = [x, y, w, h]`` in pixels,
``x = (cx - w/2)·W``, ``y = (cy - h/2)·H``, ``w·W``, ``h·H``. Class index k becomes category id
k + 1. Images get ids 1..N in file-name order, annotations ids 1..M.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError

__all__ = ["load_yolo", "read_yolo_names"]

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
_NAME_FILES = ("classes.txt", "obj.names", "data.yaml")


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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read YOLO class names file {path}: {e}") from e
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DataError(f"YOLO data file {path} is not valid yaml: {e}") from e
        raw: Any = data.get("names") if isinstance(data, dict) else None
        if isinstance(raw, dict):
            try:
                idx = sorted(int(k) for k in raw)
            except (TypeError, ValueError) as e:
                raise DataError(f"YOLO data file {path}: 'names' keys must be integers") from e
            if idx != list(range(len(idx))):
                raise DataError(f"YOLO data file {path}: 'names' indices must be 0..C-1, "
                                f"got {idx}")
            names = [str(raw[k] if k in raw else raw[str(k)]) for k in idx]
        elif isinstance(raw, list):
            names = [str(n) for n in raw]
        else:
            raise DataError(f"YOLO data file {path}: needs a 'names' list or mapping")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DataError(f"YOLO class names file {path} holds no class name")
    return names


def load_yolo(
    root: str | os.PathLike,
    *,
    split: str = "train",
    names_file: str | os.PathLike | None = None,
) -> tuple[dict, Path]:
    """Read one split of a YOLO folder into a COCO dict.

    Args:
        root: the YOLO folder (layout in the module docstring).
        split: sub-folder of ``images/`` and ``labels/``.
        names_file: class names file (relative to ``root`` or absolute), read with
            :func:`read_yolo_names`; default: the first of ``classes.txt``, ``obj.names``,
            ``data.yaml`` found in ``root``.

    Returns:
        ``(coco_dict, image_root)``: ``image_root`` is ``root/images/<split>``, images'
        ``file_name`` are relative to it, sizes are read from the image headers (PIL, no
        decoding), boxes are COCO ``[x, y, w, h]`` pixels. An image without a label file, or
        with an empty one, has no object.

    Raises:
        DataError: the image folder or the names file is missing; an image header cannot be
            read (file named); a label line does not have 5 numbers ``class cx cy w h`` with an
            integer class, or its class is out of range (``file:line`` named).
    """
    root = Path(root)
    img_dir = root / "images" / split
    lbl_dir = root / "labels" / split
    if not img_dir.is_dir():
        raise DataError(f"YOLO image folder not found: {img_dir}")
    names = _class_names(root, names_file)
    images_paths = sorted((p for p in img_dir.iterdir()
                           if p.is_file() and p.suffix.lower() in _IMAGE_EXTS),
                          key=lambda p: p.name)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for img_id, path in enumerate(images_paths, start=1):
        width, height = _image_size(path)
        images.append({"id": img_id, "file_name": path.name, "width": width, "height": height})
        label = lbl_dir / f"{path.stem}.txt"
        if not label.is_file():
            continue
        for cls, cx, cy, w, h in _read_label_file(label, len(names)):
            bw, bh = w * width, h * height
            bbox = [(cx - w / 2.0) * width, (cy - h / 2.0) * height, bw, bh]
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": img_id,
                "category_id": cls + 1,
                "bbox": bbox,
                "area": max(bw, 0.0) * max(bh, 0.0),
                "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}, img_dir


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
                    f"{', '.join(_NAME_FILES)}); pass names_file")


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the image header (PIL, no decoding); DataError names the file."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read the header of image {path}: {e}") from e
    return int(width), int(height)


def _read_label_file(label: Path, num_classes: int) -> list[tuple[int, float, float, float, float]]:
    """``(class, cx, cy, w, h)`` (normalised) of each non-empty line of a YOLO label file."""
    try:
        lines = label.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read YOLO label file {label}: {e}") from e
    return [_parse_label_line(line, f"{label}:{lineno}", num_classes)
            for lineno, line in enumerate(lines, start=1) if line.split()]


def _parse_label_line(line: str, where: str, num_classes: int) -> tuple[int, float, float, float, float]:
    """One ``class cx cy w h`` line; DataError names ``where`` (``file:line``)."""
    parts = line.split()
    if len(parts) != 5:
        raise DataError(f"{where}: expected 5 values 'class cx cy w h', got "
                        f"{len(parts)}: {line.strip()[:80]!r}")
    try:
        cls = int(parts[0])
        cx, cy, w, h = (float(v) for v in parts[1:])
    except ValueError as e:
        raise DataError(f"{where}: malformed YOLO label line {line.strip()[:80]!r} "
                        f"(integer class, then 4 numbers expected)") from e
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise DataError(f"{where}: non-finite value in {line.strip()[:80]!r}")
    if not 0 <= cls < num_classes:
        raise DataError(f"{where}: class index {cls} out of range 0..{num_classes - 1} "
                        f"({num_classes} class names)")
    return cls, cx, cy, w, h
