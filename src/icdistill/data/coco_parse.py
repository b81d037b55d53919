"""Reading a COCO detection dict: the json file, its top-level structure, the ``images`` and
``categories`` entries, and the pycocotools index of the ground truth. Nothing here repairs an
annotation (:mod:`icdistill.data.coco_repair` does); what annotation tools write is accepted
(``file_name`` with subfolders or Windows separators, sizes missing from ``images``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DataError

__all__ = ["as_box", "as_int", "check_coco_dict", "coco_index", "image_records", "index_categories",
           "load_coco_json", "read_json"]


def read_json(path: Path, what: str) -> Any:
    """The json value in ``path``; :class:`DataError` naming ``what`` and the file when it is
    not json or cannot be read."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is not valid json: {e}") from e
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e


def load_coco_json(ann_file: Path) -> dict:
    """The structurally checked COCO dict of the json file ``ann_file``."""
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    return check_coco_dict(read_json(ann_file, "annotation file"), f"annotation file {ann_file}")


def check_coco_dict(data: Any, label: str) -> dict:
    """Check the top-level structure of a COCO dict; ``label`` starts each error message."""
    if not isinstance(data, dict):
        raise DataError(f"{label}: expected a json object with 'images', "
                        f"'annotations' and 'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{label}: missing or non-list key '{key}' "
                            f"(COCO detection format expected)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"{label}: 'annotations' must be a list")
    data.setdefault("annotations", [])
    if not data["categories"]:
        raise DataError(f"{label}: 'categories' is empty")
    return data


def index_categories(categories: list, label: str) -> tuple[list[int], list[str]]:
    """Categories sorted by COCO id: ``(COCO id of each contiguous id 0..C-1, class names in
    that order)``; a category without a name is named by its id.

    Raises:
        DataError: an entry without an integer ``id``, or two with the same id.
    """
    try:
        cats = sorted(categories, key=lambda c: int(c["id"]))
        cat_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as e:
        raise DataError(f"{label}: malformed 'categories' entry "
                        f"({e!r}); each needs an integer 'id' and a 'name'") from e
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{label}: duplicate category ids")
    return cat_ids, names


def image_records(
    images: list, label: str, with_masks: bool, image_dir: Path
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Checked image records (``id``, ``file_name``, ``width``, ``height`` and empty ``boxes`` /
    ``labels``, plus ``segs`` with masks) in json order, and the position of each image id."""
    records: list[dict[str, Any]] = []
    by_id: dict[int, int] = {}
    for img in images:
        rec = _image_record(img, label, image_dir)
        img.update(file_name=rec["file_name"], width=rec["width"], height=rec["height"])  # for the GT
        if rec["width"] <= 0 or rec["height"] <= 0:
            raise DataError(f"{label}: image {rec['file_name']} has "
                            f"non-positive size {rec['width']}x{rec['height']}")
        if rec["id"] in by_id:
            raise DataError(f"{label}: duplicate image id {rec['id']}")
        by_id[rec["id"]] = len(records)
        rec["boxes"], rec["labels"] = [], []
        if with_masks:
            rec["segs"] = []
        records.append(rec)
    return records, by_id


def _image_record(img: Any, label: str, image_dir: Path) -> dict[str, Any]:
    """``{"id", "file_name", "width", "height"}`` of one ``images`` entry.

    What annotation tools write is accepted: ``file_name`` with subfolders (relative to the
    image folder) or Windows separators (``a\\b.jpg`` read as ``a/b.jpg`` when only that
    exists); ``width`` / ``height`` missing or null are read from the image header.
    """
    try:
        if not isinstance(img, dict):
            raise TypeError(f"expected an object, got {type(img).__name__}")
        file_name = img["file_name"]
        if not isinstance(file_name, str) or not file_name:
            raise TypeError(f"'file_name' must be a non-empty string, got {file_name!r}")
        if "\\" in file_name and not os.path.exists(image_dir / file_name):
            file_name = file_name.replace("\\", "/")
        width, height = img.get("width"), img.get("height")
        if width is None or height is None:
            width, height = _header_size(image_dir / file_name, label)
        return {"id": int(img["id"]), "file_name": file_name,
                "width": int(width), "height": int(height)}
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{label}: malformed 'images' entry "
                        f"{str(img)[:200]} ({e!r}); each needs 'id', 'file_name', "
                        f"'width' and 'height'") from e


def _header_size(path: Path, label: str) -> tuple[int, int]:
    """``(width, height)`` from an image header, for an entry that does not give them."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{label}: image {path} has no width/height in the annotations and "
                        f"its header cannot be read: {e}") from e


def as_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf)
        return None


def as_box(v: Any) -> tuple[float, float, float, float] | None:
    """COCO [x, y, w, h] as floats, or None when malformed or not finite."""
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        return None
    try:
        box = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(x) for x in box):
        return None
    return box  # type: ignore[return-value]


def coco_index(data: dict, label: str) -> Any:
    """The indexed ``pycocotools.coco.COCO`` ground truth over ``data`` (taken over)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as e:
            raise DataError(f"{label}: pycocotools cannot index it "
                            f"({e!r})") from e
    return coco
