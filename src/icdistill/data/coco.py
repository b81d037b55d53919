"""COCO-format detection data set (real COCO, or anything written in its json format).

Items are ``(image, target)``:

* ``image``: float Tensor[3, h, w] in [0, 1], RGB, after the transforms (resize, flip);
* ``target``: ``{"boxes": float32 Tensor[N, 4] xyxy in pixels of the transformed image,
  "labels": int64 Tensor[N] contiguous class ids 0..C-1, "image_id": int (the json image id),
  "orig_size": (h, w) of the image on disk}``.

Annotations are checked once at construction, without reading any image: crowd annotations are
excluded from the targets, boxes leaving the image are clipped (counted as repaired), boxes with
zero width or height after clipping are dropped, and annotations of an unknown category are
dropped. :attr:`CocoDetection.report` holds the counts and the file names involved.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["CocoDetection", "Transform"]

log = logging.getLogger(__name__)

#: A transform maps ``(image uint8 Tensor[3, H, W], target)`` to ``(image, target)``; see
#: :func:`icdistill.data.transforms.build_transforms`.
Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]

_PROBLEMS = ("crowd", "repaired_boxes", "degenerate_boxes", "unknown_category",
             "unknown_image", "unreadable_images")


def _load_coco_json(ann_file: Path) -> dict:
    if not ann_file.is_file():
        raise DataError(f"annotation file not found: {ann_file}")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"annotation file {ann_file} is not valid json: {e}") from e
    except OSError as e:
        raise DataError(f"cannot read annotation file {ann_file}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"annotation file {ann_file}: expected a json object with 'images', "
                        f"'annotations' and 'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"annotation file {ann_file}: missing or non-list key '{key}' "
                            f"(COCO detection format expected)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(f"annotation file {ann_file}: 'annotations' must be a list")
    data.setdefault("annotations", [])
    if not data["categories"]:
        raise DataError(f"annotation file {ann_file}: 'categories' is empty")
    return data


class CocoDetection(Dataset):
    """A COCO-format detection data set.

    Args:
        image_dir: folder holding the images named by ``file_name`` in the json.
        ann_file: COCO json (``images``, ``annotations``, ``categories``).
        transforms: callable ``(image uint8 Tensor[3, H, W], target) -> (image, target)`` where
            target boxes are float Tensor[N, 4] xyxy pixels; ``None`` only converts to float.
        skip_unreadable: if True, images whose file is missing or whose header cannot be read
            are checked for at construction (reads file headers, not pixels) and left out of the
            data set (counted in :attr:`report`); an image that still fails to decode later is
            replaced by the next readable one, with a warning. If False (default) a bad image
            raises :class:`DataError` naming the file when it is loaded.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` object (ground truth for the evaluator). Missing
            ``area`` / ``iscrowd`` / ``id`` fields are filled in (w·h, 0, running number).
        ann_file: path of the json.
        image_dir: path of the image folder.
        class_names: category names ordered by contiguous id (categories sorted by COCO id).
        contiguous_to_cat_id: COCO category id of each contiguous id.
        cat_id_to_contiguous: the inverse mapping.
        image_ids: json image id of each item, in item order.
        report: ``{"num_images", "num_annotations", "kept_annotations", "counts": {problem: n},
            "files": {problem: sorted file names}}``, problems being ``crowd``,
            ``repaired_boxes``, ``degenerate_boxes``, ``unknown_category``, ``unknown_image``
            and ``unreadable_images``.

    ``dataset[i]`` returns item i, using the global torch RNG for augmentation;
    ``dataset[(i, aug_seed)]`` runs the transforms under ``torch.random.fork_rng()`` seeded with
    ``aug_seed``, so the augmentation depends on nothing else (worker process, earlier items).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Transform | None = None,
        *,
        skip_unreadable: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.skip_unreadable = bool(skip_unreadable)
        if not self.image_dir.is_dir():
            raise DataError(f"image folder not found: {self.image_dir}")
        data = _load_coco_json(self.ann_file)

        # --- categories -> contiguous ids
        try:
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.contiguous_to_cat_id: list[int] = [int(c["id"]) for c in cats]
            self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"annotation file {self.ann_file}: malformed 'categories' entry "
                            f"({e!r}); each needs an integer 'id' and a 'name'") from e
        if len(set(self.contiguous_to_cat_id)) != len(self.contiguous_to_cat_id):
            raise DataError(f"annotation file {self.ann_file}: duplicate category ids")
        self.cat_id_to_contiguous: dict[int, int] = {
            c: i for i, c in enumerate(self.contiguous_to_cat_id)}

        # --- images
        self._images: list[dict[str, Any]] = []
        by_id: dict[int, int] = {}
        for img in data["images"]:
            try:
                rec = {"id": int(img["id"]), "file_name": str(img["file_name"]),
                       "width": int(img["width"]), "height": int(img["height"])}
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"annotation file {self.ann_file}: malformed 'images' entry "
                                f"{str(img)[:200]} ({e!r}); each needs 'id', 'file_name', "
                                f"'width' and 'height'") from e
            if rec["width"] <= 0 or rec["height"] <= 0:
                raise DataError(f"annotation file {self.ann_file}: image {rec['file_name']} has "
                                f"non-positive size {rec['width']}x{rec['height']}")
            if rec["id"] in by_id:
                raise DataError(f"annotation file {self.ann_file}: duplicate image id {rec['id']}")
            by_id[rec["id"]] = len(self._images)
            rec["boxes"], rec["labels"] = [], []
            self._images.append(rec)

        # --- annotations: check, repair, drop
        counts = {p: 0 for p in _PROBLEMS}
        files: dict[str, set[str]] = {p: set() for p in _PROBLEMS}
        kept = 0
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                raise DataError(f"annotation file {self.ann_file}: annotation #{n} is not an object")
            ann.setdefault("id", n + 1)
            ann.setdefault("iscrowd", 0)
            pos = by_id.get(_as_int(ann.get("image_id")))
            if pos is None:
                counts["unknown_image"] += 1
                files["unknown_image"].add(f"image_id={ann.get('image_id')}")
                continue
            rec = self._images[pos]
            name = rec["file_name"]
            box = _as_box(ann.get("bbox"))
            if "area" not in ann:
                ann["area"] = float(box[2] * box[3]) if box is not None else 0.0
            cat = self.cat_id_to_contiguous.get(_as_int(ann.get("category_id")))
            if cat is None:
                counts["unknown_category"] += 1
                files["unknown_category"].add(name)
                continue
            if ann.get("iscrowd", 0):
                counts["crowd"] += 1
                files["crowd"].add(name)
                continue
            if box is None or box[2] <= 0 or box[3] <= 0:
                counts["degenerate_boxes"] += 1
                files["degenerate_boxes"].add(name)
                continue
            x0, y0 = box[0], box[1]
            x1, y1 = x0 + box[2], y0 + box[3]
            W, H = rec["width"], rec["height"]
            cx0, cy0 = min(max(x0, 0.0), W), min(max(y0, 0.0), H)
            cx1, cy1 = min(max(x1, 0.0), W), min(max(y1, 0.0), H)
            if cx1 - cx0 <= 0 or cy1 - cy0 <= 0:
                counts["degenerate_boxes"] += 1
                files["degenerate_boxes"].add(name)
                continue
            if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                counts["repaired_boxes"] += 1
                files["repaired_boxes"].add(name)
            rec["boxes"].append((cx0, cy0, cx1, cy1))
            rec["labels"].append(cat)
            kept += 1
        for rec in self._images:
            rec["boxes"] = np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4)
            rec["labels"] = np.asarray(rec["labels"], dtype=np.int64).reshape(-1)

        if self.skip_unreadable:
            readable = []
            for rec in self._images:
                if _header_ok(self.image_dir / rec["file_name"]):
                    readable.append(rec)
                else:
                    counts["unreadable_images"] += 1
                    files["unreadable_images"].add(rec["file_name"])
            self._images = readable

        self.image_ids: list[int] = [rec["id"] for rec in self._images]
        self.report: dict[str, Any] = {
            "num_images": len(self._images),
            "num_annotations": len(data["annotations"]),
            "kept_annotations": int(sum(len(r["labels"]) for r in self._images)),
            "counts": counts,
            "files": {p: sorted(v) for p, v in files.items()},
        }
        if any(n for p, n in counts.items() if p != "crowd"):  # crowd boxes are normal in COCO
            log.warning("%s: %s", self.ann_file, self.report_summary())

        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                coco.createIndex()
            except (KeyError, TypeError) as e:
                raise DataError(f"annotation file {self.ann_file}: pycocotools cannot index it "
                                f"({e!r})") from e
        self.coco = coco

    # ------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of classes C (contiguous ids 0..C-1)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def report_summary(self) -> str:
        """One line naming each problem found in the annotations, with its count."""
        parts = []
        for p, n in self.report["counts"].items():
            if n:
                names = self.report["files"][p]
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                parts.append(f"{n} {p.replace('_', ' ')} ({shown})")
        return "; ".join(parts) if parts else "no problems"

    def annotation_records(self) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Per image, without decoding it: ``(width, height, boxes, labels)``.

        ``boxes`` is float32 ndarray[N, 4] xyxy in pixels of the image on disk (after the
        repairs described above), ``labels`` int64 ndarray[N] contiguous class ids.
        """
        for rec in self._images:
            yield rec["width"], rec["height"], rec["boxes"].copy(), rec["labels"].copy()

    def load_image(self, index: int) -> Tensor:
        """uint8 Tensor[3, H, W] RGB of item ``index`` as stored on disk.

        Raises:
            DataError: the file is missing, unreadable or does not match the json's size.
        """
        rec = self._images[index]
        path = self.image_dir / rec["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                arr = np.array(im, dtype=np.uint8)
        except FileNotFoundError as e:
            raise DataError(f"image file not found: {path}") from e
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot decode image {path}: {e}") from e
        if arr.shape[0] != rec["height"] or arr.shape[1] != rec["width"]:
            raise DataError(
                f"image {path} is {arr.shape[1]}x{arr.shape[0]} (w x h) but {self.ann_file} says "
                f"{rec['width']}x{rec['height']}; fix the json's width/height")
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict[str, Any]]:
        aug_seed: int | None = None
        if isinstance(index, tuple):
            index, aug_seed = int(index[0]), int(index[1])
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        image = None
        for attempt in range(len(self) if self.skip_unreadable else 1):
            try:
                image = self.load_image(index)
                break
            except DataError as e:
                if not self.skip_unreadable or attempt == len(self) - 1:
                    raise
                log.warning("%s; using the next image instead", e)
                index = (index + 1) % len(self)
        assert image is not None
        rec = self._images[index]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(rec["boxes"].copy()),
            "labels": torch.from_numpy(rec["labels"].copy()),
            "image_id": rec["id"],
            "orig_size": (rec["height"], rec["width"]),
        }
        if self.transforms is not None:
            if aug_seed is None:
                image, target = self.transforms(image, target)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(aug_seed)
                    image, target = self.transforms(image, target)
        if not torch.is_floating_point(image):
            image = image.float() / 255.0
        image = image.as_subclass(Tensor) if type(image) is not Tensor else image
        target["boxes"] = target["boxes"].as_subclass(Tensor).float().reshape(-1, 4)
        target["labels"] = target["labels"].as_subclass(Tensor).long().reshape(-1)
        return image, target


def _as_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _as_box(v: Any) -> tuple[float, float, float, float] | None:
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


def _header_ok(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001 - any failure means unreadable
        return False
