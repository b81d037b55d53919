"""Instance masks from COCO ``segmentation`` fields: checking them once (polygons, uncompressed
and compressed RLE) and decoding them per item through ``pycocotools.mask``.

Polygons are ``[[x1, y1, x2, y2, ...], ...]`` (0-based continuous pixels; parts with fewer than
3 points are ignored); RLEs are ``{"size": [h, w], "counts": [int, ...] or str}``. An annotation
without a usable segmentation gets its (clipped) box filled instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .coco_parse import as_box, as_int

__all__ = ["check_segmentation", "decode_masks", "fill_missing_segmentations"]


def check_segmentation(seg: Any, h: int, w: int) -> list[list[float]] | dict | None:
    """Normalise a COCO ``segmentation`` of an image of ``h`` x ``w`` pixels.

    Returns:
        A list of polygons (each a flat list of at least 6 floats; parts of fewer than 3
        points are left out), an RLE dict (``size`` checked against ``(h, w)``), or ``None``
        when there is no usable segmentation (missing, ``None``, ``[]``, or only parts of fewer
        than 3 points).

    Raises:
        ValueError: saying what is wrong.
    """
    if seg is None or (isinstance(seg, (list, tuple)) and len(seg) == 0):
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise ValueError("an RLE needs 'counts' and 'size'")
        size = seg["size"]
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or [as_int(v) for v in size] != [h, w]):
            raise ValueError(f"RLE size {size} differs from the image size [{h}, {w}] (h, w)")
        counts = seg["counts"]
        if isinstance(counts, (str, bytes)):
            # pycocotools' C decoder trusts the string: a malformed one reads or writes past
            # its buffers, so the counts are checked here first.
            total = sum(_rle_string_counts(counts))
            if total != h * w:
                raise ValueError(f"compressed RLE counts sum to {total}, not h*w = {h * w}")
            return {"size": [h, w], "counts": counts}
        if isinstance(counts, (list, tuple)) and all(
                isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
            if sum(int(c) for c in counts) != h * w:
                raise ValueError(f"uncompressed RLE counts sum to {sum(int(c) for c in counts)}, "
                                 f"not h*w = {h * w}")
            return {"size": [h, w], "counts": [int(c) for c in counts]}
        raise ValueError("RLE 'counts' must be a string or a list of non-negative ints")
    if isinstance(seg, (list, tuple)):
        polys: list[list[float]] = []
        for k, part in enumerate(seg):
            if not isinstance(part, (list, tuple)):
                raise ValueError(f"polygon #{k} is not a list of coordinates")
            try:
                coords = [float(v) for v in part]
            except (TypeError, ValueError) as e:
                raise ValueError(f"polygon #{k} has a non-numeric coordinate") from e
            if len(coords) % 2 or not all(math.isfinite(v) for v in coords):
                raise ValueError(f"polygon #{k} needs an even number of finite coordinates, "
                                 f"got {len(coords)}")
            # pycocotools rasterises polygons with C ints: far-off points overflow them
            reach = 10 * max(h, w) + 10_000
            if any(abs(v) > reach for v in coords):
                raise ValueError(f"polygon #{k} has a point more than {reach} px outside the "
                                 f"image")
            if len(coords) >= 6:
                polys.append(coords)
        return polys or None
    raise ValueError(f"expected a list of polygons or an RLE dict, got {type(seg).__name__}")


def _rle_string_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``: 5-bit
    groups offset by 48, bit 0x20 = more groups, bit 0x10 of the last = negative; from the
    third run on, deltas to the run two before).

    Raises:
        ValueError: a character outside ``'0'..'o'``, a number cut off, or a negative run.
    """
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError as e:
            raise ValueError("compressed RLE counts are not ASCII") from e
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("compressed RLE counts end inside a number")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE counts hold {counts[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("compressed RLE counts hold a negative run")
        runs.append(x)
    return runs


def decode_masks(
    segs: list[list[list[float]] | dict | None], boxes: np.ndarray, h: int, w: int
) -> np.ndarray:
    """uint8 ndarray[N, h, w] (0/1) from checked segmentations (see :func:`check_segmentation`);
    a ``None`` segmentation is filled from its xyxy box ``boxes[i]`` (every pixel the box
    touches)."""
    from pycocotools import mask as mask_utils

    out = np.zeros((len(segs), h, w), dtype=np.uint8)
    rles, rows = [], []
    for i, seg in enumerate(segs):
        if seg is None:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
            c1, r1 = min(int(math.ceil(x1)), w), min(int(math.ceil(y1)), h)
            out[i, r0:r1, c0:c1] = 1
            continue
        if isinstance(seg, list):
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        elif isinstance(seg["counts"], list):
            rles.append(mask_utils.frPyObjects(seg, h, w))
        else:
            rles.append(seg)
        rows.append(i)
    if rles:
        with warnings.catch_warnings():
            # pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=".*copy keyword.*")
            decoded = mask_utils.decode(rles)  # uint8 [h, w, len(rles)], Fortran order
        out[rows] = np.moveaxis(decoded, -1, 0)
    return out


def fill_missing_segmentations(annotations: list[dict]) -> None:
    """Give every annotation without a segmentation its box as a polygon, in place, so that
    mask AP can be scored on data sets that only have boxes (the targets' masks are box-filled
    the same way)."""
    for ann in annotations:
        if ann.get("segmentation"):
            continue
        box = as_box(ann.get("bbox"))
        if box is None:
            continue
        x, y, w, h = box
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
