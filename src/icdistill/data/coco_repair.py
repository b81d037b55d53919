"""What is repaired or dropped in the annotations of a COCO dict, and counted for the report.

Checked once, without reading any image: crowd annotations are excluded from the targets (kept
in the ground truth: the evaluators treat them as ignore regions), boxes leaving the image are
clipped (counted as repaired), boxes with zero width or height after clipping are dropped, and
annotations of an unknown category or image are dropped. The one category that only groups
the others (Roboflow's export) is left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError
from .coco_parse import as_box, as_int
from .segmentation import check_segmentation

__all__ = ["PROBLEMS", "attach_annotations", "drop_grouping_category"]

#: What the report counts per annotation (or image, for ``unreadable_images``).
PROBLEMS = ("crowd", "repaired_boxes", "degenerate_boxes", "unknown_category",
            "unknown_image", "unreadable_images")


def attach_annotations(
    annotations: list, images: list[dict[str, Any]], by_id: dict[int, int],
    cat_id_to_contiguous: dict[int, int], label: str, *, with_masks: bool,
) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Check, repair or drop each annotation, attaching the kept ones to their image record
    (``images[by_id[image_id]]``, whose ``boxes`` / ``labels`` lists become ``boxes`` float32
    ndarray[N, 4] xyxy pixels and ``labels`` int64 ndarray[N] contiguous ids; with
    ``with_masks`` the checked segmentation is appended to its ``segs``).

    Annotations without an integer ``image_id`` / ``category_id`` or a well-formed box are
    also left out of ``annotations`` (in place), the ground truth: pycocotools cannot index
    them and no evaluator could score them.

    Returns ``(counts, files)``: per problem, how many annotations and which file names.
    """
    counts = {p: 0 for p in PROBLEMS}
    files: dict[str, set[str]] = {p: set() for p in PROBLEMS}
    ground_truth = []
    for n, ann in enumerate(annotations):
        problem, name = _attach_annotation(n, ann, images, by_id, cat_id_to_contiguous, label,
                                           with_masks)
        if problem is not None:
            counts[problem] += 1
            files[problem].add(name)
        if (as_box(ann.get("bbox")) and as_int(ann.get("image_id")) is not None
                and as_int(ann.get("category_id")) is not None):
            ground_truth.append(ann)
    annotations[:] = ground_truth
    for rec in images:
        rec["boxes"] = np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4)
        rec["labels"] = np.asarray(rec["labels"], dtype=np.int64).reshape(-1)
    return counts, files


def _attach_annotation(
    n: int, ann: Any, images: list[dict[str, Any]], by_id: dict[int, int],
    cat_id_to_contiguous: dict[int, int], label: str, with_masks: bool,
) -> tuple[str | None, str]:
    """Annotation #n: fill in missing ``id`` / ``iscrowd`` / ``area`` (in place), keep its
    clipped box (and checked segmentation) on its image record unless it is dropped.

    Returns ``(problem, name)``: the problem counted for it (``None`` when kept unrepaired;
    ``repaired_boxes`` is kept too) and the file name (or ``image_id=...``) reported.
    """
    if not isinstance(ann, dict):
        raise DataError(f"{label}: annotation #{n} is not an object")
    ann.setdefault("id", n + 1)
    ann.setdefault("iscrowd", 0)
    pos = by_id.get(as_int(ann.get("image_id")))
    if pos is None:
        return "unknown_image", f"image_id={ann.get('image_id')}"
    rec = images[pos]
    name = rec["file_name"]
    box = as_box(ann.get("bbox"))
    if "area" not in ann:
        ann["area"] = float(box[2] * box[3]) if box is not None else 0.0
    cat = cat_id_to_contiguous.get(as_int(ann.get("category_id")))
    if cat is None:
        return "unknown_category", name
    if ann.get("iscrowd", 0):
        return "crowd", name
    clipped = _clip_box(box, rec["width"], rec["height"])
    if clipped is None:
        return "degenerate_boxes", name
    xyxy, repaired = clipped
    if with_masks:
        try:
            seg = check_segmentation(ann.get("segmentation"), rec["height"], rec["width"])
        except ValueError as e:
            raise DataError(f"{label}: annotation id {ann.get('id')} of image {name} "
                            f"has a malformed 'segmentation': {e}") from e
        rec["segs"].append(seg)
    rec["boxes"].append(xyxy)
    rec["labels"].append(cat)
    return ("repaired_boxes" if repaired else None), name


def drop_grouping_category(data: dict) -> str | None:
    """Leave out the one category that only groups the others (this project's repair, not
    COCO's): Roboflow's COCO export adds a category named after the data set, without any box,
    that is the ``supercategory`` of every other category; kept, it would be a class that is
    never seen. Returns its name (``data["categories"]`` modified), or ``None``."""
    cats = data["categories"]
    if len(cats) < 2 or not all(isinstance(c, dict) for c in cats):
        return None
    used = {as_int(a.get("category_id")) for a in data["annotations"] if isinstance(a, dict)}
    found = [c for c in cats
             if isinstance(c.get("name"), str) and as_int(c.get("id")) not in used
             and all(o.get("supercategory") == c["name"] for o in cats if o is not c)]
    if len(found) != 1:
        return None
    data["categories"] = [c for c in cats if c is not found[0]]
    return found[0]["name"]


def _clip_box(
    box: tuple[float, float, float, float] | None, W: int, H: int
) -> tuple[tuple[float, float, float, float], bool] | None:
    """COCO [x, y, w, h] clipped to a W x H image as xyxy pixels, and whether clipping changed
    it; ``None`` for a missing box or one with zero width or height (before or after clipping)."""
    if box is None or box[2] <= 0 or box[3] <= 0:
        return None
    x0, y0 = box[0], box[1]
    x1, y1 = x0 + box[2], y0 + box[3]
    cx0, cy0 = min(max(x0, 0.0), W), min(max(y0, 0.0), H)
    cx1, cy1 = min(max(x1, 0.0), W), min(max(y1, 0.0), H)
    if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
        return None
    return (cx0, cy0, cx1, cy1), (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
