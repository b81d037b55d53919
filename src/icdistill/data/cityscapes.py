"""Cityscapes instance segmentation (``gtFine`` polygons) to an in-memory COCO dict.

The dict is served by :meth:`icdistill.data.coco.CocoDetection.from_dict`, with or without
instance masks::

    coco_dict, image_root = load_cityscapes("/data/cityscapes", "train")
    train = CocoDetection.from_dict(coco_dict, image_root, transforms, with_masks=True,
                                    source="cityscapes train")

Layout read::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_polygons.json

A polygon json is ``{"imgHeight": int, "imgWidth": int, "objects": [{"label": str,
"polygon": [[x, y], ...]}, ...]}``. The eight instance classes :data:`CITYSCAPES_CLASSES`
get category ids 1..8 in that order. A label ``<class>group`` (``cargroup``, ``persongroup``,
...) becomes a crowd annotation (``iscrowd`` 1) of its base class: left out of the training
targets, ignored as a crowd region by COCO evaluation. Every other label (``road``, ``sky``,
``license plate``, ...), objects marked ``"deleted"`` and polygons of fewer than 3 points are
left out.

Each kept object becomes one annotation: ``segmentation`` ``[[x1, y1, x2, y2, ...]]`` (the
polygon's vertices, in pixels as written), ``bbox`` ``[x, y, w, h]`` = the vertices' extent
(``[min x, min y, max x - min x, max y - min y]``), ``area`` the polygon's area as
``pycocotools.mask.area`` counts it (pixels of the rasterised polygon). Images get ids 1..N in
(city, file name) order and keep their Cityscapes stem (``<city>_<seq>_<frame>``) as
``"cityscapes_id"``; annotations get ids 1..M.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError
from .coco_parse import read_json

__all__ = ["CITYSCAPES_CLASSES", "load_cityscapes"]

log = logging.getLogger(__name__)

#: The eight Cityscapes instance classes, in category-id order (ids 1..8).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

_IMAGE_SUFFIX = "_leftImg8bit.png"
_POLYGON_SUFFIX = "_gtFine_polygons.json"
_GROUP = "group"


def _read_polygon_json(path: Path) -> tuple[int, int, list[dict[str, Any]]]:
    """``(height, width, objects)`` of one ``*_gtFine_polygons.json``; DataError names the file."""
    data = read_json(path, "Cityscapes polygon file")
    if not isinstance(data, dict):
        raise DataError(f"Cityscapes polygon file {path}: expected a json object, "
                        f"got {type(data).__name__}")
    try:
        height, width = int(data["imgHeight"]), int(data["imgWidth"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"Cityscapes polygon file {path}: missing or malformed "
                        f"'imgHeight' / 'imgWidth' ({e!r})") from e
    if height <= 0 or width <= 0:
        raise DataError(f"Cityscapes polygon file {path}: non-positive image size "
                        f"{width}x{height}")
    objects = data.get("objects", [])
    if not isinstance(objects, list):
        raise DataError(f"Cityscapes polygon file {path}: 'objects' must be a list")
    return height, width, objects


def _polygon(obj: Any, k: int, path: Path) -> tuple[str, list[float]]:
    """``(label, flat [x1, y1, x2, y2, ...])`` of object #k; DataError names the file."""
    if not isinstance(obj, dict) or not isinstance(obj.get("label"), str):
        raise DataError(f"Cityscapes polygon file {path}: object #{k} has no string 'label'")
    poly = obj.get("polygon")
    if not isinstance(poly, list):
        raise DataError(f"Cityscapes polygon file {path}: object #{k} ({obj['label']}) has no "
                        f"'polygon' list")
    flat: list[float] = []
    for pt in poly:
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            raise DataError(f"Cityscapes polygon file {path}: object #{k} ({obj['label']}) has "
                            f"a polygon vertex that is not an [x, y] pair: {str(pt)[:60]}")
        try:
            x, y = float(pt[0]), float(pt[1])
        except (TypeError, ValueError) as e:
            raise DataError(f"Cityscapes polygon file {path}: object #{k} ({obj['label']}) "
                            f"has a non-numeric vertex {str(pt)[:60]}") from e
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(f"Cityscapes polygon file {path}: object #{k} ({obj['label']}) "
                            f"has a non-finite vertex {pt}")
        flat += [x, y]
    return obj["label"], flat


def load_cityscapes(root: str | os.PathLike, split: str = "train") -> tuple[dict, Path]:
    """Read one Cityscapes split (fine polygons) into a COCO dict.

    Args:
        root: the Cityscapes folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val``, ``test`` or any folder name under both of them.

    Returns:
        ``(coco_dict, image_root)`` with ``image_root = root/leftImg8bit/<split>`` and images'
        ``file_name`` ``<city>/<city>_<seq>_<frame>_leftImg8bit.png`` relative to it;
        ``width`` / ``height`` from the polygon json (no image is read). Categories
        ``[{"id": 1..8, "name": ...}]`` of :data:`CITYSCAPES_CLASSES`; annotations
        ``{"id", "image_id", "category_id", "segmentation": [[x1, y1, ...]], "bbox": [x, y, w,
        h], "area", "iscrowd": 0 or 1}`` in pixels (see the module docstring).

    Raises:
        DataError: ``root``, ``leftImg8bit/<split>`` or ``gtFine/<split>`` is missing (the path
            is named); the split holds no ``*_leftImg8bit.png``; an image has no polygon json
            (image and expected json named); a polygon json is broken, lacks the image size or
            has a malformed object (file named).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Cityscapes folder not found: {root}")
    image_root = root / "leftImg8bit" / split
    gt_root = root / "gtFine" / split
    for d, what in ((image_root, "image"), (gt_root, "gtFine annotation")):
        if not d.is_dir():
            raise DataError(f"Cityscapes {what} folder not found: {d} (split '{split}')")
    files = sorted(
        (p for p in image_root.glob(f"*/*{_IMAGE_SUFFIX}") if p.is_file()),
        key=lambda p: (p.parent.name, p.name))
    if not files:
        raise DataError(f"no Cityscapes images (<city>/*{_IMAGE_SUFFIX}) in {image_root}")

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    ignored: Counter[str] = Counter()
    too_small = 0
    for img_path in files:
        city = img_path.parent.name
        stem = img_path.name[: -len(_IMAGE_SUFFIX)]
        json_path = gt_root / city / f"{stem}{_POLYGON_SUFFIX}"
        if not json_path.is_file():
            raise DataError(f"Cityscapes image {img_path} has no polygon file: {json_path} "
                            f"does not exist")
        height, width, objects = _read_polygon_json(json_path)
        img_id = len(images) + 1
        image = {"id": img_id, "file_name": f"{city}/{img_path.name}", "width": width,
                 "height": height, "cityscapes_id": stem}
        images.append(image)
        kept, small = _object_annotations(objects, json_path, image, ignored)
        annotations += [{"id": len(annotations) + 1 + i, **ann} for i, ann in enumerate(kept)]
        too_small += small
    if ignored:
        log.debug("Cityscapes %s: left out %d objects of non-instance labels: %s", split,
                  sum(ignored.values()), dict(sorted(ignored.items())))
    if too_small:
        log.info("Cityscapes %s: left out %d polygons of fewer than 3 points", split, too_small)
    categories = [{"id": i + 1, "name": n, "supercategory": "cityscapes"}
                  for i, n in enumerate(CITYSCAPES_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, image_root


def _object_annotations(
    objects: list[Any], json_path: Path, image: dict[str, Any], ignored: Counter[str]
) -> tuple[list[dict[str, Any]], int]:
    """Annotations (without ``id``) of the kept objects of one image, and how many polygons of
    fewer than 3 points were left out; labels that are not instance classes count in ``ignored``."""
    from pycocotools import mask as mask_utils

    cat_of = {n: i + 1 for i, n in enumerate(CITYSCAPES_CLASSES)}
    height, width = image["height"], image["width"]
    kept: list[dict[str, Any]] = []
    too_small = 0
    for k, obj in enumerate(objects):
        if isinstance(obj, dict) and obj.get("deleted"):
            continue
        label, flat = _polygon(obj, k, json_path)
        crowd = label.endswith(_GROUP) and label[: -len(_GROUP)] in cat_of
        cat = cat_of.get(label[: -len(_GROUP)] if crowd else label)
        if cat is None:
            ignored[label] += 1
            continue
        if len(flat) < 6:
            too_small += 1
            continue
        xs, ys = flat[0::2], flat[1::2]
        x0, y0 = min(xs), min(ys)
        area = float(mask_utils.area(mask_utils.frPyObjects([flat], height, width))[0])
        kept.append({
            "image_id": image["id"],
            "category_id": cat,
            "segmentation": [flat],
            "bbox": [x0, y0, max(xs) - x0, max(ys) - y0],
            "area": area,
            "iscrowd": int(crowd),
        })
    return kept, too_small
